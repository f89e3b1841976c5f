"""Figures for the selfsynth area, each against a baseline measured in the same run.

1. Concept selection: ConceptSelector (per-class exponent sums computed once, each image subtracting
   its own descriptions) against the direct formula with every other image's descriptions passed as
   negatives, image by image. Same selections required.
2. Response cache: a tiny random causal LM answering requests (cold) against the same requests
   served from the on-disk cache (warm).

Run: PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/selfsynth.py [--images 600]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmforge.curation.concepts import ConceptSelector, ib_scores, select_concepts  # noqa: E402


class _VectorTable:
    """Pre-drawn unit vectors per text: the bench measures the selection arithmetic, not an encoder."""

    def __init__(self, texts: list[str], dim: int = 384, seed: int = 0):
        rng = np.random.default_rng(seed)
        v = rng.normal(size=(len(texts), dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        self.index = {t: v[i] for i, t in enumerate(texts)}

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.index[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


def bench_selection(n_images: int, n_classes: int = 20, n_concepts: int = 15, n_desc: int = 6, repeats: int = 3) -> None:
    labels = {f"img{i:05d}": f"class{i % n_classes}" for i in range(n_images)}
    descriptions = {k: [f"{k} description {j}" for j in range(n_desc)] for k in labels}
    concepts = {f"class{c}": [f"class{c} concept {j}" for j in range(n_concepts)] for c in range(n_classes)}
    table = _VectorTable([t for v in descriptions.values() for t in v] + [t for v in concepts.values() for t in v])

    def fast():
        return ConceptSelector(table).select(descriptions, labels, concepts)

    def naive():
        out = {}
        for k in sorted(descriptions):
            others = [d for o in sorted(descriptions) if o != k for d in descriptions[o]]
            names = concepts[labels[k]]
            out[k] = select_concepts(names, ib_scores(table.encode(descriptions[k]), table.encode(names),
                                                      table.encode(others)))
        return out

    t_fast, t_naive = [], []
    for _ in range(repeats):
        t = time.perf_counter(); a = fast(); t_fast.append(time.perf_counter() - t)
        t = time.perf_counter(); b = naive(); t_naive.append(time.perf_counter() - t)
    same = all([c for c, _ in a[k]] == [c for c, _ in b[k]] for k in a)
    f, n = statistics.median(t_fast), statistics.median(t_naive)
    print(f"concept selection, {n_images} images x {n_desc} descriptions, {n_classes} classes x {n_concepts} concepts "
          f"(median of {repeats}):")
    print(f"  direct formula, negatives per image : {n:8.3f} s  {n_images / n:9.1f} images/s")
    print(f"  ConceptSelector, shared class sums  : {f:8.3f} s  {n_images / f:9.1f} images/s  "
          f"({n / f:.1f}x faster; same selections: {same})")


def bench_cache(n_requests: int = 48) -> None:
    from vlmforge.curation.generation import GenerationRequest, make_generator
    from vlmforge.training.tiny import make_tiny_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_tiny_causal_lm(Path(tmp) / "lm"))
        reqs = [GenerationRequest(f"Describe image number {i}.", max_new_tokens=16, temperature=1.0, n=2, seed=i)
                for i in range(n_requests)]
        cold_gen = make_generator("transformers", model, cache_dir=Path(tmp) / "cache", batch_size=8)
        cold_gen.inner.setup()  # load outside the timing: compare generation with cache reads
        t = time.perf_counter(); cold = cold_gen(reqs); t_cold = time.perf_counter() - t
        warm_gen = make_generator("transformers", model, cache_dir=Path(tmp) / "cache")
        t = time.perf_counter(); warm = warm_gen(reqs); t_warm = time.perf_counter() - t
        assert cold == warm and warm_gen.misses == 0
        print(f"response cache, {n_requests} requests x n=2, tiny causal LM on CPU:")
        print(f"  backend (cold)   : {t_cold:8.3f} s  {n_requests / t_cold:9.1f} requests/s")
        print(f"  cache   (warm)   : {t_warm:8.3f} s  {n_requests / t_warm:9.1f} requests/s  "
              f"({t_cold / t_warm:.0f}x faster, model never loaded: {warm_gen.inner._model is None})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--requests", type=int, default=48)
    args = ap.parse_args()
    bench_selection(args.images)
    bench_cache(args.requests)
