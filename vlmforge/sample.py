"""The records that flow through a build: `Sample` (kept) and `Reject` (dropped, with a reason).

On disk a sample is a group of tar members sharing one key: `<key>.jpg`, `<key>.json`, and whatever
extra members a builder adds (`<key>.mask.png`, `<key>.orig.jpg`). Keys are lower-case and hold no
dots, because WebDataset splits a member name at its first dot into key and field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

IMAGE_FIELDS = ("jpg", "png", "webp")
_KEY_CHARS = re.compile(r"[^a-z0-9_-]+")
MAX_KEY = 95  # '<key>.json' fits the 100 bytes of a tar member name


def make_key(*parts: Any) -> str:
    """A stable sample key from source ids: lower-case, `[a-z0-9_-]` only, parts joined by `_`.

    When cleaning changed the text (so two different ids could collide), or the key is longer than
    MAX_KEY and is cut, a short hash of the original text is appended, keeping the key unique and
    still derived only from the ids.
    """
    raw = "_".join(str(p) for p in parts)
    clean = _KEY_CHARS.sub("-", raw.lower()).strip("-") or "sample"
    if clean != raw or len(clean) > MAX_KEY:  # a long key is cut, and keeps its hash to stay unique
        clean = f"{clean[:MAX_KEY - 9]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return clean


def dumps_json(doc: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, compact, UTF-8. Identical input gives identical bytes."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Sample:
    """One training/test example.

    `image` holds encoded bytes (never a decoded array) so that workers ship compact payloads and the
    writer copies them as they are. `columns` are the builder's own manifest columns. `image_file`
    names the file `image` was read from, unchanged (a passthrough image): the worker may then send
    the writer a FileSpan instead of the bytes (see finish_results). finish_results() also encodes
    `doc` into `doc_json`, the json member's bytes; from then on `doc_json` is what gets written, and
    a sample sent to another process carries only it (`doc` arrives as None).
    """

    key: str
    doc: dict[str, Any]
    image: "bytes | FileSpan | None" = None
    image_ext: str = "jpg"
    width: int | None = None
    height: int | None = None
    source_id: str = ""
    extras: dict[str, bytes] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    image_sha256: str | None = None  # filled by finish_results() in the worker that made the sample
    image_file: str | None = None  # the file `image` holds unchanged, when it is a passthrough image
    doc_json: bytes | None = None  # `doc` encoded (dumps_json), by finish_results(); the json member
    json_sha256: str | None = None  # sha256 of doc_json, by finish_results()

    def members(self) -> list[tuple[str, "bytes | FileSpan"]]:
        """Tar members in a fixed order: image, extras (sorted), json last."""
        out: list[tuple[str, bytes]] = []
        if self.image is not None:
            out.append((self.image_ext, self.image))
        if self.extras:
            out.extend(sorted(self.extras.items()))
        out.append(("json", self.doc_json if self.doc_json is not None else dumps_json(self.doc)))
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Once finish_results() has encoded the doc, the encoded bytes travel alone (the writer
        # process receives `doc=None`): a nested dict costs the writer ~7 us a sample to unpickle,
        # the bytes under 1 us (bench/shards.py).
        if self.doc_json is not None:
            return {**self.__dict__, "doc": None}
        return self.__dict__

    def __copy__(self) -> "Sample":  # copies keep `doc` (only pickling drops it)
        new = object.__new__(Sample)
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> "Sample":
        import copy

        new = object.__new__(Sample)
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


@dataclass
class Reject:
    """An input that did not become a sample, and why. Lands in the build's `rejects` table."""

    source_id: str
    reason: str
    stage: str = ""
    detail: str = ""


@dataclass(frozen=True)
class FileSpan:
    """A member's bytes by reference: the first `size` bytes of the file at `path`. The tar writer
    copies them file to file inside the kernel (copy_file_range), so a passthrough image is neither
    pickled from worker to writer nor copied through user space."""

    path: str
    size: int

    def __len__(self) -> int:
        return self.size


def finish_results(results: list[list["Sample | Reject"]], by_reference: bool = False) -> list[list["Sample | Reject"]]:
    """Per-sample work that belongs in the worker, not the single writer: the image digest and the
    json member (encoded, and its digest). With
    `by_reference` (a writer on the same machine, reading the same files), a passthrough image is then
    replaced by a FileSpan of its file. Executors call this on each batch's results before sending them."""
    for per_record in results:
        for r in per_record:
            if not isinstance(r, Sample):
                continue
            r.doc_json = dumps_json(r.doc)
            r.json_sha256 = hashlib.sha256(r.doc_json).hexdigest()
            if isinstance(r.image, bytes):
                if r.image_sha256 is None:
                    r.image_sha256 = hashlib.sha256(r.image).hexdigest()
                if by_reference and r.image_file:
                    r.image = FileSpan(r.image_file, len(r.image))
    return results
