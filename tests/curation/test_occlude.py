import numpy as np
import pytest

from vlmforge.curation import occlude as occlude_module
from vlmforge.curation.occlude import FILL_RGB, block_region, block_size, occlude, occlude_with_blocks
from vlmforge.curation.segmentation import MaskCrop


def _scene():
    img = np.full((120, 160, 3), 200, np.uint8)
    mask = np.zeros((120, 160), bool)
    mask[30:90, 40:130] = True  # a 90 x 60 object
    return img, mask, [40.0, 30.0, 90.0, 60.0]


def test_block_size_follows_the_paper():
    assert block_size(90, 60) == (20, 4)  # P = min(w,h)//3 = 20, stride int(sqrt(20)) = 4
    assert block_size(8, 100) == (4, 2)  # floor at 4
    assert block_size(300, 300) == (100, 10)


def test_blocks_colour_size_and_locality():
    img, mask, box = _scene()
    out, painted = occlude_with_blocks(img, mask, box, np.random.default_rng(0))
    patch, _ = block_size(box[2], box[3])
    assert set(map(tuple, out[painted].reshape(-1, 3))) == {FILL_RGB}
    assert (out[~painted] == 200).all()  # nothing else changes
    # blocks are centred on grid points inside the mask: they stay within half a patch of it
    ys, xs = np.nonzero(painted)
    assert ys.min() >= 30 - patch // 2 and ys.max() < 90 + patch // 2
    assert xs.min() >= 40 - patch // 2 and xs.max() < 130 + patch // 2
    assert painted[mask].mean() > 0.8  # the object is mostly hidden
    # each painted run along a row is made of whole patches: at least `patch` wide
    row = painted[60]
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0])))[::2]
    assert runs.min() >= patch


def test_blocks_are_deterministic_per_seed():
    img, mask, box = _scene()
    a = occlude_with_blocks(img, mask, box, np.random.default_rng(7))[1]
    b = occlude_with_blocks(img, mask, box, np.random.default_rng(7))[1]
    c = occlude_with_blocks(img, mask, box, np.random.default_rng(8))[1]
    assert (a == b).all() and not (a == c).all()


def test_compiled_blocks_are_numpys_blocks(monkeypatch):
    """The C kernel (_masks.block_squares) paints the same squares in the same box as the numpy path, from
    the same draws, and leaves the generator where numpy leaves it."""
    if occlude_module.mask_kernels() is None:
        pytest.skip("vlmforge.curation._masks was not built")
    compiled = occlude_module.mask_kernels
    rng = np.random.default_rng(3)
    checked = 0
    for trial in range(400):
        h, w = int(rng.integers(8, 90)), int(rng.integers(8, 90))
        full = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.choice([0.1, 0.6, 1.0])
        crop = MaskCrop.from_full(full)
        box = [float(x0), float(y0), float(rng.integers(1, 3 * w)), float(rng.integers(1, 3 * h))]
        seed = int(rng.integers(1 << 30))
        got, after = [], []
        for kernels in (compiled, lambda: None):
            monkeypatch.setattr(occlude_module, "mask_kernels", kernels)
            draws = np.random.default_rng(seed)
            got.append(block_region(crop, box, draws))
            after.append(int(draws.integers(1 << 30)))
        c, n = got
        assert (c.y0, c.x0, c.pixels.shape) == (n.y0, n.x0, n.pixels.shape), trial
        assert np.array_equal(c.pixels, n.pixels), trial
        assert after[0] == after[1], trial
        checked += c.area() > 0
    assert checked > 150  # most trials paint something


@pytest.mark.parametrize("fill", ["solid", "blur", "noise", "inpaint"])
def test_other_fills_change_only_the_dilated_mask(fill):
    import cv2

    img, mask, box = _scene()
    img[50:70, 60:110] = (10, 200, 10)  # a green object to hide
    out, changed = occlude(img, mask, box, fill, np.random.default_rng(0), dilate_px=3)
    # the mask grown by 3 pixels (an elliptic 7 x 7 kernel), and nothing else, changes
    want = cv2.dilate(mask.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))).view(bool)
    assert np.array_equal(changed, want) and changed.sum() > mask.sum()
    assert (out[~changed] == img[~changed]).all()
    hidden = (out[50:70, 60:110] == (10, 200, 10)).all(axis=-1)
    assert hidden.mean() < 0.01  # the green object is gone
    if fill == "solid":
        assert set(map(tuple, out[changed].reshape(-1, 3))) == {FILL_RGB}
    if fill == "blur":  # the frame blurred at sigma min(w, h) / 4 = 15, inside the region
        assert np.array_equal(out[changed], cv2.GaussianBlur(img, (0, 0), sigmaX=15, sigmaY=15)[changed])


def test_bilevel_png_is_a_standard_one_bit_png_of_the_mask():
    import io

    from PIL import Image

    from vlmforge.curation.images import bilevel_png

    rng = np.random.default_rng(3)
    for h, w in ((1, 1), (7, 13), (40, 33)):
        mask = rng.random((h, w)) < 0.4
        im = Image.open(io.BytesIO(bilevel_png(mask)))
        im.load()  # checks the zlib stream and CRCs
        assert (im.mode, im.size) == ("1", (w, h))
        assert np.array_equal(np.asarray(im), mask)


def test_paint_matches_boolean_assignment_on_views():
    from vlmforge.curation.occlude import paint

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.random((20, 30)) < 0.3
    want = img.copy()
    want[10:30, 5:35][mask] = (9, 200, 77)
    got = img.copy()
    paint(got[10:30, 5:35], mask, (9, 200, 77))  # a strided view of a bigger image, a bool mask
    assert np.array_equal(got, want)
