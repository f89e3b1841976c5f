"""LLaVA instruction JSON (the `llava_v1_5_mix665k.json` format), streamed record by record.

Each record has `id`, an optional `image` path relative to an image root, and `conversations` of
human/gpt turns with `<image>` in the first human turn; text-only records have no image. The file is
decoded one record at a time (`jsonstream`), so a 1 GB file never sits in memory whole.

Record ids are the source ids. mix665k repeats ids (the same image in several sub-datasets, with
different conversations), so a repeated id is told apart by a digest of the record's content, not by
its position: the ids, and hence the sample keys, do not depend on the order of the records.
The fingerprint covers the file and its records' image paths and file sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from array import array
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sample import MAX_KEY, make_key
from vlmforge.sources.base import Record, Source
from vlmforge.sources.jsonstream import SpanReader, iter_json_array

SUBSOURCES = ("coco", "gqa", "ocr_vqa", "textvqa", "vg", "text-only")


def source_of_image(image: Any) -> str:
    """The sub-dataset a mix665k record comes from, by its image path (the first one of a list): coco,
    gqa, ocr_vqa, textvqa, vg, or text-only. That is the path's first folder ('./' left out; of an
    absolute path, the first of those five among its folders), else 'other'."""
    if isinstance(image, list) and image:
        image = image[0]
    if not image:
        return "text-only"
    if not isinstance(image, str):
        return "other"
    parts = [p.lower() for p in image.replace("\\", "/").split("/")[:-1] if p not in ("", ".")]
    if image.startswith("/"):
        parts = [p for p in parts if p in SUBSOURCES] or parts
    return sys.intern(parts[0]) if parts else "other"  # one string per sub-dataset, not one per record


def one_image(image: Any) -> Any:
    """A record's `image` field, a list of one path (as LLaVA-NeXT data writes some) read as that path."""
    if isinstance(image, list) and len(image) == 1 and isinstance(image[0], str):
        return image[0]
    return image


_CLEAN_KEY = re.compile(rf"[a-z0-9_][a-z0-9_-]{{0,{MAX_KEY - 1}}}")


def sample_key(source_id: str) -> str:
    """`make_key(source_id)` (the copy builder's key), quicker for ids that are keys already."""
    if _CLEAN_KEY.fullmatch(source_id) and source_id[-1] != "-":
        return source_id
    return make_key(source_id)


def content_digest(rec: dict) -> str:
    """A short digest of what a record says (image and turns), independent of JSON formatting."""
    parts = [str(rec.get("image") or "")]
    for turn in rec.get("conversations") or []:
        if isinstance(turn, dict):
            parts.append(f"{turn.get('from')}\x1f{turn.get('value')}")
    return hashlib.blake2b("\x1e".join(parts).encode(), digest_size=6).hexdigest()


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(obj: Any) -> bool:
    """Whether any text in `obj` holds a lone surrogate (a JSON escape such as \\ud800 with no pair):
    valid JSON, but no text UTF-8 can hold, so no sample or reject could be written with it."""
    kind = type(obj)
    if kind is str:
        return not obj.isascii() and _SURROGATE.search(obj) is not None
    if kind is dict:
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in obj.items())
    if kind is list:
        return any(_lone_surrogate(v) for v in obj)
    return False


def _not_a_number(obj: Any) -> bool:
    """Whether `obj` holds NaN or Infinity: Python's json reads them, but they are no JSON, and a sample
    written with one would stop strict readers (DuckDB, browsers, other languages) on the shard's json."""
    kind = type(obj)
    if kind is float:
        return not math.isfinite(obj)
    if kind is dict:
        return any(_not_a_number(v) for v in obj.values())
    if kind is list:
        return any(_not_a_number(v) for v in obj)
    return False


def _unwritable(obj: Any) -> str | None:
    """Why `obj` cannot be written as JSON text, or None."""
    if _lone_surrogate(obj):
        return "a lone surrogate escape (e.g. \\ud800), which is no text"
    if _not_a_number(obj):
        return "NaN or Infinity, which JSON does not allow"
    return None


def _surrogate_escapes(path: Path) -> bool:
    """Whether the file holds any surrogate escape (paired ones, as json.dump writes emoji, included)."""
    pattern = re.compile(rb"\\u[dD][89a-fA-F]")
    tail = b""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            if pattern.search(tail + block[:8]) or pattern.search(block):
                return True
            tail = block[-8:]
    return False


class _Constants:
    """A JSONDecoder's parse_constant hook that counts the NaN and Infinity it reads: a record whose decode
    moved the count holds one, with no walk through the records that hold none."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, name: str) -> float:
        self.seen += 1
        return float(name)


def _invalid(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return f"record is a {type(rec).__name__}, not an object"
    if not isinstance(rec.get("conversations"), list):
        return "record has no 'conversations' list"
    why = _unwritable(rec)
    return f"record holds {why}" if why else None


def _image_problem(image: Any) -> tuple[str, str] | None:
    """(reason, detail) when a record's `image` field cannot be one image file. A sample holds one
    image, so multi-image records (LLaVA-NeXT/OneVision) are rejected. A path is joined to
    --image-root as LLaVA's loader joins it to --image_folder (an absolute path stays as it is)."""
    if isinstance(image, list):
        return "multi_image", f"the record has {len(image)} images; a sample holds one"
    if not isinstance(image, str):
        return "invalid_record", f"'image' is a {type(image).__name__}, not a path"
    return None


@dataclass
class LlavaIndex:
    """What one pass over the file learns: each record's source id, sub-dataset and byte span."""

    ids: list[str] = field(default_factory=list)
    subsources: list[str] = field(default_factory=list)
    starts: array = field(default_factory=lambda: array("Q"))
    ends: array = field(default_factory=lambda: array("Q"))
    invalid: set[int] = field(default_factory=set)
    images_digest: str = ""
    missing_images: int = 0  # records whose image file is not there

    def __len__(self) -> int:
        return len(self.ids)


def scan(path: Path, image_root: Path | None = None) -> LlavaIndex:
    """Index a LLaVA JSON file in one streaming pass (plus a re-read of the first record of each
    repeated id, whose repetition shows only later). With `image_root`, the records' image paths and
    the sizes of their files are digested too (`images_digest`)."""
    idx = LlavaIndex()
    ids, subsources, starts, ends = idx.ids, idx.subsources, idx.starts, idx.ends
    surrogates = _surrogate_escapes(path)  # records are walked for lone ones only where the file has any
    constants = _Constants()
    constants_seen = 0
    first: dict[str, int] = {}  # id -> index of its first record; -1 once the id has repeated
    reread: list[int] = []
    by_content: list[int] = []  # records named by id + content digest
    images = hashlib.sha256() if image_root is not None else None
    root = str(image_root)
    for i, (rec, start, end) in enumerate(iter_json_array(path, decoder=json.JSONDecoder(parse_constant=constants))):
        starts.append(start)
        ends.append(end)
        number, constants_seen = constants.seen != constants_seen, constants.seen  # NaN or Infinity in this record
        if (type(rec) is not dict or type(rec.get("conversations")) is not list or number
                or (surrogates and _lone_surrogate(rec))):
            idx.invalid.add(i)
            rid = rec.get("id") if isinstance(rec, dict) else None
            ids.append(f"#{i}" if rid is None or _lone_surrogate(rid) else str(rid))
            subsources.append("invalid")
            continue
        subsources.append(source_of_image(rec.get("image")))
        if images is not None and not _hash_image(images, root, rec.get("image")):
            idx.missing_images += 1
        rid = rec.get("id")
        if rid is None or rid == "":
            ids.append(f"noid#{content_digest(rec)}")
            by_content.append(i)
            continue
        rid = rid if type(rid) is str else str(rid)
        j = first.get(rid)
        if j is None:
            first[rid] = i
            ids.append(rid)
            continue
        if j >= 0:
            reread.append(j)
            first[rid] = -1
        ids.append(f"{rid}#{content_digest(rec)}")
        by_content.append(i)
    del first
    if reread:
        reread.sort()
        with open(path, "rb") as f:
            reader = SpanReader(f)
            for j in reread:
                ids[j] = f"{ids[j]}#{content_digest(json.loads(reader.read(starts[j], ends[j])))}"
        by_content = sorted(by_content + reread)
    # Records equal in content are interchangeable, so numbering them in file order cannot change
    # which content a name holds.
    repeats = Counter(ids[i] for i in by_content)
    seen: Counter = Counter()
    for i in by_content:
        name = ids[i]
        if repeats[name] > 1:
            seen[name] += 1
            if seen[name] > 1:
                ids[i] = f"{name}#{seen[name] - 1}"
    if images is not None:
        idx.images_digest = images.hexdigest()
    return idx


def _hash_image(h: Any, root: str, image: Any) -> bool:
    """Fold a record's image path and file size (-1: no file) into `h`: images added, replaced or
    removed after a build make another build, as for other sources (too many to hash whole). False
    when the image file is not there."""
    image = one_image(image)
    if not image or not isinstance(image, str):
        return True
    try:
        size = os.stat(os.path.join(root, image)).st_size
    except OSError:
        size = -1
    h.update(f"{image}\0{size}\0".encode())
    return size >= 0


class LlavaJsonSource(Source):
    name = "llava-json"

    def __init__(self, path: str | Path, image_root: str | Path | None = None, split: str = "train"):
        self.path = Path(path)
        if self.path.is_dir():  # e.g. the image folder
            raise SourceError(f"--json {self.path} is a folder; give the LLaVA JSON file (a list of records)")
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
            self._index = scan(self.path, self.image_root)
        return self._index

    def __getstate__(self) -> dict[str, Any]:
        # Workers only process records; the index (tens of MB for mix665k) stays in the driver.
        state = dict(self.__dict__)
        state["_index"] = None
        return state

    def splits(self) -> list[str]:
        return [self.split]

    def count(self, split: str) -> int:
        return len(self.index())

    def records(self, split: str) -> Iterator[Record]:
        idx = self.index()
        for i, (rec, _, _) in enumerate(iter_json_array(self.path)):
            sid = idx.ids[i]
            if i in idx.invalid:  # the scan found it; _invalid says why
                yield {"source_id": sid, "index": i, "invalid": _invalid(rec)}
                continue
            image = one_image(rec.get("image"))
            out = {"source_id": sid, "index": i, "record": rec, "file": None, "subsource": idx.subsources[i]}
            problem = _image_problem(image) if image else None
            if problem:
                out["unusable"] = problem
            elif image:
                out["file"] = str(self.image_root / image)
            yield out

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        h.update(self.index().images_digest.encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path.name}

    @property
    def notes(self) -> list[str]:
        """Printed after the build's summary: a wrong or forgotten --image-root shows at once."""
        missing = self.index().missing_images
        if not missing:
            return []
        return [f"{missing} of the file's records name an image that is not under {self.image_root} "
                "(--image-root; default: the JSON file's folder)"]
