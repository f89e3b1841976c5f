"""A build report as one self-contained HTML page: identity and lineage, counts per split and label,
plots of the manifest's numeric and categorical columns, rejects by reason, and a sample gallery.

Every image is embedded as a data URI and the styles are inline, so the page opens from disk in any
browser with no server, no network and no JavaScript.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.manifests.read import Build, open_build
from vlmforge.manifests.schema import BASE_COLUMNS
from vlmforge.report import plots
from vlmforge.report.show import caption, choose_samples, load_sample, panels, save_output

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "UTINYINT",
           "USMALLINT", "UINTEGER", "UBIGINT")
BASE_NAMES = {name for name, _, _ in BASE_COLUMNS}
MAX_CATEGORIES = 50  # a string column with more distinct values is not plotted as categories
MAX_CATEGORY_CHARS = 40  # a longer value is free text (a question, a caption), and its bar label would be cut
BARS = 20


def _is_identifier(column: str) -> bool:
    """image_id, caption_id, parent_key...: values that name things; their histogram, mean or bars mean nothing."""
    return column in ("id", "key") or column.endswith(("_id", "_key"))

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#1d1d1f;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666}table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;font-size:.9em}
th{background:#f3f5f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.plots img{border:1px solid #eee}
.gallery{display:grid;gap:14px}
figure{margin:0;border:1px solid #e3e3e3;padding:6px;background:#fafafa}
figure .panels{display:flex;gap:4px}figure .panels div{font-size:.75em;color:#666}
figcaption{font-size:.85em;margin-top:4px;word-wrap:break-word}
"""


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, mime: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{_uri(data, mime)}" alt="{escape(alt)}"{w}>'


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    out = ["<table>"]
    if head:
        out += ["<thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for r in rows:
        out.append("<tr>")
        for i, c in enumerate(r):
            cls = ' class="n"' if i in numeric else ""
            text = "" if c is None else f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else str(c)
            out.append(f"<td{cls}>{escape(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _columns(con) -> dict[str, str]:
    rows = con.execute("SELECT column_name, data_type FROM information_schema.columns "
                       "WHERE table_name = 'samples' ORDER BY ordinal_position").fetchall()
    return dict(rows)


def _identity(b: Build) -> str:
    info = b.info
    rows = [["builder", info["builder"]], ["version", info["version"]], ["build id", b.build_id],
            ["vlmforge version", info.get("package_version", "")], ["source fingerprint", info.get("source_fingerprint", "")],
            ["folder", str(b.path)]]
    out = [_table([], rows), "<h3>Config</h3>", f"<pre>{escape(json.dumps(info.get('config', {}), indent=1, sort_keys=True))}</pre>",
           "<h3>Source</h3>", f"<pre>{escape(json.dumps(info.get('source', {}), indent=1, sort_keys=True))}</pre>"]
    parents = info.get("parent_builds") or []
    out.append("<h3>Lineage</h3>")
    if parents:
        out.append(_table(["build id", "builder", "version", "config", "its parents"],
                          [[p.get("build_id"), p.get("builder"), p.get("version"),
                            json.dumps(p.get("config", {}), sort_keys=True), ", ".join(p.get("parents", []))]
                           for p in parents]))
    else:
        out.append("<p>Built directly from its source (no parent build).</p>")
    return "".join(out)


def _counts(b: Build, con, cols: dict[str, str]) -> str:
    rejects = dict(con.execute("SELECT split, count(*) FROM rejects GROUP BY 1").fetchall())
    rows = [[split, agg["samples"], rejects.get(split, 0), agg["shards"], agg["bytes"]]
            for split, agg in b.info["splits"].items()]
    out = [_table(["split", "samples", "rejects", "shards", "bytes"], rows, {1, 2, 3, 4})]
    if "label" in cols:
        labels = con.execute("SELECT label, split, count(*) FROM samples WHERE label IS NOT NULL "
                             "GROUP BY 1, 2").fetchall()
        if labels:
            splits = list(b.info["splits"])
            per: dict[str, dict[str, int]] = {}
            for label, split, n in labels:
                per.setdefault(label, {})[split] = n
            ordered = sorted(per, key=lambda k: (-sum(per[k].values()), k))
            out.append(f"<h3>Labels ({len(ordered)})</h3>")
            shown = ordered[:50]
            out.append('<div class="plots">')
            out.append(_img(plots.bar_png(shown[:25], [sum(per[k].values()) for k in shown[:25]],
                                          "samples per label" + (" (top 25)" if len(ordered) > 25 else "")),
                            "image/png", "bar chart of samples per label"))
            out.append(_table(["label", *splits, "total"],
                              [[k, *[per[k].get(s, 0) for s in splits], sum(per[k].values())] for k in shown],
                              set(range(1, len(splits) + 2))))
            out.append("</div>")
            if len(ordered) > len(shown):
                out.append(f"<p class=sub>... and {len(ordered) - len(shown)} more labels.</p>")
    return "".join(out)


def _distributions(con, cols: dict[str, str], builder_cols: list[str]) -> str:
    """Histograms of numeric columns (the builder's own first, then image size) and bars of the
    builder's categorical string columns."""
    numeric = [c for c in builder_cols if cols.get(c, "").split("(")[0] in NUMERIC and not _is_identifier(c)]
    numeric += ["width", "height"]
    figs, constant = [], []

    def one_value(c: str, value: Any) -> None:
        """A column with one value says more in a sentence than in a plot, nulls counted."""
        nulls = con.execute(f'SELECT count(*) FILTER (WHERE "{c}" IS NULL) FROM samples').fetchall()[0][0]
        constant.append(f"{c} = {value}" + (f" (null in {nulls:,} samples)" if nulls else ""))

    for c in numeric:
        distinct, some = con.execute(f'SELECT count(DISTINCT "{c}"), any_value("{c}") FROM samples').fetchall()[0]
        if distinct <= 1:  # a histogram of one value says less than a sentence
            if distinct:
                one_value(c, some)
            else:
                constant.append(f"{c} is always null")
            continue
        values = con.execute(f'SELECT "{c}" FROM samples WHERE "{c}" IS NOT NULL').fetchnumpy()[c]
        figs.append(_img(plots.histogram_png(values, c, c), "image/png", f"histogram of {c}"))
    for c in builder_cols:
        if c == "label" or _is_identifier(c) or cols.get(c) not in ("VARCHAR", "BOOLEAN"):  # BOOLEAN: vg's box_clipped
            continue
        counts = con.execute(f'SELECT "{c}", count(*) FROM samples WHERE "{c}" IS NOT NULL '
                             f"GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        if len(counts) == 1:
            one_value(c, counts[0][0])
        elif 0 < len(counts) <= MAX_CATEGORIES and all(len(str(k)) <= MAX_CATEGORY_CHARS for k, _ in counts):
            top = f" (top {BARS} of {len(counts)})" if len(counts) > BARS else ""
            figs.append(_img(plots.bar_png([k for k, _ in counts[:BARS]], [n for _, n in counts[:BARS]],
                                           f"samples per {c}{top}"), "image/png", f"bar chart of {c}"))
    note = f"<p>Columns with a single value: {escape('; '.join(constant))}.</p>" if constant else ""
    return f'<div class="plots">{"".join(figs)}</div>{note}'


def _rejects(con) -> str:
    # The example's detail and input come from one reject (the first by input id), not two minima.
    rows = con.execute("SELECT reason, stage, count(*), arg_min(detail, source_id), min(source_id) FROM rejects "
                       "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2").fetchall()
    if not rows:
        return "<p>No input was rejected.</p>"
    plot = _img(plots.bar_png([f"{r[0]} ({r[1]})" for r in rows[:20]], [r[2] for r in rows[:20]], "rejects by reason"),
                "image/png", "bar chart of rejects by reason")
    table = _table(["reason", "stage", "inputs", "example detail", "example input"], [list(r) for r in rows], {2})
    return f'<div class="plots">{plot}{table}</div>'


def _gallery(b: Build, rows: list[dict[str, Any]], numeric_cols: list[str], thumb: int) -> str:
    samples = [load_sample(b, row) for row in rows]
    widest = max(len(panels(s, 8)) for s in samples)  # panels per sample sets the column width
    out = [f'<div class="gallery" style="grid-template-columns:repeat(auto-fill,minmax({widest * (thumb + 4) + 14}px,1fr))">']
    for row, sample in zip(rows, samples):
        doc = sample.get("json") or {}
        key = row["key"]
        cells = "".join(f"<div>{escape(title)}<br>{_img(_jpeg(img), 'image/jpeg', title + ' of ' + key)}</div>"
                        for title, img in panels(sample, thumb))
        text = "<br>".join(escape(p) for p in caption(row, doc))
        extra = ", ".join(f"{c} {row[c]:.3g}" if isinstance(row[c], float) else f"{c} {row[c]}"
                          for c in numeric_cols if row.get(c) is not None)
        if extra:
            text += f"<br><span class=sub>{escape(extra)}</span>"
        out.append(f'<figure><div class="panels">{cells}</div><figcaption>{text}</figcaption></figure>')
    out.append("</div>")
    return "".join(out)


def render_report(build: Build | str | Path, n: int = 24, seed: int = 0, where: str | None = None, thumb: int = 160) -> str:
    """The report page as a string (see the module docstring). `where` filters the gallery only."""
    b = build if isinstance(build, Build) else open_build(build)
    con = b.connect()
    cols = _columns(con)
    builder_cols = [c for c in cols if c not in BASE_NAMES]
    numeric_cols = [c for c in builder_cols if cols[c].split("(")[0] in NUMERIC]
    info = b.info
    title = f"{info['builder']} {info['version']} · build {b.build_id}"
    rows = choose_samples(b, where, n, seed) if len(b) else []
    total = sum(a["samples"] for a in info["splits"].values())
    rejected = sum(a["rejects"] for a in info["splits"].values())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(info.get("description") or "")} {total:,} samples, {rejected:,} rejects '
        "(inputs, or parts of one such as an entity, that became no sample), "
        f'{len(info["shards"])} shards.</p>',
        "<h2>Identity and lineage</h2>", _identity(b),
        "<h2>Counts</h2>", _counts(b, con, cols),
        "<h2>Distributions</h2>", _distributions(con, cols, builder_cols) if total else "<p>No samples.</p>",
        "<h2>Rejects</h2>", _rejects(con),
        f"<h2>Samples ({len(rows)} shown{', where ' + escape(where) if where else ''}, chosen by md5(seed:key), seed {seed})</h2>",
        _gallery(b, rows, numeric_cols, thumb) if rows else
        f"<p>No sample matches where {escape(where)}.</p>" if where and len(b) else "<p>No sample to show.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(build: Build | str | Path, out: Path, **kwargs: Any) -> Path:
    """Write the page to `out` (.html); a --where that matches no sample is said (the gallery is empty)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm") and not out.is_dir():  # checked before the page is made
        raise UserError(f"--out {out}: the report is an HTML page; name a .html file "
                        "(`vlmforge show` draws a PNG contact sheet)")
    page = render_report(build, **kwargs)
    if kwargs.get("where") and "<p>No sample matches where" in page:
        from vlmforge.progress import console

        console.print(f"[yellow]warning[/] no sample matches --where {kwargs['where']!r}: the gallery is empty")
    return save_output(Path(out), lambda p: p.write_text(page, encoding="utf-8"))
