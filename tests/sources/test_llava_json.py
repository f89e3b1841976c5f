"""LLaVA JSON: the streaming reader, order-independent ids, rejects, conversion to RGB JPEG."""

import io
import json
import random
import tracemalloc

import pytest
from PIL import Image

import vlmforge
from vlmforge.errors import SourceError
from vlmforge.sources.jsonstream import iter_json_array
from vlmforge.sources.llava_json import scan

from tests.derived_data import llava_records, write_json


def test_reader_matches_json_load_across_block_edges(tmp_path):
    doc = [{"id": "é€😀", "v": [1, 2.5e-3, None, True, False, "x\\\"y\n"]}, 12345, "tail ünïcødé", [], {},
           -7, {"deep": [[["a"]]]}, 0.125]
    text = "\ufeff  [ " + " ,\n\t".join(json.dumps(x, ensure_ascii=False) for x in doc) + "  ]  \n"
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    raw = path.read_bytes()
    for block in (1, 3, 7, 64, 1 << 20):
        items = list(iter_json_array(path, block=block))
        assert [x for x, _, _ in items] == doc
        assert [json.loads(raw[s:e]) for _, s, e in items] == doc  # byte spans are exact
    (tmp_path / "e.json").write_text("[]")
    assert list(iter_json_array(tmp_path / "e.json")) == []


@pytest.mark.parametrize("text, message", [
    ('{"id": 1}', "must be a JSON list"),
    ('[{"id": 1}, {"id": 2', "invalid JSON|ends inside"),
    ('[{"id": 1} {"id": 2}]', "expected ','"),
    ('[{"id": 1}, ]', "invalid JSON"),
    ('[{"id": 1}', "ends inside"),
])
def test_reader_errors_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        list(iter_json_array(path, block=4))


def test_a_byte_that_is_not_utf8_is_named_where_it_is(tmp_path):
    """Before: 'not UTF-8 text near byte 0' whatever the byte's place in the first block."""
    raw = '[{"id": "é€"}, {"id": "ab'.encode() + b"\xff" + b'"}]'
    at = raw.index(b"\xff")
    path = tmp_path / "latin.json"
    path.write_bytes(raw)
    for block in (1, 2, 5, 1 << 20):  # the byte alone in its block, after a split character, or in the first
        with pytest.raises(SourceError, match=f"not UTF-8 text at byte {at}:"):
            list(iter_json_array(path, block=block))


@pytest.mark.parametrize("text", ['[{"id": 1}]\n[{"id": 2}]\n', '[]x', '[{"id": 1}] , {"id": 2}', '[1,2]]'])
def test_what_follows_the_list_is_not_dropped_silently(tmp_path, text):
    """Before: items after the list's closing ']' (e.g. two lists appended into one file) were dropped
    without a word; json.load refuses such a file ('Extra data')."""
    path = tmp_path / "two.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        json.loads(text)
    for block in (1, 3, 1 << 20):
        with pytest.raises(SourceError, match="something follows the list's closing"):
            list(iter_json_array(path, block=block))
    path.write_text('[{"id": 1}]  \n\t')
    assert [x for x, _, _ in iter_json_array(path, block=3)] == [{"id": 1}]


def test_reader_memory_stays_bounded(tmp_path):
    recs = llava_records(6000)
    path = write_json(tmp_path / "big.json", recs)
    size = path.stat().st_size
    block = 1 << 15
    tracemalloc.start()
    n = sum(1 for _ in iter_json_array(path, block=block))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Memory follows the block size (the text of a block or two), not the file's size.
    assert n == 6000 and size > 30 * block and peak < 8 * block


def test_ids_do_not_depend_on_record_order(tmp_path):
    recs = llava_records(40, duplicate_every=4)
    recs.append(dict(recs[-1]))  # an exact copy, id and all
    recs.append({"conversations": [{"from": "human", "value": "no id"}, {"from": "gpt", "value": "ok"}]})
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    by_content = []
    for order, name in ((recs, "a.json"), (shuffled, "b.json")):
        path = write_json(tmp_path / name, order)
        idx = scan(path)
        assert len(set(idx.ids)) == len(order)  # every record has its own id
        by_content.append(sorted((json.dumps(r, sort_keys=True), i) for r, i in zip(order, idx.ids)))
    assert by_content[0] == by_content[1]
    ids = [i for _, i in by_content[0]]
    assert "000000" in ids and any(i.startswith("noid#") for i in ids) and any(i.count("#") == 2 for i in ids)


def _image(mode: str, fmt: str, **save) -> bytes:
    colour = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "CMYK": (0, 200, 200, 0), "P": 5, "L": 90}[mode]
    buf = io.BytesIO()
    Image.new(mode, (16, 12), colour).save(buf, format=fmt, **save)
    return buf.getvalue()


def test_images_become_rgb_jpeg_and_missing_ones_are_rejects(tmp_path):
    files = {
        "coco/rgb.jpg": _image("RGB", "JPEG"),
        "coco/cmyk.jpg": _image("CMYK", "JPEG"),
        "gqa/photo.png": _image("RGB", "PNG"),
        "gqa/alpha.png": _image("RGBA", "PNG"),
        "vg/palette.png": _image("P", "PNG"),
        "vg/anim.gif": _image("P", "GIF"),
        "ocr_vqa/grey.jpg": _image("L", "JPEG"),
    }
    recs = []
    for i, (rel, data) in enumerate(sorted(files.items())):
        (tmp_path / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "img" / rel).write_bytes(data)
        recs.append({"id": f"r{i}", "image": rel, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                    {"from": "gpt", "value": rel}]})
    recs.append({"id": "gone", "image": "coco/missing.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                              {"from": "gpt", "value": "A"}]})
    recs.append({"id": "broken", "conversations": "not a list"})
    path = write_json(tmp_path / "llava.json", recs)
    opts = {"json": str(path), "image_root": str(tmp_path / "img")}
    b = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options=opts)
    assert dict(b.sql("SELECT source_id, reason FROM rejects").fetchall()) == {"gone": "missing_image", "broken": "invalid_record"}
    formats = {}
    for s in b.samples():
        rel = s["json"]["conversations"][1]["value"]
        assert set(s) == {"__key__", "jpg", "json"}
        im = Image.open(io.BytesIO(s["jpg"]))
        assert im.format == "JPEG" and im.mode in ("RGB", "L")
        formats[rel] = b.sql(f"SELECT original_format FROM samples WHERE key = '{s['__key__']}'").fetchall()[0][0]
        if rel in ("coco/rgb.jpg", "ocr_vqa/grey.jpg"):
            assert s["jpg"] == files[rel]  # plain JPEGs are stored as they are
        else:
            assert im.mode == "RGB"
    assert formats == {"coco/rgb.jpg": "JPEG", "coco/cmyk.jpg": "JPEG", "gqa/photo.png": "PNG", "gqa/alpha.png": "PNG",
                       "vg/palette.png": "PNG", "vg/anim.gif": "GIF", "ocr_vqa/grey.jpg": "JPEG"}
    # Alpha is composited on white: the half-transparent red becomes pink, not dark red.
    alpha = next(s for s in b.samples() if s["json"]["conversations"][1]["value"] == "gqa/alpha.png")
    r, g, _ = Image.open(io.BytesIO(alpha["jpg"])).getpixel((8, 6))
    assert r > 220 and 130 < g < 160
    low = vlmforge.build("copy", "llava-json", out=tmp_path / "low", source_options=opts, jpeg_quality=20)
    size = lambda build: sum(len(x["jpg"]) for x in build.samples())  # noqa: E731
    assert size(low) < size(b) and low.build_id != b.build_id


def test_unusable_image_fields_are_rejects_with_stable_details(tmp_path):
    root = tmp_path / "img"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "ok.jpg").write_bytes(_image("RGB", "JPEG"))
    (root / "coco" / "notes.jpg").write_text("not an image")
    (tmp_path / "secret.jpg").write_bytes(_image("RGB", "JPEG"))
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    images = {"ok": "coco/ok.jpg", "multi": ["coco/ok.jpg", "coco/ok.jpg"], "abs": str(tmp_path / "secret.jpg"),
              "up": "../secret.jpg", "odd": 7, "text": "coco/notes.jpg"}
    path = write_json(tmp_path / "llava.json", [{"id": k, "image": v, "conversations": turns} for k, v in images.items()])
    opts = {"json": str(path), "image_root": str(root)}
    b = vlmforge.build("copy", "llava-json", out=tmp_path / "a", source_options=opts)
    assert len(b) == 3  # ok, and the absolute and ../ paths, read as LLaVA's loader reads them
    rejects = {sid: (reason, detail) for sid, reason, detail in b.sql("SELECT source_id, reason, detail FROM rejects").fetchall()}
    assert {sid: r for sid, (r, _) in rejects.items()} == {
        "multi": "multi_image", "odd": "invalid_record", "text": "corrupt_image"}
    assert rejects["text"][1].endswith("notes.jpg: not an image PIL can read")  # no memory address
    again = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options=opts)
    part = "manifest/train-000000.rejects.parquet"
    assert (b.path / part).read_bytes() == (again.path / part).read_bytes()
    # split reads the same records: rejects, not a crash.
    s = vlmforge.build("split", "llava-json", out=tmp_path / "s", source_options=opts, fraction=1.0)
    assert len(s) == 3 and s.sql("SELECT count(*) FROM rejects").fetchall() == [(3,)]


def test_a_lone_surrogate_is_an_invalid_record_not_a_crash(tmp_path):
    """Before: a caption holding the escape \\ud800 (valid JSON, no text) stopped the copy build with a
    UnicodeEncodeError traceback when its sample's json was written."""
    def text_only(rid, answer):
        return {"id": rid, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": answer}]}

    # json.dumps writes the emoji as a surrogate pair (fine) and the lone one as \ud800
    text = json.dumps([text_only("ok", "fine"), text_only("bad", "a \ud800 b"), text_only("emoji", "a \U0001f600 b")])
    path = tmp_path / "s.json"
    path.write_text(text)
    assert scan(path).invalid == {1}
    b = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options={"json": str(path), "image_root": str(tmp_path)})
    assert b.sql("SELECT source_id, reason FROM rejects").fetchall() == [("bad", "invalid_record")]
    assert sorted(r[0] for r in b.sql("SELECT source_id FROM samples").fetchall()) == ["emoji", "ok"]


def test_nan_or_infinity_is_an_invalid_record_not_a_sample_strict_readers_refuse(tmp_path):
    """Before: a record holding NaN (Python's json reads it, no JSON allows it) became a sample whose json
    member held NaN: DuckDB, browsers and other languages refuse the shard's json."""
    def rec(rid, **extra):
        return {"id": rid, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "NaN here"}], **extra}

    path = tmp_path / "n.json"
    path.write_text(json.dumps([rec("ok"), rec("nan", score=float("nan")), rec("inf", meta={"w": [1, float("-inf")]})]))
    assert scan(path).invalid == {1, 2}
    b = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options={"json": str(path), "image_root": str(tmp_path)})
    rejects = b.sql("SELECT source_id, reason, detail FROM rejects ORDER BY 1").fetchall()
    assert [(r[0], r[1]) for r in rejects] == [("inf", "invalid_record"), ("nan", "invalid_record")]
    assert all("NaN or Infinity" in r[2] for r in rejects)
    [sample] = b.samples(decode=False)  # the text 'NaN' is no number: kept
    doc = json.loads(sample["json"], parse_constant=lambda c: pytest.fail(f"{c} in a sample's json"))
    assert doc["conversations"][1]["value"] == "NaN here"


def test_image_paths_as_llava_next_and_other_tools_write_them(tmp_path):
    """Before: a list of one path was a multi_image reject, './coco/...' the sub-dataset '.', an absolute
    path's the empty string."""
    root = tmp_path / "img"
    for rel in ("gqa/images/1.jpg", "coco/train2017/2.jpg", "ocr_vqa/images/3.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_image("RGB", "JPEG"))
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    images = {"listed": ["gqa/images/1.jpg"], "dot": "./coco/train2017/2.jpg", "abs": str(root / "ocr_vqa/images/3.jpg"),
              "two": ["gqa/images/1.jpg", "coco/train2017/2.jpg"]}
    path = write_json(tmp_path / "llava.json", [{"id": k, "image": v, "conversations": turns} for k, v in images.items()])
    b = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options={"json": str(path), "image_root": str(root)})
    rows = dict(b.sql("SELECT source_id, subsource FROM samples WHERE image_format = 'jpg'").fetchall())
    assert rows == {"listed": "gqa", "dot": "coco", "abs": "ocr_vqa"}
    assert b.sql("SELECT source_id, reason FROM rejects").fetchall() == [("two", "multi_image")]


def test_images_added_after_a_build_make_another_build(tmp_path):
    """Before: the fingerprint was the JSON file's alone, so after the missing images were downloaded the
    same command said 'up to date' and kept their records as missing_image rejects."""
    from vlmforge.builders.split import SplitBuilder, SplitConfig
    from vlmforge.sources.llava_json import LlavaJsonSource

    recs = [r for r in llava_records(12) if "image" in r]
    path = write_json(tmp_path / "llava.json", recs)
    (tmp_path / "coco").mkdir()
    opts = {"json": str(path), "image_root": str(tmp_path)}
    before = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options=opts)
    assert len(before) == 0 and before.sql("SELECT count(*) FROM rejects").fetchall() == [(len(recs),)]
    # A wrong or forgotten --image-root is said once, after the build, for copy and split alike.
    half = SplitBuilder(SplitConfig(fraction=0.5), LlavaJsonSource(path, tmp_path)).src
    assert half.count("train") == len(recs) // 2 and half.notes == [
        f"{len(recs)} of the file's records name an image that is not under {tmp_path} "
        "(--image-root; default: the JSON file's folder)"]
    for r in recs:
        (tmp_path / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r["image"]).write_bytes(_image("RGB", "JPEG"))
    after = vlmforge.build("copy", "llava-json", out=tmp_path / "b", source_options=opts, overwrite=True)
    assert after.build_id != before.build_id and len(after) == len(recs)
    assert LlavaJsonSource(path, tmp_path).notes == []
    (tmp_path / recs[0]["image"]).write_bytes(_image("L", "PNG"))  # replaced by another file
    assert vlmforge.build("copy", "llava-json", out=tmp_path / "c", source_options=opts).build_id != after.build_id
