"""`vllm` backend: the vLLM offline engine, same request shape as every other backend.

vLLM pins its own torch and an older transformers, so it is an optional extra installed in a
separate GPU environment (`pip install 'vlmforge[vllm]'`); it is imported only in `setup()`. On a
machine without it, `vllm serve MODEL` plus the `openai` backend is the portable route. vLLM loads full
checkpoints: a LoRA or projector-only run of `vlmforge train` is refused with the command that merges it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmforge.curation.generation import GenerationRequest, Generator, local_model_identity
from vlmforge.curation.generation.openai import data_url
from vlmforge.errors import UserError

INSTALL_HINT = ("the vllm backend needs the optional vllm package, which pins its own torch: install it in a "
                "separate GPU environment (pip install 'vlmforge[vllm]'), or run `vllm serve MODEL` and use "
                "the openai backend with -G base_url=http://HOST:PORT/v1 (eval: --api-base http://HOST:PORT/v1)")


def chat_messages(req: GenerationRequest) -> list[dict[str, Any]]:
    """OpenAI-style chat messages for one request: optional system turn, then the user turn with the
    image (as a data URL) before the text, `<image>` placeholders removed."""
    text = req.prompt.replace("<image>", "").strip()
    msgs: list[dict[str, Any]] = []
    if req.system:
        msgs.append({"role": "system", "content": req.system})
    content: list[dict[str, Any]] = []
    if req.image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(req.image)}})
    content.append({"type": "text", "text": text})
    msgs.append({"role": "user", "content": content})
    return msgs


def check_loadable(model: str) -> None:
    """Refuse, before vLLM starts, what it would not load as a model: a local path that does not exist
    (vLLM would take it for a Hub id), a build, a LoRA adapter or a projector-only export of `vlmforge
    train` (merged, they are full models), a plain PEFT adapter, a CLIP model, a run trained on vicuna_v1
    text (vLLM would ask it in the chat template)."""
    from vlmforge.curation.models import check_model_name
    from vlmforge.training.llava import EXPORT_INFO, export_info, export_kind

    check_model_name(model, "generation model")
    kind = export_kind(model)
    other = "or use the transformers backend (eval: --backend local), which loads it as it is"
    if kind == "lora" and not (Path(model) / EXPORT_INFO).is_file():
        raise UserError(f"{model} is a PEFT adapter, not a model vLLM loads: merge it into its base model "
                        f"(peft's merge_and_unload, then save_pretrained) and give that folder, {other}")
    if kind in ("lora", "projector"):
        what = "a LoRA adapter" if kind == "lora" else "a projector-only export"
        raise UserError(f"{model} is {what} of `vlmforge train --mode {kind}`, not a full model vLLM loads: merge "
                        f"it first (`vlmforge model merge {model} --out DIR`, then --model DIR), {other}")
    if kind == "clip":
        raise UserError(f"{model} is a CLIP model, which does not generate text")
    if export_info(model).get("template") == "vicuna_v1":  # vLLM asks in the chat template
        raise UserError(f"{model} was trained on LLaVA-1.5's vicuna_v1 text (`train --template vicuna_v1`), which "
                        "the vllm backend does not write: use the transformers backend (eval: --backend local or "
                        "transformers), which asks it in vicuna_v1")


class VllmGenerator(Generator):
    """Options: tensor_parallel_size (1), gpu_memory_utilization (0.85), max_model_len (None),
    dtype ("auto"), trust_remote_code (False)."""

    backend = "vllm"
    resources = {"gpu": 1}

    def __init__(self, model: str | None = None, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                 **options: Any):
        if not model:
            raise UserError("the vllm generator needs --model (a local checkpoint folder or a Hub id)")
        from vlmforge.training.llava import export_folder

        model = export_folder(model)  # a training run folder: its final/ model
        check_loadable(model)
        super().__init__(model, **options)
        self.engine_args = dict(model=model, tensor_parallel_size=tensor_parallel_size,
                                gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                                trust_remote_code=trust_remote_code)
        if max_model_len:
            self.engine_args["max_model_len"] = max_model_len
        self._llm = None

    def cache_identity(self) -> str | None:
        return local_model_identity(self.model)

    def setup(self) -> None:
        if self._llm is not None:
            return
        try:
            import vllm
        except ImportError:
            raise UserError(INSTALL_HINT) from None
        self._vllm = vllm
        self._llm = vllm.LLM(**self.engine_args)

    def _params(self, req: GenerationRequest):
        # Greedy decoding gives one text however often it is asked: ask once, repeat it (as transformers does).
        return self._vllm.SamplingParams(n=req.n if req.temperature > 0 else 1, temperature=req.temperature,
                                         top_p=req.top_p if req.temperature > 0 else 1.0, max_tokens=req.max_new_tokens,
                                         seed=req.seed, stop=list(req.stop) or None)

    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        self.setup()
        # One engine call for the whole batch: vLLM schedules the requests itself; per-request
        # sampling parameters keep each request's n, seed and temperature.
        outputs = self._llm.chat([chat_messages(r) for r in requests], sampling_params=[self._params(r) for r in requests],
                                 use_tqdm=False)
        return [[c.text.strip() for c in o.outputs] * (r.n if r.temperature <= 0 else 1)
                for r, o in zip(requests, outputs)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_llm"] = None
        state.pop("_vllm", None)
        return state
