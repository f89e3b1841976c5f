"""Occlusion rendering: hide a masked object so that only its context remains.

`blocks` reproduces the CVC paper: square patches of side P = max(min(w, h) // 3, 4), where (w, h)
is the object's box, painted in RGB (123, 116, 103). Candidate centres lie on a grid of stride
s = int(sqrt(P)) inside the mask, visited row by row; a countdown, drawn from the sample's own
random generator, decides which centres get a patch: it starts at a draw from [0, s], and after each
patch restarts at a draw from [1, s] (the draws are taken as one vector, so the walk is a cumsum).
Same seed and key -> same blocks.

Also `solid` (the mask filled with the same colour), `blur`, `noise` and `inpaint` (OpenCV Telea).
The mask may first be dilated by a number of pixels.

Two steps, so that a builder can decide from the area before it touches a pixel: `occlusion_region`
gives the pixels a fill will change (a MaskCrop), `render_occlusion` paints them. `occlude` does
both on a copy. Masks may be full (H, W) arrays or MaskCrops; the work costs the object's box.

`occlude_coefficients` paints the same fills (not blur or inpaint, which read the pixels around them)
into a JPEG's DCT coefficients instead (the C extension `_jpegdct`, against libjpeg): only the 8x8
blocks under the fill are decoded and quantised again with the file's own tables, so every pixel
outside them stays the source's own, and no pixel of the image is decoded or encoded besides. A
baseline file is written by splicing (`_jpegsplice.c`): the MCUs the fill leaves alone keep the
source's entropy-coded bits, and only the changed ones are Huffman-coded, with the file's own tables.
"""

from __future__ import annotations

import numpy as np

from vlmforge.curation.segmentation import MaskCrop, mask_kernels

FILL_RGB = (123, 116, 103)
FILLS = ("blocks", "solid", "blur", "noise", "inpaint")
# Fills that change no pixel outside their region's box (inpaint rewrites the frame it returns).
BOX_LOCAL_FILLS = frozenset({"blocks", "solid", "blur", "noise"})
# Fills that occlude_coefficients can write: what they paint does not depend on the pixels under them.
COEFFICIENT_FILLS = frozenset({"blocks", "solid", "noise"})
# How the instruction names what covers the object.
FILL_PHRASES = {
    "blocks": "a cluster of gray blocks",
    "solid": "a gray patch",
    "blur": "a heavy blur",
    "noise": "random noise",
    "inpaint": "inpainted background",
}


def dilate(mask: MaskCrop, pixels: int) -> MaskCrop:
    """The mask grown by `pixels` (an elliptic kernel of side 2 * pixels + 1), worked out in its box
    grown by as much. Same pixels as dilating the whole frame: the added margin holds the frame's own
    zeros, and at the image border OpenCV lets nothing from outside in either way."""
    if pixels <= 0 or not mask.pixels.size:
        return mask
    import cv2

    grown = mask.padded(pixels)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return MaskCrop(grown.shape, grown.y0, grown.x0, cv2.dilate(grown.pixels.view(np.uint8), k).view(bool))


def block_size(box_w: float, box_h: float) -> tuple[int, int]:
    """(patch side P, grid stride s) for an object box."""
    patch = max(int(min(box_w, box_h)) // 3, 4)
    return patch, int(np.sqrt(patch))


def block_centres(mask: MaskCrop | np.ndarray, stride: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The grid points (multiples of `stride` in image coordinates, row-major) inside `mask` that the
    countdown selects: the first after skipping a draw from [0, s] points, each next after skipping
    a draw from [1, s]."""
    mask = _as_crop(mask)
    ry, rx = -mask.y0 % stride, -mask.x0 % stride  # the crop's first grid row and column
    ys, xs = np.nonzero(mask.pixels[ry::stride, rx::stride])
    n = len(ys)
    if n == 0:
        return ys, xs
    first, skips = _countdown(n, stride, rng)
    picked = first + np.concatenate(([0], np.cumsum(skips + 1)))
    picked = picked[picked < n]
    return mask.y0 + ry + ys[picked] * stride, mask.x0 + rx + xs[picked] * stride


def _countdown(n: int, stride: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """The countdown's draws for `n` grid points: the first skip, then enough later ones to walk past
    the last point even if every draw were the smallest (1)."""
    return int(rng.integers(0, stride + 1)), rng.integers(1, stride + 1, size=n // 2 + 1)


def block_region(mask: MaskCrop | np.ndarray, box: list[float], rng: np.random.Generator) -> MaskCrop:
    """The pixels the paper's block fill paints: each selected grid point becomes a P x P square
    (rows and columns [g - P // 2, g + P - 1 - P // 2], clipped at the image border), made by one
    dilation of the points, inside their bounding box grown by a patch. Where vlmforge.curation._masks
    was built, one C call walks the grid and paints the squares from the same draws (a third of the time)."""
    import cv2

    mask = _as_crop(mask)
    patch, stride = block_size(box[2], box[3])
    h, w = mask.shape
    kernels = mask_kernels()
    if kernels is not None:  # the same draws and pixels, in one call
        ry, rx = -mask.y0 % stride, -mask.x0 % stride
        n = int(np.count_nonzero(mask.pixels[ry::stride, rx::stride]))
        if n == 0:
            return MaskCrop.empty((h, w))
        first, skips = _countdown(n, stride, rng)
        y0, x0, y1, x1, region = kernels.block_squares(np.ascontiguousarray(mask.pixels).view(np.uint8), mask.y0,
                                                       mask.x0, h, w, stride, patch, first, skips)
        if y1 == 0:
            return MaskCrop.empty((h, w))
        return MaskCrop((h, w), y0, x0, np.frombuffer(region, np.uint8).reshape(y1 - y0, x1 - x0).view(bool))
    gy, gx = block_centres(mask, stride, rng)
    if len(gy) == 0:
        return MaskCrop.empty((h, w))
    y0, y1 = max(int(gy.min()) - patch, 0), min(int(gy.max()) + patch + 1, h)
    x0, x1 = max(int(gx.min()) - patch, 0), min(int(gx.max()) + patch + 1, w)
    seeds = np.zeros((y1 - y0, x1 - x0), np.uint8)
    seeds[gy - y0, gx - x0] = 1
    kernel = np.ones((patch, patch), np.uint8)
    region = cv2.dilate(seeds, kernel, anchor=(patch - 1 - patch // 2, patch - 1 - patch // 2))
    return MaskCrop((h, w), y0, x0, region.view(bool))


def occlusion_region(mask: MaskCrop | np.ndarray, box: list[float], fill: str, rng: np.random.Generator,
                     dilate_px: int = 0) -> MaskCrop:
    """The pixels `fill` will change: the (dilated) mask, or for `blocks` the squares it paints.
    Draws from `rng` what the fill's layout needs; render with the same generator after."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")
    mask = dilate(_as_crop(mask), dilate_px)
    return block_region(mask, box, rng) if fill == "blocks" else mask


def render_occlusion(image: np.ndarray, changed: MaskCrop, fill: str, box: list[float], rng: np.random.Generator,
                     color: tuple[int, int, int] = FILL_RGB) -> None:
    """Paint `changed` (from occlusion_region) into a 3-channel uint8 image, in place. `color` is in
    the image's channel order."""
    import cv2

    if not changed.pixels.size:
        return
    view = changed.of(image)
    if fill in ("blocks", "solid"):
        paint(view, changed.pixels, color)
    elif fill == "blur":
        sigma = max(min(box[2], box[3]) / 4.0, 3.0)
        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)  # the whole frame: its borders
        view[changed.pixels] = changed.of(blurred)[changed.pixels]
    elif fill == "noise":
        view[changed.pixels] = rng.integers(0, 256, (changed.area(), 3), dtype=np.uint8)
    elif fill == "inpaint":
        image[...] = cv2.inpaint(np.ascontiguousarray(image), changed.full().view(np.uint8), 5, cv2.INPAINT_TELEA)
    else:
        raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")


def paint(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> None:
    """Set the pixels of a 3-channel uint8 image (or a view into one) where the uint8 `mask` is non-zero
    to `color`, in place: OpenCV's masked and/add, ten times quicker than numpy's boolean assignment."""
    import cv2

    mask = mask.view(np.uint8) if mask.dtype == bool else mask
    done = cv2.bitwise_and(image, (0, 0, 0, 0), dst=image, mask=mask)
    done = cv2.add(done, tuple(color) + (0,), dst=done, mask=mask)
    if done is not image:  # OpenCV worked on a copy (an array layout it cannot take as it is)
        image[...] = done


def occlude(image: np.ndarray, mask: MaskCrop | np.ndarray, box: list[float], fill: str, rng: np.random.Generator,
            dilate_px: int = 0, color: tuple[int, int, int] = FILL_RGB) -> tuple[np.ndarray, MaskCrop | np.ndarray]:
    """Apply `fill` to `mask` (dilated by `dilate_px`) on a copy of a 3-channel uint8 image; returns
    (image, changed pixels), the latter a MaskCrop when `mask` is one, else a full bool array."""
    changed = occlusion_region(mask, box, fill, rng, dilate_px)
    out = image.copy()
    render_occlusion(out, changed, fill, box, rng, color)
    return out, (changed if isinstance(mask, MaskCrop) else changed.full())


def occlude_with_blocks(image: np.ndarray, mask: MaskCrop | np.ndarray, box: list[float], rng: np.random.Generator,
                        color: tuple[int, int, int] = FILL_RGB) -> tuple[np.ndarray, MaskCrop | np.ndarray]:
    """The paper's block fill on a copy: (image, painted pixels)."""
    return occlude(image, mask, box, "blocks", rng, 0, color)


def _as_crop(mask: MaskCrop | np.ndarray) -> MaskCrop:
    return mask if isinstance(mask, MaskCrop) else MaskCrop.from_full(mask)


def coefficient_writer():
    """The compiled DCT-domain writer (vlmforge.curation._jpegdct), or None where it was not built (no C
    compiler or libjpeg headers at install time)."""
    try:
        from vlmforge.curation import _jpegdct
    except ImportError:
        return None
    return _jpegdct


def read_coefficients(data: bytes, standard: bool = False):
    """A JPEG's coefficients for occlude_coefficients, or None when this file cannot be edited so (not
    8-bit three-component YCbCr: greyscale, CMYK, 12-bit; a quantisation table redefined between scans;
    coefficients past what baseline coding holds) or does not read cleanly (libjpeg warned of corrupt
    data): the caller decodes it the usual way, which rejects it or reads more leniently. With `standard`, a
    file whose Huffman tables lack codes (tables made for the image) is also coded with the standard tables as
    its blocks are decoded, for the first occluder that needs one (the same bytes as that switch; `code_standard()`
    on the result makes it later, at about twice the cost). Raises RuntimeError when the writer was not built."""
    dct = coefficient_writer()
    if dct is None:
        raise RuntimeError("vlmforge.curation._jpegdct was not built")
    try:
        coefs = dct.Coefficients(data, standard=standard)
    except dct.JpegError:
        return None
    return coefs if coefs.editable and not coefs.warnings else None


def occlude_coefficients(coefs, changed: MaskCrop, fill: str, rng: np.random.Generator,
                         color: tuple[int, int, int] = FILL_RGB) -> bytes:
    """A baseline JPEG of the image `coefs` holds (read_coefficients) with `changed` (from
    occlusion_region) painted in `fill`, written in the DCT domain; `coefs` is left as it was. `color`
    is RGB. `noise` draws the same values from `rng` as render_occlusion does for an image in OpenCV's
    BGR order, so the two paths paint the same colours."""
    if fill not in COEFFICIENT_FILLS:
        raise ValueError(f"fill {fill!r} reads the pixels it covers; only {', '.join(sorted(COEFFICIENT_FILLS))} "
                         "are written in the DCT domain")
    mask = np.ascontiguousarray(changed.pixels).view(np.uint8)
    if fill == "noise":
        rgb = np.zeros(mask.shape + (3,), np.uint8)
        rgb[changed.pixels] = rng.integers(0, 256, (changed.area(), 3), dtype=np.uint8)[:, ::-1]
        return coefs.occlude(mask, changed.y0, changed.x0, rgb)
    return coefs.occlude(mask, changed.y0, changed.x0, tuple(int(v) for v in color))
