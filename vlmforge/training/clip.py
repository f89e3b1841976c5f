"""CLIP fine-tuning on image-label shards: class prompts as text, contrastive or classification loss.

`classes`: each image is scored against the prompts of every class ('a photo of a {label}.'), and
the loss is cross-entropy over classes, which is what zero-shot accuracy measures. `contrastive`:
CLIP's symmetric loss within the batch, with the batch's distinct class prompts as texts (images
of the same class are all positives of their prompt). Validation reports loss and accuracy over all
classes; the run keeps the best checkpoint by either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from vlmforge.errors import UserError
from vlmforge.training.formatting import image_field, no_image_note
from vlmforge.training.images import ImagePreparer

DEFAULT_PROMPT = "a photo of a {label}."


def load_clip(path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, processor) of a CLIP-style dual encoder (path or Hub id)."""
    from vlmforge.training.llava import check_tokenizer, load_pretrained

    model, processor = load_pretrained(path, "AutoModel", "a CLIP model", dtype)
    if not hasattr(model, "get_image_features") or not hasattr(model, "logit_scale"):
        raise UserError(f"{path} is a {type(model).__name__}, not a CLIP-style dual encoder")
    check_tokenizer(model, processor, path)
    return model, processor


def text_positions(model: Any) -> int | None:
    """How many tokens the text encoder takes: longer texts must be cut there (they fail inside the model)."""
    return getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)


def configure(model: Any, freeze_text: bool = False) -> Any:
    """Everything trains, except the text encoder and its projection when `freeze_text`."""
    for n, p in model.named_parameters():
        p.requires_grad_(not (freeze_text and (n.startswith("text_model.") or n.startswith("text_projection"))))
    return model


def labels_in(shards: Sequence[Any], label_field: str = "label") -> list[str]:
    """Sorted distinct labels of some shards: from the build manifest's label column when the
    shards belong to a build that has one, else read from the samples' json."""
    from vlmforge.training.data import SampleReader

    found: set[str] = set()
    by_build: dict[Path, list[str]] = {}
    loose = []
    for s in shards:
        root = Path(s.path).parent
        if s.part is not None and (root / "build.json").exists() and label_field == "label":
            by_build.setdefault(root, []).append(Path(s.path).name)
        else:
            loose.append(s)
    for root, names in by_build.items():
        import pyarrow.parquet as pq

        for name in names:
            part = root / "manifest" / (Path(name).stem + ".parquet")
            t = pq.ParquetFile(part).read()
            if label_field not in t.column_names:
                loose.extend(s for s in shards if Path(s.path) == root / name)
                continue
            found.update(x for x in t.column(label_field).to_pylist() if x)
    if loose:
        reader = SampleReader(loose)
        for gid in range(int(reader.base[-1])):
            value = reader.read(gid).get("json", {}).get(label_field)
            if value:
                found.add(str(value))
        reader.close()
    if not found:
        raise UserError(f"the shards have no '{label_field}' labels; CLIP training needs image-label samples")
    return sorted(found)


class ClipCollator:
    """Shard samples to {pixel_values, class_idx, keys, dropped, unreadable, no_image}; samples without a
    known label or image are dropped (counted), those whose image does not decode also listed in
    `unreadable`, those with a label but no image member in `no_image`."""

    def __init__(self, processor: Any, classes: Sequence[str], label_field: str = "label", pad_to_square: bool = False):
        self.index = {c: i for i, c in enumerate(classes)}
        self.label_field = label_field
        self.images = ImagePreparer(processor.image_processor, pad_to_square)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        imgs, idx, keys, unreadable, no_image = [], [], [], [], []
        for s in samples:
            f = image_field(s)
            label = s.get("json", {}).get(self.label_field)
            if f is None and label is not None:
                no_image.append(no_image_note(s))
            if f is None or label is None or str(label) not in self.index:
                continue
            image = self.images.try_load(s[f], s.get("json", {}).get("image_transform"))
            if image is None:
                unreadable.append(s["__key__"])
                continue
            imgs.append(image)
            idx.append(self.index[str(label)])
            keys.append(s["__key__"])
        batch: dict[str, Any] = {"keys": keys, "dropped": len(samples) - len(keys), "unreadable": unreadable,
                                 "no_image": no_image, "prepared_again": self.images.take_mismatched()}
        if imgs:
            batch["pixel_values"] = self.images(imgs)
            batch["class_idx"] = torch.tensor(idx, dtype=torch.long)
        return batch


class ClipObjective:
    """Losses and metrics over class prompts."""

    def __init__(self, processor: Any, classes: Sequence[str], objective: str = "classes", prompt: str = DEFAULT_PROMPT,
                 max_length: int | None = None):
        if objective not in ("classes", "contrastive"):
            raise UserError(f"unknown CLIP objective {objective!r}; use classes or contrastive")
        if "{label}" not in prompt:
            raise UserError("the class prompt must contain {label}")
        self.objective = objective
        self.classes = list(classes)
        texts = [prompt.replace("{label}", c) for c in classes]  # not str.format: other braces stay as they are
        self.texts = processor.tokenizer(texts, padding=True, return_tensors="pt", truncation=max_length is not None,
                                         max_length=max_length)
        seen: dict[tuple[int, ...], str] = {}
        for c, ids, mask in zip(self.classes, self.texts["input_ids"].tolist(), self.texts["attention_mask"].tolist()):
            key = tuple(i for i, m in zip(ids, mask) if m)
            if key in seen:
                why = "unknown words?" if max_length is None else f"unknown words, or cut at {max_length} tokens?"
                raise UserError(f"the prompts of classes {seen[key]!r} and {c!r} tokenize identically ({why}); "
                                "the model could not tell them apart")
            seen[key] = c

    def _logits(self, model: Any, batch: dict[str, Any], class_ids: Any) -> Any:
        dev = batch["pixel_values"].device
        out = model(input_ids=self.texts["input_ids"][class_ids].to(dev),
                    attention_mask=self.texts["attention_mask"][class_ids].to(dev),
                    pixel_values=batch["pixel_values"])
        return out.logits_per_image

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch
        import torch.nn.functional as F

        y = batch["class_idx"]
        if self.objective == "classes":
            logits = self._logits(model, batch, torch.arange(len(self.classes)))
            return F.cross_entropy(logits, y)
        present, target = torch.unique(y, return_inverse=True)
        logits = self._logits(model, batch, present.cpu())  # images x distinct classes
        pos = (target[None, :] == torch.arange(len(present), device=y.device)[:, None]).float()
        image_to_text = F.cross_entropy(logits, target)
        text_to_image = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
        return (image_to_text + text_to_image) / 2

    def evaluate(self, model: Any, batches: Any, device: Any) -> dict[str, float]:
        """Mean loss over all classes and top-1 accuracy on some batches."""
        import torch
        import torch.nn.functional as F

        total, correct, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for batch in batches:
                if "pixel_values" not in batch:
                    continue
                batch = {"pixel_values": batch["pixel_values"].to(device), "class_idx": batch["class_idx"].to(device)}
                logits = self._logits(model, batch, torch.arange(len(self.classes)))
                loss_sum += float(F.cross_entropy(logits, batch["class_idx"], reduction="sum"))
                correct += int((logits.argmax(1) == batch["class_idx"]).sum())
                total += len(batch["class_idx"])
        if not total:
            return {}
        return {"loss": loss_sum / total, "accuracy": correct / total, "samples": total}


def export(model: Any, processor: Any, base: str, classes: Sequence[str], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vlmforge_export.json").write_text(json.dumps({"kind": "clip", "base": base, "classes": list(classes)},
                                                         indent=1) + "\n")
    return out
