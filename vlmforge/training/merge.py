"""`vlmforge model merge`: a run's LoRA adapter or trained projector folded into a full checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vlmforge.curation.models import check_model_name
from vlmforge.errors import UserError
from vlmforge.training.llava import (
    EXPORT_INFO, check_empty_out, check_model_folder, export_folder, load_llava, projector_names, quiet_peft,
)


def find_export(path: str | Path) -> Path:
    """The export folder behind `path`: itself, a run's final/ (or best/), or a checkpoint's model/."""
    p = Path(export_folder(str(path)))
    if (p / EXPORT_INFO).exists():
        return p
    raise UserError(f"{p} is not a training run, checkpoint or export folder (no {EXPORT_INFO} found)")


def merge(src: str | Path, out: str | Path, base: str | None = None) -> Path:
    """Write a full model to `out`: base + adapter merged (lora), base with the trained projector
    (projector), or a copy (full and clip exports are full already). `base` overrides the base model
    recorded in the export."""
    export = find_export(src)
    info = json.loads((export / EXPORT_INFO).read_text())
    kind = info["kind"]
    out = Path(out)
    check_empty_out(out)
    if kind in ("full", "clip"):
        shutil.copytree(export, out, dirs_exist_ok=True)
        return out
    recorded = base is None
    base = base or info["base"]
    try:  # a base moved since training was transformers' 'Repo id must be in the form ...'
        check_model_name(base, "base model")
        check_model_folder(base, "base model")
    except UserError as e:
        raise UserError(f"{e}; pass --base with where it is now" if recorded else str(e)) from None
    # no hint to train CLIP: the base of a LoRA or projector export is the vision-language model the run trained
    model, processor = load_llava(base, clip_hint="; give the vision-language model the run trained as --base")
    if kind == "lora":
        merged = merge_lora(model, export)
    elif kind == "projector":
        merged = load_projector(model, export / "projector.safetensors")
    else:
        raise UserError(f"unknown export kind {kind!r} in {export / EXPORT_INFO}")
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    # The run's processor (it may carry a changed chat template), else the base model's.
    processor = _processor(export) or processor
    processor.save_pretrained(out)
    (out / EXPORT_INFO).write_text(json.dumps({"kind": "full", "base": base, "template": info.get("template", "chat"),
                                               "merged_from": str(export.resolve()),
                                               "merged_kind": kind}, indent=1) + "\n")
    return out


def merge_lora(model: Any, adapter_dir: Path) -> Any:
    """The base model with the adapter's weights folded in (and its fully trained modules)."""
    from peft import PeftModel

    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload()


def load_projector(model: Any, weights: Path) -> Any:
    """The base model with its projector weights replaced by trained ones."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    expected = set(projector_names(model))
    if set(state) != expected:
        raise UserError(f"{weights} does not fit this base model: projector weights differ "
                        f"({sorted(set(state) ^ expected)[:3]})")
    model.load_state_dict(state, strict=False)
    return model


def _processor(export: Path) -> Any | None:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(export))
    except (OSError, ValueError):
        return None
