"""summary.json, the Markdown table printed on the console, and PNG plots (confusion matrix,
per-class accuracy) for the things people look at rather than read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

MAX_BARS = 40


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(summary: dict[str, Any]) -> str:
    """Scalar metrics as one table, then one table per `by_*` grouping."""
    metrics = summary.get("metrics", {})
    title = f"### {summary.get('task')} - {summary.get('model') or 'predictions'}"
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) or v is None]
    counts = summary.get("counts", {})
    scalars += [(f"count: {k}", v) for k, v in counts.items()]
    parts = [title, markdown_table(["metric", "value"], scalars)]
    for key, groups in metrics.items():
        if not (key.startswith("by_") and isinstance(groups, dict) and groups):
            continue
        cols: list[str] = []
        for row in groups.values():
            for c in row:
                if c not in cols and not isinstance(row[c], (dict, list)):
                    cols.append(c)
        rows = [[name] + [row.get(c) for c in cols] for name, row in groups.items()]
        parts.append(f"**{key[3:].replace('_', ' ')}**\n\n" + markdown_table([key[3:]] + cols, rows))
    return "\n\n".join(parts)


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    path = Path(out) / "summary.json"
    path.write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: list[list[int]], labels: Sequence[str], path: Path, title: str,
                   xlabel: str = "predicted", ylabel: str = "gold") -> Path:
    """A confusion matrix heat map with the count in each cell."""
    plt = _pyplot()
    k = len(labels)
    size = min(2 + 0.6 * k, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_yticks(range(k), labels)
    top = max((max(r) for r in matrix), default=0) or 1
    if k <= 20:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black", fontsize=9)
    return _save(plt, fig, ax, path, title, xlabel, ylabel)


def _save(plt, fig, ax, path: Path, title: str, xlabel: str | None, ylabel: str) -> Path:
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(values: dict[str, float | None], path: Path, title: str, ylabel: str = "accuracy",
              sort: bool = False) -> Path:
    """One bar per group. With more than MAX_BARS groups only the lowest are drawn (where problems are)."""
    plt = _pyplot()
    items = [(k, v) for k, v in values.items() if v is not None]
    if sort or len(items) > MAX_BARS:
        items.sort(key=lambda kv: (kv[1], kv[0]))
    if len(items) > MAX_BARS:
        title = f"{title} (lowest {MAX_BARS} of {len(items)})"
        items = items[:MAX_BARS]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(items) + 2), 4))
    ax.bar(range(len(items)), [v for _, v in items], color="#4878a8")
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=45 if len(items) > 5 else 0,
                  ha="right" if len(items) > 5 else "center")
    ax.set_ylim(0, 1)
    return _save(plt, fig, ax, path, title, None, ylabel)
