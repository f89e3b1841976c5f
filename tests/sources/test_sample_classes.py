"""The labelled image-folder sample (`vlmforge sample classes`)."""

import hashlib
import json
import subprocess
import sys
from collections import Counter

from PIL import Image

import vlmforge
from vlmforge.sources.sample_classes import MIN_SIDE, make_classes_sample
from vlmforge.sources.sample_coco import make_sample


def _files(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_crops_are_the_sample_objects_split_per_category(tmp_path):
    counts = make_classes_sample(tmp_path / "a", images=24, seed=3)
    coco = make_sample(tmp_path / "coco", images=24, seed=3)
    doc = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    names = {c["id"]: c["name"].replace(" ", "_") for c in doc["categories"]}
    big = [a for a in doc["annotations"] if min(a["bbox"][2:]) >= MIN_SIDE]
    assert big
    per_cat = Counter(names[a["category_id"]] for a in big)
    # Every object big enough is one file, in its category's folder, named by image and annotation id.
    files = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(files) == len(big) == sum(sum(c.values()) for c in counts.values())
    want = {f"{a['image_id']:012d}_{a['id']}.jpg": names[a["category_id"]] for a in big}
    assert {f.name: f.parent.name for f in files} == want
    for cat, n in per_cat.items():
        n_test = counts["test"][cat]
        assert counts["train"][cat] + n_test == n
        assert n_test == (max(1, round(0.25 * n)) if n >= 2 else 0), (cat, n, n_test)
    # A crop holds the whole box (plus a margin, cut at the image border).
    by_name = {f"{a['image_id']:012d}_{a['id']}.jpg": a for a in big}
    for f in files[:20]:
        w, h = by_name[f.name]["bbox"][2:]
        with Image.open(f) as im:
            assert im.width >= int(w) and im.height >= int(h)


def test_same_settings_same_bytes_other_seed_other_split(tmp_path):
    make_classes_sample(tmp_path / "a", images=16, seed=0)
    make_classes_sample(tmp_path / "b", images=16, seed=0)
    make_classes_sample(tmp_path / "c", images=16, seed=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_cli_writes_a_folder_the_class_builders_read(tmp_path):
    out = tmp_path / "classes"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "sample", "classes", "--out", str(out), "--images", "40"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "builds", source_options={"root": str(out)})
    labels = dict(b.sql("SELECT split, count(DISTINCT label) FROM samples GROUP BY 1").fetchall())
    assert set(labels) == {"train", "test"} and labels["train"] >= 20
    assert b.sql("SELECT count(*) FROM samples WHERE label = 'traffic light' OR label = 'sports ball'").fetchall()[0][0] > 0
    # A folder already holding files is refused: an earlier sample's files would stay mixed in.
    again = subprocess.run([sys.executable, "-m", "vlmforge.cli", "sample", "classes", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr
