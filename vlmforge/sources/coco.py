"""COCO-format datasets: the official 2017 layout, any COCO-format files, or the embedded sample.

Official layout under a root: `annotations/captions_<split>.json`, `annotations/instances_<split>.json`
and `<split>/*.jpg`. Captions are optional for builders that only need instances and vice versa.
"""

from __future__ import annotations

import copy
import json
import math
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


def _as_id(value: Any) -> int | None:
    """COCO ids are integers; digit strings are accepted as the same id."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class CocoDataset:
    """Indexes of one COCO split: images, captions and instances per image, categories."""

    def __init__(self, images_dir: Path, captions: Path | None, instances: Path | None):
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise SourceError(f"image folder not found: {self.images_dir}")
        if captions is None and instances is None:
            raise SourceError("a COCO source needs a captions file, an instances file, or both")
        self.files = [p for p in (captions, instances) if p is not None]
        self.has_instances = instances is not None
        self.images: dict[int, dict] = {}
        self.captions: dict[int, list[dict]] = defaultdict(list)
        self.instances: dict[int, list[dict]] = defaultdict(list)
        self.categories: dict[int, dict] = {}
        self.orphans: list[dict] = []  # annotations whose image_id is not among the images
        self.invalid: list[tuple[str, str]] = []  # (source id, why) of annotations that cannot be used
        for path, kind in ((captions, "captions"), (instances, "instances")):
            if path is None:
                continue
            doc = load_json_file(Path(path), f"COCO {kind} file")
            self._read(doc, Path(path), kind)
        for table in (self.captions, self.instances):
            for image_id in sorted(set(table) - set(self.images)):
                self.orphans.extend(table.pop(image_id))
        for anns in list(self.captions.values()) + list(self.instances.values()):
            anns.sort(key=lambda a: int(a["id"]))

    def _read(self, doc: Any, path: Path, kind: str) -> None:
        """Index one file. Its shape (lists, image ids, categories, the field that says what kind of
        file it is) must be right, else a SourceError names the problem; a single annotation that cannot
        be used (no id, an unknown category, a box that is not one) becomes a reject."""
        where = f"COCO {kind} file {path}"
        if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
            raise SourceError(f"{where} lacks the 'images' and 'annotations' lists")
        for field in ("images", "annotations", "categories"):
            if not isinstance(doc.get(field, []), list):
                raise SourceError(f"{where}: '{field}' must be a list, not {type(doc[field]).__name__}")
        for n, im in enumerate(doc["images"]):
            image_id = _as_id(im.get("id")) if isinstance(im, dict) else None
            if image_id is None or not isinstance(im.get("file_name"), str):
                raise SourceError(f"{where}: images[{n}] needs an integer 'id' and a 'file_name' (got {_short(im)})")
            known = self.images.setdefault(image_id, im)
            clash = [f for f in ("file_name", "width", "height") if f in known and f in im and known[f] != im[f]]
            if clash:
                raise SourceError(f"{where}: image id {image_id} is listed twice with different {clash[0]} "
                                  f"({known[clash[0]]!r} and {im[clash[0]]!r})")
        for n, cat in enumerate(doc.get("categories", [])):
            cat_id = _as_id(cat.get("id")) if isinstance(cat, dict) else None
            if cat_id is None or not isinstance(cat.get("name"), str) or not cat["name"].strip():
                raise SourceError(f"{where}: categories[{n}] needs an integer 'id' and a 'name' (got {_short(cat)})")
            self.categories[cat_id] = cat
        anns = doc["annotations"]
        needed, other = ("caption", "instances") if kind == "captions" else ("category_id", "captions")
        if anns and not any(isinstance(a, dict) and needed in a for a in anns):
            raise SourceError(f"{where}: no annotation has a '{needed}' field; is it the {other} file?")
        target = self.captions if kind == "captions" else self.instances
        for n, ann in enumerate(anns):
            why = self._problem(ann, kind)
            if why is None:
                target[int(ann["image_id"])].append(ann)
                continue
            ann_id = _as_id(ann.get("id")) if isinstance(ann, dict) else None
            name = f"annotation {ann_id}" if ann_id is not None else f"annotations[{n}]"
            self.invalid.append((f"{kind}:{ann_id if ann_id is not None else f'#{n}'}", f"{kind} {name}: {why}"))

    def _problem(self, ann: Any, kind: str) -> str | None:
        """Why one annotation cannot be used, or None."""
        if not isinstance(ann, dict):
            return f"not an object ({_short(ann)})"
        for field in ("id", "image_id"):
            if _as_id(ann.get(field)) is None:
                return f"'{field}' must be an integer (got {_short(ann.get(field))})"
        if kind == "captions":
            return None if isinstance(ann.get("caption"), str) else f"'caption' must be text (got {_short(ann.get('caption'))})"
        if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in self.categories:
            return f"category_id {_short(ann.get('category_id'))} is not among the file's categories"
        box = ann.get("bbox")
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            return f"'bbox' must be four numbers [x, y, width, height] (got {_short(box)})"
        x, y, w, h = box
        if w <= 0 or h <= 0:
            return f"bbox {box} has no area (width and height must be positive)"
        im = self.images.get(int(ann["image_id"]), {})
        width, height = im.get("width"), im.get("height")
        if isinstance(width, (int, float)) and isinstance(height, (int, float)) and (
                x >= width or y >= height or x + w <= 0 or y + h <= 0):
            return f"bbox {box} lies outside the {width}x{height} image"
        return None

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.images[image_id]["file_name"]

    def categories_only(self) -> "CocoDataset":
        """The same dataset without its per-image tables (images, captions, instances, orphans): what a
        worker needs when its records carry their own image's annotations. For COCO train2017 those
        tables are the bulk of 450 MB of JSON, which would otherwise be pickled to every worker."""
        shell = object.__new__(CocoDataset)
        shell.__dict__.update(self.__dict__, images={}, captions=defaultdict(list), instances=defaultdict(list),
                              orphans=[], invalid=[])
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
        given = [f"--{n}" for n, v in (("captions", captions), ("instances", instances), ("images", images)) if v is not None]
        if given:
            raise SourceError(f"give either --coco-root or {'/'.join(given)}, not both")
        root = Path(coco_root)
        if root.is_file():  # e.g. the annotations file itself
            raise SourceError(f"--coco-root {root} is a file; give the folder holding annotations/ and <split>/")
        if not root.is_dir():
            raise SourceError(f"COCO root not found: {root}")
        cap = root / "annotations" / f"captions_{split}.json"
        ins = root / "annotations" / f"instances_{split}.json"
        if not cap.exists() and not ins.exists():
            import re

            found = sorted({m.group(1) for p in (root / "annotations").glob("*_*.json")
                            if (m := re.fullmatch(r"(?:captions|instances)_(.+)\.json", p.name))})
            hint = f" (it has --split {' or '.join(found)})" if found else ""
            raise SourceError(f"{root}/annotations has neither captions_{split}.json nor instances_{split}.json{hint}")
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
            return sum(len(v) for v in self.ds.captions.values()) + len(self.ds.orphans) + len(self.ds.invalid)
        return len(self.ds.images) + len(self.ds.orphans) + len(self.ds.invalid)

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
        for source_id, why in ds.invalid:
            yield {"source_id": source_id, "invalid": why}

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
