"""Image bytes to the pixel tensors a model's image processor makes, with LLaVA's pad-to-square.

The model's own image processor defines the transform. For the common CLIP/SigLIP-style processors
(PIL backend: resize, centre crop, rescale, normalise) the same steps run here in a quicker order:
PIL resize and crop on 8-bit pixels, then one float conversion and normalisation for the whole batch.
That path is used only after it has reproduced the processor's output on probe images; any other
processor is simply called. The same steps make the images of model-ready builds
(`vlmforge.builders.model_ready`), which this path then decodes and normalises without resizing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
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


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_image_processor(size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> Any:
    """CLIP's image processor at `size` px (bicubic shortest-edge resize, centre crop), made offline."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=list(mean), image_std=list(std))


@dataclass(frozen=True)
class PixelSteps:
    """The geometric steps of a PIL-backend processor with the standard pipeline, on 8-bit pixels:
    resize (to a shortest edge, or to a fixed height x width) and an optional centre crop. Their
    output is what the processor goes on to rescale and normalise."""

    resample: int
    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None  # (height, width), when not resizing to a shortest edge
    crop: tuple[int, int] | None = None  # (height, width)

    @classmethod
    def of(cls, ip: Any) -> "PixelSteps | None":
        """The steps of `ip`, or None when it is not a processor these steps reproduce."""
        try:
            from transformers.image_processing_backends import PilBackend
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
        return cls(resample=int(ip.resample if ip.resample is not None else Image.BILINEAR),
                   shortest_edge=size.get("shortest_edge"),
                   resize_to=(size["height"], size["width"]) if "height" in size else None,
                   crop=(crop["height"], crop["width"]) if crop else None)

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(height, width) after the resize step."""
        if self.shortest_edge is None:
            return self.resize_to  # type: ignore[return-value]
        from transformers.image_transforms import get_resize_output_image_size

        probe = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, h, w))
        nh, nw = get_resize_output_image_size(probe, size=self.shortest_edge, default_to_square=False,
                                              input_data_format="channels_first")
        return nh, nw

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        nh, nw = self.resized_size(w, h)
        # An image already at the target size (a model-ready build) is neither resampled nor copied.
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample=self.resample)
        if self.crop:
            ch, cw = self.crop
            if ch > nh or cw > nw:
                raise _Fallback  # the processor pads such an image; leave that to it
            if (ch, cw) != (nh, nw):
                top, left = (nh - ch) // 2, (nw - cw) // 2
                img = img.crop((left, top, left + cw, top + ch))
        return img

    def describe(self) -> str:
        """`resize=336;crop=336;resample=bicubic` (sizes as HxW where not square)."""
        def side(hw: tuple[int, int]) -> str:
            return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"

        parts = [f"resize={self.shortest_edge if self.shortest_edge is not None else side(self.resize_to)}"]
        if self.crop:
            parts.append(f"crop={side(self.crop)}")
        parts.append(f"resample={Image.Resampling(self.resample).name.lower()}")
        return ";".join(parts)


def describe_transform(background: tuple[int, ...] | None, steps: PixelSteps) -> str:
    """What preparing an image does before rescaling: `pad=square:122,116,104;resize=336;crop=336;
    resample=bicubic` (pad colour as RGB), or `pad=none;...` without padding."""
    pad = "square:" + ",".join(str(c) for c in background) if background is not None else "none"
    return f"pad={pad};{steps.describe()}"


def _fast_transform(ip: Any, steps: PixelSteps) -> Callable[[Sequence[Image.Image]], Any]:
    """`steps` on 8-bit pixels, then one float conversion and normalisation for the whole batch."""
    import torch

    scale = float(ip.rescale_factor) if ip.do_rescale else 1.0
    mean = torch.tensor(ip.image_mean if ip.do_normalize else [0.0, 0.0, 0.0], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std if ip.do_normalize else [1.0, 1.0, 1.0], dtype=torch.float32).view(1, 3, 1, 1)
    mul, sub = scale / std, mean / std  # (x * scale - mean) / std as one multiply and one subtract

    def batch(images: Sequence[Image.Image]) -> Any:
        first = np.asarray(steps(images[0]))
        stacked = np.empty((len(images),) + first.shape, dtype=np.uint8)
        stacked[0] = first
        for i, im in enumerate(images[1:], 1):
            stacked[i] = np.asarray(steps(im))
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
    batch of images into pixel values.

    Images of a model-ready build (`vlmforge build model-ready`) are already padded and resized by
    these same steps: padding a square image and resizing to the size it has are skipped, so only
    decoding and normalising remain. Their recorded transform is checked against this preparer's."""

    def __init__(self, image_processor: Any, pad_to_square: bool = True, fast: bool = True):
        self.ip = image_processor
        self.pad_to_square = pad_to_square
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        self.background = tuple(int(x * 255) for x in mean)
        self.steps = PixelSteps.of(image_processor) if fast else None
        self._fast = _fast_transform(image_processor, self.steps) if self.steps is not None else None
        if self._fast is not None and not self._agrees():
            self._fast = self.steps = None
        self._checked: set[str] = set()
        self.mismatched: list[str] = []  # model-ready transforms found unlike ours, not yet reported

    @property
    def uses_fast_path(self) -> bool:
        return self._fast is not None

    @property
    def transform(self) -> str | None:
        """What `load` and the processor's resize and crop do to an image, as model-ready builds
        record it; None for a processor whose steps vlmforge does not reproduce."""
        if self.steps is None:
            return None
        return describe_transform(self.background if self.pad_to_square else None, self.steps)

    def _agrees(self) -> bool:
        """The fast path gives the processor's output on a probe image that needs resizing and on one
        already at the output size (the model-ready case, where resizing is skipped)."""
        rng = np.random.default_rng(0)
        probes = [Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8))]
        try:
            probes.append(self.model_ready(probes[0].resize((64, 64))))
            for probe in probes:
                ours = self._fast([probe]).numpy()  # type: ignore[misc]
                ref = np.asarray(self._reference([probe]))
                if ours.shape != ref.shape or float(np.abs(ours - ref).max()) >= 1e-4:
                    return False
        except _Fallback:
            return False
        return True

    def _reference(self, images: Sequence[Image.Image]) -> Any:
        return self.ip(images=list(images), return_tensors="pt")["pixel_values"]

    def load(self, data: bytes, transform: str | None = None) -> Image.Image:
        """Decode (and pad) one image. `transform` is the one a model-ready build recorded for it."""
        img = decode_rgb(data)
        if transform is not None and transform not in self._checked:
            self._check_model_ready(transform)
        return expand_to_square(img, self.background) if self.pad_to_square else img

    def try_load(self, data: bytes, transform: str | None = None) -> Image.Image | None:
        """`load`, or None when the bytes do not decode (not an image, or cut short)."""
        try:
            return self.load(data, transform)
        except (OSError, ValueError):
            return None

    def model_ready(self, img: Image.Image) -> Image.Image:
        """The processor's resize and crop of a loaded image, as 8-bit pixels: what it would go on
        to rescale and normalise."""
        if self.steps is None:
            raise ValueError(f"{type(self.ip).__name__} is not a resize + centre-crop processor vlmforge reproduces")
        return self.steps(img)

    def _check_model_ready(self, transform: str) -> None:
        self._checked.add(transform)
        if self.transform is not None and transform != self.transform:
            self.mismatched.append(transform)

    def take_mismatched(self) -> list[str]:
        """The model-ready transforms unlike this processor's found since the last call (a collate
        puts them in its batch: the training process reports them once, whatever the worker count)."""
        out, self.mismatched = self.mismatched, []
        return out

    def __call__(self, images: Sequence[Image.Image]) -> Any:
        if self._fast is not None:
            try:
                return self._fast(images)
            except _Fallback:
                pass
        return self._reference(images)
