"""`vlmforge verify`: re-hash every shard and manifest part, check shards and manifest agree sample by
sample, and that manifest.duckdb (the index queries read) holds what the manifest parts and build.json hold."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.errors import UserError
from vlmforge.manifests.finalize import MANIFEST_DB, write_index
from vlmforge.manifests.read import Build, manifest_part_problems, split_member
from vlmforge.manifests.writer import file_sha256, part_paths
from vlmforge.progress import console, progress_bar

# Manifest columns a shard's bytes can confirm: where each sample is and what its image and json hash to.
_CHECKED = ["key", "offset", "sample_bytes", "image_format", "image_sha256", "json_sha256"]


class _HashingReader:
    """A binary file read once for both the tar parse and the whole file's sha256."""

    def __init__(self, f) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        return data

    def hexdigest(self) -> str:
        """The file's sha256, reading what the tar parse left (the end-of-archive blocks, or all after a
        damaged member)."""
        for block in iter(lambda: self.f.read(1 << 22), b""):
            self.sha.update(block)
        return self.sha.hexdigest()


def _tar_samples(fileobj) -> list[dict]:
    """{"key", "offset", "sample_bytes", "sha256": {field: hex}} of each sample of a shard, in file order."""
    import tarfile

    out: list[dict] = []
    with tarfile.open(fileobj=fileobj, mode="r|") as tf:
        end = 0
        for m in tf:
            key, fld = split_member(m.name)
            if not out or out[-1]["key"] != key:
                if out:
                    out[-1]["sample_bytes"] = m.offset - out[-1]["offset"]
                out.append({"key": key, "offset": m.offset, "sha256": {}})
            if m.isfile():
                out[-1]["sha256"][fld] = hashlib.sha256(tf.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            end = m.offset_data + m.size + (-m.size % 512)
        if out:
            out[-1]["sample_bytes"] = end - out[-1]["offset"]
    return out


def _row_mismatch(row: dict, sample: dict) -> str | None:
    """What of a manifest row the shard's sample contradicts, or None."""
    if (row.get("offset"), row.get("sample_bytes")) != (sample["offset"], sample["sample_bytes"]):
        return (f"the manifest places it at byte {row.get('offset')} ({row.get('sample_bytes')} bytes), "
                f"the shard at byte {sample['offset']} ({sample['sample_bytes']} bytes)")
    fmt = row.get("image_format")
    if fmt is not None and sample["sha256"].get(fmt) != row.get("image_sha256"):
        return f"its {fmt} does not match the manifest's image_sha256" if fmt in sample["sha256"] else f"it has no {fmt} member"
    if "json_sha256" in row and sample["sha256"].get("json") != row["json_sha256"]:
        return "its json does not match the manifest's json_sha256"
    return None


def _sample_problems(shard: str, rows: list[dict], samples: list[dict]) -> list[str]:
    if [r["key"] for r in rows] != [s["key"] for s in samples]:
        keys, listed = [s["key"] for s in samples], [r["key"] for r in rows]
        missing = sorted(set(listed) - set(keys))
        unlisted = sorted(set(keys) - set(listed))
        detail = []
        if missing:
            detail.append(f"{len(missing)} manifest keys not in the shard (e.g. {missing[0]})")
        if unlisted:
            detail.append(f"{len(unlisted)} shard keys not in the manifest (e.g. {unlisted[0]})")
        return [f"{shard}: " + ("; ".join(detail) or "keys in a different order")]
    bad = [(r["key"], why) for r, s in zip(rows, samples) if (why := _row_mismatch(r, s))]
    if not bad:
        return []
    key, why = bad[0]
    more = f" (and {len(bad) - 1} more samples)" if len(bad) > 1 else ""
    return [f"{shard}: sample {key}: {why}{more}"]


def builder_columns(name: str) -> list:
    """The builder's own manifest columns (for an index of a build without samples), [] for an unknown builder."""
    from vlmforge.builders import get_builder

    try:
        return get_builder(name).columns
    except UserError:
        return []


def index_problems(build: Build) -> list[str]:
    """manifest.duckdb against an index made afresh from the manifest parts and build.json: an edited or
    stale index would answer queries (`manifest query`, show, report, train --where) with other rows."""
    db = build.path / MANIFEST_DB
    if not db.exists():  # made from the parts when first read
        return []
    reindex = f"`vlmforge manifest reindex {build.path}` remakes the index from the parts"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest").symlink_to((build.path / "manifest").resolve())
        try:
            fresh = write_index(Path(tmp), build.info, builder_columns(build.info["builder"]))
        except duckdb.Error:  # a part damaged inside: reported with its shard
            return []
        con = duckdb.connect()
        try:
            con.execute(f"ATTACH {_sql_text(fresh)} AS ref (READ_ONLY)")
            try:
                con.execute(f"ATTACH {_sql_text(db)} AS idx (READ_ONLY)")
            except duckdb.Error as e:
                return [f"{MANIFEST_DB}: unreadable ({str(e).splitlines()[0]}); {reindex}"]
            found = [_table_difference(con, t) for t in ("samples", "rejects", "shards", "builds")]
            return [f"{MANIFEST_DB}: {p}; one of them was edited: {reindex}, or rebuild with --overwrite"
                    for p in found if p]
        finally:
            con.close()


def _sql_text(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _table_difference(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    def columns(db: str) -> list[tuple]:
        return con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = ? "
                           "AND table_name = ? ORDER BY ordinal_position", [db, table]).fetchall()

    origin = "the manifest parts" if table in ("samples", "rejects") else "build.json"
    have, want = columns("idx"), columns("ref")
    if not have:
        return f"table {table} is missing"
    if have != want:
        return f"table {table} has other columns than {origin} ({', '.join(n for n, _ in have)})"
    extra = f"SELECT * FROM idx.{table} EXCEPT ALL SELECT * FROM ref.{table}"
    lost = f"SELECT * FROM ref.{table} EXCEPT ALL SELECT * FROM idx.{table}"
    n_extra, n_lost = (con.execute(f"SELECT count(*) FROM ({q})").fetchone()[0] for q in (extra, lost))
    if not n_extra and not n_lost:
        return None
    name = {"samples": "key", "rejects": "source_id", "shards": "shard", "builds": "build_id"}[table]
    eg = con.execute(f"SELECT {name} FROM ({extra} UNION ALL {lost}) ORDER BY 1 LIMIT 1").fetchone()[0]
    counts = ([f"{n_extra} row(s) only in {MANIFEST_DB}"] if n_extra else []) + ([f"{n_lost} only in {origin}"] if n_lost else [])
    return f"table {table} disagrees with {origin} ({', '.join(counts)}; e.g. {name} {eg})"


def identity_problems(build: Build) -> list[str]:
    """build.json's build id against the hash of its builder, version, config, source fingerprint and parents:
    an edited config (which the card and report print) no longer matches the id."""
    from vlmforge.builders.base import build_id_of

    try:
        want = build_id_of(build.info)
    except KeyError as e:
        return [f"build.json: lacks {e.args[0]}"]
    if want != build.build_id:
        return [f"build.json: build id {build.build_id} is not the hash of its builder, version, config, source "
                f"fingerprint and parents ({want}): build.json was edited"]
    return []


def split_problems(build: Build) -> list[str]:
    """build.json's per-split counts (what stats, the card and the report print) against its shard list."""
    sums: dict[str, dict[str, int]] = {}
    for s in build.info["shards"]:
        agg = sums.setdefault(s["split"], {"samples": 0, "rejects": 0, "shards": 0, "bytes": 0})
        for k in ("samples", "rejects", "bytes"):
            agg[k] += s.get(k, 0)
        agg["shards"] += 1
    out = []
    for split in sorted(set(sums) | set(build.info["splits"])):
        have, want = build.info["splits"].get(split, {}), sums.get(split, {})
        wrong = [f"{k} {have.get(k)} (its shards: {want.get(k, 0)})" for k in ("samples", "rejects", "shards", "bytes")
                 if have.get(k) != want.get(k, 0)]
        if wrong:
            out.append(f"build.json: split {split} records " + ", ".join(wrong))
    return out


_SHARD_FIELDS = ("shard", "split", "samples", "rejects", "bytes", "sha256")
_PART_FIELDS = ("manifest_sha256", "rejects_sha256")


def has_part_hashes(build: Build) -> bool:
    """Whether build.json records its manifest parts' sha256 (builds made before it did do not)."""
    return any(isinstance(s, dict) and k in s for s in build.info["shards"] for k in _PART_FIELDS)


def entry_problems(build: Build) -> list[str]:
    """Shard entries of build.json that lack a field the other checks read (an edited build.json)."""
    out = []
    fields = _SHARD_FIELDS + (_PART_FIELDS if has_part_hashes(build) else ())
    for i, s in enumerate(build.info["shards"]):
        lacks = [k for k in fields if k not in s] if isinstance(s, dict) else list(fields)
        if lacks:
            name = s.get("shard", f"number {i}") if isinstance(s, dict) else f"number {i}"
            out.append(f"build.json: shard entry {name} lacks {', '.join(lacks)}")
    return out


def verify_build(build: Build, quiet: bool = False) -> list[str]:
    """Every problem found, as one line each; an empty list means the build is intact."""
    entries = entry_problems(build)
    if entries:  # the checks below read every entry's fields
        return identity_problems(build) + entries
    problems: list[str] = identity_problems(build) + split_problems(build)
    listed = {s["shard"] for s in build.info["shards"]}
    on_disk = {p.name for p in build.path.glob("*.tar")}
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra}: shard on disk but not in build.json")
    bad_parts = manifest_part_problems(build)
    problems += [f"{path}: manifest part {what}" for path, what in bad_parts.items()]
    edited: list[str] = []
    total = sum(s["bytes"] for s in build.info["shards"])
    with progress_bar("verify", total=total, disable=quiet) as advance:
        for s in build.info["shards"]:
            edited += _part_hash_problems(build, s, bad_parts)
            problems += _shard_problems(build, s, bad_parts)
            advance(s["bytes"])
    problems += edited
    if not bad_parts and not edited:  # an index made from edited parts would only carry the edit on
        problems += index_problems(build)
    if not quiet and build.info["shards"] and not has_part_hashes(build):
        console.print("note: build.json records no sha256 of the manifest parts (a build made before vlmforge "
                      "recorded them): their builder columns and rejects are not checked", highlight=False)
    return problems


def _part_hash_problems(build: Build, s: dict, bad_parts: dict[str, str]) -> list[str]:
    """Each manifest part of shard `s` whose sha256 is not build.json's: its rows were edited (a changed
    label or reason, which the shard's bytes cannot show) or the file replaced."""
    out = []
    for field, path in part_paths(build.path, s["shard"]).items():
        name = f"manifest/{path.name}"
        if field in s and name not in bad_parts and (digest := file_sha256(path)) != s[field]:
            out.append(f"{name}: sha256 {digest[:12]}... differs from build.json's {str(s[field])[:12]}...: "
                       "the manifest part was edited or replaced")
    return out


def edited_parts(build: Build) -> list[str]:
    """The manifest parts whose sha256 is not build.json's, one line each (none for a build whose
    build.json records no part hashes)."""
    out: list[str] = []
    for s in build.info["shards"]:
        if isinstance(s, dict) and "shard" in s:
            out += _part_hash_problems(build, s, {})
    return out


def _shard_problems(build: Build, s: dict, bad_parts: dict[str, str]) -> list[str]:
    path = build.path / s["shard"]
    if not path.exists():
        return [f"{s['shard']}: missing"]
    problems = []
    size = path.stat().st_size
    if size != s["bytes"]:
        problems.append(f"{s['shard']}: {size} bytes, build.json says {s['bytes']}")
    with open(path, "rb") as f:  # read once: the members' hashes and the file's
        reader = _HashingReader(f)
        try:
            samples: list[dict] | Exception = _tar_samples(reader)
        except Exception as e:  # a damaged tar is a finding, not a crash
            samples = e
        digest = reader.hexdigest()
    if digest != s["sha256"]:
        twin = next((t["shard"] for t in build.info["shards"] if t["sha256"] == digest), None)
        problems.append(f"{s['shard']}: sha256 {digest[:12]}... differs from build.json's {s['sha256'][:12]}..."
                        + (f" (it is build.json's {twin}: shards swapped or copied over)" if twin else ""))
    part = build.path / "manifest" / s["shard"].replace(".tar", ".parquet")
    rejects = part.with_name(part.name.replace(".parquet", ".rejects.parquet"))
    if f"manifest/{rejects.name}" not in bad_parts and pq.read_metadata(rejects).num_rows != s["rejects"]:
        problems.append(f"{rejects.name}: {pq.read_metadata(rejects).num_rows} rejects, build.json says {s['rejects']}")
    if f"manifest/{part.name}" in bad_parts:
        return problems
    try:
        names = set(pq.read_schema(part).names)
        rows = pq.read_table(part, columns=[c for c in _CHECKED if c in names]).to_pylist()
    except (pa.ArrowException, OSError) as e:  # damaged inside, with an intact footer
        return problems + [f"manifest/{part.name}: manifest part unreadable ({str(e).splitlines()[0]})"]
    if isinstance(samples, Exception):
        return problems + [f"{s['shard']}: unreadable tar ({samples})"]
    problems += _sample_problems(s["shard"], rows, samples)
    if len(rows) != s["samples"]:
        problems.append(f"{s['shard']}: manifest has {len(rows)} rows, build.json says {s['samples']}")
    return problems
