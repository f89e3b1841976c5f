"""`vlmforge verify`: re-hash every shard and check shards and manifest agree key by key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlmforge.manifests.read import Build, manifest_part_problems, split_member
from vlmforge.progress import progress_bar


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _tar_keys(path: Path) -> list[str]:
    import tarfile

    keys: list[str] = []
    with tarfile.open(path, "r|") as tf:
        for m in tf:
            key, _ = split_member(m.name)
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def verify_build(build: Build, quiet: bool = False) -> list[str]:
    """Every problem found, as one line each; an empty list means the build is intact."""
    problems: list[str] = []
    listed = {s["shard"] for s in build.info["shards"]}
    on_disk = {p.name for p in build.path.glob("*.tar")}
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra}: shard on disk but not in build.json")
    bad_parts = manifest_part_problems(build)
    problems += [f"{path}: manifest part {what}" for path, what in bad_parts.items()]
    total = sum(s["bytes"] for s in build.info["shards"])
    with progress_bar("verify", total=total, disable=quiet) as advance:
        for s in build.info["shards"]:
            path = build.path / s["shard"]
            if not path.exists():
                problems.append(f"{s['shard']}: missing")
                continue
            size = path.stat().st_size
            if size != s["bytes"]:
                problems.append(f"{s['shard']}: {size} bytes, build.json says {s['bytes']}")
            digest = _sha256_file(path)
            if digest != s["sha256"]:
                problems.append(f"{s['shard']}: sha256 {digest[:12]}... differs from build.json's {s['sha256'][:12]}...")
            part = build.path / "manifest" / s["shard"].replace(".tar", ".parquet")
            rejects = part.with_name(part.name.replace(".parquet", ".rejects.parquet"))
            if f"manifest/{rejects.name}" not in bad_parts and pq.read_metadata(rejects).num_rows != s["rejects"]:
                problems.append(f"{rejects.name}: {pq.read_metadata(rejects).num_rows} rejects, build.json says {s['rejects']}")
            if f"manifest/{part.name}" in bad_parts:
                advance(s["bytes"])
                continue
            try:
                rows = pq.read_table(part, columns=["key"]).column("key").to_pylist()
            except (pa.ArrowException, OSError) as e:  # damaged inside, with an intact footer
                problems.append(f"manifest/{part.name}: manifest part unreadable ({str(e).splitlines()[0]})")
                advance(s["bytes"])
                continue
            try:
                keys = _tar_keys(path)
            except Exception as e:  # a damaged tar is a finding, not a crash
                problems.append(f"{s['shard']}: unreadable tar ({e})")
                advance(s["bytes"])
                continue
            if keys != rows:
                missing = sorted(set(rows) - set(keys))
                unlisted = sorted(set(keys) - set(rows))
                detail = []
                if missing:
                    detail.append(f"{len(missing)} manifest keys not in the shard (e.g. {missing[0]})")
                if unlisted:
                    detail.append(f"{len(unlisted)} shard keys not in the manifest (e.g. {unlisted[0]})")
                if not detail:
                    detail.append("keys in a different order")
                problems.append(f"{s['shard']}: " + "; ".join(detail))
            if len(rows) != s["samples"]:
                problems.append(f"{s['shard']}: manifest has {len(rows)} rows, build.json says {s['samples']}")
            advance(s["bytes"])
    return problems
