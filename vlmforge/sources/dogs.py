"""Stanford Dogs in its native layout.

`ROOT` holds `Images/<wnid>-<Breed_name>/<wnid>_<n>.jpg` and the split lists, either MATLAB files
(`train_list.mat`, `test_list.mat`, in ROOT or `ROOT/lists/`; `file_list` cells of relative paths
and 1-based `labels`) or plain-text file lists (`train_list.txt`, `test_list.txt`, one relative
path per line). Without any list every image lands in `train`. Breed names: 'n02085782-Japanese_spaniel'
-> 'Japanese spaniel'.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, fingerprint_files, repeated_keys
from vlmforge.sources.imagefolder import clean_class_name

_WNID = re.compile(r"^n\d{8}[-_]")


def breed_name(folder: str) -> str:
    """'n02085620-Chihuahua' -> 'Chihuahua'; 'n02096294-Australian_terrier' -> 'Australian terrier'."""
    return clean_class_name(_WNID.sub("", folder))


def _mat_file_list(path: Path) -> list[str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise SourceError(f"reading {path} needs scipy (pip install scipy), or give train_list.txt/test_list.txt") from None
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several types for a damaged file
        raise SourceError(f"{path} is not a readable MATLAB file: {e}") from None
    if "file_list" not in mat:
        raise SourceError(f"{path} has no file_list variable")
    out = []
    for cell in mat["file_list"].ravel():
        value = cell
        while not isinstance(value, str):  # cells nest as object arrays of 1-element string arrays
            value = value[0] if len(value) else ""
        out.append(str(value))
    return out


class StanfordDogsSource(Source):
    name = "stanford-dogs"
    subject = "dog"

    def __init__(self, root: str | Path, splits: list[str] | None = None):
        self.root = Path(root)
        self.images = self.root / "Images"
        if not self.images.is_dir():
            raise SourceError(f"{self.root} is not a Stanford Dogs folder (no Images/)")
        self._lists: list[Path] = []
        self._files: dict[str, list[str]] = {}
        for split in ("train", "test"):
            found = self._find_list(split)
            if found is None:
                continue
            self._lists.append(found)
            rels = _mat_file_list(found) if found.suffix == ".mat" else \
                [ln.strip() for ln in found.read_text().splitlines() if ln.strip()]
            self._files[split] = rels
        if not self._files:
            rels = sorted(p.relative_to(self.images).as_posix() for p in self.images.glob("*/*")
                          if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not rels:
                raise SourceError(f"no images under {self.images}")
            self._files["train"] = rels
        if splits:
            unknown = sorted(set(splits) - set(self._files))
            if unknown:
                raise SourceError(f"Stanford Dogs at {self.root} has splits {sorted(self._files)}, not {unknown}")
            self._files = {s: v for s, v in self._files.items() if s in splits}
        names = ", ".join(p.name for p in self._lists) or "Images/"
        self._repeats = repeated_keys({s: [self._key(r) for r in v] for s, v in self._files.items()}, names)

    def _find_list(self, split: str) -> Path | None:
        for folder in (self.root / "lists", self.root):
            for ext in (".mat", ".txt"):
                p = folder / f"{split}_list{ext}"
                if p.exists():
                    return p
        return None

    def splits(self) -> list[str]:
        return list(self._files)

    def count(self, split: str) -> int:
        return len(self._files[split])

    def _key(self, rel: str) -> str:
        stem = rel.partition("/")[2].rsplit(".", 1)[0]
        return f"dogs_{stem}".lower().replace(".", "-")

    def records(self, split: str) -> Iterator[Record]:
        for i, rel in enumerate(self._files[split]):
            folder, _, name = rel.partition("/")
            rec = {"source_id": rel, "key": self._key(rel), "file": str(self.images / rel),
                   "class_folder": folder, "label": breed_name(folder)}
            if not name or "/" in name:
                rec["invalid"] = f"{rel!r} is not <breed folder>/<file> under Images/"
            elif (split, i) in self._repeats:
                rec["invalid"] = f"{rel} is {self._repeats[split, i]}"
            yield rec

    def fingerprint(self) -> str:
        listed = [self.images / rel for rels in self._files.values() for rel in rels]
        return fingerprint_files(self._lists, listed, root=self.root)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "splits": {s: len(v) for s, v in self._files.items()},
                "lists": [p.name for p in self._lists]}
