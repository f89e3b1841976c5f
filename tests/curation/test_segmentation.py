"""Masks as crops: the same pixels as pycocotools and as whole-frame work, at the cost of the object's box."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vlmforge.curation import segmentation
from vlmforge.curation.occlude import FILLS, dilate, occlude
from vlmforge.curation.segmentation import (MaskCrop, SegmentationError, annotation_crop, annotation_mask, rle_counts,
                                            rle_crop)


@pytest.fixture(params=["compiled", "numpy"])
def decoder(request, monkeypatch):
    """rle_crop through the C decoder (_masks), and through numpy, its fallback where that was not built."""
    if request.param == "numpy":
        monkeypatch.setattr(segmentation, "mask_kernels", lambda: None)
    elif segmentation.mask_kernels() is None:
        pytest.skip("vlmforge.curation._masks was not built")
    return request.param


def _masks(rng, n):
    """Empty, noisy, boxy and full masks of odd sizes, touching the borders or not."""
    for trial in range(n):
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        m = np.zeros((h, w), np.uint8)
        kind = trial % 5
        if kind == 1:
            m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        elif kind in (2, 3):
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            m[y0 : int(rng.integers(y0, h + 1)), x0 : int(rng.integers(x0, w + 1))] = 1
            if kind == 3:
                m[rng.random((h, w)) < 0.05] ^= 1
        elif kind == 4:
            m[:] = 1
        yield m


def _uncompressed(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.r_[0, change, len(flat)]
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _compressed(runs: list[int]) -> str:
    """Runs as COCO's compressed string (pycocotools' rleToString), negative ones too."""
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
    return "".join(out)


def test_rle_decoding_matches_pycocotools(decoder):
    rng = np.random.default_rng(0)
    for m in _masks(rng, 600):
        rle = mask_utils.encode(np.asfortranarray(m))
        assert _compressed(_uncompressed(m)) == rle["counts"].decode()
        crop = rle_crop(rle if len(m) % 2 else {"size": rle["size"], "counts": rle["counts"].decode()})
        assert np.array_equal(crop.full(), m.astype(bool))
        assert crop.area() == int(mask_utils.area(rle))
        if crop.pixels.size:  # the crop is the tight box of the set pixels
            assert crop.pixels.any(axis=1)[[0, -1]].all() and crop.pixels.any(axis=0)[[0, -1]].all()
        counts = _uncompressed(m)
        assert rle_counts(rle["counts"]).tolist() == counts
        h, w = m.shape
        assert np.array_equal(annotation_mask({"segmentation": {"size": [h, w], "counts": counts}}, h, w), m.astype(bool))


@pytest.mark.parametrize("counts, why", [
    ("0p0", "characters outside '0'..'o'"), ("0\x7f", "characters outside '0'..'o'"),
    ("03P", "ends mid-value"),  # P: a continuation bit, then nothing
    (_compressed([3, 2, 3]), "cover 8 pixels"), (_compressed([3, 3, 4]), "cover 10 pixels"),
    (_compressed([5, -1, 5]), "with 1 negative runs"),
])
def test_malformed_rle_strings_are_refused_alike(decoder, counts, why):
    with pytest.raises(SegmentationError, match=why.replace("(", r"\(")):
        rle_crop({"size": [3, 3], "counts": counts})
    assert rle_crop({"size": [3, 3], "counts": _compressed([3, 3, 3])}).full()[:, 1].all()


def test_polygons_are_rasterised_as_pycocotools_does():
    rng = np.random.default_rng(1)
    for trial in range(300):
        h, w = int(rng.integers(5, 120)), int(rng.integers(5, 120))
        polys = [rng.uniform(-5, max(h, w) + 5, size=2 * int(rng.integers(3, 9))).round(2).tolist()
                 for _ in range(1 + trial % 3)]
        want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
        assert np.array_equal(annotation_crop({"segmentation": polys}, h, w).full(), want)
    assert annotation_crop({"segmentation": []}, 10, 20).area() == 0


def test_crop_helpers():
    m = np.zeros((30, 40), bool)
    m[5:9, 10:12] = True
    m[20, 30] = True
    crop = MaskCrop.from_full(m)
    assert (crop.y0, crop.x0, crop.y1, crop.x1) == (5, 10, 21, 31)
    assert np.array_equal(crop.full(), m) and crop.area() == 9
    grown = crop.padded(7)
    assert (grown.y0, grown.x0, grown.y1, grown.x1) == (0, 3, 28, 38) and np.array_equal(grown.full(), m)
    other = MaskCrop.from_full(np.eye(30, 40, dtype=bool))
    assert np.array_equal(MaskCrop.union([crop, other, MaskCrop.empty((30, 40))]).full(), m | np.eye(30, 40, dtype=bool))
    assert MaskCrop.from_full(np.zeros((3, 4), bool)).area() == 0


@pytest.mark.parametrize("pixels", [1, 3, 6])
def test_dilating_a_crop_equals_dilating_the_frame(pixels):
    import cv2

    rng = np.random.default_rng(pixels)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    for m in _masks(rng, 100):
        want = cv2.dilate(m, k).astype(bool)  # whole frame, OpenCV's own border handling
        assert np.array_equal(dilate(MaskCrop.from_full(m), pixels).full(), want)


@pytest.mark.parametrize("fill", FILLS)
def test_fills_on_crops_equal_fills_on_frames(fill):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for m in list(_masks(np.random.default_rng(5), 40)):
        m = m[:50, :75].astype(bool)  # placed at (10, 5): some touch the bottom and right borders
        h, w = m.shape
        frame = np.zeros((60, 80), bool)
        frame[10 : 10 + h, 5 : 5 + w] = m
        box = [5.0, 10.0, float(w), float(h)]
        a_img, a_changed = occlude(img, frame, box, fill, np.random.default_rng(9), dilate_px=2)
        b_img, b_changed = occlude(img, MaskCrop.from_full(frame), box, fill, np.random.default_rng(9), dilate_px=2)
        assert isinstance(a_changed, np.ndarray) and isinstance(b_changed, MaskCrop)
        assert np.array_equal(a_img, b_img) and np.array_equal(a_changed, b_changed.full())
        assert np.array_equal(a_img[~a_changed], img[~a_changed])  # nothing outside the region changes


def test_bilevel_png_of_a_crop_is_the_png_of_its_frame():
    from vlmforge.curation.images import bilevel_png

    rng = np.random.default_rng(6)
    for m in _masks(rng, 200):
        full = m.astype(bool)
        assert bilevel_png(MaskCrop.from_full(full)) == bilevel_png(full)
