"""Generation backends behind one interface (contract; backends live in this package).

A generator takes a batch of `GenerationRequest`s and returns, for each, `n` texts. Backends:
`transformers` (local path or Hub id, causal LM or image-text-to-text), `vllm` (optional extra, GPU
machines), `openai` (any OpenAI-compatible endpoint), and `template` (no model: deterministic
rule-based text, for offline builds). Every backend is wrapped by an on-disk cache keyed by
(backend, model, prompt, image hash, params), so an interrupted build never pays twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import BuildError, UserError
from vlmforge.registry import load_registered


@dataclass
class GenerationRequest:
    prompt: str  # the user turn's text; may contain <image> where the image goes
    image: bytes | None = None  # encoded image bytes (jpg/png), or None for text-only
    system: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class PartialAnswers(UserError):
    """A backend's batch in which some requests failed: the answers it did get (by request index) and
    the first error. The response cache keeps those answers, so a rerun asks only for the rest; without
    a cache it reads as the error itself."""

    def __init__(self, answers: dict[int, list[str]], error: BaseException):
        super().__init__(str(error))
        self.answers = answers
        self.error = error

    def __reduce__(self):  # a build's worker process sends it to the parent
        return (PartialAnswers, (self.answers, self.error))


class Generator:
    """Base class. `setup()` loads once per worker; `__call__(requests)` returns n texts per request."""

    backend: str = "base"
    resources: dict[str, float] = {"cpu": 1}
    cacheable: bool = True  # False: make_generator() skips the on-disk cache (cheap, deterministic backends)

    def __init__(self, model: str | None = None, **options: Any):
        self.model = model
        self.options = options

    def setup(self) -> None:
        pass

    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        raise NotImplementedError

    def stream(self, requests: list[GenerationRequest]) -> Iterator[tuple[int, list[str]]]:
        """(request index, texts) as each answer comes, in any order, so the response cache keeps what
        came before an interrupt; backends that answer a batch at once yield after it."""
        yield from enumerate(self(requests))

    def cache_identity(self) -> str | None:
        """What, besides the request, decides the answers, for the response cache's key: the model
        (an endpoint's backend adds where it is served from)."""
        return self.model


def local_model_identity(model: str | None) -> str | None:
    """A model for the response cache's key: a Hub id as given; a local folder with the sizes and
    modification times of its files, so new weights in the same folder (a model retrained for the next
    round) are asked again instead of answered from the old model's cache."""
    from vlmforge.curation.models import folder_stamp

    if not model or not Path(model).expanduser().is_dir():
        return model
    return f"{model} @ {folder_stamp(Path(model).expanduser())}"


# backend name -> "module:Class". make_generator() imports on demand (vllm is an optional extra).
BACKENDS: dict[str, str] = {
    "transformers": "vlmforge.curation.generation.hf:TransformersGenerator",
    "vllm": "vlmforge.curation.generation.vllm:VllmGenerator",
    "openai": "vlmforge.curation.generation.openai:OpenAIGenerator",
    "template": "vlmforge.curation.generation.template:TemplateGenerator",
}


def request_key(backend: str, model: str | None, req: GenerationRequest) -> str:
    """sha256 of everything that can change a request's answer: backend, model, prompt, system,
    the image's sha256, sampling parameters, n and seed (and `extra`'s endpoint options)."""
    payload = {
        "backend": backend,
        "model": model,
        "prompt": req.prompt,
        "system": req.system,
        "image": hashlib.sha256(req.image).hexdigest() if req.image is not None else None,
        "max_new_tokens": req.max_new_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "n": req.n,
        "seed": req.seed,
        "stop": list(req.stop),
        # The template backend's hints (the label's candidates, annotated facts) reach no model, and that
        # backend is never cached: a hint that changes (another parent build) must not make a model answer again.
        "extra": {k: v for k, v in req.extra.items() if k != "template"},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    """Where responses are cached unless told otherwise: $VLMFORGE_CACHE/generation."""
    return Path(os.environ.get("VLMFORGE_CACHE", Path.home() / ".cache" / "vlmforge")) / "generation"


class CachedGenerator(Generator):
    """Any generator behind an on-disk response cache: one small JSON file per request key.

    The wrapped backend is set up only when a request misses, so a fully cached rerun never loads a
    model or opens a connection. Writes are atomic (temp file + rename): several worker processes may
    share one cache folder, and a killed build leaves only whole entries behind.
    """

    def __init__(self, inner: Generator, cache_dir: str | Path):
        super().__init__(inner.model)
        self.inner = inner
        self.identity = inner.cache_identity()
        self.backend = inner.backend
        self.resources = inner.resources
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        self._ready = False

    def setup(self) -> None:
        """Nothing to load until a request misses the cache."""

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read(self, key: str) -> list[str] | None:
        try:
            entry = json.loads(self._path(key).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        except OSError as e:
            raise self._unusable(e) from None
        texts = entry.get("texts")
        return texts if isinstance(texts, list) else None

    def _write(self, key: str, req: GenerationRequest, texts: list[str]) -> None:
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"backend": self.backend, "model": self.model, "prompt": req.prompt[:2000],
                                       "texts": texts}, ensure_ascii=False))
            os.replace(tmp, path)
        except OSError as e:  # a full disk
            tmp.unlink(missing_ok=True)
            raise self._unusable(e) from None

    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        keys = [request_key(self.backend, self.identity, r) for r in requests]
        found: dict[str, list[str]] = {}
        todo: dict[str, GenerationRequest] = {}
        for key, req in zip(keys, requests):
            if key in found or key in todo:
                continue
            texts = self._read(key)
            if texts is None:
                todo[key] = req
            else:
                found[key] = texts
        self.hits += len(found)
        if todo:
            if not self._ready:
                self._check_writable()  # before a request is paid for, not after its answer came
                self.inner.setup()
                self._ready = True
            self.misses += len(todo)
            items = list(todo.items())
            try:  # each answer is written as it comes: an interrupted batch keeps what came
                for i, texts in self.inner.stream([req for _, req in items]):
                    found[items[i][0]] = self._keep(*items[i], texts)
            except PartialAnswers as part:  # a backend that gave up part way through a batch
                for i, texts in part.answers.items():
                    self._keep(*items[i], texts)
                raise _by_request(part.error, items, keys) from None
            except Exception as e:
                raise _by_request(e, items, keys)
        return [list(found[k]) for k in keys]

    def _check_writable(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cache_dir / f".write-test.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise self._unusable(e) from None

    def _unusable(self, error: OSError) -> UserError:
        return UserError(f"the response cache {self.cache_dir} cannot be used ({error.strerror or error}); set "
                         "$VLMFORGE_CACHE (or --cache-dir) to a folder you can write, or turn the cache off")

    def _keep(self, key: str, req: GenerationRequest, texts: list[str]) -> list[str]:
        texts = [str(t) for t in texts]
        if any(t.strip() for t in texts):  # an empty answer is more often a fault than a model's
            self._write(key, req, texts)   # answer: asked again next time, not kept
        return texts

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ready"] = False  # a worker that gets a pickled copy sets up its own backend
        return state


def _by_request(error: BaseException, items: list[tuple[str, GenerationRequest]], keys: list[str]) -> BaseException:
    """A batch error that names its failed requests (`errors`, by index in what the backend was asked:
    the cache's misses) renamed by their places in the caller's requests, every repeat included."""
    errors = getattr(error, "errors", None)
    if isinstance(errors, dict):
        failed = {items[i][0]: err for i, err in errors.items()}
        error.errors = {n: failed[k] for n, k in enumerate(keys) if k in failed}
    return error


def generator_class(backend: str) -> type[Generator]:
    """The class registered for `backend` in BACKENDS, imported on demand."""
    return load_registered(BACKENDS, backend, "generator backend")


# Options every command may pass whatever the backend (--device, --dtype, --batch-size); a backend
# without a use for one ignores it.
SHARED_OPTIONS = frozenset({"device", "dtype", "batch_size"})


def check_options(cls: type[Generator], backend: str, options: dict[str, Any]) -> None:
    """Options a backend does not take are an error, not ignored: a typo such as `-G base-url=...`
    would otherwise send every request to the default endpoint."""
    import inspect

    from vlmforge.errors import BuildError, UserError

    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model", "options")]
    unknown = sorted(set(options) - set(known) - SHARED_OPTIONS)
    if unknown:
        raise UserError(f"the {backend} backend has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}")


def make_generator(backend: str, model: str | None = None, cache_dir: str | Path | None | bool = None,
                   **options: Any) -> Generator:
    """A ready-to-call generator: backend `backend` (a BACKENDS name) for `model`, wrapped in the
    on-disk response cache (`cache_dir`; None: $VLMFORGE_CACHE/generation; False: no cache).
    `options` go to the backend (device, dtype, batch_size, base_url, ...). Backends that declare
    `cacheable = False` (the template backend: cheaper to recompute than to read) are not wrapped."""
    cls = generator_class(backend)
    check_options(cls, backend, options)
    gen = cls(model=model, **options)
    if cache_dir is False or not getattr(cls, "cacheable", True):
        return gen
    return CachedGenerator(gen, default_cache_dir() if cache_dir is None else cache_dir)


REFUSED = "refused_by_endpoint"  # reject reason: the endpoint refused a request for its content


def ask(gen: Generator, requests: list[GenerationRequest]) -> tuple[list[list[str] | None], dict[int, str]]:
    """Each request's texts, None for one the endpoint refused for its content (a content filter, an
    image too large: HTTP 400/413/422), and those refusals by request index in the endpoint's words.
    A refusal is not cached, so a rerun asks again; any other error (a bad key or model, an endpoint
    down) is raised as it is, since every request would meet it."""
    try:
        return list(gen(requests)), {}
    except UserError as e:
        # Without a response cache the answers that came travel with the error; with one, it kept them.
        error, answers = (e.error, e.answers) if isinstance(e, PartialAnswers) else (e, None)
        errors = getattr(error, "errors", None)
        if not errors or not all(getattr(err, "about_request", False) for err in errors.values()):
            raise
    refused = {i: str(err) for i, err in sorted(errors.items())}
    rest = [i for i in range(len(requests)) if i not in refused]
    if answers is None:  # read back from the cache, where they were written as they came
        answers = dict(zip(rest, gen([requests[i] for i in rest]))) if rest else {}
    return [None if i in refused else list(answers[i]) for i in range(len(requests))], refused


def refused_by_owner(refused: dict[int, str], owners: list[Any], of_all: str) -> dict[Any, str]:
    """The endpoint's words for each owner (record key, class) of a refused request, the first when it
    has several. When every owner of several was refused, the refusals are about the requests' shape (a
    model that takes no images), not their content: that stops the build, as any endpoint error does."""
    out: dict[Any, str] = {}
    for i, words in sorted(refused.items()):
        out.setdefault(owners[i], words)
    if len(set(owners)) > 1 and len(out) == len(set(owners)):
        raise BuildError(f"the endpoint refused the requests of every {of_all}: {next(iter(out.values()))}")
    return out
