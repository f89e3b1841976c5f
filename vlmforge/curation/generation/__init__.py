"""Generation backends behind one interface (contract; backends live in this package).

A generator takes a batch of `GenerationRequest`s and returns, for each, `n` texts. Backends:
`transformers` (local path or Hub id, causal LM or image-text-to-text), `vllm` (optional extra, GPU
machines), `openai` (any OpenAI-compatible endpoint), and `template` (no model: deterministic
rule-based text, for offline builds). Every backend is wrapped by an on-disk cache keyed by
(backend, model, prompt, image hash, params), so an interrupted build never pays twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


class Generator:
    """Base class. `setup()` loads once per worker; `__call__(requests)` returns n texts per request."""

    backend: str = "base"
    resources: dict[str, float] = {"cpu": 1}

    def __init__(self, model: str | None = None, **options: Any):
        self.model = model
        self.options = options

    def setup(self) -> None:
        pass

    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        raise NotImplementedError


# backend name -> "module:Class". make_generator() imports on demand (vllm is an optional extra).
BACKENDS: dict[str, str] = {
    "transformers": "vlmforge.curation.generation.hf:TransformersGenerator",
    "vllm": "vlmforge.curation.generation.vllm:VllmGenerator",
    "openai": "vlmforge.curation.generation.openai:OpenAIGenerator",
    "template": "vlmforge.curation.generation.template:TemplateGenerator",
}
