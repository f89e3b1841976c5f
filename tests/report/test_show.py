"""Contact sheets: geometry, the occlusion triptych, deterministic choice by SQL filter, any build."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlmforge.errors import UserError
from vlmforge.report.show import OUTLINE, SheetLayout, choose_samples, contact_sheet, load_sample, panels


def _red(region: Image.Image) -> int:
    a = np.asarray(region).astype(int)
    return int(((a[..., 0] == OUTLINE[0]) & (a[..., 1] == OUTLINE[1]) & (a[..., 2] == OUTLINE[2])).sum())


def test_occlusion_sheet_is_a_triptych_grid_of_the_expected_size(occ_build):
    layout = SheetLayout(thumb=100)
    sheet = contact_sheet(occ_build, n=5, layout=layout)
    # cell: 3 panels of 100 px + 2 gaps of 4 = 308 wide; 16 title + 100 + 4 caption lines of 15 = 176 high.
    # 2 columns, 3 rows: width 8 + 2 * (308 + 8) = 640; height 28 + 8 + 3 * (176 + 8) = 588
    assert sheet.size == (640, 588)
    a = np.asarray(sheet).astype(float)
    assert a.std() > 30  # not blank
    # first cell: original (x 8..108), mask (112..212), occluded (216..316), panels from y 28 + 8 + 16 = 52
    top = 52
    original = sheet.crop((8, top, 108, top + 100))
    mask = sheet.crop((112, top, 212, top + 100))
    occluded = sheet.crop((216, top, 316, top + 100))
    assert _red(mask) > 20 and _red(original) == 0 and _red(occluded) == 0
    # the occluded panel differs from the original only inside the hidden box (painted grey)
    diff = np.abs(np.asarray(original).astype(int) - np.asarray(occluded).astype(int)).sum(axis=2) > 40
    ys, xs = np.nonzero(diff)
    row = choose_samples(occ_build, n=1)[0]
    x, y, w, h = load_sample(occ_build, row)["json"]["box"]
    scale = 100 / 480  # 480x360 fitted into 100x100: 100x75 at y offset 12
    assert abs(xs.min() - x * scale) <= 2 and abs(xs.max() - (x + w) * scale) <= 2
    assert abs(ys.min() - (12 + y * scale)) <= 2 and abs(ys.max() - (12 + (y + h) * scale)) <= 2


def test_choice_is_deterministic_and_filtered_by_sql(occ_build):
    a = [r["key"] for r in choose_samples(occ_build, n=10)]
    assert a == [r["key"] for r in choose_samples(occ_build, n=10)]
    assert sorted(a) == sorted(r[0] for r in occ_build.sql("SELECT key FROM samples").fetchall())
    assert a != [r["key"] for r in choose_samples(occ_build, n=10, seed=1)]
    fridges = choose_samples(occ_build, where="label = 'refrigerator'", n=16)
    assert len(fridges) == 3 and {r["label"] for r in fridges} == {"refrigerator"}
    one = io.BytesIO()
    contact_sheet(occ_build, where="label = 'refrigerator'", layout=SheetLayout(thumb=64)).save(one, "PNG")
    two = io.BytesIO()
    contact_sheet(occ_build, where="label = 'refrigerator'", layout=SheetLayout(thumb=64)).save(two, "PNG")
    assert one.getvalue() == two.getvalue()
    for bad in ("no_such_column > 1", "1=1; DROP TABLE samples"):
        with pytest.raises(UserError):
            choose_samples(occ_build, where=bad)
    with pytest.raises(UserError, match="no sample matches"):
        contact_sheet(occ_build, where="label = 'zebra'")
    # Before: a condition ending in an SQL comment commented out the rest of the query ("does not parse")
    assert choose_samples(occ_build, where="label = 'refrigerator' -- the fridges", n=16) == fridges


def test_panels_without_the_original(occ_build):
    sample = load_sample(occ_build, choose_samples(occ_build, n=1)[0])
    sample.pop("orig.jpg")
    assert [t for t, _ in panels(sample, 50)] == ["mask", "occluded"]
    sample.pop("mask.png")
    assert [t for t, _ in panels(sample, 50)] == ["image"]


def test_any_build_and_the_cli(copy_build, tmp_path):
    out = tmp_path / "sheet.png"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "show", str(copy_build.path), "--n", "6",
                        "--thumb", "80", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    # one panel per cell (80 wide, 16 + 80 + 60 high); 4 columns, 2 rows:
    # width 8 + 4 * (80 + 8) = 360; height 28 + 8 + 2 * (156 + 8) = 364
    assert img.size == (360, 364)
    assert np.asarray(img.convert("L")).std() > 30
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "show", str(copy_build.path), "--where", "nope(",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_an_out_file_pillow_cannot_write_is_one_error_line(copy_build, tmp_path):
    """Before: an unknown suffix was a ValueError traceback after every sample was drawn."""
    for name in ("sheet.gif2", "sheet", "sheet.psd"):
        r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "show", str(copy_build.path), "--n", "2",
                            "--out", str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("error: --out") and ".png or .jpg" in r.stderr
        assert not (tmp_path / name).exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "show", str(copy_build.path), "--n", "2",
                        "--out", str(blocker / "sheet.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error: cannot write")
    out = tmp_path / "new" / "Sheet.JPG"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "show", str(copy_build.path), "--n", "2",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and Image.open(out).format == "JPEG"


def test_a_damaged_sample_is_one_error_line(copy_build, tmp_path):
    """Before: an image that does not decode was Pillow's OSError traceback, a json that does not parse a
    JSONDecodeError, and a manifest offset pointing at another sample drew that sample silently."""
    import shutil

    from vlmforge.manifests.read import open_build

    b = tmp_path / "b"
    shutil.copytree(copy_build.path, b)
    build = open_build(b)
    row = choose_samples(build, n=1)[0]
    shard = b / row["shard"]
    raw = bytearray(shard.read_bytes())
    members = {}
    pos = row["offset"]
    while pos < row["offset"] + row["sample_bytes"]:
        name = raw[pos:pos + 100].split(b"\0", 1)[0].decode()
        size = int(raw[pos + 124:pos + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        members[name.split(".", 1)[1]] = pos + 512
        pos += 512 + size + (-size % 512)
    good = bytes(raw)
    raw[members["jpg"] + 200:members["jpg"] + 2200] = bytes(2000)
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"sample {row['key']}: its jpg cannot be decoded"):
        contact_sheet(build, where=f"key = '{row['key']}'")
    raw = bytearray(good)
    raw[members["json"]] = ord("#")
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"sample {row['key']} in {row['shard']}: its json does not parse"):
        contact_sheet(build, where=f"key = '{row['key']}'")
    shard.write_bytes(good)
    wrong = dict(row, key="someone-else")
    with pytest.raises(UserError, match="holds no sample someone-else at byte"):
        load_sample(build, wrong)
    shard.unlink()  # before: FileNotFoundError traceback from show, report and the analyses
    with pytest.raises(UserError, match=f"cannot read {row['shard']} of .*the build is damaged"):
        contact_sheet(build, where=f"key = '{row['key']}'")


def test_more_columns_than_samples_leave_no_blank_columns(copy_build):
    """Before: --cols 50 with 3 samples drew a sheet 50 cells wide, 47 of them blank."""
    layout = SheetLayout(thumb=40)
    assert contact_sheet(copy_build, n=3, cols=50, layout=layout).size == contact_sheet(copy_build, n=3, cols=3, layout=layout).size


def test_multiple_choice_captions_show_options_and_gold():
    from vlmforge.report.show import caption

    doc = {"question": "What is the main object?", "options": ["cat", "dog", "bus"], "answer": "B",
           "conversations": [{"from": "human", "value": "<image>\nWhat is the main object?\nA. cat\nB. dog\nC. bus"},
                             {"from": "gpt", "value": "B"}]}
    parts = caption({"key": "k", "split": "test", "label": "dog"}, doc)
    assert "A. cat  B. dog  C. bus" in parts and "gold: B" in parts
    assert not any(p.startswith("A: ") for p in parts)
    # the options come before the question: a long question (occlusion mcqa) is what gets cut short
    assert parts.index("gold: B") < parts.index("Q: What is the main object?")


def test_a_word_wider_than_the_cell_is_cut_into_lines_that_fit():
    """Before: a long key (imagefolder: train-cup-000000102960_275-8bc9836a) was drawn on one line, over
    the next cell's caption."""
    from vlmforge.report.show import font, wrap

    fnt, key = font(12), "train-refrigerator-000000103515_323-f273a52f"
    width = int(fnt.getlength(key) / 3)
    lines = wrap([f"{key} (train)"], fnt, width, 10)
    assert len(lines) >= 3 and all(fnt.getlength(line) <= width for line in lines), lines
    assert "".join(lines).replace(" ", "") == f"{key}(train)"  # cut, nothing lost
    short = int(fnt.getlength("a short caption")) - 1
    assert wrap(["a short caption"], fnt, short, 10) == ["a short", "caption"]  # words that fit still wrap whole
    assert wrap(["key"], fnt, 1, 10) == ["k", "e", "y"]  # narrower than one character: one per line, and an end


def test_a_small_image_fills_its_panel_and_its_mask_stays_on_it():
    """Before: a 32-pixel image (model-ready builds at a small --size, cut-out objects) was drawn 32
    pixels wide in the middle of a 96-pixel panel."""
    from vlmforge.report.show import BACKDROP, fit, outline_mask

    img = Image.new("RGB", (32, 24), (255, 255, 255))
    shown = np.asarray(fit(img, 96))
    ys, xs = np.nonzero((shown != BACKDROP).any(axis=2))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (0, 95, 12, 83)  # 96x72, centred
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (0, 0, 16, 24))  # the left half
    red = np.argwhere((np.asarray(outline_mask(img, mask, 96)) == OUTLINE).all(axis=2))
    # the outline straddles the mask border by a pixel
    assert len(red) and red[:, 1].max() <= 49 and red[:, 0].min() >= 11 and red[:, 0].max() <= 84


def test_a_sheet_too_large_to_draw_is_one_error_line(copy_build, monkeypatch):
    """Before: --n 400 --thumb 1024 drew a 4136 x 110800 sheet: 3.6 GB of memory, a minute, a 117 MB PNG."""
    from vlmforge.report import show

    drawn = []
    monkeypatch.setattr(show, "MAX_SHEET_PIXELS", 1_000_000)
    monkeypatch.setattr(show, "fit", lambda img, size: drawn.append(size) or Image.new("RGB", (size, size)))
    with pytest.raises(UserError, match=r"would be 1,064 x 1,396 pixels; lower --n or --thumb"):
        contact_sheet(copy_build, n=16, layout=SheetLayout(thumb=256))  # 4 x 4 cells of 256 px
    assert 256 not in drawn  # refused before any panel was drawn at full size
    assert contact_sheet(copy_build, n=4, layout=SheetLayout(thumb=256)).size == (1064, 376)


def test_a_model_ready_build_outlines_the_mask_where_the_object_is(occ_build, tmp_path):
    """Before: a model-ready build keeps the original's mask.png but stores the image padded to a square
    and resized; the mask was stretched over the padded image, its outline off the hidden object."""
    import vlmforge

    ready = vlmforge.build("model-ready", "build", out=tmp_path, source_options={"path": str(occ_build.path)}, size=96)
    row = choose_samples(ready, n=1)[0]
    sample = load_sample(ready, row)
    sample.pop("orig.jpg")  # as an occlusion build made without --keep-original
    x, y, w, h = sample["json"]["box"]
    assert (row["width"], row["height"]) == (96, 96) and sample["json"]["orig_width"] == 480
    # 480x360 padded to 480x480 (60 rows above), then scaled by 96 / 480
    want = (0.2 * x, 0.2 * (y + 60), 0.2 * (x + w), 0.2 * (y + 60 + h))
    [(name, shown), _] = panels(sample, 96)
    ys, xs = np.nonzero((np.asarray(shown) == OUTLINE).all(axis=2))
    assert name == "mask" and len(xs)
    got = (xs.min(), ys.min(), xs.max(), ys.max())
    assert all(abs(g - e) <= 2 for g, e in zip(got, want)), (got, want)
