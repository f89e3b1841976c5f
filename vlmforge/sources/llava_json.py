"""LLaVA instruction JSON (the `llava_v1_5_mix665k.json` format), streamed record by record.

Each record has `id`, an optional `image` path relative to an image root, and `conversations` of
human/gpt turns with `<image>` in the first human turn; text-only records have no image. The file is
decoded one record at a time (`jsonstream`), so a 1 GB file never sits in memory whole.

Record ids are the source ids. mix665k repeats ids (the same image in several sub-datasets, with
different conversations), so a repeated id is told apart by a digest of the record's content, not by
its position: the ids, and hence the sample keys, do not depend on the order of the records.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from array import array
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source
from vlmforge.sources.jsonstream import SpanReader, iter_json_array

SUBSOURCES = ("coco", "gqa", "ocr_vqa", "textvqa", "vg", "text-only")


def source_of_image(image: str | None) -> str:
    """The sub-dataset a mix665k record comes from, by its image path: coco, gqa, ocr_vqa, textvqa,
    vg, or text-only."""
    if not image:
        return "text-only"
    top = str(image).replace("\\", "/").split("/", 1)[0].lower()
    return {"coco": "coco", "gqa": "gqa", "ocr_vqa": "ocr_vqa", "textvqa": "textvqa", "vg": "vg"}.get(top, top)


def content_digest(rec: dict) -> str:
    """A short digest of what a record says (image and turns), independent of JSON formatting."""
    h = hashlib.blake2b(digest_size=6)
    h.update(str(rec.get("image") or "").encode())
    for turn in rec.get("conversations") or []:
        if isinstance(turn, dict):
            h.update(b"\x1e" + str(turn.get("from")).encode() + b"\x1f" + str(turn.get("value")).encode())
    return h.hexdigest()


def _invalid(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return f"record is a {type(rec).__name__}, not an object"
    if not isinstance(rec.get("conversations"), list):
        return "record has no 'conversations' list"
    return None


@dataclass
class LlavaIndex:
    """What one pass over the file learns: each record's source id, sub-dataset and byte span."""

    ids: list[str] = field(default_factory=list)
    subsources: list[str] = field(default_factory=list)
    starts: array = field(default_factory=lambda: array("Q"))
    ends: array = field(default_factory=lambda: array("Q"))
    invalid: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.ids)


def scan(path: Path) -> LlavaIndex:
    """Index a LLaVA JSON file in one streaming pass (plus a re-read of records whose id repeats)."""
    idx = LlavaIndex()
    raw_ids: list[str | None] = []
    for i, (rec, start, end) in enumerate(iter_json_array(path)):
        idx.starts.append(start)
        idx.ends.append(end)
        if _invalid(rec):
            idx.invalid.add(i)
            rid = rec.get("id") if isinstance(rec, dict) else None
            raw_ids.append(f"#{i}" if rid is None else str(rid))
            idx.subsources.append("invalid")
            continue
        rid = rec.get("id")
        raw_ids.append(None if rid is None or rid == "" else str(rid))
        idx.subsources.append(source_of_image(rec.get("image")))
    counts = Counter(r for i, r in enumerate(raw_ids) if r is not None and i not in idx.invalid)
    idx.ids = list(raw_ids)  # type: ignore[arg-type]
    # Repeated or missing ids: name the record by its content. Records equal in content are
    # interchangeable, so numbering those in file order cannot change which content a key holds.
    redo = [i for i, r in enumerate(raw_ids) if i not in idx.invalid and (r is None or counts[r] > 1)]
    if redo:
        seen: Counter = Counter()
        with open(path, "rb") as f:
            reader = SpanReader(f)
            for i in redo:
                rec = json.loads(reader.read(idx.starts[i], idx.ends[i]))
                base = f"{raw_ids[i] or 'noid'}#{content_digest(rec)}"
                seen[base] += 1
                idx.ids[i] = base if seen[base] == 1 else f"{base}#{seen[base] - 1}"
    return idx


class LlavaJsonSource(Source):
    name = "llava-json"

    def __init__(self, path: str | Path, image_root: str | Path | None = None, split: str = "train"):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"LLaVA JSON file not found: {self.path}")
        self.image_root = Path(image_root) if image_root else self.path.parent
        if not self.image_root.is_dir():
            raise SourceError(f"image root not found: {self.image_root}")
        self.split = split
        with open(self.path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not head.startswith(b"["):
            raise SourceError(f"{self.path} is not a LLaVA JSON list (it must start with '[')")
        self._index: LlavaIndex | None = None

    def index(self) -> LlavaIndex:
        """The file's index (one streaming pass, done once)."""
        if self._index is None:
            self._index = scan(self.path)
        return self._index

    def splits(self) -> list[str]:
        return [self.split]

    def count(self, split: str) -> int:
        return len(self.index())

    def records(self, split: str) -> Iterator[Record]:
        idx = self.index()
        for i, (rec, _, _) in enumerate(iter_json_array(self.path)):
            sid = idx.ids[i]
            problem = _invalid(rec)
            if problem:
                yield {"source_id": sid, "index": i, "invalid": problem}
                continue
            image = rec.get("image")
            yield {"source_id": sid, "index": i, "record": rec,
                   "file": str(self.image_root / image) if image else None,
                   "subsource": idx.subsources[i]}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path.name}
