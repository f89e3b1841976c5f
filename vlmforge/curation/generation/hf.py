"""`transformers` backend: any local path or Hub id of a causal LM or an image-text-to-text model.

Requests are grouped by their sampling parameters and image presence, then generated in batches
(left padding) with `num_return_sequences=n`. Sampled batches seed torch from the batch's own
requests, so the same batch gives the same texts on any run; the response cache does the rest.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from vlmforge.curation.generation import GenerationRequest, Generator, local_model_identity
from vlmforge.errors import UserError

IMAGE_TOKEN = "<image>"


def _strip_image_token(prompt: str) -> str:
    return prompt.replace(IMAGE_TOKEN, "").strip()


def _truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if i >= 0:
            cut = min(cut, i)
    return text[:cut].strip()


def _batch_seed(requests: list[GenerationRequest]) -> int:
    h = hashlib.sha256()
    for r in requests:
        h.update(f"{r.seed}\0{r.prompt}\0".encode())
    return int.from_bytes(h.digest()[:4], "big")


class TransformersGenerator(Generator):
    """Options: device ("auto", "cpu", "cuda", "cuda:1"), dtype ("auto", "float32", "bfloat16",
    "float16"), batch_size (requests per forward pass, default 8), trust_remote_code (False)."""

    backend = "transformers"

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                 trust_remote_code: bool = False, **options: Any):
        if not model:
            raise UserError("the transformers generator needs --model (a local checkpoint folder or a Hub id)")
        from vlmforge.training.llava import export_folder, export_info

        super().__init__(export_folder(model), **options)  # a training run folder: its final/ model
        # A run trained on LLaVA-1.5's text (`train --template vicuna_v1`) is asked in that text too.
        self.template = export_info(self.model).get("template", "chat")
        from vlmforge.curation.models import check_dtype

        check_dtype(dtype)
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.trust_remote_code = trust_remote_code
        self._model = None
        self._processor = None  # AutoProcessor for image-text-to-text models
        self._tokenizer = None
        self.is_vision = False

    def cache_identity(self) -> str | None:
        identity = local_model_identity(self.model)
        # Answers cached when such a run was asked in its chat template are not this prompt's answers.
        return f"{identity} asked in vicuna_v1" if self.template == "vicuna_v1" else identity

    def setup(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        from vlmforge.curation.models import check_device, check_model_name, torch_dtype

        check_device(device)  # torch's own error for a missing GPU is a traceback after the model loads
        check_model_name(self.model, "generation model")
        from vlmforge.evaluation.runners import LocalRunner, _has_processor

        # A LoRA or projector-only run goes onto the base model it names, as `vlmforge eval` loads it.
        path, adapter, projector = LocalRunner._base_and_addition(self.model)
        own = adapter or projector  # the run's processor, when it saved one (it may change the chat template)
        own = own if own and _has_processor(own) else path
        from vlmforge.training.llava import check_model_folder

        check_model_folder(path, "generation model")  # a folder without weights or tokenizer was a traceback
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from None
        self.is_vision = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        if (not self.is_vision and config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
                and not getattr(config, "is_decoder", False) and not getattr(config, "is_encoder_decoder", False)):
            # transformers loads e.g. BERT as a causal LM with a warning; generating with it fails deep in torch
            raise UserError(f"{self.model} is a {config.model_type!r} checkpoint, an encoder (masked LM) that does not "
                            "generate text: give a causal LM or an image-text-to-text model")
        kwargs = dict(dtype=torch_dtype(self.dtype, device), trust_remote_code=self.trust_remote_code)
        try:  # files a checkpoint lacks or holds damaged: one line, not transformers' traceback
            if self.is_vision:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                self._processor = AutoProcessor.from_pretrained(own, trust_remote_code=self.trust_remote_code)
                self._tokenizer = self._processor.tokenizer
                model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(own, trust_remote_code=self.trust_remote_code)
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the generation model {self.model!r}: {str(e).splitlines()[0]}") from None
        if adapter is not None:
            from vlmforge.training.merge import merge_lora

            model = merge_lora(model, Path(adapter))
        if projector is not None:
            from vlmforge.training.merge import load_projector

            model = load_projector(model, Path(projector) / "projector.safetensors")
        # Decoder-only batches must be padded on the left so every row ends where generation starts.
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = model.to(device).eval()
        self._device = device

    # -- prompts ---------------------------------------------------------------------------
    def _messages(self, req: GenerationRequest) -> list[dict]:
        text = _strip_image_token(req.prompt)
        msgs: list[dict] = []
        if self.is_vision:
            if req.system:
                msgs.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
            content = ([{"type": "image"}] if req.image is not None else []) + [{"type": "text", "text": text}]
            msgs.append({"role": "user", "content": content})
        else:
            if req.system:
                msgs.append({"role": "system", "content": req.system})
            msgs.append({"role": "user", "content": text})
        return msgs

    def _prompt_text(self, req: GenerationRequest) -> str:
        if self.template == "vicuna_v1":
            from vlmforge.training.formatting import vicuna_prompt

            image = self._processor.image_token if self.is_vision and req.image is not None else None
            return vicuna_prompt(_strip_image_token(req.prompt), image, req.system)
        templater = self._processor if self.is_vision else self._tokenizer
        if getattr(templater, "chat_template", None):
            return templater.apply_chat_template(self._messages(req), add_generation_prompt=True, tokenize=False)
        # No chat template (a base LM): plain text, system first.
        text = _strip_image_token(req.prompt)
        prefix = f"{IMAGE_TOKEN}\n" if req.image is not None else ""
        return (f"{req.system}\n\n" if req.system else "") + prefix + text

    # -- generation ------------------------------------------------------------------------
    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        self.setup()
        out: list[list[str] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.image is not None and not self.is_vision:
                raise UserError(f"model {self.model!r} is a text-only causal LM but a request carries an image; "
                                "use an image-text-to-text model (LLaVA-style) for image prompts")
            sig = (r.image is not None, r.max_new_tokens, float(r.temperature), float(r.top_p), int(r.n))
            groups.setdefault(sig, []).append(i)
        for sig, idxs in groups.items():
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start : start + self.batch_size]
                texts = self._generate([requests[i] for i in chunk])
                for i, t in zip(chunk, texts):
                    out[i] = t
        return [t or [] for t in out]

    def _generate(self, reqs: list[GenerationRequest]) -> list[list[str]]:
        import torch

        first = reqs[0]
        prompts = [self._prompt_text(r) for r in reqs]
        if first.image is not None:
            from PIL import Image

            images = [Image.open(io.BytesIO(r.image)).convert("RGB") for r in reqs]
            inputs = self._processor(images=images, text=prompts, padding=True, return_tensors="pt")
        elif self.is_vision:
            inputs = self._processor(text=prompts, padding=True, return_tensors="pt")
        else:
            # Chat templates already hold the BOS token; a plain prompt gets the tokenizer's own.
            inputs = self._tokenizer(prompts, padding=True, return_tensors="pt",
                                     add_special_tokens=not getattr(self._tokenizer, "chat_template", None))
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        sample = first.temperature > 0
        # Greedy decoding gives one text however often it is asked (and transformers refuses n > 1 for it):
        # generate it once and repeat it n times.
        n = first.n if sample else 1
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=first.max_new_tokens, do_sample=sample,
                                          num_return_sequences=n, pad_token_id=self._tokenizer.pad_token_id)
        if sample:
            gen_kwargs.update(temperature=first.temperature, top_p=first.top_p)
            torch.manual_seed(_batch_seed(reqs))
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            seqs = self._model.generate(**inputs, **gen_kwargs)
        new = seqs[:, inputs["input_ids"].shape[1] :]
        decoded = self._tokenizer.batch_decode(new, skip_special_tokens=True)
        return [[_truncate_at_stop(decoded[i * n + (j if sample else 0)], r.stop) for j in range(first.n)]
                for i, r in enumerate(reqs)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = state["_processor"] = state["_tokenizer"] = None  # workers load their own
        return state
