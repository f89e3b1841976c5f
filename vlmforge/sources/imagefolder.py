"""Class-per-folder image datasets: `ROOT/<class>/<image>` or `ROOT/<split>/<class>/<image>`.

Covers HAM10000-style, chest X-ray, plant disease and graded trees (`split/grade/image`). The split
level is recognised when every top folder is a known split name (train, val, test, ...)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, _parts, fingerprint_files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "dev", "auto_test"}


def clean_class_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'; 'Apple___Black_rot' -> 'Apple Black rot'."""
    name = re.sub(r"^\d+[._-]", "", folder)
    name = re.sub(r"[_\s]+", " ", name).strip()
    return name or folder


class ImageFolderSource(Source):
    name = "imagefolder"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"image folder not found: {self.root}")
        tops = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not tops:
            raise SourceError(f"{self.root} has no class folders (expected ROOT/<class>/<image>)")
        split_tops = [p.name for p in tops if p.name.lower() in SPLIT_NAMES]
        if split_tops and len(split_tops) < len(tops):  # else the split folders would become classes
            others = [p.name for p in tops if p.name.lower() not in SPLIT_NAMES]
            raise SourceError(f"{self.root} mixes split folders ({', '.join(split_tops)}) with other folders "
                              f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}); use ROOT/<split>/<class>/<image> "
                              "for all of them or ROOT/<class>/<image> with no split folder")
        if split_tops:
            self._splits = {p.name: p for p in tops}
        else:
            self._splits = {"train": self.root}
        self._files: dict[str, list[tuple[str, Path]]] = {}
        for split, folder in self._splits.items():
            items = []
            for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for f in sorted(cls.rglob("*"), key=_parts):  # Path order, by parts: quicker
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                        items.append((cls.name, f))
            self._files[split] = items
        if not any(self._files.values()):
            raise SourceError(f"no images found under {self.root}")

    def splits(self) -> list[str]:
        return list(self._splits)

    def count(self, split: str) -> int:
        return len(self._files[split])

    def records(self, split: str) -> Iterator[Record]:
        # Every listed path lies under root (rglob below it), so its relative path is the rest of its
        # string: what relative_to() gives, without building Path objects 10,000s of times.
        root = str(self.root)
        cut = 0 if root in ("", ".") else len(root) if root.endswith("/") else len(root) + 1
        labels: dict[str, str] = {}
        items = self._files[split]
        # Files that differ only by extension ("001.jpg", "001.png"): their names keep the extension
        # where the rest drop it (`stem`), so that each still gets a sample of its own.
        stems = Counter(str(path).rsplit(".", 1)[0] for _, path in items)
        for folder, path in items:
            name = str(path)
            label = labels.get(folder)
            if label is None:
                label = labels[folder] = clean_class_name(folder)
            stem = name.rsplit(".", 1)[0]
            yield {"source_id": name[cut:], "file": name, "class_folder": folder, "label": label,
                   "stem": (stem if stems[stem] == 1 else name)[cut:]}

    def fingerprint(self) -> str:
        return fingerprint_files([], [p for items in self._files.values() for _, p in items], root=self.root)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "splits": {s: len(v) for s, v in self._files.items()}}
