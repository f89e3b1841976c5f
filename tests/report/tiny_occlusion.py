"""An occlusion-like builder for tests of show/report/publish: the same members and fields as the
real occlusion builder (occluded `jpg`, `mask.png`, `orig.jpg`, a json with label/question/box...),
made simply: the largest object's box is painted grey. Deterministic from the COCO sample."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw

from vlmforge.builders.base import BuildConfig, Builder, run_build
from vlmforge.manifests.read import Build, open_build
from vlmforge.manifests.writer import ShardLimits
from vlmforge.sample import Reject, Sample
from vlmforge.sources import open_source
from vlmforge.sources.base import Source


class TwoSplitCoco(Source):
    """The COCO sample cut into train and val by image id, so tests see more than one split."""

    name = "coco"

    def __init__(self, inner):
        self.inner = inner
        self.ds = inner.ds

    def splits(self):
        return ["train", "val"]

    def records(self, split):
        for rec in self.inner.records("val"):
            in_val = "image_id" in rec and rec["image_id"] % 3 == 0
            if (split == "val") == in_val and ("image_id" in rec or split == "train"):
                yield rec

    def fingerprint(self):
        return self.inner.fingerprint() + "-two-split"

    def describe(self):
        return {**self.inner.describe(), "cut": "image_id % 3 == 0 -> val"}


@dataclass
class TinyOcclusionConfig(BuildConfig):
    keep_original: bool = True


class TinyOcclusion(Builder):
    name = "occlusion"
    VERSION = "0.0.1"
    Config = TinyOcclusionConfig
    description = "Test stand-in for the occlusion builder: hides the largest object behind a grey box."
    columns = [
        ("label", pa.string(), "category of the hidden object"),
        ("supercategory", pa.string(), "its COCO supercategory"),
        ("causality", pa.float64(), "how strongly the context implies the object (0-1)"),
        ("occluded_fraction", pa.float64(), "fraction of the image area hidden"),
    ]

    def process(self, batch):
        cats = self.src.ds.categories
        out = []
        for rec in batch:
            if "orphan" in rec:
                out.append([Reject(rec["source_id"], "orphan_annotation", "source", "no image")])
                continue
            inst = sorted(rec["instances"], key=lambda a: (-a["area"], a["id"]))
            ann = inst[0]
            frac = round(ann["bbox"][2] * ann["bbox"][3] / (rec["image"]["width"] * rec["image"]["height"]), 4)
            if frac > 0.15 or frac < 0.01:
                reason = "object_too_large" if frac > 0.15 else "object_too_small"
                out.append([Reject(rec["source_id"], reason, "select", f"box covers {frac:.1%} of the image")])
                continue
            cat = cats[ann["category_id"]]
            img = Image.open(rec["file"]).convert("RGB")
            x, y, w, h = (int(round(v)) for v in ann["bbox"])
            mask = Image.new("L", img.size, 0)
            ImageDraw.Draw(mask).rectangle([x, y, x + w - 1, y + h - 1], fill=255)
            occluded = img.copy()
            occluded.paste((128, 128, 128), mask=mask)
            causality = round((ann["id"] * 7919 % 1000) / 1000, 3)
            question = f"<image>\nWhat is hidden behind the grey box?"
            doc = {"label": cat["name"], "entity": cat["name"], "question": question.split("\n", 1)[1],
                   "caption": (rec["captions"][0]["caption"] if rec["captions"] else ""),
                   "supercategory": cat["supercategory"], "causality": causality, "box": [x, y, w, h],
                   "occluded_fraction": frac,
                   "conversations": [{"from": "human", "value": question},
                                     {"from": "gpt", "value": f"A {cat['name']}."}]}
            extras = {"mask.png": _encode(mask, "PNG")}
            if self.config.keep_original:
                extras["orig.jpg"] = Path(rec["file"]).read_bytes()
            out.append([Sample(key=f"{int(rec['image_id']):012d}", doc=doc, image=_encode(occluded, "JPEG"),
                               width=img.width, height=img.height, source_id=rec["source_id"], extras=extras,
                               columns={"label": cat["name"], "supercategory": cat["supercategory"],
                                        "causality": causality, "occluded_fraction": frac})])
        return out


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def build_tiny_occlusion(coco_root: Path, out: Path, max_samples_per_shard: int = 4,
                         keep_original: bool = True) -> Build:
    src = TwoSplitCoco(open_source("coco", coco_root=str(coco_root), split="val2017"))
    b = TinyOcclusion(TinyOcclusionConfig(keep_original=keep_original), src)
    return open_build(run_build(b, out, limits=ShardLimits(max_samples=max_samples_per_shard), quiet=True))
