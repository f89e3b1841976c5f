"""Image bytes to the pixel tensors a model's image processor makes, with LLaVA's pad-to-square.

The model's own image processor defines the transform. For the common CLIP/SigLIP-style processors
(PIL backend: resize, centre crop, rescale, normalise) the same steps run here in a quicker order:
PIL resize and crop on 8-bit pixels, then one float conversion and normalisation for the whole batch.
That path is used only after it has reproduced the processor's output on a probe image; any other
processor is simply called.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image


def expand_to_square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad to a square with `background`, the image centred (LLaVA-1.5's `pad` aspect mode)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes to RGB (transparency composited on white)."""
    img = Image.open(io.BytesIO(data))
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode == "RGB":
        img.load()
        return img
    return img.convert("RGB")


def _fast_transform(ip: Any) -> Callable[[Sequence[Image.Image]], Any] | None:
    """The processor's steps for a PIL-backend processor with the standard pipeline, else None."""
    try:
        import torch
        from transformers.image_processing_backends import PilBackend
        from transformers.image_transforms import get_resize_output_image_size
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(ip, PilBackend) or type(ip)._preprocess is not PilBackend._preprocess:
        return None
    if getattr(ip, "do_pad", False):
        return None
    size = dict(ip.size or {})
    if not ip.do_resize or not (set(size) == {"shortest_edge"} or set(size) == {"height", "width"}):
        return None
    crop = dict(ip.crop_size or {}) if ip.do_center_crop else None
    resample = ip.resample if ip.resample is not None else Image.BILINEAR
    scale = float(ip.rescale_factor) if ip.do_rescale else 1.0
    mean = torch.tensor(ip.image_mean if ip.do_normalize else [0.0, 0.0, 0.0], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std if ip.do_normalize else [1.0, 1.0, 1.0], dtype=torch.float32).view(1, 3, 1, 1)

    def one(img: Image.Image) -> np.ndarray:
        w, h = img.size
        if "shortest_edge" in size:
            probe = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, h, w))
            nh, nw = get_resize_output_image_size(probe, size=size["shortest_edge"], default_to_square=False,
                                                  input_data_format="channels_first")
        else:
            nh, nw = size["height"], size["width"]
        img = img.resize((nw, nh), resample=resample)
        if crop:
            ch, cw = crop["height"], crop["width"]
            if ch > nh or cw > nw:
                raise _Fallback
            top, left = (nh - ch) // 2, (nw - cw) // 2
            img = img.crop((left, top, left + cw, top + ch))
        return np.asarray(img)

    mul, sub = scale / std, mean / std  # (x * scale - mean) / std as one multiply and one subtract

    def batch(images: Sequence[Image.Image]) -> Any:
        first = one(images[0])
        stacked = np.empty((len(images),) + first.shape, dtype=np.uint8)
        stacked[0] = first
        for i, im in enumerate(images[1:], 1):
            stacked[i] = one(im)
        src = torch.from_numpy(stacked).permute(0, 3, 1, 2)
        out = _output_tensor(src.shape)
        out.copy_(src)
        return out.mul_(mul).sub_(sub)

    return batch


class _Fallback(Exception):
    pass


def _output_tensor(shape: Any) -> Any:
    """A float32 tensor for a batch of pixels; in a dataloader worker it lives in shared memory from
    the start (as torch's default_collate does), so sending it to the main process copies nothing."""
    import torch
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, tuple(shape))


class ImagePreparer:
    """Decode, optionally pad to square (with the processor's mean colour, as LLaVA does) and turn a
    batch of images into pixel values."""

    def __init__(self, image_processor: Any, pad_to_square: bool = True, fast: bool = True):
        self.ip = image_processor
        self.pad_to_square = pad_to_square
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        self.background = tuple(int(x * 255) for x in mean)
        self._fast = _fast_transform(image_processor) if fast else None
        if self._fast is not None and not self._agrees():
            self._fast = None

    @property
    def uses_fast_path(self) -> bool:
        return self._fast is not None

    def _agrees(self) -> bool:
        rng = np.random.default_rng(0)
        probe = Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))
        try:
            ours = self._fast([probe]).numpy()  # type: ignore[misc]
        except _Fallback:
            return False
        ref = np.asarray(self._reference([probe]))
        return ours.shape == ref.shape and float(np.abs(ours - ref).max()) < 1e-4

    def _reference(self, images: Sequence[Image.Image]) -> Any:
        return self.ip(images=list(images), return_tensors="pt")["pixel_values"]

    def load(self, data: bytes) -> Image.Image:
        img = decode_rgb(data)
        return expand_to_square(img, self.background) if self.pad_to_square else img

    def __call__(self, images: Sequence[Image.Image]) -> Any:
        if self._fast is not None:
            try:
                return self._fast(images)
            except _Fallback:
                pass
        return self._reference(images)
