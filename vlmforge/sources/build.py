"""A finished build as the source of a derived build (split, subset, mix, rounds, trials).

Records are manifest rows (optionally filtered by a SQL condition), in shard order. A worker reads a
sample's bytes straight from its shard at the manifest's offset, so records stay small and derived
builds parallelise like any other. Lineage: the parent's build id lands in `parents`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import UserError
from vlmforge.manifests.read import Build, open_build, read_sample_at, shard_problems
from vlmforge.sources.base import Record, Source


class BuildSource(Source):
    def __init__(self, path: str | Path, where: str | None = None, splits: list[str] | None = None):
        self.build: Build = open_build(path)
        self.where = where
        self.name = f"build:{self.build.build_id}"
        self.parents = [self.build.build_id]
        self.parent_infos = [{k: v for k, v in self.build.info.items() if k not in ("shards", "columns", "parent_builds")}]
        all_splits = list(self.build.info["splits"])
        self._splits = [s for s in all_splits if splits is None or s in splits]
        # The chosen splits are part of what the derived build reads, hence of its identity; None
        # when all are read, so that builds reading the whole parent keep their build ids.
        self.chosen_splits = self._splits if self._splits != all_splits else None
        missing = shard_problems(self.build.path, self.build.info) + [
            f"{name}: missing" for name in ("manifest/" + s["shard"].replace(".tar", ".parquet") for s in self.build.info["shards"])
            if not (self.build.path / name).is_file()]
        if missing:
            raise UserError(f"parent build {self.build.path} is incomplete ({missing[0]}): "
                            f"run vlmforge verify {self.build.path}")
        rows = dict(self.build.sql("SELECT split, count(*) FROM samples GROUP BY split").fetchall())
        for split, stats in self.build.info["splits"].items():
            if rows.get(split, 0) != stats.get("samples"):  # e.g. a stale manifest.duckdb
                raise UserError(f"parent build {self.build.path} is damaged: its manifest has {rows.get(split, 0)} "
                                f"samples of split {split!r}, build.json {stats.get('samples')}; run vlmforge verify {self.build.path}")
        if where:
            # Parse now, so a bad condition is one clear error before any work starts.
            import duckdb

            try:
                # Alone over every row (a ')' that would close the split's condition fails here, as
                # does a value error on any row), then as records() runs it.
                self.build.sql(f"SELECT count(*) FROM samples WHERE\n{where}\n").fetchall()
                self.build.sql(self._query("", "count(*)"), [""]).fetchall()
            except (duckdb.Error, UserError) as e:
                raise UserError(f"the condition {where!r} does not work on the manifest: {str(e).splitlines()[0]}") from None

    def splits(self) -> list[str]:
        return self._splits

    def _query(self, split: str, what: str) -> str:
        cond = f" AND (\n{self.where}\n)" if self.where else ""  # own lines: a '--' comment in it ends there
        return f"SELECT {what} FROM samples WHERE split = ?{cond}"

    def count(self, split: str) -> int:
        return int(self.build.sql(self._query(split, "count(*)"), [split]).fetchall()[0][0])

    def rows(self, split: str, what: str = "*") -> Iterator[dict[str, Any]]:
        """Manifest rows of `split` (columns `what`) in shard order, fetched in batches so that a
        large parent's manifest never sits in memory whole."""
        con = self.build.connect()
        try:
            cur = con.execute(self._query(split, what) + ' ORDER BY shard, "offset"', [split])
            names = [d[0] for d in cur.description]
            while True:
                batch = cur.fetchmany(10_000)
                if not batch:
                    break
                for row in batch:
                    yield dict(zip(names, row))
        finally:
            con.close()

    def records(self, split: str) -> Iterator[Record]:
        root = str(self.build.path)
        for rec in self.rows(split):
            rec["source_id"] = rec["key"]
            rec["build_path"] = root
            yield rec

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.build.build_id.encode())
        for s in self.build.info["shards"]:
            h.update(s["sha256"].encode())
        h.update((self.where or "").encode())
        if self.chosen_splits is not None:
            h.update(("\0splits:" + ",".join(self.chosen_splits)).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        out = {"name": "build", "build_id": self.build.build_id, "builder": self.build.info["builder"],
               "version": self.build.info["version"], "where": self.where}
        if self.chosen_splits is not None:
            out["splits"] = list(self.chosen_splits)
        return out


def load_record_sample(rec: Record) -> dict[str, Any]:
    """The parent sample of a BuildSource record, fields as bytes ('json' still encoded), checked
    against the image and json sha256 of its manifest row: a damaged parent shard stops the derived
    build with one error line instead of passing its damage on. (Other members, such as masks, have
    no hash in the manifest; `vlmforge verify` checks whole shards.)"""
    try:
        sample = read_sample_at(Path(rec["build_path"]) / rec["shard"], rec["offset"], rec["sample_bytes"])
    except ValueError:  # a damaged tar header (size or name)
        sample = {}
    problem = _damage(rec, sample)
    if problem:
        raise UserError(f"parent build {rec['build_path']} is damaged: {rec['shard']}, sample {rec['key']}: "
                        f"{problem}; run vlmforge verify {rec['build_path']}")
    return sample


def _damage(rec: Record, sample: dict[str, Any]) -> str | None:
    """How `sample` differs from what its manifest row `rec` records, or None."""
    if sample.get("__key__") != rec["key"]:
        return f"no such sample at offset {rec['offset']} (found {sample.get('__key__')!r})"
    checks = [("json", rec["json_sha256"])]
    if rec.get("image_format"):
        checks.insert(0, (rec["image_format"], rec["image_sha256"]))
    for field, digest in checks:
        data = sample.get(field)
        if data is None:
            return f"its {field} member is missing"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"its {field} bytes differ from the sha256 the manifest records"
    return None
