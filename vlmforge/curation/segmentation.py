"""Segmentation: a mask per grounded entity.

- `annotations` (offline default): the instances' own polygons or RLE, as pycocotools rasterises them.
- `sam`: transformers' SAM (any checkpoint, e.g. facebook/sam-vit-base) prompted with the boxes,
  one forward pass per image for all its boxes; the mask with the best predicted IoU is kept.
- `box`: the box itself, filled (for detectors without instance masks, and as a cheap baseline).

Masks travel as `MaskCrop`s: the box of rows and columns that holds the object, not the whole frame.
Later stages (dilation, the block grid, painting, the area, the PNG) then cost the object's size.
"""

from __future__ import annotations

import functools

import numpy as np


class SegmentationError(ValueError):
    """An instance's segmentation cannot give a mask for its image (missing, malformed, other size)."""


class MaskCrop:
    """A boolean mask of an image of `shape` (H, W), stored as `pixels` (bool, C order): the rows
    y0..y1 and columns x0..x1 that hold every set pixel. Everything outside is False."""

    __slots__ = ("shape", "y0", "x0", "pixels")

    def __init__(self, shape: tuple[int, int], y0: int, x0: int, pixels: np.ndarray):
        self.shape = (int(shape[0]), int(shape[1]))
        self.y0, self.x0 = int(y0), int(x0)
        self.pixels = pixels

    @property
    def y1(self) -> int:
        return self.y0 + self.pixels.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.pixels.shape[1]

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "MaskCrop":
        return cls(shape, 0, 0, np.zeros((0, 0), bool))

    @classmethod
    def from_full(cls, mask: np.ndarray) -> "MaskCrop":
        """The crop of a full (H, W) mask: its set pixels' bounding rows and columns."""
        mask = np.asarray(mask, bool)
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            return cls.empty(mask.shape)
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(mask.shape, y0, x0, np.ascontiguousarray(mask[y0:y1, x0:x1]))

    def full(self) -> np.ndarray:
        out = np.zeros(self.shape, bool)
        out[self.y0 : self.y1, self.x0 : self.x1] = self.pixels
        return out

    def area(self) -> int:
        return int(np.count_nonzero(self.pixels))

    def of(self, image: np.ndarray) -> np.ndarray:
        """The same rows and columns of an image of this mask's size (a view)."""
        return image[self.y0 : self.y1, self.x0 : self.x1]

    def padded(self, pad: int) -> "MaskCrop":
        """The same mask in a box grown by `pad` pixels on each side, clipped to the image."""
        h, w = self.shape
        y0, x0 = max(self.y0 - pad, 0), max(self.x0 - pad, 0)
        y1, x1 = min(self.y1 + pad, h), min(self.x1 + pad, w)
        out = np.zeros((y1 - y0, x1 - x0), bool)
        out[self.y0 - y0 : self.y1 - y0, self.x0 - x0 : self.x1 - x0] = self.pixels
        return MaskCrop(self.shape, y0, x0, out)

    @staticmethod
    def union(masks: list["MaskCrop"]) -> "MaskCrop":
        shape = masks[0].shape
        masks = [m for m in masks if m.pixels.size]
        if len(masks) <= 1:
            return masks[0] if masks else MaskCrop.empty(shape)
        y0, x0 = min(m.y0 for m in masks), min(m.x0 for m in masks)
        y1, x1 = max(m.y1 for m in masks), max(m.x1 for m in masks)
        out = np.zeros((y1 - y0, x1 - x0), bool)
        for m in masks:
            out[m.y0 - y0 : m.y1 - y0, m.x0 - x0 : m.x1 - x0] |= m.pixels
        return MaskCrop(masks[0].shape, y0, x0, out)


def rle_counts(counts) -> np.ndarray:
    """An RLE's run lengths (int64): from a list, or from COCO's compressed string, decoded the way
    pycocotools' rleFrString does (6-bit characters from '0', 5 value bits and a continuation bit
    each, the last one's 0x10 bit a sign; from the fourth run on, a value is the difference to the
    run two before), but vectorised."""
    if isinstance(counts, (list, tuple, np.ndarray)):
        return np.asarray(counts, np.int64)
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    if not raw:
        return np.zeros(0, np.int64)
    c = np.frombuffer(raw, np.uint8) - np.uint8(48)
    if c.max() > 63 or c[-1] >= 32:
        raise SegmentationError("its compressed RLE string has characters outside '0'..'o' or ends mid-value")
    ends = np.flatnonzero(c < 32)  # a value's last character has no continuation bit (0x20)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    length = ends - starts + 1
    x = (c[starts] & 31).astype(np.int64)
    for j in range(1, int(length.max())):  # values rarely take more than 3 characters
        longer = np.flatnonzero(length > j)
        x[longer] |= (c[starts[longer] + j] & 31).astype(np.int64) << (5 * j)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * length[negative])
    x[2::2] = np.cumsum(x[2::2])  # runs 0, 1 and 2 as they are; each later one adds the run two before
    x[1::2] = np.cumsum(x[1::2])
    return x


@functools.cache
def mask_kernels():
    """vlmforge.curation._masks (the block fill's squares and COCO's compressed RLE, in C), or None where it
    was not built (no C compiler at install time): numpy then does the same, to the same pixels. Asked once
    per process: a failed import searches the whole path again, and this is called per mask."""
    try:
        from vlmforge.curation import _masks
    except ImportError:
        return None
    return _masks


def rle_crop(rle: dict) -> MaskCrop:
    """A COCO RLE ({"size": [h, w], "counts": list or compressed string}) as a MaskCrop, the same
    pixels as pycocotools.mask.decode gives, but only the object's columns are ever expanded (its
    byte-at-a-time decode of the whole frame costs more than everything done with the mask after). A
    compressed string is decoded by vlmforge.curation._masks where it was built (13-16x as fast as numpy
    on COCO-like polygons); numpy decodes the rest, and says what is wrong with a malformed string."""
    import cv2

    h, w = (int(v) for v in rle["size"])
    if isinstance(rle["counts"], (str, bytes)) and (kernels := mask_kernels()) is not None:
        try:
            got = kernels.column_crop(rle["counts"], h, w)
        except (UnicodeError, OverflowError):  # not ASCII, or a size past 64 bits: numpy says why below
            got = None
        if got is not None:  # else malformed: the numpy decoder below says how
            y0, x0, y1, x1, cols = got
            if x1 == 0:
                return MaskCrop.empty((h, w))
            cols = np.frombuffer(cols, np.uint8).reshape(x1 - x0, y1 - y0)
            return MaskCrop((h, w), y0, x0, cv2.transpose(cols).view(bool))
    counts = rle_counts(rle["counts"])
    if len(counts) and (counts.min() < 0 or counts.sum() != h * w):
        raise SegmentationError(f"its RLE runs cover {int(counts.sum())} pixels with {int((counts < 0).sum())} "
                                f"negative runs; a {w}x{h} image has {h * w}")
    ends = np.cumsum(counts)
    starts = ends - counts
    on = np.flatnonzero((np.arange(len(counts)) & 1).astype(bool) & (counts > 0))  # runs of set pixels
    if len(on) == 0:
        return MaskCrop.empty((h, w))
    s, e = starts[on], ends[on] - 1  # first and last column-major pixel index of each
    x0, x1 = int(s[0]) // h, int(e[-1]) // h + 1
    # Rows: a run within one column spans its own rows; one that crosses a column spans them all.
    if (s // h != e // h).any():
        y0, y1 = 0, h
    else:
        y0, y1 = int((s % h).min()), int((e % h).max()) + 1
    lo, hi = x0 * h, x1 * h
    runs = np.clip(ends, lo, hi) - np.clip(starts, lo, hi)  # each run's part inside columns x0..x1
    cols = np.repeat((np.arange(len(counts), dtype=np.uint8) & 1), runs).reshape(x1 - x0, h)
    return MaskCrop((h, w), y0, x0, cv2.transpose(cols[:, y0:y1]).view(bool))  # OpenCV: 3x numpy's .T copy


def annotation_crop(ann: dict, height: int, width: int) -> MaskCrop:
    """A COCO instance's segmentation (polygons, RLE or compressed RLE) as a MaskCrop. Polygons are
    rasterised by pycocotools (so the pixels are COCO's own); an uncompressed RLE takes the image's
    size, as pycocotools.mask.frPyObjects does. Raises SegmentationError for a segmentation that is
    missing, malformed or of another size than the image."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            from pycocotools import mask as mask_utils

            if not seg:
                return MaskCrop.empty((height, width))
            if not all(isinstance(p, list) and len(p) >= 4 and len(p) % 2 == 0
                       and all(isinstance(v, (int, float)) for v in p) for p in seg):
                raise SegmentationError("its polygons must be lists of an even number (4 or more) of coordinates")
            return rle_crop(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        if not isinstance(seg, dict) or "counts" not in seg:
            raise SegmentationError("it has no polygons and no RLE (a dict with counts)" if seg is not None
                                    else "it has no segmentation")
        if isinstance(seg["counts"], list):
            return rle_crop({"size": [height, width], "counts": seg["counts"]})
        size = [int(v) for v in seg.get("size", ())]
        if not size:
            raise SegmentationError("its RLE has no size")
        if size != [height, width]:
            raise SegmentationError(f"its RLE size is {size} (height, width), the image's is {[height, width]}")
        return rle_crop(seg)
    except SegmentationError as e:
        raise SegmentationError(f"instance {ann.get('id')}: {e}") from None
    except (TypeError, ValueError, OverflowError, UnicodeError) as e:
        raise SegmentationError(f"instance {ann.get('id')}: its segmentation cannot be read ({e})") from None


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The same as a bool (H, W) array."""
    return annotation_crop(ann, height, width).full()


def box_mask(boxes: list[list[float]], height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), bool)
    for x, y, w, h in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        m[y0:y1, x0:x1] = True
    return m


class SamSegmenter:
    name = "sam"
    resources = {"cpu": 1, "gpu": 1}
    model_types = ("sam",)  # what SamModel loads

    def __init__(self, model: str = "facebook/sam-vit-base", device: str | None = None):
        self.model_name = model
        self.device = device
        self._model = None

    def setup(self) -> None:
        if self._model is not None:
            return
        from transformers import SamModel, SamProcessor

        from vlmforge.curation.models import load_checkpoint, torch_device

        self._proc, model = load_checkpoint("SAM", self.model_name, lambda: (
            SamProcessor.from_pretrained(self.model_name), SamModel.from_pretrained(self.model_name)))
        self._device = torch_device(self.device)
        self._model = model.eval().to(self._device)

    def __call__(self, image, boxes: list[list[float]]) -> list[np.ndarray]:
        """Masks (bool, image size) for `boxes` ([x, y, w, h] in pixels) on one PIL image."""
        import torch

        self.setup()
        if not boxes:
            return []
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        inputs = self._proc(images=image, input_boxes=[xyxy], return_tensors="pt")
        with torch.no_grad():
            out = self._model(**{k: v.to(self._device) for k, v in inputs.items()}, multimask_output=True)
        masks = self._proc.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
        best = out.iou_scores[0].float().cpu().argmax(-1)  # (n_boxes,)
        return [masks[i, int(best[i])].numpy().astype(bool) for i in range(len(boxes))]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        state.pop("_proc", None)
        return state
