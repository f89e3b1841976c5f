"""Finish a build: build.json from the shards' stats, then manifest.duckdb, then a summary.

build.json and the Parquet parts are the record of the build and are byte-identical across rebuilds;
build.json holds the sha256 of every shard and manifest part (`verify` checks them).
manifest.duckdb is an index made from them (DuckDB files carry layout details of their own), holding
the tables `samples`, `rejects`, `shards` and `builds`; `vlmforge manifest reindex` remakes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb

from vlmforge import __version__
from vlmforge.manifests.schema import BASE_COLUMNS, REJECT_COLUMNS
from vlmforge.manifests.writer import complete_shards, file_sha256, part_paths
from vlmforge.progress import console

BUILD_JSON = "build.json"
MANIFEST_DB = "manifest.duckdb"


def finalize_build(build_dir: Path, ident: dict[str, Any], builder, quiet: bool = False) -> Path:
    from vlmforge.builders.base import PENDING

    shards: list[dict] = []
    for split in builder.src.splits():
        shards.extend(complete_shards(build_dir, split))
    for s in shards:
        for field, path in part_paths(build_dir, s["shard"]).items():
            if field not in s:  # a shard completed by an earlier vlmforge, before a resume
                s[field] = file_sha256(path)
    columns = {name: desc for name, _, desc in BASE_COLUMNS + builder.columns}
    splits: dict[str, dict[str, int]] = {}
    for s in shards:
        agg = splits.setdefault(s["split"], {"samples": 0, "rejects": 0, "shards": 0, "bytes": 0})
        agg["samples"] += s["samples"]
        agg["rejects"] += s["rejects"]
        agg["shards"] += 1
        agg["bytes"] += s["bytes"]
    info = {
        **ident,
        "description": builder.description,
        "package_version": __version__,
        "columns": columns,
        "splits": splits,
        "shards": [{k: s[k] for k in ("shard", "split", "samples", "rejects", "bytes", "sha256", "input_start", "input_end",
                                      "manifest_sha256", "rejects_sha256")}
                   for s in shards],
        "parent_builds": list(getattr(builder.src, "parent_infos", [])),
    }
    write_index(build_dir, info, builder.columns)
    tmp = build_dir / (BUILD_JSON + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, build_dir / BUILD_JSON)
    (build_dir / PENDING).unlink(missing_ok=True)
    if not quiet:
        print_summary(build_dir, info)
        for note in getattr(builder.src, "notes", []):
            console.print(f"  [yellow]note:[/] {note}")
    return build_dir


def _parts(build_dir: Path, rejects: bool) -> list[str]:
    mdir = build_dir / "manifest"
    suffix = ".rejects.parquet" if rejects else ".parquet"
    out = []
    for p in sorted(mdir.glob("*.parquet")):
        if p.name.endswith(".rejects.parquet") == rejects and p.name.endswith(suffix):
            out.append(str(p))
    return out


def _sql_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_list(t):
        return _sql_type(t.value_type) + "[]"
    return "VARCHAR"


def _create_from_parts(con, table: str, parts: list[str], columns) -> None:
    if parts:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet(?, union_by_name=true)", [parts])
    else:
        # Quoted: some column names are SQL keywords (`offset`).
        cols = ", ".join(f'"{name}" {_sql_type(typ)}' for name, typ, _ in columns)
        con.execute(f"CREATE TABLE {table} ({cols})")


def write_index(build_dir: Path, info: dict[str, Any], builder_columns=None) -> Path:
    """(Re)make manifest.duckdb from the Parquet parts and build.json's content."""
    tmp = build_dir / (MANIFEST_DB + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        extra = builder_columns or []
        _create_from_parts(con, "samples", _parts(build_dir, rejects=False), BASE_COLUMNS + extra)
        _create_from_parts(con, "rejects", _parts(build_dir, rejects=True), REJECT_COLUMNS)
        shard_rows = info["shards"]
        con.execute("CREATE TABLE shards (shard VARCHAR, split VARCHAR, samples BIGINT, rejects BIGINT, "
                    "bytes BIGINT, sha256 VARCHAR, input_start BIGINT, input_end BIGINT)")
        if shard_rows:
            con.executemany("INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [[s["shard"], s["split"], s["samples"], s["rejects"], s["bytes"], s["sha256"],
                              s["input_start"], s["input_end"]] for s in shard_rows])
        con.execute("CREATE TABLE builds (build_id VARCHAR, builder VARCHAR, version VARCHAR, "
                    "source_fingerprint VARCHAR, package_version VARCHAR, parents VARCHAR[], config VARCHAR, "
                    "is_this_build BOOLEAN)")
        rows = [info] + [p for p in info.get("parent_builds", []) if isinstance(p, dict)]
        for i, b in enumerate(rows):
            con.execute("INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [b.get("build_id"), b.get("builder"), b.get("version"), b.get("source_fingerprint"),
                         b.get("package_version"), list(b.get("parents", [])),
                         json.dumps(b.get("config", {}), sort_keys=True), i == 0])
    finally:
        con.close()
    os.replace(tmp, build_dir / MANIFEST_DB)
    return build_dir / MANIFEST_DB


def print_summary(build_dir: Path, info: dict[str, Any]) -> None:
    samples = sum(s["samples"] for s in info["splits"].values())
    rejects = sum(s["rejects"] for s in info["splits"].values())
    console.print(
        f"[green]built[/] {build_dir}  build {info['build_id']}: "
        f"{samples} samples in {len(info['shards'])} shards, {rejects} rejected"
    )
    if not samples and not rejects:
        console.print("  [yellow]note:[/] the source gave no record: an empty build "
                      "(e.g. a --where, --parent-split, fraction or count that selected nothing)")
    if rejects:
        con = duckdb.connect(str(build_dir / MANIFEST_DB), read_only=True)
        try:
            for reason, n in con.execute("SELECT reason, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1").fetchall():
                console.print(f"  rejected {n:>6}  {reason}")
        finally:
            con.close()
        if not samples:  # e.g. a model endpoint that answered nothing usable: not a success to skim past
            console.print("  [yellow]warning:[/] no sample was built: every input was rejected "
                          f"(vlmforge manifest query {build_dir} \"SELECT * FROM rejects\" shows why)", highlight=False)
