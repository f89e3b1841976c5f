import json

from pycocotools.coco import COCO
from pycocotools import mask as mask_utils
from PIL import Image

from vlmforge.sources.sample_coco import make_sample


def test_sample_is_official_coco_layout_and_loads_in_pycocotools(sample_coco):
    ins = COCO(str(sample_coco / "annotations" / "instances_val2017.json"))
    caps = COCO(str(sample_coco / "annotations" / "captions_val2017.json"))
    assert len(ins.getImgIds()) == 12
    for img in ins.loadImgs(ins.getImgIds()):
        path = sample_coco / "val2017" / img["file_name"]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (img["width"], img["height"])
        anns = ins.loadAnns(ins.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= 5
        for a in anns:
            m = ins.annToMask(a)
            assert m.sum() > 0 and abs(float(m.sum()) - a["area"]) / a["area"] < 0.05
            x, y, w, h = a["bbox"]
            ys, xs = m.nonzero()
            assert xs.min() >= int(x) - 1 and xs.max() <= x + w + 1
        captions = caps.loadAnns(caps.getAnnIds(imgIds=img["id"]))
        assert len(captions) == 5
    names = {c["name"] for c in ins.loadCats(ins.getCatIds())}
    assert {"person", "car", "dog", "pizza"} <= names


def test_captions_name_the_objects(sample_coco):
    ins = json.loads((sample_coco / "annotations" / "instances_val2017.json").read_text())
    caps = json.loads((sample_coco / "annotations" / "captions_val2017.json").read_text())
    cats = {c["id"]: c["name"] for c in ins["categories"]}
    words = {"person": ["person", "man", "woman", "people", "men", "women"], "tv": ["tv", "television"],
             "couch": ["couch", "sofa"], "refrigerator": ["refrigerator", "fridge"], "dining table": ["table"],
             "sports ball": ["ball"], "oven": ["oven", "stove"], "cup": ["cup", "mug"], "bicycle": ["bicycle", "bike"],
             "motorcycle": ["motorcycle", "motorbike"], "cat": ["cat", "kitten"], "dog": ["dog", "pupp"]}
    for img in ins["images"]:
        present = {cats[a["category_id"]] for a in ins["annotations"] if a["image_id"] == img["id"]}
        text = " ".join(c["caption"].lower() for c in caps["annotations"] if c["image_id"] == img["id"])
        named = [n for n in present if any(w in text for w in words.get(n, [n]))]
        assert named, (present, text)


def test_same_seed_same_bytes(tmp_path):
    a = make_sample(tmp_path / "a", images=3, seed=7)
    b = make_sample(tmp_path / "b", images=3, seed=7)
    for p in sorted(a.rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()
    c = make_sample(tmp_path / "c", images=3, seed=8)
    assert (c / "annotations" / "captions_val2017.json").read_bytes() != (a / "annotations" / "captions_val2017.json").read_bytes()
