"""Manifest commands: query (read-only SQL), stats, diff, columns."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from vlmforge.errors import UserError
from vlmforge.manifests.read import check_manifest_parts, check_shards, no_samples_line, open_build, parse_tar_bytes, split_member
from vlmforge.progress import console

out_console = None


def _stdout():
    global out_console
    if out_console is None:
        from rich.console import Console

        out_console = Console()
    return out_console


def _table(title: str | None, names: list[str], rows: list[tuple]) -> Table:
    t = Table(title=title, show_lines=False)
    for n in names:
        t.add_column(n, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else escape(str(v)) for v in r])  # values are text, not rich markup
    return t


def _records(names: list[str], rows: list[tuple]) -> list[Table]:
    """One two-column table (column, value) per row: for results with more columns than fit side by side."""
    out = []
    for i, r in enumerate(rows, 1):
        t = Table(title=f"row {i}", show_header=False, title_justify="left")
        t.add_column("column", style="bold", no_wrap=True)
        t.add_column("value", overflow="fold")
        for name, v in zip(names, r):
            t.add_row(escape(name), "" if v is None else escape(str(v)))
        out.append(t)
    return out


def _print_rows(console, names: list[str], rows: list[tuple]) -> None:
    """A table when its column names fit the console's width side by side (values fold), else one block per row,
    as psql's expanded display: squeezed into the width, a wide result shows columns a letter wide and no values."""
    if sum(len(n) + 3 for n in names) + 1 <= console.width:
        console.print(_table(None, names, rows))
        return
    for t in _records(names, rows):
        console.print(t)


def duckdb_error_line(e: Exception) -> str:
    """DuckDB's message on one line, with its hint ('Did you mean "samples"?', the candidate columns)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    hints = [line for line in lines[1:] if line.startswith(("Did you mean", "Candidate bindings"))]
    return " ".join(lines[:1] + hints)


def _output_file(path: Path) -> Path:
    """`path` with its folder made; a path that cannot be written is a UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # mkdir's 'File exists' for a file in the path would hide which
        in_the_way = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
        why = f"{in_the_way} is a file, not a folder" if in_the_way else e.strerror or e
        raise UserError(f"cannot create the folder for --output {path}: {why}") from None
    return path


def _finite(value):
    """`value` with NaN and infinities as null: json.dumps writes them as NaN/Infinity, which is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _csv_cell(value):
    """Lists and structs as JSON (Python's repr, ['a'], is no format a CSV reader parses)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_finite(value), default=str, ensure_ascii=False)
    return value


def run_query(build: Path, sql: str, fmt: str, output: Path | None, limit: int = 50) -> None:
    import duckdb

    if fmt not in ("table", "csv", "json", "parquet"):
        raise UserError(f"unknown --format {fmt!r}; use table, csv, json or parquet")
    if limit < 0:
        raise UserError("--limit must be 0 or more")
    b = open_build(build)
    try:
        rel = b.sql(sql)
    except duckdb.Error as e:
        raise UserError(f"query failed: {duckdb_error_line(e)}") from None
    if rel is None:
        raise UserError("the statement returns no rows")
    if fmt == "parquet" and output is None:
        raise UserError("--format parquet needs --output FILE")
    if fmt in ("json", "parquet"):  # a JSON object keeps one value per name; Parquet readers refuse the file
        names = list(rel.columns)
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise UserError(f"the result has two columns named {twice!r}, which --format {fmt} cannot hold; "
                            f"name them apart with AS (e.g. s2.{twice} AS {twice}_2)")
    if output is not None:
        output = _output_file(output)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = rel.fetch_arrow_table()
        except duckdb.Error as e:
            raise UserError(f"query failed: {duckdb_error_line(e)}") from None
        try:
            pq.write_table(table, output)
        except OSError as e:
            raise UserError(f"cannot write --output {output}: {e}") from None
        console.print(f"[green]wrote[/] {output}")
        return
    names = list(rel.columns)
    try:
        if fmt == "table":  # shows `limit` rows: fetch those and count the rest (all of 1M rows took a minute)
            total = rel.aggregate("count(*)").fetchall()[0][0]
            rows = rel.limit(limit).fetchall()
        else:
            rows = rel.fetchall()
            total = len(rows)
    except duckdb.Error as e:
        raise UserError(f"query failed: {duckdb_error_line(e)}") from None
    try:
        stream = open(output, "w", newline="") if output else sys.stdout
    except OSError as e:
        raise UserError(f"cannot write --output {output}: {e.strerror or e}") from None
    try:
        if fmt == "csv":
            w = csv.writer(stream)
            w.writerow(names)
            w.writerows([_csv_cell(v) for v in r] for r in rows)
        elif fmt == "json":
            for r in rows:
                stream.write(json.dumps(_finite(dict(zip(names, r))), default=str, ensure_ascii=False) + "\n")
        elif fmt == "table":
            from rich.console import Console

            target = _stdout() if output is None else Console(file=stream, width=200)
            _print_rows(target, names, rows)
            if total > limit:  # also into a file: a table cut short without a word reads as all rows
                console.print(f"({total} rows, {limit} {'written' if output else 'shown'}; --limit or --format csv "
                              "for all)")
    finally:
        if output:
            stream.close()


def print_stats(build: Path) -> None:
    b = open_build(build)
    con = b.connect()
    out = _stdout()
    out.print(f"[bold]{b.info['builder']} {b.info['version']}[/]  build {b.build_id}  ({b.path})")
    # From build.json, so that a split whose inputs were all rejected (no sample rows) is listed too.
    splits = sorted(b.info["splits"].items())
    if splits:
        out.print(_table("per split", ["split", "samples", "shards", "rejects"],
                         [(s, a["samples"], a["shards"], a["rejects"]) for s, a in splits]))
    if not len(b):
        out.print(no_samples_line(b), highlight=False)
    cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'samples'").fetchall()}
    if "label" in cols:
        labels = con.execute("SELECT label, count(*) FILTER (WHERE TRUE) AS n FROM samples WHERE label IS NOT NULL "
                             "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        if labels:
            out.print(_table("per label", ["label", "samples"], labels))
    reasons = con.execute("SELECT reason, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    if reasons:
        out.print(_table("rejects by reason", ["reason", "count"], reasons))


_DIFF_COLUMNS = ["key", "image_sha256", "json_sha256", "shard", "offset", "sample_bytes", "image_format"]


def diff_builds(a: Path, b: Path) -> dict[str, list[str]]:
    """Keys only in A, only in B, keys whose image or json differ, and the other members (`<key>.mask.png`,
    `<key>.orig.jpg`, ...) that differ or exist on one side only. The manifest hashes only the image and
    the json, so a sample whose two hashes agree is compared by its bytes in both shards."""
    import pyarrow.parquet as pq

    def rows(path: Path) -> tuple[Path, dict[str, tuple], dict[str, str]]:
        bb = open_build(path)
        check_manifest_parts(bb)
        check_shards(bb.path, bb.info)  # the members of samples that agree are read from both shards
        out: dict[str, tuple] = {}
        for part in sorted((bb.path / "manifest").glob("*.parquet")):
            if part.name.endswith(".rejects.parquet"):
                continue
            t = pq.read_table(part, columns=_DIFF_COLUMNS)
            for r in zip(*(t.column(c).to_pylist() for c in _DIFF_COLUMNS)):
                out[r[0]] = r[1:]
        return bb.path, out, {s["shard"]: s["sha256"] for s in bb.info["shards"]}

    (pa, ra, sha_a), (pb, rb, sha_b) = rows(a), rows(b)
    both = sorted(set(ra) & set(rb))
    same_hashes = [k for k in both if ra[k][:2] == rb[k][:2]]
    return {
        "only_in_a": sorted(set(ra) - set(rb)),
        "only_in_b": sorted(set(rb) - set(ra)),
        "image_differs": [k for k in both if ra[k][0] != rb[k][0]],
        "json_differs": [k for k in both if ra[k][1] != rb[k][1]],
        "other_member_differs": _members_differ(pa, ra, sha_a, pb, rb, sha_b, same_hashes),
    }


def _members_differ(pa: Path, ra: dict, sha_a: dict, pb: Path, rb: dict, sha_b: dict, keys: list[str]) -> list[str]:
    """`<key>.<field>` of each member other than the image and json that differs between the two samples."""
    from contextlib import ExitStack

    out: list[str] = []
    with ExitStack() as stack:
        files: dict[Path, Any] = {}

        def read(path: Path, offset: int, size: int) -> dict[str, bytes]:
            if path not in files:
                if len(files) >= 32:  # many shards: keep few open
                    stack.close()
                    files.clear()
                try:
                    files[path] = stack.enter_context(open(path, "rb"))
                except OSError as e:
                    raise UserError(f"cannot read {path} ({e.strerror}); `vlmforge verify` checks the build") from None
            files[path].seek(offset)
            try:
                return dict(parse_tar_bytes(files[path].read(size)))
            except ValueError:  # a damaged tar header
                raise UserError(f"{path}: no readable sample at byte {offset}; `vlmforge verify` checks the build") from None

        for k in sorted(keys, key=lambda k: (ra[k][2], ra[k][3])):  # A's shards read in order
            (_, _, shard_a, off_a, n_a, img_a), (_, _, shard_b, off_b, n_b, img_b) = ra[k], rb[k]
            if sha_a[shard_a] == sha_b[shard_b] and (off_a, n_a) == (off_b, n_b):
                continue  # the same shard bytes: nothing to read
            ma, mb = read(pa / shard_a, off_a, n_a), read(pb / shard_b, off_b, n_b)
            compared = {"json", img_a, img_b}  # by the manifest's hashes
            out += [n for n in ma.keys() | mb.keys() if ma.get(n) != mb.get(n) and split_member(n)[1] not in compared]
    return sorted(out)


def print_diff(a: Path, b: Path) -> bool:
    d = diff_builds(a, b)
    out = _stdout()
    out.print(_table(f"{a} vs {b}", ["what", "count", "examples"],
                     [(k, len(v), ", ".join(v[:5])) for k, v in d.items()]))
    return any(d.values())


def print_columns(build: Path) -> None:
    b = open_build(build)
    con = b.connect()
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'samples'").fetchall())
    docs = b.info.get("columns", {})
    _stdout().print(_table("samples", ["column", "type", "description"], [(n, types.get(n, ""), d) for n, d in docs.items()]))
    _stdout().print('offset is an SQL keyword: quote it, e.g. SELECT key, "offset" FROM samples')
