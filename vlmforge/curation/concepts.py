"""Class concepts and their per-image selection by the information-bottleneck score.

For an image with descriptions a_1..a_m, a class concept b_j scores

    score_j = sum_i log( e^{s(a_i,b_j)/t} / (e^{s(a_i,b_j)/t} + sum_c e^{s(b_j,c)/t}) )

where s is the cosine of sentence embeddings, c runs over the descriptions of the other images and
t = 0.1: a concept scores high when this image's descriptions support it more than the rest of the
data does. Concepts above mean + 0.4 std (sample std) are kept, and at least 3. With CUB attribute
annotations no model is needed: the image's own positive attributes are weighted by how specific
they are to its class and the same rule selects among them.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

IB_TEMPERATURE = 0.1
STD_FACTOR = 0.4
MIN_CONCEPTS = 3

_BULLET = re.compile(r"^\s*(?:[-*\u2022\u25cf+]|\d{1,3}[.)])\s+(.*\S)\s*$")


def parse_bullets(text: str) -> list[str]:
    """Bullet or numbered list items of a generated text, cleaned and de-duplicated (case-blind).
    Markdown emphasis is dropped; headings ("**Plumage:**" alone) and empty items are skipped."""
    items = []
    for line in text.splitlines():
        m = _BULLET.match(line)
        if m:
            item = m.group(1).replace("**", "").replace("__", "").strip().rstrip(".;,").strip()
            if not item.endswith(":"):
                items.append(item)
    return unique_concepts(items)


def unique_concepts(items: Sequence[str]) -> list[str]:
    """Items stripped, empty ones dropped, the first of those equal but for case kept."""
    out: list[str] = []
    seen: set[str] = set()
    for item in (x.strip() for x in items):
        if item and item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


def ib_scores(desc: np.ndarray, concepts: np.ndarray, negatives: np.ndarray | None = None,
              t: float = IB_TEMPERATURE, neg_log_sum: np.ndarray | None = None) -> np.ndarray:
    """Information-bottleneck scores (one per concept) of unit vectors: `desc` (m, d) the image's
    descriptions, `concepts` (n, d), `negatives` (l, d) the other images' descriptions. Instead of
    `negatives`, `neg_log_sum` (n,) may give log(sum_c e^{s(b_j,c)/t}) directly (faster for many images)."""
    a = np.asarray(desc, np.float64)
    b = np.asarray(concepts, np.float64)
    if neg_log_sum is None:
        c = np.asarray(negatives, np.float64) if negatives is not None else np.zeros((0, b.shape[1]))
        log_neg = _logsumexp((b @ c.T) / t)
    else:
        log_neg = np.asarray(neg_log_sum, np.float64)
    pos = (a @ b.T) / t  # (m, n)
    # log(e^x / (e^x + S)) = x - log(e^x + S), computed in log space so small t cannot overflow.
    return (pos - np.logaddexp(pos, log_neg[None, :])).sum(axis=0)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) per row; -inf for an empty row."""
    if x.shape[1] == 0:
        return np.full(x.shape[0], -np.inf)
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def select_concepts(concepts: Sequence[str], scores: Sequence[float], std_factor: float = STD_FACTOR,
                    min_keep: int = MIN_CONCEPTS) -> list[tuple[str, float]]:
    """Concepts scoring above mean + std_factor * std (sample std, ddof=1), at least `min_keep`
    (the best ones; all when fewer exist), best first. Ties keep the input order."""
    s = np.asarray(scores, np.float64)
    if len(s) == 0:
        return []
    std = float(s.std(ddof=1)) if len(s) > 1 else 0.0
    threshold = float(s.mean()) + std_factor * std
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    keep = [i for i in order if s[i] > threshold]
    if len(keep) < min_keep:
        keep = order[: min(min_keep, len(order))]
    return [(concepts[i], float(s[i])) for i in keep]


class ConceptSelector:
    """IB selection for many images at once. Embeds every description once; for each class the
    concept-vs-all-descriptions exponent sums are computed once and each image subtracts its own
    descriptions, so negatives are "every other image" at the cost of one matrix product per class."""

    def __init__(self, embedder, t: float = IB_TEMPERATURE, std_factor: float = STD_FACTOR,
                 min_keep: int = MIN_CONCEPTS):
        self.embedder = embedder
        self.t = t
        self.std_factor = std_factor
        self.min_keep = min_keep

    def select(self, descriptions: dict[str, list[str]], labels: dict[str, str],
               class_concepts: dict[str, list[str]]) -> dict[str, list[tuple[str, float]]]:
        """descriptions: image key -> its descriptions; labels: image key -> class;
        class_concepts: class -> concepts. Returns image key -> [(concept, score)] kept, best first."""
        keys = sorted(descriptions)
        flat: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        for k in keys:
            spans[k] = (len(flat), len(flat) + len(descriptions[k]))
            flat.extend(descriptions[k])
        out: dict[str, list[tuple[str, float]]] = {}
        if not flat:  # nothing to score against: no image keeps a concept
            return {k: [] for k in keys}
        desc_vec = self.embedder.encode(flat).astype(np.float64)
        by_class: dict[str, list[str]] = {}
        for k in keys:
            by_class.setdefault(labels[k], []).append(k)
        for label in sorted(by_class):
            names = list(class_concepts.get(label) or [])
            if not names:
                for k in by_class[label]:
                    out[k] = []
                continue
            cvec = self.embedder.encode(names).astype(np.float64)
            logits = (cvec @ desc_vec.T) / self.t  # (n_concepts, all descriptions)
            shift = logits.max(axis=1, keepdims=True)  # per-concept shift keeps exp() finite for small t
            exps = np.exp(logits - shift)
            total = exps.sum(axis=1)
            for k in by_class[label]:
                lo, hi = spans[k]
                if hi == lo:
                    out[k] = []
                    continue
                rest = total - exps[:, lo:hi].sum(axis=1)
                with np.errstate(divide="ignore"):
                    log_neg = np.log(np.maximum(rest, 0.0)) + shift[:, 0]
                # Where the other images' share is below float precision next to this image's own (a small t),
                # the subtraction lost it: sum theirs directly (no other image at all: -inf, score 0).
                lost = rest <= total * 1e-9
                if lost.any():
                    log_neg[lost] = _logsumexp(np.delete(logits[lost], np.s_[lo:hi], axis=1))
                scores = ib_scores(desc_vec[lo:hi], cvec, t=self.t, neg_log_sum=log_neg)
                out[k] = select_concepts(names, scores, self.std_factor, self.min_keep)
        return out


# -- CUB attributes: the no-model path --------------------------------------------------------

def attribute_text(name: str) -> str:
    """'has_bill_shape::curved_(up_or_down)' -> 'curved (up or down) bill shape';
    'has_size::small_(5_-_9_in)' -> 'small (5 - 9 in) size'."""
    part, _, value = name.partition("::")
    part = re.sub(r"^has_", "", part).replace("_", " ").strip()
    value = value.replace("_", " ").strip()
    return f"{value} {part}".strip() if value else part


def attribute_specificity(class_rates: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """How specific each attribute is to each class: p(a|c) * log(p(a|c) / mean_c' p(a|c')),
    from `class_rates` (classes, attributes) in [0, 1]. Common-to-all attributes weigh ~0, attributes
    the class shows far more often than birds in general weigh most; absent ones weigh 0."""
    p = np.clip(np.asarray(class_rates, np.float64), 0.0, 1.0)
    prior = p.mean(axis=0, keepdims=True)
    return p * np.log((p + eps) / (prior + eps))


def select_attributes(present: Sequence[int], weights: np.ndarray, std_factor: float = STD_FACTOR,
                      min_keep: int = MIN_CONCEPTS) -> list[tuple[int, float]]:
    """Among an image's present attribute ids (0-based columns of `weights`, the class's row), the
    ones above mean + std_factor * std of their weights, at least `min_keep`, best first."""
    ids = list(present)
    picked = select_concepts(ids, [float(weights[i]) for i in ids], std_factor, min_keep)
    return [(int(i), s) for i, s in picked]
