"""COCO-format input checks: a file of the wrong shape is one clear error; a single annotation that
cannot be used is a reject with its reason, and the build goes on with the rest."""

import json
import re

import pytest

import vlmforge
from vlmforge.errors import SourceError, UserError
from vlmforge.sources.coco import CocoDataset, resolve_coco_paths


def _files(root):
    return root / "annotations" / "captions_val2017.json", root / "annotations" / "instances_val2017.json"


def _edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(images={"1": {}}), "'images' must be a list"),
    (lambda d: d["images"][0].pop("id"), "images[0] needs an integer 'id'"),
    (lambda d: d["images"][1].update(id="abc"), "images[1] needs an integer 'id'"),
    (lambda d: d["images"].append(dict(d["images"][0], file_name="other.jpg")), "listed twice with different file_name"),
    (lambda d: d["categories"][0].pop("name"), "categories[0] needs an integer 'id' and a 'name'"),
])
def test_a_malformed_instances_file_is_one_error(coco_copy, change, message):
    cap, ins = _files(coco_copy)
    _edit(ins, change)
    with pytest.raises(SourceError, match=re.escape(message)):
        CocoDataset(coco_copy / "val2017", cap, ins)


def test_swapped_files_are_named(sample_coco):
    cap, ins = _files(sample_coco)
    with pytest.raises(SourceError, match="no annotation has a 'caption' field; is it the instances file"):
        CocoDataset(sample_coco / "val2017", ins, cap)
    with pytest.raises(SourceError, match="no annotation has a 'category_id' field; is it the captions file"):
        CocoDataset(sample_coco / "val2017", cap, cap)


def test_root_and_explicit_files_together_are_refused(sample_coco):
    cap, ins = _files(sample_coco)
    with pytest.raises(SourceError, match="either --coco-root or --captions/--images"):
        resolve_coco_paths(coco_root=sample_coco, captions=cap, images=sample_coco / "val2017")


def test_a_split_the_root_lacks_names_the_splits_it_has(coco_copy):
    """`--coco-root` of a train2017 download with the default --split val2017."""
    for kind in ("captions", "instances"):
        (coco_copy / "annotations" / f"{kind}_val2017.json").rename(coco_copy / "annotations" / f"{kind}_train2017.json")
    (coco_copy / "annotations" / "person_keypoints_train2017.json").write_text("{}")
    with pytest.raises(SourceError, match=re.escape("nor instances_val2017.json (it has --split train2017)")):
        resolve_coco_paths(coco_root=coco_copy, split="val2017")
    assert resolve_coco_paths(coco_root=coco_copy, split="train2017")[3] == "train2017"


def test_unusable_annotations_become_rejects_and_the_build_goes_on(coco_copy, tmp_path):
    cap, ins = _files(coco_copy)
    doc = json.loads(ins.read_text())
    anns = doc["annotations"]
    im = {i["id"]: i for i in doc["images"]}
    broken = {anns[0]["id"]: "category_id 999 is not among", anns[1]["id"]: "'bbox' must be four numbers",
              anns[2]["id"]: "has no area", anns[3]["id"]: "lies outside the"}
    anns[0]["category_id"] = 999
    anns[1].pop("bbox")
    anns[2]["bbox"] = [100, 100, -30, -30]
    anns[3]["bbox"] = [im[anns[3]["image_id"]]["width"] + 5, 0, 10, 10]
    anns[4]["bbox"] = [-50, -50, 10_000, 10_000]  # overlaps the image: kept, its box is cut to the image
    ins.write_text(json.dumps(doc))
    _edit(cap, lambda d: d["annotations"][0].update(caption=None))
    ds = CocoDataset(coco_copy / "val2017", cap, ins)
    got = dict(ds.invalid)
    for ann_id, why in broken.items():
        assert why in got[f"instances:{ann_id}"]
    assert "'caption' must be text" in next(v for k, v in got.items() if k.startswith("captions:"))
    assert len(got) == 5

    b = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options={"coco_root": str(coco_copy)},
                       quiet=True, causality="none")
    rejects = dict(b.sql("SELECT source_id, detail FROM rejects WHERE reason = 'invalid_record'").fetchall())
    assert set(rejects) == set(got)
    assert b.sql("SELECT count(*) FROM samples").fetchall()[0][0] > 10
    for box, w, h in b.sql("SELECT box, width, height FROM samples").fetchall():
        assert box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= w + 0.01 and box[1] + box[3] <= h + 0.01


def test_occlusion_needs_the_instances_file_for_annotation_grounding(coco_copy, tmp_path):
    _files(coco_copy)[1].unlink()
    with pytest.raises(UserError, match="need the COCO instances file"):
        vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options={"coco_root": str(coco_copy)}, quiet=True)
