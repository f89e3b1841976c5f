"""Runners turn a batch of items into model outputs: generated texts, per-option losses, or CLIP
class probabilities.

- `LocalRunner`: a checkpoint by path or Hub id through transformers - an image-text-to-text model
  (LLaVA-style; a PEFT adapter folder is merged onto its base) or a CLIP model. Batched generation
  with left padding; `--scoring loss` reads the model's mean token loss of each option's text after the
  prompt; CLIP compares the image with one class prompt per option.
- `GeneratorRunner`: any generation backend of `vlmforge.curation.generation` (openai, vllm, ...),
  for closed models behind an API (images as data URLs, or URLs from a CSV).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import EvalItem

FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


class Runner:
    """Base class. `name` identifies the model in summaries; `scorings` lists what it can do."""

    name: str = "runner"
    backend: str = "base"
    scorings: tuple[str, ...] = ("generate",)
    default_scoring: str = "generate"
    batch_size: int = 8

    def setup(self) -> None:
        pass

    def generate(self, items: list[EvalItem]) -> list[str]:
        raise UserError(f"the {self.backend} runner cannot generate text")

    def option_losses(self, items: list[EvalItem]) -> list[list[float]]:
        raise UserError(f"the {self.backend} runner cannot score options by loss (use a local model)")

    def clip_probabilities(self, items: list[EvalItem], prompts: list[list[str]]) -> list[list[float]]:
        raise UserError(f"the {self.backend} runner is not a CLIP model")


def _pil(item: EvalItem):
    """The item's image as RGB; an image that does not decode is one error line naming the item."""
    return pil_image(item.image_bytes(), f"item {item.id}" + (f" ({item.image_path})" if item.image_path else ""))


def pil_image(data: bytes, what: str):
    """Image bytes as RGB; bytes that do not decode are one error line naming `what` (an item, a sample)."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, ValueError) as e:  # not an image, or cut short
        why = "it is not an image file" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(f"the image of {what} cannot be decoded: {why}; replace it and run the "
                        "same command again to go on") from None


class LocalRunner(Runner):
    """A transformers checkpoint: LLaVA-style image-text-to-text or CLIP, by path or Hub id."""

    backend = "local"

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", batch_size: int = 8,
                 max_new_tokens: int = 64, system: str | None = None):
        from vlmforge.training.llava import export_folder

        self.name = export_folder(str(model))  # a run folder: its final/
        self.device = device
        self.dtype_name = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.kind: str | None = None
        self.model = self.processor = None
        self.template = "chat"  # how prompts are written: the run's --template when it is a vlmforge export

    # -- loading ---------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoConfig, AutoProcessor
        from transformers.utils import logging as hf_logging

        from vlmforge.curation.models import check_model_name

        hf_logging.disable_progress_bar()
        check_model_name(self.name)
        from vlmforge.curation.models import check_device, torch_dtype

        check_device(self.device)
        from vlmforge.training.llava import check_model_folder, export_info

        check_model_folder(self.name)
        self.template = export_info(self.name).get("template", "chat")
        path, adapter, projector = self._base_and_addition(self.name)
        if path != self.name:  # the base an adapter or projector export names
            check_model_name(path, f"base model of {self.name}")
            check_model_folder(path, f"base model of {self.name}")
        dtype = torch_dtype(self.dtype_name, self.device)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from None
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and config.model_type != "clip":
            # transformers' own refusal is a traceback listing a hundred config classes
            raise UserError(f"model {path!r} is a {config.model_type!r} checkpoint, neither a vision-language "
                            "(image-text-to-text, LLaVA-style) model nor CLIP, the two the local backend evaluates")
        try:  # what the folder checks cannot see (a damaged weights file, a processor config missing)
            if config.model_type == "clip":
                from transformers import CLIPModel

                self.kind = "clip"
                self.model = CLIPModel.from_pretrained(path, dtype=dtype)
            else:
                from transformers import AutoModelForImageTextToText

                self.kind = "vlm"
                self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from None
        if adapter is not None:
            from vlmforge.training.merge import merge_lora

            self.model = merge_lora(self.model, Path(adapter))
        if projector is not None:
            from vlmforge.training.merge import load_projector

            self.model = load_projector(self.model, Path(projector) / "projector.safetensors")
        own = adapter or projector  # the run's processor, when it saved one (it may change the chat template)
        source = own if own and _has_processor(own) else path
        try:
            self.processor = AutoProcessor.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the processor of {source!r}: {str(e).splitlines()[0]}") from None
        from vlmforge.training.llava import check_tokenizer

        check_tokenizer(self.model, self.processor, self.name)
        self.model.to(self.device).eval()

    @staticmethod
    def _base_and_addition(name: str) -> tuple[str, str | None, str | None]:
        """(base, adapter folder, projector folder). A PEFT adapter folder (adapter_config.json) is
        loaded onto the base model it names; a projector-only export (`train --mode projector`) puts
        its trained projector into the base its vlmforge_export.json names."""
        from vlmforge.training.llava import EXPORT_INFO, export_info, export_kind

        if export_kind(name) == "projector":
            base = json.loads((Path(name) / EXPORT_INFO).read_text()).get("base")
            if not base:
                raise UserError(f"{Path(name) / EXPORT_INFO} names no base model; "
                                f"run `vlmforge model merge {name} --base BASE --out DIR` and evaluate DIR")
            return base, None, name
        cfg = Path(name) / "adapter_config.json"
        if cfg.exists():
            # A run's export records its base as an absolute path; peft's config keeps --model as it was typed,
            # relative to the folder train ran in, so from any other folder it named no model.
            base = (export_info(name).get("base") if export_kind(name) == "lora" else None) \
                or json.loads(cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise UserError(f"{cfg} names no base_model_name_or_path")
            return base, name, None
        return name, None, None

    @property
    def scorings(self) -> tuple[str, ...]:  # type: ignore[override]
        self.setup()
        return ("clip",) if self.kind == "clip" else ("generate", "loss")

    @property
    def default_scoring(self) -> str:  # type: ignore[override]
        self.setup()
        return "clip" if self.kind == "clip" else "generate"

    # -- prompts ---------------------------------------------------------------------------------
    def _chat(self, prompt: str, with_image: bool) -> str:
        content: list[dict[str, Any]] = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if self.system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system}]})
        if self.template == "vicuna_v1":  # trained on LLaVA-1.5's format: asked in it too
            from vlmforge.training.formatting import vicuna_prompt

            return vicuna_prompt(prompt, self.processor.image_token if with_image else None, self.system)
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        text = FALLBACK_TEMPLATE.format(prompt=prompt)
        return text if with_image else text.replace("<image>\n", "")

    def _encode(self, texts: list[str], images: list | None, padding_side: str):
        tok = self.processor.tokenizer
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            batch = self.processor(**kwargs)
        finally:
            tok.padding_side = old
        return batch.to(self.device)

    @staticmethod
    def _by_image(items: list[EvalItem]) -> list[list[int]]:
        """Indices grouped into items with and without an image (a batch must not mix them)."""
        with_img = [i for i, it in enumerate(items) if it.has_image]
        without = [i for i, it in enumerate(items) if not it.has_image]
        return [g for g in (with_img, without) if g]

    # -- generation ------------------------------------------------------------------------------
    def generate(self, items: list[EvalItem]) -> list[str]:
        import torch

        self.setup()
        if self.kind == "clip":
            raise UserError("a CLIP model cannot generate text; use --scoring clip")
        out: list[str] = [""] * len(items)
        for group in self._by_image(items):
            with_image = items[group[0]].has_image
            texts = [self._chat(items[i].prompt, with_image) for i in group]
            images = [_pil(items[i]) for i in group] if with_image else None
            batch = self._encode(texts, images, "left")
            with torch.no_grad():
                ids = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = ids[:, batch["input_ids"].shape[1]:]
            for i, text in zip(group, self.processor.batch_decode(new, skip_special_tokens=True)):
                out[i] = text.strip()
        return out

    # -- loss over options -----------------------------------------------------------------------
    def option_losses(self, items: list[EvalItem]) -> list[list[float]]:
        """Mean negative log-likelihood of each option's target tokens given the prompt (lower = likelier)."""
        self.setup()
        if self.kind == "clip":
            raise UserError("a CLIP model has no token loss; use --scoring clip")
        # One sequence per (item, option); images repeat for each option of an item.
        seqs = [(n, j) for n, it in enumerate(items) for j in range(len(it.loss_targets or it.options))]
        if any(not (it.loss_targets or it.options) for it in items):
            raise UserError("--scoring loss needs items with options")
        out: list[list[float]] = [[0.0] * len(it.loss_targets or it.options) for it in items]
        for group in self._by_image(items):
            wanted = set(group)
            members = [(n, j) for n, j in seqs if n in wanted]
            keys: dict[tuple[int, int], tuple[int, ...]] = {}
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for (n, j), (loss, key) in zip(chunk, self._losses(items, chunk)):
                    out[n][j], keys[n, j] = loss, key
            for n in group:  # options of an item that tokenize the same get one loss, so they tie exactly
                opts = range(len(out[n]))
                first = _first_of_same([keys[n, j] for j in opts])
                out[n] = [out[n][first[j]] for j in opts]
        return out

    def _losses(self, items: list[EvalItem], chunk: list[tuple[int, int]]) -> list[tuple[float, tuple[int, ...]]]:
        """(loss, token ids of the whole sequence) per (item, option) of the chunk."""
        import torch

        with_image = items[chunk[0][0]].has_image
        prompts, fulls = [], []
        for n, j in chunk:
            it = items[n]
            prefix = self._chat(it.prompt, with_image) + it.loss_prefix
            prompts.append(prefix)
            fulls.append(prefix + (it.loss_targets or it.options)[j])
        images = [_pil(items[n]) for n, _ in chunk] if with_image else None
        p_batch = self._encode(prompts, images, "right")
        f_batch = self._encode(fulls, images, "right")
        with torch.no_grad():
            logits = self.model(**f_batch).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        ids = f_batch["input_ids"]
        token_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        losses = []
        keys = _token_keys(ids, f_batch["attention_mask"])
        for r in range(len(chunk)):
            n_full = int(f_batch["attention_mask"][r].sum())
            n_prompt = int(p_batch["attention_mask"][r].sum())
            # Where a merge at the boundary changed the last prompt token, score from the first difference.
            same = (ids[r, :n_prompt] == p_batch["input_ids"][r, :n_prompt]).long()
            start = int(same.cumprod(0).sum())
            picked = token_lp[r, max(start, 1) - 1 : n_full - 1]
            losses.append((float(-picked.mean()) if picked.numel() else float("inf"), keys[r]))
        return losses

    # -- CLIP zero-shot --------------------------------------------------------------------------
    def clip_probabilities(self, items: list[EvalItem], prompts: list[list[str]]) -> list[list[float]]:
        import torch

        self.setup()
        if self.kind != "clip":
            raise UserError("--scoring clip needs a CLIP model")
        if not all(it.has_image for it in items):
            raise UserError("CLIP zero-shot needs an image for every item")
        unique = list(dict.fromkeys(p for ps in prompts for p in ps))
        from vlmforge.training.clip import text_positions

        text = self.processor(text=unique, padding=True, truncation=True, max_length=text_positions(self.model),
                              return_tensors="pt").to(self.device)
        with torch.no_grad():
            img = self._features(self.model.get_image_features(
                **self.processor(images=[_pil(it) for it in items], return_tensors="pt").to(self.device)))
            txt = self._features(self.model.get_text_features(**text))
            logits = self.model.logit_scale.exp() * img @ txt.T
        # Prompts that tokenize the same share one column, so they tie exactly (see tasks.best_indices).
        first = _first_of_same(_token_keys(text["input_ids"], text["attention_mask"]))
        col = {p: first[k] for k, p in enumerate(unique)}
        out = []
        for r, ps in enumerate(prompts):
            sel = logits[r, [col[p] for p in ps]]
            out.append([float(x) for x in torch.softmax(sel, dim=-1)])
        return out

    @staticmethod
    def _features(output):
        """Unit vectors from get_*_features (a tensor, or an output whose pooler_output is projected)."""
        feats = output if hasattr(output, "norm") else output.pooler_output
        feats = feats.float()
        return feats / feats.norm(dim=-1, keepdim=True)


def _token_keys(input_ids, attention_mask) -> list[tuple[int, ...]]:
    """Each row's tokens without padding: equal keys are texts the model cannot tell apart."""
    return [tuple(row[mask.bool()].tolist()) for row, mask in zip(input_ids, attention_mask)]


def _first_of_same(keys: list) -> list[int]:
    """For each position, the first position holding an equal key."""
    seen: dict[Any, int] = {}
    return [seen.setdefault(k, i) for i, k in enumerate(keys)]


def _has_processor(folder: str) -> bool:
    return any((Path(folder) / f).exists() for f in ("processor_config.json", "preprocessor_config.json", "tokenizer.json"))


class GeneratorRunner(Runner):
    """Any generation backend (openai, vllm, transformers, ...) through the shared Generator contract."""

    def __init__(self, backend: str, model: str | None, batch_size: int = 16, max_new_tokens: int = 64,
                 system: str | None = None, **options: Any):
        self.backend = backend
        self.name = str(model or backend)
        self.model = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.options = {k: v for k, v in options.items() if v is not None}
        import importlib

        from vlmforge.curation.generation import BACKENDS

        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; use local or one of {', '.join(sorted(BACKENDS))}")
        module, cls = BACKENDS[self.backend].split(":")
        try:
            gen_cls = getattr(importlib.import_module(module), cls)
        except ImportError as e:
            raise UserError(f"the {self.backend} backend is not available here ({e})") from None
        # Made here, loaded in setup(): the backends check their options as they are made, so a bad one
        # stops the run before it writes anything.
        self.generator = gen_cls(model=self.model, **self.options)
        self._ready = False

    def setup(self) -> None:
        if self._ready:
            return
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the transformers backend's 'Loading weights' bar, even with -q
        self.generator.setup()
        self._ready = True

    def generate(self, items: list[EvalItem]) -> list[str]:
        from vlmforge.curation.generation import GenerationRequest

        self.setup()
        requests = []
        for it in items:
            extra = {"image_url": it.image_url} if it.image_url else {}
            image = None if it.image_url else it.image_bytes()
            marker = "<image>\n" if (image is not None or it.image_url) else ""
            requests.append(GenerationRequest(prompt=marker + it.prompt, image=image, system=self.system,
                                              max_new_tokens=self.max_new_tokens, temperature=0.0, extra=extra))
        texts: dict[int, str] = {}
        try:
            for i, answer in self.generator.stream(requests):
                texts[i] = answer[0] if answer else ""
        except BaseException as e:  # the texts that came are written before the error ends the run
            failed = getattr(e, "errors", None) or {}
            refused = {i: str(err) for i, err in failed.items() if getattr(err, "about_request", False)}
            # Every item of a batch refused is about the requests' shape (images a model does not take).
            if not failed or len(refused) < len(failed) or (len(items) > 1 and not texts):
                raise PartialPredictions(texts, {}, e) from None
            raise PartialPredictions(texts, refused, None) from None
        return [texts[i] for i in range(len(items))]


class PartialPredictions(UserError):
    """A batch in which some items got no text: the texts that came (by item index), the items the
    endpoint refused (index -> its words: they are recorded and count as wrong; a content filter, an
    image too large), and the error that stops the run, if any (raised once the texts that came are
    written, so a rerun asks only for the rest)."""

    def __init__(self, texts: dict[int, str], refused: dict[int, str], error: BaseException | None):
        super().__init__(str(error) if error is not None else f"{len(refused)} requests refused")
        self.texts, self.refused, self.error = texts, refused, error

    def records(self, task, items: list[EvalItem]) -> list[dict[str, Any]]:
        out = [task.make_record(items[i], text=t) for i, t in sorted(self.texts.items())]
        for i, why in sorted(self.refused.items()):
            rec = task.make_record(items[i], text=None)
            rec["refused"] = why
            out.append(rec)
        return out


def load_image_urls(path: Path) -> dict[str, str]:
    """A CSV of `id,url` (header optional): item ids, or image file names, to image URLs."""
    out: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) < 2 or row[0].strip().lower() in ("id", "image", "key") and row[1].strip().lower() == "url":
                    continue
                out[row[0].strip()] = row[1].strip()
    except (OSError, UnicodeDecodeError, csv.Error) as e:  # were tracebacks: a mistyped path, a binary file
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise UserError(f"--image-urls {path} cannot be read as a CSV of id,url ({why})") from None
    if not out:
        raise UserError(f"{path} holds no id,url rows")
    return out


def attach_image_urls(items: list[EvalItem], urls: dict[str, str]) -> int:
    """Set `image_url` from the CSV by item id or image file name; returns how many items got one."""
    n = 0
    for it in items:
        url = urls.get(it.id) or (urls.get(Path(it.image_path).name) if it.image_path else None)
        if url:
            it.image_url = url
            n += 1
    return n
