"""LLaVA instruction JSON (the `llava_v1_5_mix665k.json` format), streamed record by record.

Each record has `id`, an optional `image` path relative to an image root, and `conversations` of
human/gpt turns with `<image>` in the first human turn; text-only records have no image. The file is
parsed incrementally with ijson, so a 1 GB file never sits in memory whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import ijson

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source


def source_of_image(image: str | None) -> str:
    """The sub-dataset a mix665k record comes from, by its image path: coco, gqa, ocr_vqa, textvqa,
    vg, or text-only."""
    if not image:
        return "text-only"
    top = image.replace("\\", "/").split("/", 1)[0].lower()
    return {"coco": "coco", "gqa": "gqa", "ocr_vqa": "ocr_vqa", "textvqa": "textvqa", "vg": "vg"}.get(top, top)


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
            head = f.read(4096).lstrip()
        if not head.startswith(b"["):
            raise SourceError(f"{self.path} is not a LLaVA JSON list (it must start with '[')")

    def splits(self) -> list[str]:
        return [self.split]

    def records(self, split: str) -> Iterator[Record]:
        seen: dict[str, int] = {}
        with open(self.path, "rb") as f:
            try:
                for index, rec in enumerate(ijson.items(f, "item", use_float=True)):
                    if not isinstance(rec, dict) or "conversations" not in rec:
                        yield {"source_id": f"#{index}", "invalid": "record has no 'conversations' list"}
                        continue
                    rid = str(rec.get("id", index))
                    # ids repeat in mix665k (the same image in several sub-datasets); keep keys unique.
                    n = seen.get(rid, 0)
                    seen[rid] = n + 1
                    uid = rid if n == 0 else f"{rid}#{n}"
                    yield {"source_id": uid, "index": index, "record": rec,
                           "file": str(self.image_root / rec["image"]) if rec.get("image") else None,
                           "subsource": source_of_image(rec.get("image"))}
            except ijson.JSONError as e:
                raise SourceError(f"{self.path} is not valid JSON: {e}") from None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path.name}
