"""COCO-format datasets: the official 2017 layout, any COCO-format files, or the embedded sample.

Official layout under a root: `annotations/captions_<split>.json`, `annotations/instances_<split>.json`
and `<split>/*.jpg`. Captions are optional for builders that only need instances and vice versa.
"""

from __future__ import annotations

import copy

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, fingerprint_files


def load_json_file(path: Path, what: str) -> Any:
    if not path.exists():
        raise SourceError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SourceError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{what} {path} is not UTF-8 text: {e}") from None


class CocoDataset:
    """Indexes of one COCO split: images, captions and instances per image, categories."""

    def __init__(self, images_dir: Path, captions: Path | None, instances: Path | None):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise SourceError(f"image folder not found: {self.images_dir}")
        if captions is None and instances is None:
            raise SourceError("a COCO source needs a captions file, an instances file, or both")
        self.files = [p for p in (captions, instances) if p is not None]
        self.images: dict[int, dict] = {}
        self.captions: dict[int, list[dict]] = defaultdict(list)
        self.instances: dict[int, list[dict]] = defaultdict(list)
        self.categories: dict[int, dict] = {}
        self.orphans: list[dict] = []  # annotations whose image_id is not among the images
        for path, kind in ((captions, "captions"), (instances, "instances")):
            if path is None:
                continue
            doc = load_json_file(Path(path), f"COCO {kind} file")
            if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
                raise SourceError(f"COCO {kind} file {path} lacks the 'images' and 'annotations' lists")
            for im in doc["images"]:
                self.images.setdefault(int(im["id"]), im)
            for cat in doc.get("categories", []):
                self.categories[int(cat["id"])] = cat
            target = self.captions if kind == "captions" else self.instances
            for ann in doc["annotations"]:
                target[int(ann["image_id"])].append(ann)
        for table in (self.captions, self.instances):
            for image_id in sorted(set(table) - set(self.images)):
                self.orphans.extend(table.pop(image_id))
        for anns in list(self.captions.values()) + list(self.instances.values()):
            anns.sort(key=lambda a: int(a["id"]))

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.images[image_id]["file_name"]

    def categories_only(self) -> "CocoDataset":
        """The same dataset without its per-image tables (images, captions, instances, orphans): what a
        worker needs when its records carry their own image's annotations. For COCO train2017 those
        tables are the bulk of 450 MB of JSON, which would otherwise be pickled to every worker."""
        shell = object.__new__(CocoDataset)
        shell.__dict__.update(self.__dict__, images={}, captions=defaultdict(list), instances=defaultdict(list),
                              orphans=[])
        return shell

    def category_name(self, category_id: int) -> str:
        return self.categories[category_id]["name"]


def resolve_coco_paths(
    coco_root: Path | None = None,
    split: str = "val2017",
    captions: Path | None = None,
    instances: Path | None = None,
    images: Path | None = None,
) -> tuple[Path, Path | None, Path | None, str]:
    """Turn the CLI's ways of naming a COCO dataset into (images_dir, captions, instances, split).
    With nothing given, the embedded sample (made on first use) is the source."""
    if coco_root is not None:
        root = Path(coco_root)
        if not root.is_dir():
            raise SourceError(f"COCO root not found: {root}")
        cap = root / "annotations" / f"captions_{split}.json"
        ins = root / "annotations" / f"instances_{split}.json"
        if not cap.exists() and not ins.exists():
            raise SourceError(f"{root}/annotations has neither captions_{split}.json nor instances_{split}.json")
        return root / split, cap if cap.exists() else None, ins if ins.exists() else None, split
    if images is not None or captions is not None or instances is not None:
        if images is None:
            raise SourceError("--images is required with --captions/--instances")
        return Path(images), captions, instances, split
    from vlmforge.sources.sample_coco import ensure_sample

    root = ensure_sample()
    return root / "val2017", root / "annotations" / "captions_val2017.json", root / "annotations" / "instances_val2017.json", "val2017"


class CocoSource(Source):
    """One record per image (`unit="image"`) or per (image, caption) (`unit="caption"`), by id order."""

    name = "coco"

    def __init__(self, dataset: CocoDataset, split: str = "val2017", unit: str = "image", out_split: str | None = None):
        self.ds = dataset
        self.coco_split = split
        self.unit = unit
        self.out_split = out_split or ("val" if split.startswith("val") else "train" if split.startswith("train") else split)

    @classmethod
    def from_paths(cls, unit: str = "image", **kw) -> "CocoSource":
        images_dir, cap, ins, split = resolve_coco_paths(**kw)
        return cls(CocoDataset(images_dir, cap, ins), split=split, unit=unit)

    def splits(self) -> list[str]:
        return [self.out_split]

    def count(self, split: str) -> int | None:
        if self.unit == "caption":
            return sum(len(v) for v in self.ds.captions.values()) + len(self.ds.orphans)
        return len(self.ds.images) + len(self.ds.orphans)

    def records(self, split: str) -> Iterator[Record]:
        ds = self.ds
        for image_id in sorted(ds.images):
            base = {"image_id": image_id, "file": str(ds.image_path(image_id)), "image": ds.images[image_id]}
            if self.unit == "caption":
                for cap in ds.captions.get(image_id, []):
                    yield {**base, "source_id": f"{image_id}:{cap['id']}", "caption": cap,
                           "instances": ds.instances.get(image_id, [])}
            else:
                yield {**base, "source_id": str(image_id), "captions": ds.captions.get(image_id, []),
                       "instances": ds.instances.get(image_id, [])}
        # Annotations that point to no image are inputs too: they become rejects, never vanish.
        for ann in ds.orphans:
            yield {"source_id": f"annotation:{ann['id']}", "orphan": ann}

    def for_workers(self) -> "CocoSource":
        """Records carry their image's captions and instances: workers get the categories only."""
        light = copy.copy(self)
        light.ds = self.ds.categories_only()
        return light

    def fingerprint(self) -> str:
        listed = [self.ds.image_path(i) for i in sorted(self.ds.images)]
        return fingerprint_files(self.ds.files, listed, root=self.ds.images_dir)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.coco_split, "unit": self.unit,
                "images": len(self.ds.images), "annotation_files": [p.name for p in self.ds.files]}
