"""Occlusion rendering: hide a masked object so that only its context remains.

`blocks` reproduces the CVC paper: square patches of side P = max(min(w, h) // 3, 4), where (w, h)
is the object's box, painted in RGB (123, 116, 103). Candidate centres lie on a grid of stride
s = int(sqrt(P)) inside the mask, visited row by row; a countdown, drawn from the sample's own
random generator, decides which centres get a patch: it starts at a draw from [0, s], and after each
patch restarts at a draw from [1, s] (the draws are taken as one vector, so the walk is a cumsum).
Same seed and key -> same blocks.

Also `solid` (the mask filled with the same colour), `blur`, `noise` and `inpaint` (OpenCV Telea).
The mask may first be dilated by a number of pixels. Every function returns the new image and the
mask of pixels it changed.
"""

from __future__ import annotations

import numpy as np

FILL_RGB = (123, 116, 103)
FILLS = ("blocks", "solid", "blur", "noise", "inpaint")
# How the instruction names what covers the object.
FILL_PHRASES = {
    "blocks": "a cluster of gray blocks",
    "solid": "a gray patch",
    "blur": "a heavy blur",
    "noise": "random noise",
    "inpaint": "inpainted background",
}


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def block_size(box_w: float, box_h: float) -> tuple[int, int]:
    """(patch side P, grid stride s) for an object box."""
    patch = max(int(min(box_w, box_h)) // 3, 4)
    return patch, int(np.sqrt(patch))


def block_centres(mask: np.ndarray, stride: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The grid points (row-major, stride `stride`) inside `mask` that the countdown selects: the
    first after skipping a draw from [0, s] points, each next after skipping a draw from [1, s]."""
    ys, xs = np.nonzero(mask[::stride, ::stride])
    n = len(ys)
    if n == 0:
        return ys, xs
    first = int(rng.integers(0, stride + 1))
    # Enough skips to walk past the last point even if every draw were the smallest (1).
    skips = rng.integers(1, stride + 1, size=n // 2 + 1)
    picked = first + np.concatenate(([0], np.cumsum(skips + 1)))
    picked = picked[picked < n]
    return ys[picked] * stride, xs[picked] * stride


def occlude_with_blocks(image: np.ndarray, mask: np.ndarray, box: list[float], rng: np.random.Generator,
                        color: tuple[int, int, int] = FILL_RGB) -> tuple[np.ndarray, np.ndarray]:
    """The paper's block fill. Each selected grid point becomes a P x P square (rows and columns
    [g - (P - 1 - P // 2), g + P // 2], clipped at the image border), painted by one dilation."""
    import cv2

    patch, stride = block_size(box[2], box[3])
    h, w = mask.shape
    gy, gx = block_centres(mask, stride, rng)
    painted = np.zeros((h, w), bool)
    out = image.copy()
    if len(gy) == 0:
        return out, painted
    # Work inside the mask's bounding box grown by a patch: small objects cost little.
    y0, y1 = max(int(gy.min()) - patch, 0), min(int(gy.max()) + patch + 1, h)
    x0, x1 = max(int(gx.min()) - patch, 0), min(int(gx.max()) + patch + 1, w)
    seeds = np.zeros((y1 - y0, x1 - x0), np.uint8)
    seeds[gy - y0, gx - x0] = 1
    kernel = np.ones((patch, patch), np.uint8)
    region = cv2.dilate(seeds, kernel, anchor=(patch - 1 - patch // 2, patch - 1 - patch // 2))
    painted[y0:y1, x0:x1] = region
    paint(out[y0:y1, x0:x1], region, color)
    return out, painted


def paint(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> None:
    """Set the pixels of a 3-channel uint8 image (or a view into one) where the uint8 `mask` is non-zero
    to `color`, in place: OpenCV's masked and/add, ten times quicker than numpy's boolean assignment."""
    import cv2

    mask = mask.view(np.uint8) if mask.dtype == bool else mask
    done = cv2.bitwise_and(image, (0, 0, 0, 0), dst=image, mask=mask)
    done = cv2.add(done, tuple(color) + (0,), dst=done, mask=mask)
    if done is not image:  # OpenCV worked on a copy (an array layout it cannot take as it is)
        image[...] = done


def occlude_solid(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = FILL_RGB):
    out = image.copy()
    paint(out, mask, color)
    return out, mask


def occlude_blur(image: np.ndarray, mask: np.ndarray, box: list[float]):
    import cv2

    sigma = max(min(box[2], box[3]) / 4.0, 3.0)
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    out = image.copy()
    out[mask] = blurred[mask]
    return out, mask


def occlude_noise(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    out = image.copy()
    out[mask] = rng.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    return out, mask


def occlude_inpaint(image: np.ndarray, mask: np.ndarray, radius: int = 5):
    import cv2

    out = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return out, mask


def occlude(image: np.ndarray, mask: np.ndarray, box: list[float], fill: str, rng: np.random.Generator,
            dilate_px: int = 0, color: tuple[int, int, int] = FILL_RGB) -> tuple[np.ndarray, np.ndarray]:
    """Apply `fill` to `mask` (dilated by `dilate_px`) of a 3-channel uint8 image; returns (image, changed).
    `color` is in the image's channel order (pass FILL_RGB reversed for an OpenCV BGR array)."""
    mask = dilate(mask, dilate_px)
    if fill == "blocks":
        return occlude_with_blocks(image, mask, box, rng, color)
    if fill == "solid":
        return occlude_solid(image, mask, color)
    if fill == "blur":
        return occlude_blur(image, mask, box)
    if fill == "noise":
        return occlude_noise(image, mask, rng)
    if fill == "inpaint":
        return occlude_inpaint(image, mask)
    raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")
