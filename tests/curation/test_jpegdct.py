"""Occluders written into a JPEG's DCT coefficients (vlmforge.curation._jpegdct via occlude.py)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from vlmforge.curation.occlude import (
    FILL_RGB, coefficient_writer, occlude_coefficients, occlusion_region, read_coefficients, render_occlusion,
)
from vlmforge.curation.segmentation import MaskCrop

dct = coefficient_writer()
pytestmark = pytest.mark.skipif(dct is None, reason="vlmforge.curation._jpegdct was not built (no libjpeg headers)")


def _photo(h=240, w=320, seed=0) -> np.ndarray:
    """Smooth colour gradients plus texture, RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(h + w, 1)], -1)
    img = img + rng.normal(0, 12, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality=85, subsampling=2, progressive=False, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, "JPEG", quality=quality, subsampling=subsampling, progressive=progressive)
    return buf.getvalue()


def _blocks(coefs, ci) -> np.ndarray:
    raw, shape = coefs.blocks(ci)
    return np.frombuffer(raw, np.int16).reshape(shape + (64,))


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _crop(h, w, y0, y1, x0, x1) -> MaskCrop:
    full = np.zeros((h, w), bool)
    full[y0:y1, x0:x1] = True
    return MaskCrop.from_full(full)


def _occlude_a_box(data: bytes, box: tuple[int, int, int, int], margin: int, tolerance: int):
    """Fill the box (y0, y1, x0, x1) of a 240x320 JPEG solid: every pixel `margin` or more past it is the
    source's own, and 8 pixels in it is the fill colour. Returns (the source's pixels, the far-off mask)."""
    y0, y1, x0, x1 = box
    out = _decode(occlude_coefficients(read_coefficients(data), _crop(240, 320, *box), "solid",
                                       np.random.default_rng(0)))
    before = _decode(data)
    far = np.ones((240, 320), bool)
    far[y0 - margin : y1 + margin, x0 - margin : x1 + margin] = False
    assert np.array_equal(out[far], before[far])
    assert np.abs(out[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8] - FILL_RGB).max() <= tolerance
    return before, far


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_only_the_blocks_under_the_fill_change(subsampling):
    data = _jpeg(_photo(), subsampling=subsampling)
    src = read_coefficients(data)
    changed = _crop(240, 320, 37, 101, 53, 170)
    out = read_coefficients(occlude_coefficients(src, changed, "solid", np.random.default_rng(0)))
    for ci, (h, v) in enumerate(src.sampling):
        rx, ry = src.sampling[0][0] // h, src.sampling[0][1] // v
        a, b = _blocks(src, ci), _blocks(out, ci)
        # block rows/columns whose samples hold a covered pixel
        rows = set(range(37 // ry // 8, (101 - 1) // ry // 8 + 1))
        cols = set(range(53 // rx // 8, (170 - 1) // rx // 8 + 1))
        differ = {(int(r), int(c)) for r, c in zip(*np.nonzero((a != b).any(-1)))}
        assert differ and all(r in rows and c in cols for r, c in differ)
        # every block outside the occluder's block range keeps its coefficients exactly
        outside = np.ones(a.shape[:2], bool)
        outside[min(rows) : max(rows) + 1, min(cols) : max(cols) + 1] = False
        assert np.array_equal(a[outside], b[outside])
        assert src.quant(ci) == out.quant(ci)  # the file's own tables


@pytest.mark.parametrize("sampling", ["411", "440"])
def test_other_samplings_and_restart_markers(sampling):
    """4:1:1 (a chroma sample for four pixels of a row) and 4:4:0 (for two of a column), with restart
    markers in the source: away from the occluder every pixel is the source's own, under it the fill."""
    bgr = np.ascontiguousarray(_photo(seed=2)[:, :, ::-1])
    factor = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{sampling}")
    data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor,
                                      cv2.IMWRITE_JPEG_RST_INTERVAL, 3])[1].tobytes()
    assert read_coefficients(data).sampling[0] == {"411": (4, 1), "440": (1, 2)}[sampling]
    _occlude_a_box(data, (61, 131, 45, 203), margin=32, tolerance=6)


def test_pixels_away_from_the_occluder_are_the_sources_own_and_under_it_the_fill():
    data = _jpeg(_photo(), quality=90)
    # one 16-pixel MCU past the occluder's box: chroma upsampling may blend its neighbours
    before, far = _occlude_a_box(data, (40, 120, 64, 200), margin=16, tolerance=4)
    # the re-encoded path would not keep them: quality 95 rewrites every block
    ok, jpg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert not np.array_equal(_decode(jpg.tobytes())[far], before[far])


def test_a_partly_covered_block_keeps_its_uncovered_pixels_close():
    data = _jpeg(_photo(), quality=95, subsampling=0)
    src = read_coefficients(data)
    changed = _crop(240, 320, 100, 132, 100, 132)  # (100 % 8 = 4): every edge block is half covered
    out = _decode(occlude_coefficients(src, changed, "solid", np.random.default_rng(0)))
    before = _decode(data)
    ring = np.zeros((240, 320), bool)
    ring[96:136, 96:136] = True
    ring[100:132, 100:132] = False
    assert np.abs(out[ring] - before[ring]).mean() < 3
    inside = np.abs(out[100:132, 100:132] - FILL_RGB)
    assert inside.mean() < 2 and inside.max() <= 12  # quantisation rings a little along the sharp edge


def test_blocks_fill_in_coefficients_matches_the_pixel_path_it_replaces():
    rgb = _photo(seed=3)
    data = _jpeg(rgb, quality=92)
    mask = _crop(240, 320, 50, 170, 80, 260)
    box = [80, 50, 180, 120]
    changed = occlusion_region(mask, box, "blocks", np.random.default_rng(7))
    via_coefs = _decode(occlude_coefficients(read_coefficients(data), changed, "blocks", np.random.default_rng(7)))
    painted = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    render_occlusion(painted, changed, "blocks", box, np.random.default_rng(7), color=FILL_RGB[::-1])
    via_pixels = _decode(cv2.imencode(".jpg", painted, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    hit = changed.full()
    inner = cv2.erode(hit.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)
    assert inner.sum() > 500
    assert np.abs(via_coefs[inner] - via_pixels[inner]).mean() < 3
    assert np.abs(via_coefs - via_pixels).mean() < 2


def test_noise_fill_paints_the_values_the_pixel_path_draws():
    data = _jpeg(_photo(), quality=95, subsampling=0)
    changed = _crop(240, 320, 80, 160, 80, 240)
    out = _decode(occlude_coefficients(read_coefficients(data), changed, "noise", np.random.default_rng(5)))
    painted = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    render_occlusion(painted, changed, "noise", [80, 80, 160, 80], np.random.default_rng(5))
    want = painted[:, :, ::-1].astype(int)
    region = out[88:152, 88:232] - want[88:152, 88:232]
    assert np.abs(region).mean() < 12  # per-pixel noise through 4:4:4 quality-95 quantisation
    assert np.corrcoef(out[88:152, 88:232].ravel(), want[88:152, 88:232].ravel())[0, 1] > 0.9


def test_the_source_coefficients_are_left_as_they_were_and_output_is_deterministic():
    data = _jpeg(_photo())
    src = read_coefficients(data)
    before = [_blocks(src, ci).copy() for ci in range(3)]
    changed = _crop(240, 320, 10, 90, 10, 90)
    first = occlude_coefficients(src, changed, "blocks", np.random.default_rng(1))
    assert all(np.array_equal(b, _blocks(src, ci)) for ci, b in enumerate(before))
    assert occlude_coefficients(src, changed, "blocks", np.random.default_rng(1)) == first
    assert occlude_coefficients(read_coefficients(data), changed, "blocks", np.random.default_rng(1)) == first


def test_an_empty_occluder_rewrites_the_same_pixels():
    data = _jpeg(_photo())
    src = read_coefficients(data)
    same = src.occlude(np.zeros((0, 0), np.uint8), 0, 0, (1, 2, 3))
    assert np.array_equal(_decode(same), _decode(data))


@pytest.mark.parametrize("h,w", [(23, 37), (17, 9), (1, 1)])
def test_odd_sizes_and_a_fill_up_to_the_edge(h, w):
    data = _jpeg(_photo(h, w))
    src = read_coefficients(data)
    changed = _crop(h, w, h // 2, h, w // 2, w)
    out = _decode(occlude_coefficients(src, changed, "solid", np.random.default_rng(0)))
    assert out.shape == (h, w, 3)
    assert np.abs(out[h - 1, w - 1] - FILL_RGB).max() <= 20


def test_progressive_jpegs_are_read_and_written_baseline():
    data = _jpeg(_photo(), progressive=True)
    src = read_coefficients(data)
    assert src is not None and src.progressive
    out = occlude_coefficients(src, _crop(240, 320, 0, 16, 0, 16), "solid", np.random.default_rng(0))
    assert not read_coefficients(out).progressive
    assert np.array_equal(_decode(out)[32:, 32:], _decode(data)[32:, 32:])


def test_files_it_cannot_edit_are_none_for_the_pixel_path():
    assert read_coefficients(_jpeg(_photo(), mode="L")) is None  # greyscale: one component
    assert read_coefficients(_jpeg(_photo(), mode="CMYK")) is None
    assert read_coefficients(b"not a jpeg") is None
    assert read_coefficients(_jpeg(_photo())[:300]) is None  # ends inside the headers
    buf = io.BytesIO()
    Image.fromarray(_photo()).save(buf, "PNG")
    assert read_coefficients(buf.getvalue()) is None


def test_bad_arguments_are_errors_not_crashes():
    src = read_coefficients(_jpeg(_photo()))
    with pytest.raises(ValueError, match="does not fit"):
        src.occlude(np.ones((10, 10), np.uint8), 235, 0, (0, 0, 0))
    with pytest.raises(ValueError, match="2-D"):
        src.occlude(np.ones((10, 10, 2), np.uint8), 0, 0, (0, 0, 0))
    with pytest.raises(ValueError, match="0..255"):
        src.occlude(np.ones((10, 10), np.uint8), 0, 0, (0, 300, 0))
    with pytest.raises(ValueError, match="shape"):
        src.occlude(np.ones((10, 10), np.uint8), 0, 0, np.zeros((10, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="reads the pixels"):
        occlude_coefficients(src, _crop(240, 320, 0, 8, 0, 8), "blur", np.random.default_rng(0))
    with pytest.raises(dct.JpegError):
        dct.Coefficients(b"\xff\xd8\xff")


def _segments(data: bytes):
    """(offset, marker, length) of each marker segment before the first scan's data, and that scan."""
    import struct

    i, out = 2, []
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        out.append((i, marker, length))
        if marker == 0xDA:
            break
        i += 2 + length
    return out


def test_a_quantisation_table_redefined_between_scans_goes_the_pixel_way():
    """libjpeg reads such a file (each component keeps the table it was first coded with) but will not write
    it back: occlude() raised, and the build stopped with a traceback naming no file."""
    import struct

    data = _jpeg(_photo(), progressive=True)
    last = data.rfind(b"\xff\xda")
    redefined = data[:last] + b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([7] * 64) + data[last:]
    assert cv2.imdecode(np.frombuffer(redefined, np.uint8), cv2.IMREAD_COLOR) is not None
    assert dct.Coefficients(redefined).editable is False
    assert read_coefficients(redefined) is None


def test_corrupt_but_decodable_data_goes_the_pixel_way_and_its_warnings_are_kept():
    data = _jpeg(_photo(), quality=90)
    scan = _segments(data)[-1][0]
    cut = data[: scan + (len(data) - scan) // 2] + b"\xff\xd9"  # the scan ends half way: libjpeg warns, fills grey
    coefs = dct.Coefficients(cut)
    assert coefs.warnings >= 1 and read_coefficients(cut) is None
    coefs.occlude(np.ones((8, 8), np.uint8), 0, 0, (1, 2, 3))
    assert coefs.warnings >= 1  # writing does not reset what reading found


def test_coefficients_past_what_baseline_coding_holds_go_the_pixel_way():
    """A DC table remapped to larger magnitude categories decodes, without a warning, to DC values no 8-bit
    image has; libjpeg-turbo would write them back unchecked, as a file no decoder reads right."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, np.full_like(x, 128)], -1).astype(np.uint8)
    rgb[56:, 48:56], rgb[56:, 56:] = 255, 0
    data = bytearray(_jpeg(rgb, quality=100, subsampling=0))
    for at, marker, length in _segments(bytes(data)):
        if marker == 0xC4:  # in each DC table, categories 8..11 become 12..15
            j = at + 4
            while j < at + 2 + length:
                n = sum(data[j + 1 : j + 17])
                if data[j] >> 4 == 0:
                    for k in range(j + 17, j + 17 + n):
                        data[k] += 4 if 8 <= data[k] <= 11 else 0
                j += 17 + n
    coefs = dct.Coefficients(bytes(data))
    dc = _blocks(coefs, 0)[..., 0].astype(int)
    assert np.abs(dc).max() > 1024
    assert coefs.editable is False and read_coefficients(bytes(data)) is None


def test_a_thread_let_in_while_arguments_are_read_is_refused():
    """`busy` was tested before the arguments were parsed, which can run Python code (__index__) and let
    another thread start its own occlude() on the same blocks: a crash in realloc."""
    import threading
    import time

    src = read_coefficients(_jpeg(_photo(480, 640)))
    mask = np.ones((300, 300), np.uint8)
    want = src.occlude(mask, 0, 0, (9, 9, 9))

    class Slow:
        def __index__(self):
            time.sleep(0.02)  # gives the GIL away after the first check
            return 0

    got, refused = [], []

    def work():
        for _ in range(15):
            try:
                got.append(src.occlude(mask, Slow(), 0, (9, 9, 9)))
            except RuntimeError:
                refused.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got and all(g == want for g in got)
    assert src.width == 640 and src.occlude(mask, 0, 0, (9, 9, 9)) == want


# Writing by splicing: our own decoder reads a clean baseline scan, and an occluder's file keeps the
# source's entropy-coded bits for every MCU it does not change.

def _source(h, w, sampling, restart=0, seed=0) -> bytes:
    """A photo-like JPEG: PIL for 4:4:4, 4:2:2, 4:2:0; OpenCV for 4:1:1, 4:4:0 and restart markers."""
    rgb = _photo(h, w, seed)
    if sampling in ("444", "422", "420") and not restart:
        return _jpeg(rgb, quality=88, subsampling={"444": 0, "422": 1, "420": 2}[sampling])
    params = [cv2.IMWRITE_JPEG_QUALITY, 88, cv2.IMWRITE_JPEG_RST_INTERVAL, restart]
    if sampling in ("411", "440"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{sampling}")]
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), params)[1].tobytes()


def _same_coefficients(a: bytes, b: bytes) -> bool:
    ca, cb = dct.Coefficients(a, splice=False), dct.Coefficients(b, splice=False)
    return ca.warnings == cb.warnings == 0 and all(np.array_equal(_blocks(ca, ci), _blocks(cb, ci)) for ci in range(3))


def _random_occluder(rng, h, w):
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    mh, mw = int(rng.integers(1, h - y0 + 1)), int(rng.integers(1, w - x0 + 1))
    mask = (rng.random((mh, mw)) < rng.uniform(0.2, 1.0)).astype(np.uint8)
    fill = tuple(int(v) for v in rng.integers(0, 256, 3)) if rng.random() < 0.5 else \
        rng.integers(0, 256, (mh, mw, 3), dtype=np.uint8)
    return mask, y0, x0, fill


@pytest.mark.parametrize("h,w,sampling,restart", [
    (240, 320, "420", 0), (241, 333, "444", 0), (17, 9, "422", 0), (240, 320, "411", 3), (101, 77, "440", 1),
    (96, 136, "420", 5), (97, 131, "420", 0), (60, 90, "422", 0),
])
def test_a_spliced_file_holds_what_libjpeg_would_write(h, w, sampling, restart):
    """Our decoder reads the coefficients libjpeg reads; each occluder's spliced file decodes to the
    coefficients libjpeg's writer gives (MCUs after a changed one included: their DC is a difference). With
    the standard tables, no restart markers and whole MCUs it is libjpeg's file byte for byte; in an MCU
    that runs past the image's edge, the blocks wholly outside it (never shown) keep the source's values
    where libjpeg's writer makes them flat."""
    data = _source(h, w, sampling, restart, seed=h)
    ours, theirs = dct.Coefficients(data), dct.Coefficients(data, splice=False)
    assert ours.splicing and not theirs.splicing
    assert all(np.array_equal(_blocks(ours, ci), _blocks(theirs, ci)) for ci in range(3))
    rng = np.random.default_rng(h * w)
    for _ in range(8):
        mask, y0, x0, fill = _random_occluder(rng, h, w)
        spliced, written = ours.occlude(mask, y0, x0, fill), theirs.occlude(mask, y0, x0, fill)
        assert _same_coefficients(spliced, written)
        assert cv2.imdecode(np.frombuffer(spliced, np.uint8), cv2.IMREAD_COLOR) is not None
        mcu_w, mcu_h = 8 * max(f[0] for f in ours.sampling), 8 * max(f[1] for f in ours.sampling)
        if not restart and h % mcu_h == 0 and w % mcu_w == 0:
            assert spliced == written
        if restart:  # the source's restart markers are kept (libjpeg's writer drops them)
            assert spliced.count(b"\xff\xdd") == 1 and written.count(b"\xff\xdd") == 0
    assert ours.spliced == 8 and theirs.spliced == 0


def _scan(data: bytes) -> bytes:
    at, _, length = _segments(data)[-1]
    return data[at + 2 + length :]


def test_unchanged_mcus_keep_the_sources_bits_and_its_own_huffman_tables():
    data = _jpeg(_photo(240, 320, seed=5), quality=85)
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=85, optimize=True)  # tables made for this image
    optimised = buf.getvalue()
    ours = dct.Coefficients(optimised)
    # the image's last MCU, in about its own colour (optimised tables may lack the codes of a far one)
    near = (250, 250, 125)
    spliced = ours.occlude(np.ones((16, 16), np.uint8), 224, 304, near)
    written = dct.Coefficients(optimised, splice=False).occlude(np.ones((16, 16), np.uint8), 224, 304, near)
    assert ours.spliced == 1 and _same_coefficients(spliced, written)
    assert _huffman_tables(spliced) == _huffman_tables(optimised) != _huffman_tables(written)
    source, out = _scan(optimised), _scan(spliced)
    common = next(i for i, (a, b) in enumerate(zip(source, out)) if a != b)
    assert common > 0.97 * len(source)  # every MCU before the last one, as the source has it
    assert len(spliced) < len(written)


def _huffman_tables(data: bytes) -> dict[tuple[int, int], bytes]:
    """(class, id) -> counts and symbols, from every DHT segment before the scan."""
    out = {}
    for at, marker, length in _segments(data):
        j = at + 4
        while marker == 0xC4 and j < at + 2 + length:
            n = 17 + sum(data[j + 1 : j + 17])
            out[data[j] >> 4, data[j] & 15] = data[j + 1 : j + n]
            j += n
    return out


def test_an_occluder_that_needs_a_code_the_tables_lack_switches_the_image_to_the_standard_tables():
    """Optimised tables hold only the symbols their image uses: a flat image's have no code for the AC
    values a noise fill brings. The image is then coded once with the standard tables (which hold every
    symbol), and this occluder and every later one are spliced from that."""
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(buf, "JPEG", quality=90, optimize=True)
    flat = buf.getvalue()
    ours, theirs = dct.Coefficients(flat), dct.Coefficients(flat, splice=False)
    solid = ours.occlude(np.ones((8, 8), np.uint8), 0, 0, (90, 90, 90))  # its own colour: codes it has
    assert ours.spliced == 1 and _huffman_tables(solid) == _huffman_tables(flat)
    noise = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    got = ours.occlude(np.ones((40, 50), np.uint8), 10, 20, noise)
    written = theirs.occlude(np.ones((40, 50), np.uint8), 10, 20, noise)  # libjpeg: the standard tables
    assert ours.splicing and ours.spliced == 2
    assert _same_coefficients(got, written) and _huffman_tables(got) == _huffman_tables(written) != _huffman_tables(flat)
    again = ours.occlude(np.ones((8, 8), np.uint8), 0, 0, (90, 90, 90))
    assert ours.spliced == 3 and again != solid and _huffman_tables(again) == _huffman_tables(written)
    assert _same_coefficients(solid, again)
    # photos saved with optimised tables: every occluder spliced, every file what libjpeg's reads
    rng = np.random.default_rng(1)
    for seed in range(4):
        buf = io.BytesIO()
        Image.fromarray(_photo(120, 176, seed)).save(buf, "JPEG", quality=80, optimize=True)
        ours, theirs = dct.Coefficients(buf.getvalue()), dct.Coefficients(buf.getvalue(), splice=False)
        for _ in range(3):
            mask, y0, x0, fill = _random_occluder(rng, 120, 176)
            assert _same_coefficients(ours.occlude(mask, y0, x0, fill), theirs.occlude(mask, y0, x0, fill))
        assert ours.spliced == 3


def test_coding_with_the_standard_tables_ahead_of_need_writes_the_same_bytes():
    """code_standard() makes, ahead of time, the switch the first occluder needing a code the file's tables lack
    would make: every occluder's bytes are the same whether it ran or not, also where no occluder needs it."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(buf, "JPEG", quality=90, optimize=True)
    sources = [buf.getvalue()]
    for seed in range(3):
        buf = io.BytesIO()
        Image.fromarray(_photo(120, 176, seed)).save(buf, "JPEG", quality=80, optimize=True)
        sources.append(buf.getvalue())
    switched = 0
    for data in sources:
        ahead, lazy, decoding = dct.Coefficients(data), dct.Coefficients(data), dct.Coefficients(data, standard=True)
        assert ahead.code_standard() is True and ahead.code_standard() is False  # once
        assert decoding.code_standard() is False  # made as the blocks were decoded
        h, w = ahead.height, ahead.width
        # first an occluder in the image's own colour (codes it has), then ones that may need others
        args = [(np.ones((8, 8), np.uint8), 0, 0, (90, 90, 90))] + [_random_occluder(rng, h, w) for _ in range(3)]
        got = [(ahead.occlude(*a), lazy.occlude(*a), decoding.occlude(*a)) for a in args]
        assert all(a == b == c for a, b, c in got) and ahead.spliced == lazy.spliced == decoding.spliced == 4
        switched += _huffman_tables(got[-1][1]) != _huffman_tables(data)
    assert switched >= 2  # the lazy path switched too: the copy was used
    # tables that hold every code (libjpeg's standard ones): nothing to do
    for standard in (False, True):
        coefs = dct.Coefficients(_jpeg(_photo(48, 64, seed=3), quality=80), standard=standard)
        assert coefs.code_standard() is False and coefs.splicing


def test_coding_with_the_standard_tables_while_decoding_spends_no_symbol_the_blocks_do_not_need():
    """Coded as each block is decoded, the standard copy holds the bits coding the blocks would give, not the
    file's own choice of symbols: zero runs before the end of a block spent as ZRLs (16 zeros each) are
    dropped, and a block that ZRLs run to its end gets an EOB, as the lazy switch codes them."""
    eob, zrl, dc0 = "00", "01", "00"  # a luminance AC table of those two codes only; DC size 0 in the standard one
    blocks = [dc0 + eob, dc0 + zrl * 2 + eob, dc0 + zrl * 4, dc0 + zrl * 3 + eob]
    data = _zero_jpeg([(2, 2), (1, 1), (1, 1)], ac_luma=([0, 2] + [0] * 14, [0x00, 0xF0]), luma_blocks=blocks)
    plain = dct.Coefficients(data, splice=False)
    occluder = (np.ones((4, 4), np.uint8), 2, 2, (200, 30, 60))  # AC values the file's table has no code for
    lazy, decoding = dct.Coefficients(data), dct.Coefficients(data, standard=True)
    assert lazy.splicing and decoding.splicing and lazy.code_standard() and not decoding.code_standard()
    for coefs in (lazy, decoding):
        assert all(np.array_equal(_blocks(coefs, ci), _blocks(plain, ci)) for ci in range(3))
    written = [lazy.occlude(*occluder), decoding.occlude(*occluder)]
    assert written[0] == written[1] and lazy.spliced == decoding.spliced == 1
    assert _huffman_tables(written[0]) != _huffman_tables(data)  # switched to the standard tables
    assert _same_coefficients(written[0], dct.Coefficients(data, splice=False).occlude(*occluder))


def test_a_damaged_scan_is_read_by_libjpeg_as_before():
    """Bit flips, 0xFF bytes and lost bytes in the scan: our decoder either reads exactly what libjpeg reads
    (without a warning) or leaves the file to libjpeg, which warns, fails or reads it as it always did."""
    rng = np.random.default_rng(3)
    rgb = _photo(48, 64, seed=3)
    sources = [_jpeg(rgb, quality=80), _source(48, 64, "420", restart=2, seed=3)]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80, optimize=True)
    sources.append(buf.getvalue())
    read = {True: 0, False: 0}
    for data in sources:
        start = _segments(data)[-1][0]
        for _ in range(60):
            damaged = bytearray(data)
            for _ in range(int(rng.integers(1, 3))):
                i = int(rng.integers(start, len(damaged)))
                kind = int(rng.integers(0, 3))
                if kind == 0:
                    damaged[i] ^= 1 << int(rng.integers(0, 8))
                elif kind == 1:
                    damaged[i] = 0xFF
                else:
                    del damaged[i]
            try:
                theirs = dct.Coefficients(bytes(damaged), splice=False)
            except dct.JpegError:
                with pytest.raises(dct.JpegError):
                    dct.Coefficients(bytes(damaged))
                continue
            ours = dct.Coefficients(bytes(damaged))
            read[ours.splicing] += 1
            assert all(np.array_equal(_blocks(ours, ci), _blocks(theirs, ci)) for ci in range(3))
            assert ours.warnings == theirs.warnings
            if ours.splicing:
                assert theirs.warnings == 0
    assert read[True] >= 10 and read[False] >= 10  # both ways were taken


_STANDARD_DC_LUMA = ([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], list(range(12)))


def _zero_jpeg(sampling, dc_luma=_STANDARD_DC_LUMA, ac_luma=None, luma_blocks=("001010",)) -> bytes:
    """A 32x32 JPEG of all-zero blocks with any sampling factors, coded with the tables PIL writes (the
    standard ones) but the luminance DC table, which is `dc_luma` (counts of lengths 1..16, symbols), and with
    `ac_luma` the luminance AC table too. The luminance blocks' bits are `luma_blocks` in turn (a zero block in the
    standard tables: DC size 0 then EOB, '00' + '1010')."""
    import itertools
    import struct

    base = _jpeg(_photo(32, 32), subsampling=0)
    seg = lambda m, body: bytes([0xFF, m]) + struct.pack(">H", len(body) + 2) + body
    tables = [base[at : at + 2 + n] for at, m, n in _segments(base) if m == 0xDB]
    ours = (0x00, 0x10) if ac_luma else (0x00,)
    for at, m, n in _segments(base):
        if m == 0xC4 and base[at + 4] not in ours:  # every table PIL wrote but the ones given here
            tables.append(base[at : at + 2 + n])
    tables.append(seg(0xC4, bytes([0x00]) + bytes(dc_luma[0]) + bytes(dc_luma[1])))
    if ac_luma:
        tables.append(seg(0xC4, bytes([0x10]) + bytes(ac_luma[0]) + bytes(ac_luma[1])))
    hmax, vmax = max(h for h, v in sampling), max(v for h, v in sampling)
    frame = bytes([8, 0, 32, 0, 32, 3]) + b"".join(bytes([c + 1, h << 4 | v, min(c, 1)])
                                                   for c, (h, v) in enumerate(sampling))
    scan = bytes([3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0])
    luma = itertools.cycle(luma_blocks)
    # a zero chrominance block: '00' + '00' in the standard chrominance tables
    bits = "".join("".join(next(luma) for _ in range(sampling[0][0] * sampling[0][1]))
                   + "0000" * sum(h * v for h, v in sampling[1:])
                   for _ in range(-(-32 // (8 * hmax)) * -(-32 // (8 * vmax))))
    bits += "1" * (-len(bits) % 8)
    data = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    return b"\xff\xd8" + b"".join(tables) + seg(0xC0, frame) + seg(0xDA, scan) + data + b"\xff\xd9"


def test_files_libjpeg_refuses_our_decoder_refuses_too():
    """Our decoder took three kinds of file libjpeg refuses (found by a review's fuzzing): occluding one
    wrote a JPEG no decoder reads, where the build used to reject the source."""
    counts, symbols = _STANDARD_DC_LUMA
    fine = _zero_jpeg([(2, 2), (1, 1), (1, 1)])
    assert dct.Coefficients(fine).splicing and _same_coefficients(
        dct.Coefficients(fine).occlude(np.ones((4, 4), np.uint8), 0, 0, (1, 2, 3)),
        dct.Coefficients(fine, splice=False).occlude(np.ones((4, 4), np.uint8), 0, 0, (1, 2, 3)))
    refused = {
        "18 blocks in an MCU": _zero_jpeg([(4, 4), (1, 1), (1, 1)]),
        "a DC symbol above 15 (unused)": _zero_jpeg([(2, 2), (1, 1), (1, 1)], (counts[:15] + [1], symbols + [0x20])),
        "an all-ones code (unused)": _zero_jpeg([(2, 2), (1, 1), (1, 1)], (counts[:8] + [2] + counts[9:], symbols + [12])),
    }
    for what, data in refused.items():
        with pytest.raises(dct.JpegError):
            dct.Coefficients(data, splice=False)
        with pytest.raises(dct.JpegError):
            dct.Coefficients(data)
        assert read_coefficients(data) is None, what


def test_the_jfif_marker_is_the_one_libjpeg_reads():
    """The last JFIF APP0 of 14 bytes or more gives the density, as libjpeg reads (and its writer copies)."""
    data = _jpeg(_photo(32, 48))
    dpi300 = b"\xff\xe0\x00\x10JFIF\x00\x01\x02\x01\x01\x2c\x01\x2c\x00\x00"
    short = b"\xff\xe0\x00\x0eJFIF\x00\x01\x02\x01\x00\x48\x00\x48"  # 12 bytes: not one libjpeg reads
    for extra in (dpi300, dpi300 + short):
        edited = data[:2] + data[2:20] + extra + data[20:]
        args = (np.ones((8, 8), np.uint8), 0, 0, (1, 2, 3))
        spliced, written = dct.Coefficients(edited).occlude(*args), dct.Coefficients(edited, splice=False).occlude(*args)
        assert spliced[:20] == written[:20] and spliced[2:20] == dpi300
