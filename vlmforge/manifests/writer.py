"""Pack processed inputs into shards, one manifest part per shard, with completion markers.

A split's inputs arrive in a fixed order, each as the list of samples and rejects it produced. The
writer fills `<split>-NNNNNN.tar` until the next input's samples would cross `max_samples` or
`max_bytes`, then finishes the shard: tar renamed from `.tmp`, Parquet part, rejects part, and last
`manifest/<shard>.stats.json`, the completion marker, recording which input range the shard covers
and the sha256 of the shard and of both parts (build.json copies them; `verify` checks them).
A rerun resumes after the last complete shard; since shard boundaries depend only on the inputs,
the resumed build is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.errors import BuildError
from vlmforge.manifests.schema import BASE_COLUMNS, REJECT_SCHEMA, schema_of
from vlmforge.manifests.tarwriter import BLOCK, TarWriter
from vlmforge.sample import Reject, Sample


@dataclass(frozen=True)
class ShardLimits:
    max_samples: int = 10_000
    max_bytes: int = 1 << 30


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_parquet(table: pa.Table, path: Path) -> str:
    """Write the part; returns its sha256."""
    buf = io.BytesIO()
    # Fixed writer options so the bytes depend on the rows only.
    pq.write_table(table, buf, compression="zstd", use_dictionary=True, write_statistics=True)
    data = buf.getvalue()
    _atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def part_paths(build_dir: Path, shard: str) -> dict[str, Path]:
    """A shard's manifest parts under the build.json field that holds each one's sha256."""
    part = Path(build_dir) / "manifest" / shard.replace(".tar", ".parquet")
    return {"manifest_sha256": part, "rejects_sha256": part.with_name(part.name.replace(".parquet", ".rejects.parquet"))}


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


class SplitWriter:
    """Writes the shards of one split, starting at shard `first_index` and input `first_input`."""

    def __init__(
        self,
        build_dir: Path,
        split: str,
        columns: list[tuple[str, pa.DataType, str]],
        identity: dict[str, str],
        limits: ShardLimits,
        seen_keys: set[str],
        first_index: int = 0,
    ):
        self.dir = build_dir
        self.split = split
        self.schema = schema_of(BASE_COLUMNS + columns)
        self.extra_names = [name for name, _, _ in columns]
        self.identity = identity  # builder, version, source
        self.limits = limits
        self.seen_keys = seen_keys
        self.index = first_index
        self.finished: list[dict] = []
        self._tar: TarWriter | None = None
        self._sealed: deque = deque()  # shards written whose sha256 is still running, oldest first

    # -- one shard's life -------------------------------------------------------------------
    def _open(self, input_start: int) -> None:
        self._name = shard_name(self.split, self.index)
        self._tar = TarWriter(self.dir / (self._name + ".tmp"))
        self._rows: list[dict] = []
        self._rejects: list[dict] = []
        self._input_start = input_start

    # Shards at most whose hash may still run: beyond, the writer waits for the oldest. This bounds the
    # rows held in memory and the unhashed data that must stay in the page cache, also when busy
    # workers leave the lowered-priority hashes little CPU (the wait then idles them and frees it).
    MAX_SEALED = 4

    def _close(self, input_end: int) -> None:
        """End the open shard. Its sha256 may still be running (see tarwriter._FileHasher): the shard
        is completed (renamed, manifest part, stats marker) once the hash is done, in shard order,
        while the next shards are written."""
        assert self._tar is not None
        hasher = self._tar.seal()
        self._sealed.append((hasher, self._tar.offset, self._name, self.index, self._input_start, input_end,
                             self._rows, self._rejects))
        self._tar = None
        self.index += 1
        self._complete_sealed(wait=True, keep=self.MAX_SEALED)

    def _complete_sealed(self, wait: bool, keep: int = 0) -> None:
        """Complete sealed shards, oldest first, while the oldest's hash is done; with `wait`, also wait
        for hashes until at most `keep` shards are left sealed."""
        while self._sealed and (self._sealed[0][0].done() or (wait and len(self._sealed) > keep)):
            hasher, size, name, index, input_start, input_end, rows, rejects = self._sealed.popleft()
            sha = hasher.digest()
            os.replace(self.dir / (name + ".tmp"), self.dir / name)
            parts = part_paths(self.dir, name)
            part = parts["manifest_sha256"]
            part_sha = _write_parquet(pa.Table.from_pylist(rows, schema=self.schema), part)
            rejects_sha = _write_parquet(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), parts["rejects_sha256"])
            stats = {
                "shard": name,
                "split": self.split,
                "index": index,
                "input_start": input_start,
                "input_end": input_end,
                "samples": len(rows),
                "rejects": len(rejects),
                "bytes": size,
                "sha256": sha,
                "manifest_sha256": part_sha,
                "rejects_sha256": rejects_sha,
            }
            _atomic_write_bytes(part.with_name(name.replace(".tar", ".stats.json")), json.dumps(stats, indent=1).encode())
            self.finished.append(stats)

    # -- the stream -------------------------------------------------------------------------
    def add(self, input_index: int, results: Iterable[Sample | Reject]) -> None:
        if self._sealed:
            self._complete_sealed(wait=False)
        samples: list[tuple[Sample, list[tuple[str, bytes]]]] = []
        rejects: list[Reject] = []
        size = 0
        for r in results:
            if isinstance(r, Sample):
                members = r.members()
                samples.append((r, members))
                for _, data in members:
                    n = len(data)
                    size += BLOCK + n + (-n % BLOCK)
            else:
                rejects.append(r)
        if self._tar is not None and self._rows and (
            len(self._rows) + len(samples) > self.limits.max_samples
            or self._tar.offset + size > self.limits.max_bytes
        ):
            self._close(input_end=input_index)
        if self._tar is None:
            self._open(input_start=input_index)
        for sample, members in samples:
            self._write_sample(sample, members)
        for rej in rejects:
            self._rejects.append(
                {"split": self.split, "shard": self._name, "source_id": rej.source_id,
                 "stage": rej.stage, "reason": rej.reason, "detail": rej.detail}
            )

    def _write_sample(self, sample: Sample, members: list[tuple[str, bytes]]) -> None:
        tar = self._tar
        assert tar is not None
        key = sample.key
        if "." in key or key != key.lower():
            raise ValueError(f"sample key {key!r} must be lower-case without dots")
        if key in self.seen_keys:
            raise BuildError(f"two samples share the key {key!r}: the builder must derive unique keys")
        self.seen_keys.add(key)
        start = tar.offset
        for ext, data in members:
            tar.add(f"{key}.{ext}", data)
        json_sha = sample.json_sha256 or hashlib.sha256(members[-1][1]).hexdigest()  # json is last
        image = sample.image
        row = {
            **self.identity,
            "key": key,
            "split": self.split,
            "shard": self._name,
            "offset": start,
            "source_id": sample.source_id,
            "image_sha256": (sample.image_sha256 or hashlib.sha256(image).hexdigest()) if image is not None else None,
            "image_format": sample.image_ext if image is not None else None,
            "width": sample.width,
            "height": sample.height,
            "json_sha256": json_sha,
            "sample_bytes": tar.offset - start,
        }
        if self.extra_names:
            columns = sample.columns
            for name in self.extra_names:
                row[name] = columns.get(name)
        self._rows.append(row)

    def finish(self, n_inputs: int) -> list[dict]:
        if self._tar is not None:
            self._close(input_end=n_inputs)
        self._complete_sealed(wait=True)
        return self.finished

    def abort(self) -> None:
        """Stop after an error: the open shard stays `.tmp` (a rerun redoes it); shards already written
        in full are completed once their hashes finish, so a rerun keeps them."""
        if self._tar is not None:
            self._tar.abort()
            self._tar = None
        try:
            self._complete_sealed(wait=True)
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            pass
        while self._sealed:  # a shard whose completion failed: left to the rerun
            self._sealed.popleft()[0].stop()


def complete_shards(build_dir: Path, split: str) -> list[dict]:
    """Stats of the complete shards of `split` that form an unbroken run from index 0."""
    done: list[dict] = []
    mdir = build_dir / "manifest"
    index = 0
    while True:
        stats = mdir / shard_name(split, index).replace(".tar", ".stats.json")
        if not stats.exists():
            break
        # A shard counts as done only whole: its marker readable, the tar of the size recorded and its manifest
        # parts there. Else (a file cut off, removed or damaged by hand or a full disk) the run is redone from it.
        try:
            info = json.loads(stats.read_text())
            parts = [mdir / info["shard"].replace(".tar", ext) for ext in (".parquet", ".rejects.parquet")]
            whole = (build_dir / info["shard"]).stat().st_size == info["bytes"] and all(p.exists() for p in parts)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            break
        if not whole:
            break
        done.append(info)
        index += 1
    return done


def remove_incomplete(build_dir: Path, split: str, keep: int) -> None:
    """Delete every file of `split` from shard index `keep` on (partial work of a killed run)."""
    prefix = f"{split}-"
    for folder in (build_dir, build_dir / "manifest"):
        if not folder.exists():
            continue
        for p in folder.iterdir():
            if not p.name.startswith(prefix):
                continue
            digits = p.name[len(prefix) : len(prefix) + 6]
            if digits.isdigit() and int(digits) >= keep:
                p.unlink()
