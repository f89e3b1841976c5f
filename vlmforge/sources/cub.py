"""CUB-200-2011 in its native layout.

`ROOT` is the `CUB_200_2011` folder (or its parent): `images.txt` (id, relative path),
`image_class_labels.txt` (id, class id), `train_test_split.txt` (id, 1 = train), `classes.txt`
(class id, folder name), `images/<class folder>/<file>.jpg`, optionally `bounding_boxes.txt`, and
the attribute files: `attributes.txt` (next to `CUB_200_2011/` in the archive, or inside it),
`attributes/image_attribute_labels.txt` (image id, attribute id, present, certainty, time) and
`attributes/class_attribute_labels_continuous.txt` (one row of 312 percentages per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, fingerprint_files
from vlmforge.sources.imagefolder import clean_class_name

REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def read_id_table(path: Path, n_fields: int, what: str, ints: int = 1, floats: int = 0) -> list[list[str]]:
    """Rows of a whitespace-separated id file; the last field keeps any spaces it holds. The first
    `ints` fields must be integers (ids) and the `floats` after them numbers."""
    if not path.exists():
        raise SourceError(f"{what} not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_fields - 1)
        if len(parts) < n_fields:
            raise SourceError(f"{path}:{lineno}: expected {n_fields} fields, got {line!r}")
        _check_numbers(parts, ints, floats, f"{path}:{lineno}")
        rows.append(parts)
    return rows


def _check_numbers(parts: list[str], ints: int, floats: int, where: str) -> None:
    for i, value in enumerate(parts[: ints + floats]):
        try:
            int(value) if i < ints else float(value)
        except ValueError:
            kind = "an integer id" if i < ints else "a number"
            raise SourceError(f"{where}: field {i + 1} should be {kind}, got {value!r}") from None


def find_cub_root(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root, root / "CUB_200_2011"):
        if (cand / "images.txt").exists():
            return cand
    raise SourceError(f"{root} is not a CUB-200-2011 folder (no images.txt here or in CUB_200_2011/)")


class CubSource(Source):
    """Records per image, in image id order; splits `train` and `test` from train_test_split.txt."""

    name = "cub"
    subject = "bird"

    def __init__(self, root: str | Path, splits: list[str] | None = None, attributes: bool = False):
        self.root = find_cub_root(root)
        self.with_attributes = attributes
        paths = dict(read_id_table(self.root / "images.txt", 2, "CUB images.txt"))
        labels = dict(read_id_table(self.root / "image_class_labels.txt", 2, "CUB image_class_labels.txt", ints=2))
        is_train = dict(read_id_table(self.root / "train_test_split.txt", 2, "CUB train_test_split.txt", ints=2))
        self.classes = {int(i): folder for i, folder in read_id_table(self.root / "classes.txt", 2, "CUB classes.txt")}
        boxes_file = self.root / "bounding_boxes.txt"
        boxes = ({r[0]: [float(v) for v in r[1:]] for r in read_id_table(boxes_file, 5, "", floats=4)}
                 if boxes_file.exists() else {})
        self._records: dict[str, list[Record]] = {"train": [], "test": []}
        for image_id in sorted(paths, key=int):
            rel = paths[image_id]
            rec: Record = {"source_id": rel, "key": f"cub_{int(image_id):05d}", "image_id": int(image_id),
                           "file": str(self.root / "images" / rel)}
            cls = labels.get(image_id)
            if cls is None or int(cls) not in self.classes:
                rec["invalid"] = f"image {image_id} has no class in image_class_labels.txt/classes.txt"
            else:
                rec["class_id"] = int(cls)
                rec["class_folder"] = self.classes[int(cls)]
                rec["label"] = clean_class_name(self.classes[int(cls)])
            if image_id in boxes:
                rec["bbox"] = boxes[image_id]  # x, y, width, height
            flag = (is_train.get(image_id) or "").strip()
            if flag not in ("0", "1"):  # not put in train on a guess: it may be a test image
                rec.setdefault("invalid", f"image {image_id} has no row in train_test_split.txt" if not flag else
                               f"image {image_id}: train_test_split.txt says {flag!r}, not 1 (train) or 0 (test)")
            self._records["test" if flag == "0" else "train"].append(rec)
        self._splits = [s for s in ("train", "test") if self._records[s] and (splits is None or s in splits)]
        if splits:
            unknown = sorted(set(splits) - {"train", "test"})
            if unknown:
                raise SourceError(f"CUB has splits train and test, not {unknown}")
        if attributes:
            self._attach_attributes()

    # -- attributes ------------------------------------------------------------------------
    def _attr_file(self) -> Path:
        for cand in (self.root / "attributes.txt", self.root / "attributes" / "attributes.txt",
                     self.root.parent / "attributes.txt"):
            if cand.exists():
                return cand
        raise SourceError(f"CUB attributes.txt not found next to or inside {self.root}")

    def attribute_names(self) -> list[str]:
        """Attribute names in id order (id 1 first), e.g. 'has_bill_shape::dagger'."""
        rows = read_id_table(self._attr_file(), 2, "CUB attributes.txt")
        return [name for _, name in sorted(rows, key=lambda r: int(r[0]))]

    def _attach_attributes(self) -> None:
        path = self.root / "attributes" / "image_attribute_labels.txt"
        if not path.exists():
            raise SourceError(f"CUB attribute labels not found: {path}")
        present: dict[int, list[list[int]]] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                # A few lines of the real file carry an extra field; the first four are what we use.
                if len(parts) < 4:
                    raise SourceError(f"{path}:{lineno}: expected image id, attribute id, present, certainty")
                _check_numbers(parts, 4, 0, f"{path}:{lineno}")
                if parts[2] == "1":
                    present.setdefault(int(parts[0]), []).append([int(parts[1]), int(parts[3])])
        self._present = present
        for recs in self._records.values():
            for rec in recs:
                rec["attributes"] = present.get(rec["image_id"], [])

    def class_attribute_rates(self) -> np.ndarray:
        """(classes, attributes) fraction of each class's images showing each attribute, rows in class
        id order: the continuous class labels file when present, else counted from image labels."""
        n_attr = len(self.attribute_names())
        class_ids = sorted(self.classes)
        path = self.root / "attributes" / "class_attribute_labels_continuous.txt"
        if path.exists():
            rates = np.loadtxt(path, ndmin=2) / 100.0
            if rates.shape != (len(class_ids), n_attr):
                raise SourceError(f"{path} has shape {rates.shape}, expected ({len(class_ids)}, {n_attr})")
            return rates
        if not self.with_attributes:
            self._attach_attributes()
        counts = np.zeros((len(class_ids), n_attr))
        totals = np.zeros(len(class_ids))
        row = {c: i for i, c in enumerate(class_ids)}
        for recs in self._records.values():
            for rec in recs:
                if "class_id" not in rec:
                    continue
                totals[row[rec["class_id"]]] += 1
                for attr_id, _ in self._present.get(rec["image_id"], []):
                    counts[row[rec["class_id"]], attr_id - 1] += 1
        return counts / np.maximum(totals, 1)[:, None]

    def class_labels(self) -> list[str]:
        """Clean class names in class id order (the rows of class_attribute_rates)."""
        return [clean_class_name(self.classes[c]) for c in sorted(self.classes)]

    # -- Source ----------------------------------------------------------------------------
    def splits(self) -> list[str]:
        return list(self._splits)

    def count(self, split: str) -> int:
        return len(self._records[split])

    def records(self, split: str) -> Iterator[Record]:
        yield from (dict(r) for r in self._records[split])

    def fingerprint(self) -> str:
        files = [self.root / f for f in REQUIRED]
        if (self.root / "bounding_boxes.txt").exists():
            files.append(self.root / "bounding_boxes.txt")
        if self.with_attributes:
            files += [self._attr_file(), self.root / "attributes" / "image_attribute_labels.txt"]
            cont = self.root / "attributes" / "class_attribute_labels_continuous.txt"
            if cont.exists():
                files.append(cont)
        images = [Path(r["file"]) for s in self._splits for r in self._records[s]]
        return fingerprint_files(files, images, root=self.root)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "splits": {s: len(self._records[s]) for s in self._splits},
                "classes": len(self.classes), "attributes": self.with_attributes}
