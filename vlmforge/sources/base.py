"""What every source provides: ordered, lightweight records per split, and a fingerprint.

Records are small dicts (ids, paths, annotations). Heavy work (reading and decoding images, running
models) happens in the builder's `process`, inside workers, so enumerating a source is cheap and a
resumed build can skip inputs without touching them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from vlmforge.errors import SourceError  # noqa: F401  (re-exported for sources)

Record = dict[str, Any]


class Source:
    """Base class. Subclasses set `name` and implement `splits` and `records`."""

    name: str = "source"
    parents: list[str] = []

    def splits(self) -> list[str]:
        raise NotImplementedError

    def records(self, split: str) -> Iterator[Record]:
        """Records of one split in a deterministic order. Each has at least `source_id`."""
        raise NotImplementedError

    def count(self, split: str) -> int | None:
        """Number of records in `split` when cheap to know (for progress bars), else None."""
        return None

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the build.json records about the source (paths are informational only)."""
        return {"name": self.name}

    def for_workers(self) -> "Source":
        """The source as a worker gets it with the builder: workers only process the records they are
        sent, so a source may leave tables behind that the records already carry."""
        return self


def repeated_keys(keys_by_split: dict[str, list[str]], listed_in: str) -> dict[tuple[str, int], str]:
    """{(split, position): why} for each record whose key an earlier record of any split has (a file
    listed twice, or in two splits): it becomes an invalid_record reject, not a second sample."""
    first: dict[str, str] = {}
    out: dict[tuple[str, int], str] = {}
    for split, keys in keys_by_split.items():
        for i, key in enumerate(keys):
            if key in first:
                out[split, i] = f"listed twice in {listed_in} (first in split {first[key]})"
            else:
                first[key] = split
    return out


def _parts(p: Path) -> tuple[str, ...]:
    return p.parts


def fingerprint_files(files: Iterable[Path], listed: Iterable[Path] = (), root: Path | None = None) -> str:
    """sha256 over the full contents of `files` (annotation files) and the relative path and size of
    `listed` files (images, too many and too large to hash whole). Paths are taken relative to `root`
    so the same data in another folder has the same fingerprint."""
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        h.update(b"F" + f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    # Sorted as Path objects sort (part by part), by their parts: the same order, 2.5x quicker.
    prefix = f"{root}/" if root is not None and str(root) not in ("", ".") else None
    for f in sorted((Path(p) for p in listed), key=_parts):
        name = str(f)
        if root is None:
            rel = f.name
        elif prefix is not None and name.startswith(prefix) and ".." not in f.parts:
            rel = name[len(prefix):]  # what relpath gives for a path under root, without its abspath calls
        else:
            rel = os.path.relpath(f, root)
        try:
            size = os.stat(name).st_size
        except OSError:
            size = -1
        h.update(f"L{rel}\0{size}\0".encode())
    return h.hexdigest()
