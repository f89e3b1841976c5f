"""LLaVA-style models for the trainer: loading, which weights each mode trains, and what a run exports.

Modes: `full` trains the language model and projector (the vision tower stays frozen, as in
LLaVA-1.5's second stage); `lora` adds peft LoRA adapters to the language model's linear layers, the
projector optionally trained in full; `projector` trains the multimodal projector only.
"""

from __future__ import annotations

import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import UserError

VISION_PARTS = ("vision_tower", "vision_model", "image_tower")
PROJECTOR_PARTS = ("multi_modal_projector", "mm_projector")
LORA_DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
EXPORT_INFO = "vlmforge_export.json"
CLIP_TYPES = ("clip", "siglip", "siglip2", "chinese_clip", "altclip")


def load_pretrained(path: str, auto_class: str, what: str, dtype: str = "float32",
                    clip_hint: str = "; train a CLIP model with --mode clip") -> tuple[Any, Any]:
    """(model, processor) of a checkpoint (path or Hub id) through transformers' `auto_class`; `clip_hint` follows
    the refusal of a CLIP model."""
    import torch
    import transformers

    try:
        processor = transformers.AutoProcessor.from_pretrained(path)
        model = getattr(transformers, auto_class).from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        if str(e).startswith("Unrecognized configuration class"):  # transformers names its classes, not the fix
            kind = transformers.AutoConfig.from_pretrained(path).model_type
            hint = clip_hint if kind in CLIP_TYPES else ""
            raise UserError(f"{path} is a {kind} model, not {what}{hint}") from None
        raise UserError(f"cannot load {what} from {path!r}: {str(e).splitlines()[0]}") from None
    return model, processor


# A local checkpoint loads only with its weights (one file, or an index of shards) and its tokenizer's files.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def check_model_folder(path: str, what: str = "model") -> None:
    """A local folder that is not a whole model is named before transformers loads it: a folder without
    weights or tokenizer was a traceback in eval and 'Couldn't instantiate the backend tokenizer from one
    of:' in train, and an evaluation's output folder was 'Unrecognized model'. Hub ids and the add-on
    exports (a LoRA adapter, a projector), whose base holds the rest, pass."""
    p = Path(path).expanduser()
    if not p.is_dir() or export_kind(str(p)) in ("lora", "projector"):
        return
    if (p / "predictions.jsonl").is_file():
        raise UserError(f"{path} is an evaluation's output folder (predictions.jsonl), not a {what}")
    if not (p / "config.json").is_file():
        raise UserError(f"{path} holds no config.json, so it is not a {what} folder (a transformers checkpoint: "
                        "config.json, weights, tokenizer and processor files)")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"the {what} folder {path} has no weights ({', '.join(WEIGHT_FILES)}); it was saved or "
                        "copied in part: copy the whole checkpoint")
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"the {what} folder {path} has no tokenizer ({', '.join(TOKENIZER_FILES)}); copy the "
                        "tokenizer files of the checkpoint it came from into it")


def export_kind(path: str) -> str | None:
    """What a vlmforge export (or a plain peft adapter folder) holds: full, lora, projector or clip;
    None for anything else, such as a Hub id or a transformers checkpoint."""
    info = export_info(path)
    if info:
        return info.get("kind")
    return "lora" if (Path(path) / "adapter_config.json").exists() else None


def check_empty_out(out: Path, hint: str = "choose an empty --out") -> None:
    """A model is written only into a new or empty folder: files of another model would mix with its own."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; {hint}")


def export_info(path: str) -> dict[str, Any]:
    """The vlmforge_export.json of an export folder; {} for anything else."""
    p = Path(path) / EXPORT_INFO
    return json.loads(p.read_text()) if p.exists() else {}


def export_folder(name: str) -> str:
    """A training run folder or a checkpoint stands for the model it exported (the run's final/, the
    checkpoint's model/); any other name is returned as it is."""
    p = Path(name)
    if p.is_dir() and not any((p / f).exists() for f in ("config.json", "adapter_config.json", EXPORT_INFO)):
        for sub in ("final", "model"):
            if (p / sub / EXPORT_INFO).exists():
                return str(p / sub)
    return name


def load_llava(path: str, dtype: str = "float32", clip_hint: str = "; train a CLIP model with --mode clip"
               ) -> tuple[Any, Any]:
    """(model, processor) of an image-text-to-text checkpoint (path or Hub id)."""
    model, processor = load_pretrained(path, "AutoModelForImageTextToText", "a vision-language model", dtype,
                                       clip_hint)
    check_tokenizer(model, processor, path)
    return model, processor


def check_tokenizer(model: Any, processor: Any, path: str) -> None:
    """Another model's tokenizer fails deep inside forward() (an index error, or image features that
    match no image token); say so before anything runs."""
    tok = getattr(processor, "tokenizer", None)
    if tok is None:
        return
    try:
        rows = model.get_input_embeddings().num_embeddings
    except NotImplementedError:  # CLIP: its text tower's table
        rows = model.config.text_config.vocab_size
    if len(tok) > rows:
        raise UserError(f"the tokenizer of {path} has {len(tok)} tokens but the model's embeddings only {rows}: "
                        "the tokenizer is another model's, or tokens were added without resizing the embeddings")
    token = getattr(processor, "image_token", None)
    if token is None:
        return
    expected, got = getattr(model.config, "image_token_id", None), tok.convert_tokens_to_ids(token)
    if expected != got:
        raise UserError(f"the tokenizer of {path} gives the image token {token!r} id {got}, but the model's config "
                        f"expects image_token_id {expected}: the tokenizer and the model do not belong together")


def _is(name: str, parts: tuple[str, ...]) -> bool:
    return any(f".{p}." in f".{name}" for p in parts)


def projector_names(model: Any) -> list[str]:
    names = [n for n, _ in model.named_parameters() if _is(n, PROJECTOR_PARTS)]
    if not names:
        raise UserError(f"{type(model).__name__} has no multimodal projector ({', '.join(PROJECTOR_PARTS)})")
    return names


def projector_module_name(model: Any) -> str:
    """The projector's module name as peft's modules_to_save wants it (its last name component)."""
    first = projector_names(model)[0]
    return next(p for p in PROJECTOR_PARTS if f".{p}." in f".{first}")


def configure(model: Any, mode: str, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05,
              lora_targets: str = LORA_DEFAULT_TARGETS, train_projector: bool = True) -> Any:
    """Set which weights train for `mode`; returns the model (a peft model in lora mode)."""
    if mode == "full":
        for n, p in model.named_parameters():
            p.requires_grad_(not _is(n, VISION_PARTS))
        return model
    if mode == "projector":
        keep = set(projector_names(model))
        for n, p in model.named_parameters():
            p.requires_grad_(n in keep)
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = [t.strip() for t in lora_targets.split(",") if t.strip()]
        if not targets:
            raise UserError("--lora-targets is empty")
        # A regex: the language model's layers only, never the vision tower's.
        pattern = r".*language_model.*\.(" + "|".join(re.escape(t) for t in targets) + r")"
        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=pattern,
                         modules_to_save=[projector_module_name(model)] if train_projector else None)
        try:
            with quiet_peft():
                return get_peft_model(model, cfg)
        except ValueError as e:
            raise UserError(f"LoRA targets {targets} match no language-model layer: {str(e).splitlines()[0]}") from None
    raise UserError(f"unknown mode {mode!r}; use full, lora, projector or clip")


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers for `is_gradient_checkpointing`, which then warns of its own deprecation on
    every LoRA load: a note about library code that users can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def export(model: Any, processor: Any, mode: str, base: str, out: Path, template: str = "chat") -> Path:
    """Write what a run produced: a full checkpoint (full), an adapter (lora) or the projector's
    weights (projector), with the processor and a note naming the base model."""
    out.mkdir(parents=True, exist_ok=True)
    if mode == "projector":
        from safetensors.torch import save_file

        names = set(projector_names(model))
        weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n in names}
        save_file(weights, str(out / "projector.safetensors"))
    else:
        model.save_pretrained(out)
    processor.save_pretrained(out)
    # The text template it was trained with: eval asks its questions the same way.
    (out / EXPORT_INFO).write_text(json.dumps({"kind": mode, "base": base, "template": template}, indent=1) + "\n")
    return out
