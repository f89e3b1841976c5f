"""Small matplotlib plots returned as PNG bytes, for embedding in the report.

Figures are made with `matplotlib.figure.Figure` directly (no pyplot), so nothing global is touched
and no display is needed. PNGs carry no software/date metadata: same data, same bytes.
"""

from __future__ import annotations

import io
from typing import Sequence

COLOR = "#3b6ea5"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plain(text) -> str:
    """`text` as matplotlib should draw it: '$' escaped, so '$5-$10' or 'a $x^$' is text, not math
    (an unbalanced formula was a ValueError and no report)."""
    return str(text).replace("$", r"\$")


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _figure(width: float = 5.0, height: float = 3.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return fig, fig.subplots()


def histogram_png(values: Sequence[float], title: str, xlabel: str, bins: int = 20) -> bytes:
    """Histogram of `values` (None dropped) with the count, mean and median in the title; NaN and
    infinities are left out of the plot and counted in the title."""
    import numpy as np

    vals = np.asarray(values if isinstance(values, np.ndarray) else [v for v in values if v is not None], dtype=float)
    finite = np.isfinite(vals)
    left_out = f", {int((~finite).sum())} NaN/inf not shown" if not finite.all() else ""
    vals = vals[finite]
    fig, ax = _figure()
    if len(vals):
        lo, hi = vals.min(), vals.max()
        if np.all(vals == np.round(vals)) and hi - lo < bins:  # small counts: one bar per integer, centred
            ax.hist(vals, bins=np.arange(lo - 0.5, hi + 1.5), color=COLOR, edgecolor="white", rwidth=0.8)
            ax.xaxis.set_major_locator(_integer_ticks())
        else:
            ax.hist(vals, bins=bins, color=COLOR, edgecolor="white")
        title = f"{plain(title)}  (n={len(vals)}, mean {vals.mean():.3g}, median {np.median(vals):.3g}{left_out})"
    else:
        ax.text(0.5, 0.5, "no finite values" if left_out else "no values", ha="center", va="center", transform=ax.transAxes)
        title = plain(title) + left_out
    ax.yaxis.set_major_locator(_integer_ticks())
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(plain(xlabel))
    ax.set_ylabel("samples")
    return _png(fig)


def bar_png(names: Sequence[str], counts: Sequence[int], title: str, xlabel: str = "count") -> bytes:
    """Horizontal bars, first name on top; the figure grows with the number of bars."""
    fig, ax = _figure(5.0, max(1.6, 0.5 + 0.22 * len(names)))
    ys = list(range(len(names)))
    ax.barh(ys, list(counts), color=COLOR)
    ax.set_yticks(ys, [plain(str(n)[:40]) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_title(plain(title), fontsize=9)
    ax.set_xlabel(plain(xlabel))
    return _png(fig)
