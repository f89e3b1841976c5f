"""A labelled sample for the class-based builders (subsets, seen/unseen, multiple choice) and CLIP
training: the objects of the embedded COCO sample cut out of their scenes, one folder per category,
in the layout `--source imagefolder` reads (`ROOT/train|test/<category>/<image>.jpg`).

Each crop is the object's box with a margin of a fifth of its size on every side, so some context
shows. A quarter of each category's objects (at least one of a category with two or more; which ones
by hashing the annotation id with the seed) go to test.
Same (images, seed) -> byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image

# Objects with a box side under this many pixels are too small to tell apart and are left out.
MIN_SIDE = 12
TEST_FRACTION = 0.25


def _test_ids(seed: int, anns: list[dict]) -> set[int]:
    """The annotation ids of one category that go to test."""
    def rank(ann: dict) -> bytes:
        return hashlib.sha256(f"{seed}:{ann['id']}".encode()).digest()

    n = len(anns)
    k = max(1, round(TEST_FRACTION * n)) if n >= 2 else 0
    return {a["id"] for a in sorted(anns, key=rank)[:k]}


def make_classes_sample(out: str | Path, images: int = 200, seed: int = 0,
                        progress: bool = False) -> dict[str, Counter]:
    """Write the crops under `out`; returns the number of images per split and category. `progress`: a
    progress bar over the scenes drawn (most of the time)."""
    from vlmforge.sources.sample_coco import make_sample

    root = Path(out)
    counts: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    with tempfile.TemporaryDirectory(prefix="vlmforge-sample-") as tmp:
        coco = make_sample(Path(tmp) / "coco", images=images, seed=seed, progress=progress)
        doc = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
        names = {c["id"]: c["name"].replace(" ", "_") for c in doc["categories"]}
        files = {im["id"]: coco / "val2017" / im["file_name"] for im in doc["images"]}
        by_image: dict[int, list[dict]] = {}
        by_category: dict[int, list[dict]] = {}
        for ann in doc["annotations"]:
            if min(ann["bbox"][2:]) >= MIN_SIDE:
                by_image.setdefault(ann["image_id"], []).append(ann)
                by_category.setdefault(ann["category_id"], []).append(ann)
        test = set().union(*(_test_ids(seed, anns) for anns in by_category.values()))
        for image_id in sorted(by_image):
            with Image.open(files[image_id]) as im:
                scene = im.convert("RGB")
            for ann in sorted(by_image[image_id], key=lambda a: a["id"]):
                x, y, w, h = ann["bbox"]
                mx, my = w / 5, h / 5
                box = (max(0, round(x - mx)), max(0, round(y - my)),
                       min(scene.width, round(x + w + mx)), min(scene.height, round(y + h + my)))
                split = "test" if ann["id"] in test else "train"
                folder = root / split / names[ann["category_id"]]
                folder.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                scene.crop(box).save(buf, format="JPEG", quality=90)
                (folder / f"{image_id:012d}_{ann['id']}.jpg").write_bytes(buf.getvalue())
                counts[split][names[ann["category_id"]]] += 1
    return counts


def write_classes_sample(out: str | Path, images: int = 200, seed: int = 0,
                         progress: bool = False) -> dict[str, Counter]:
    """make_classes_sample into a fresh folder: `out` must not exist or be empty (files of an earlier
    sample with other settings would otherwise stay mixed in)."""
    from vlmforge.sources.sample_coco import write_fresh

    return write_fresh(out, lambda root: make_classes_sample(root, images=images, seed=seed, progress=progress))
