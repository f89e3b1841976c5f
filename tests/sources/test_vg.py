"""Visual Genome: objects.json + image_data.json layouts, one record per object with a synset."""

import io
import json

import pytest
from PIL import Image

import vlmforge
from vlmforge.errors import UserError

from tests.derived_data import visual_genome


@pytest.fixture(scope="module")
def vg(tmp_path_factory):
    return visual_genome(tmp_path_factory.mktemp("vg"))


def test_one_record_per_object_with_box_and_class(tmp_path, vg):
    b = vlmforge.build("vg", "vg", out=tmp_path, source_options={"root": str(vg)})
    assert len(b) == 6
    assert sorted(b.sql("SELECT source_id, reason FROM rejects").fetchall()) == [("1:103", "no_synset"), ("3", "missing_image")]
    labels = {r[0] for r in b.sql("SELECT label FROM samples").fetchall()}
    assert labels == {"clock", "wall", "man", "traffic light", "dog", "cat"}
    clock = next(s for s in b.samples() if s["json"]["synset"] == "clock.n.01")
    # x=10, y=5, w=20, h=15 on a 40x30 image -> [10/40, 5/30, 30/40, 20/30]
    assert clock["json"]["conversations"][1]["value"] == "[0.25, 0.17, 0.75, 0.67] clock"
    assert clock["json"]["conversations"][0]["value"].startswith("<image>\n")
    assert clock["__key__"] == "vg_1_101" and clock["json"]["box"] == [10, 5, 20, 15]
    row = b.sql("SELECT image_id, object_id, box, synset, name FROM samples WHERE key = 'vg_2_105'").fetchall()
    assert row == [(2, 105, [20, 10, 8, 12], "traffic_light.n.01", "traffic light")]
    assert {r[0] for r in b.sql("SELECT width FROM samples").fetchall()} == {40}  # both image folders found


def test_per_image_cap_ignores_object_order_and_crop(tmp_path, vg):
    objects = json.loads((vg / "objects.json").read_text())
    a = vlmforge.build("vg", "vg", out=tmp_path / "a", source_options={"root": str(vg)}, max_objects_per_image=2)
    for entry in objects:  # reversed, and in the older layout: `id` for the image, `name` for the object
        entry["objects"].reverse()
        entry["id"] = entry.pop("image_id")
        for obj in entry["objects"]:
            obj["name"] = obj.pop("names")[0]
    objects.reverse()
    (tmp_path / "rev").mkdir()
    (tmp_path / "rev" / "objects.json").write_text(json.dumps(objects))
    b = vlmforge.build("vg", "vg", out=tmp_path / "b", max_objects_per_image=2,
                       source_options={"objects": str(tmp_path / "rev" / "objects.json"),
                                       "image_data": str(vg / "image_data.json"), "images": str(vg)})
    keys = lambda build: {r[0] for r in build.sql("SELECT key FROM samples").fetchall()}  # noqa: E731
    assert keys(a) == keys(b) and len(keys(a)) == 4
    names = lambda build: sorted(r[0] for r in build.sql("SELECT name FROM samples").fetchall())  # noqa: E731
    assert names(a) == names(b)
    c = vlmforge.build("vg", "vg", out=tmp_path / "c", source_options={"root": str(vg)}, crop=True,
                       synsets=["clock.n.01"])
    (s,) = list(c.samples())
    # margin 10% of the box: x 8..32, y 3..22 -> a 24x19 crop; the box moves with it
    assert Image.open(io.BytesIO(s["jpg"])).size == (24, 19)
    assert s["json"]["box"] == [2, 2, 20, 15]


def test_vg_feeds_subset_and_mcqa(tmp_path, vg):
    b = vlmforge.build("vg", "vg", out=tmp_path / "vg", source_options={"root": str(vg)})
    sub = vlmforge.build("subset", "build", out=tmp_path / "s", source_options={"path": str(b.path)},
                         mode="class-exclusive", fraction=0.5)
    assert len({r[0] for r in sub.sql("SELECT label FROM samples").fetchall()}) == 3
    m = vlmforge.build("mcqa", "build", out=tmp_path / "m", options=3, source_options={"path": str(b.path)})
    assert len(m) == 6
    for s in m.samples():
        assert s["json"]["options"][s["json"]["answer_index"]] == s["json"]["label"]
        assert s["json"]["synset"]


def test_unknown_answer_placeholder(tmp_path, vg):
    with pytest.raises(UserError, match=r"\{nam\}; use \{box\}, \{box_pixels\}, \{name\}, \{synset\}"):
        vlmforge.build("vg", "vg", out=tmp_path, source_options={"root": str(vg)}, answer_template="{box} {nam}")


def test_small_boxes_are_rejects(tmp_path, vg):
    objects = json.loads((vg / "objects.json").read_text())
    objects[0]["objects"].append({"object_id": 900, "x": 3, "y": 3, "w": 0, "h": 5, "names": ["pole"],
                                  "synsets": ["pole.n.01"]})
    (tmp_path / "objects.json").write_text(json.dumps(objects))
    b = vlmforge.build("vg", "vg", out=tmp_path / "out", min_box_side=2,
                       source_options={"objects": str(tmp_path / "objects.json"),
                                       "image_data": str(vg / "image_data.json"), "images": str(vg)})
    rejects = b.sql("SELECT source_id, reason, detail FROM rejects WHERE reason = 'box_too_small'").fetchall()
    assert rejects == [("1:900", "box_too_small", "box 0x5 pixels is below --min-box-side 2")]
    assert len(b) == 6


def test_boxes_reaching_outside_are_clipped(tmp_path, vg):
    objects = json.loads((vg / "objects.json").read_text())
    objects[0]["objects"] += [  # image 1 is 40x30
        {"object_id": 901, "x": 30, "y": -5, "w": 20, "h": 20, "names": ["kite"], "synsets": ["kite.n.03"]},
        {"object_id": 902, "x": 39, "y": 10, "w": 8, "h": 8, "names": ["pole"], "synsets": ["pole.n.01"]}]
    (tmp_path / "objects.json").write_text(json.dumps(objects))
    opts = {"objects": str(tmp_path / "objects.json"), "image_data": str(vg / "image_data.json"), "images": str(vg)}
    b = vlmforge.build("vg", "vg", out=tmp_path / "out", min_box_side=2, source_options=opts)
    kite = next(s["json"] for s in b.samples() if s["__key__"] == "vg_1_901")
    # x 30..50 and y -5..15 on a 40x30 image: x 30..40, y 0..15, in pixels and normalised alike
    assert kite["box"] == [30, 0, 10, 15] and kite["box_normalised"] == [0.75, 0.0, 1.0, 0.5] and kite["box_clipped"]
    assert kite["conversations"][1]["value"] == "[0.75, 0.00, 1.00, 0.50] kite"
    rows = dict(b.sql("SELECT key, box_clipped FROM samples").fetchall())
    assert rows.pop("vg_1_901") is True and not any(rows.values()) and len(rows) == 6
    # 1 pixel of the pole is inside the image: below --min-box-side 2 once clipped
    assert b.sql("SELECT reason FROM rejects WHERE source_id = '1:902'").fetchall() == [("box_too_small",)]
    c = vlmforge.build("vg", "vg", out=tmp_path / "crop", crop=True, synsets=["kite.n.03"], source_options=opts)
    (s,) = list(c.samples())
    # margin 10% of the clipped 10x15 box: x 29..40, y 0..17 -> an 11x17 crop holding the box at x=1
    assert Image.open(io.BytesIO(s["jpg"])).size == (11, 17) and s["json"]["box"] == [1, 0, 10, 15]


@pytest.mark.parametrize("synsets, error", [([], "lists no synset"),
                                            (["clock.n.01", "dog"], "like dog.n.01; 'dog' is not one")])
def test_synset_lists_that_match_nothing_are_one_error(tmp_path, vg, synsets, error):
    with pytest.raises(UserError, match=error):
        vlmforge.build("vg", "vg", out=tmp_path, source_options={"root": str(vg)}, synsets=synsets)
    assert not any(tmp_path.iterdir())


def test_malformed_objects_are_rejects(tmp_path, vg):
    objects = json.loads((vg / "objects.json").read_text())
    objects[0]["objects"] += [
        "not an object", {"x": 1, "y": 1, "w": 5, "h": 5, "synsets": ["pole.n.01"]},  # no id
        {"object_id": 101, "x": 1, "y": 1, "w": 5, "h": 5, "names": ["clock"], "synsets": ["clock.n.01"]},  # id again
        {"object_id": 960, "x": 1, "y": 1, "w": float("nan"), "h": 3, "synsets": ["pole.n.01"]},
        {"object_id": 961, "x": 1, "y": 1, "w": 5, "h": 5, "synsets": [7]},
        {"object_id": "962", "x": 2, "y": 2, "w": 5, "h": 5, "synsets": "kite.n.03"}]  # one synset as text
    (tmp_path / "objects.json").write_text(json.dumps(objects))
    b = vlmforge.build("vg", "vg", out=tmp_path / "out", source_options={
        "objects": str(tmp_path / "objects.json"), "image_data": str(vg / "image_data.json"), "images": str(vg)})
    rejects = sorted(b.sql("SELECT source_id, reason FROM rejects WHERE source_id LIKE '1:%'").fetchall())
    assert rejects == [("1:#3", "invalid_record"), ("1:#4", "invalid_record"), ("1:101", "duplicate_object"),
                       ("1:103", "no_synset"), ("1:960", "bad_box"), ("1:961", "invalid_record")]
    kite = b.sql("SELECT label, box FROM samples WHERE key = 'vg_1_962'").fetchall()
    assert kite == [("kite", [2, 2, 5, 5])] and len(b) == 7


def test_the_per_image_cap_counts_usable_boxes_only(tmp_path, vg):
    """The object ranked first for image 2 lies outside the image: it is a bad_box reject and the next
    one in rank order takes its place, as if it had not been listed."""
    from vlmforge.curation.selection import rank_value

    objects = json.loads((vg / "objects.json").read_text())
    image2 = objects[1]["objects"]
    first = min(image2, key=lambda o: rank_value(0, f"vg_2_{o['object_id']}"))
    first.update(x=100, y=100)  # the image is 40x30
    (tmp_path / "objects.json").write_text(json.dumps(objects))
    b = vlmforge.build("vg", "vg", out=tmp_path / "out", max_objects_per_image=1, source_options={
        "objects": str(tmp_path / "objects.json"), "image_data": str(vg / "image_data.json"), "images": str(vg)})
    second = min((o for o in image2 if o is not first), key=lambda o: rank_value(0, f"vg_2_{o['object_id']}"))
    assert b.sql("SELECT object_id FROM samples WHERE image_id = 2").fetchall() == [(second["object_id"],)]
    assert b.sql("SELECT reason FROM rejects WHERE source_id = ?", [f"2:{first['object_id']}"]).fetchall() == [("bad_box",)]


def test_an_image_of_another_size_than_listed_is_a_reject(tmp_path, vg):
    images = json.loads((vg / "image_data.json").read_text())
    images[1].update(width=80, height=60)  # image 2's file is 40x30: its boxes would land elsewhere
    (tmp_path / "image_data.json").write_text(json.dumps(images))
    b = vlmforge.build("vg", "vg", out=tmp_path / "out", source_options={
        "objects": str(vg / "objects.json"), "image_data": str(tmp_path / "image_data.json"), "images": str(vg)})
    assert b.sql("SELECT source_id, reason, detail FROM rejects WHERE source_id = '2'").fetchall() == [
        ("2", "size_mismatch", f"{vg}/VG_100K/2.jpg is 40x30, image_data.json says 80x60")]
    assert b.sql("SELECT DISTINCT image_id FROM samples").fetchall() == [(1,)]


def test_an_image_listed_twice_is_a_reject(tmp_path, vg):
    objects = json.loads((vg / "objects.json").read_text())
    objects += [objects[0], {"image_id": "two", "objects": []}]
    (tmp_path / "objects.json").write_text(json.dumps(objects))
    images = json.loads((vg / "image_data.json").read_text()) + ["junk", {"image_id": "x"}, {"width": 3}]
    (tmp_path / "image_data.json").write_text(json.dumps(images))
    b = vlmforge.build("vg", "vg", out=tmp_path / "out", source_options={
        "objects": str(tmp_path / "objects.json"), "image_data": str(tmp_path / "image_data.json"), "images": str(vg)})
    assert len(b) == 6
    assert sorted(b.sql("SELECT source_id, detail FROM rejects WHERE reason = 'invalid_record'").fetchall()) == [
        ("#4", "objects.json entry whose image_id is not an integer"), ("1", "image 1 is listed twice in objects.json")]
