"""Grad-CAM for a CLIP model used as a classifier over class prompts.

The classifier is the evaluator's CLIP zero-shot scoring (`LocalRunner.clip_probabilities`): one
prompt per class from a template ('a photo of a {}.'), logits = scale * cos(image, prompt). Grad-CAM
weighs each channel of a vision-tower layer by the mean gradient of the chosen class logit over the
patch grid, sums, and keeps the positive part.

Target layer for ViT towers: the tokens of the last encoder block, reshaped to the patch grid with the
class token dropped. For CLIP, whose prediction reads only the class token of the last block's output,
the patch tokens of that output never reach the logit (their gradient is exactly zero); the last place
where they still do is the last block's input, through its attention. So the default is the last
block's first layer norm (`...layers.<last>.layer_norm1`, the normalised input its attention reads);
towers without a class token (pooling over all tokens) use the last block's output. `--layer` takes
any module name of the model.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlmforge.errors import UserError

OVERLAY_ALPHA = 0.45
SHEET_MAX = 64
MAX_SIZE = 2048


# -- model, classes, prompts -----------------------------------------------------------------------
def load_clip(model: str, device: str = "cpu", dtype: str = "float32"):
    """The evaluator's local runner holding a CLIP model (checkpoint path, Hub id or PEFT adapter)."""
    from vlmforge.evaluation.runners import LocalRunner

    runner = LocalRunner(model, device=device, dtype=dtype)
    runner.setup()
    if runner.kind != "clip":
        raise UserError(f"{model} is not a CLIP model; `analyze gradcam` explains CLIP classifiers "
                        "(use `analyze ffn` for LLaVA-style models)")
    return runner


def default_classes(model: str, labels: Sequence[str]) -> list[str]:
    """The classes a model was trained on when its folder says so (`vlmforge train --mode clip` writes
    vlmforge_export.json), else the labels of the test data."""
    export = Path(model) / "vlmforge_export.json"
    if export.exists():
        try:
            classes = json.loads(export.read_text()).get("classes")
        except json.JSONDecodeError:
            classes = None
        if classes:
            return [str(c) for c in classes]
    return list(labels)


def class_prompts(classes: Sequence[str], template: str | None) -> list[str]:
    """One prompt per class, as the evaluator's CLIP scoring makes them (`{}` or `{label}` marks the class)."""
    from vlmforge.evaluation.items import EvalItem
    from vlmforge.evaluation.tasks import Task

    if template is not None:
        template = template.replace("{label}", "{}")
        if "{}" not in template:
            raise UserError("--class-template must contain {} (or {label}) where the class name goes")
    return Task().class_prompts(EvalItem(id="classes", prompt="", options=list(classes)), template)


def text_features(runner, prompts: Sequence[str]):
    """Unit text embeddings of the class prompts, [classes, dim]."""
    import torch

    proc = runner.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt").to(runner.device)
    with torch.no_grad():
        return runner._features(runner.model.get_text_features(**proc))


# -- target layer ----------------------------------------------------------------------------------
def _vision_blocks(model) -> tuple[str, Any]:
    import torch.nn as nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.startswith("vision_model") and name.endswith("layers"):
            return name, mod
    raise UserError("cannot find the vision tower's encoder blocks (vision_model.*.layers); give --layer")


def default_layer(model) -> str:
    """See the module docstring: the last block's input norm for class-token towers, else its output."""
    name, blocks = _vision_blocks(model)
    last = f"{name}.{len(blocks) - 1}"
    embeddings = getattr(getattr(model, "vision_model", None), "embeddings", None)
    if hasattr(embeddings, "class_embedding") and hasattr(blocks[-1], "layer_norm1"):
        return f"{last}.layer_norm1"
    return last


def resolve_layer(model, layer: str | None):
    """(name, module) of the Grad-CAM target; `layer` is a module name as in model.named_modules()."""
    name = layer or default_layer(model)
    modules = dict(model.named_modules())
    if name not in modules:
        block_names, _ = _vision_blocks(model)
        hints = [n for n in modules if n.startswith(block_names) and n.count(".") <= block_names.count(".") + 2]
        raise UserError(f"the model has no module {name!r}; vision blocks are named like "
                        f"{', '.join(hints[-4:])}")
    return name, modules[name]


def to_grid(acts):
    """Layer output -> [batch, channels, rows, cols]: token sequences reshaped to the patch grid with a
    leading class token dropped; conv feature maps as they are."""
    if acts.dim() == 4:
        return acts
    if acts.dim() == 3:
        b, t, d = acts.shape
        for drop in (0, 1):
            g = math.isqrt(t - drop)
            if g > 0 and g * g == t - drop:
                return acts[:, drop:].transpose(1, 2).reshape(b, d, g, g)
    raise UserError(f"cannot arrange the layer's output of shape {tuple(acts.shape)} into a patch grid; "
                    "choose a layer whose output is tokens (batch, tokens, channels) or a feature map")


# -- Grad-CAM --------------------------------------------------------------------------------------
@dataclass
class CamBatch:
    """Class probabilities [batch, classes]; heatmaps [batch, rows, cols] scaled to [0, 1], first for
    the predicted classes, then one per extra target list (all zero where a target is None or nothing
    is positive)."""

    probs: Any
    cams: list[Any]
    zero_gradient: bool = False


def _cam(acts, grads):
    import torch

    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts).sum(dim=1))
    top = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return cam / top[:, None, None]


def gradcam(model, module, pixel_values, text_feats, extra_targets: Sequence[Sequence[int | None]] = ()) -> CamBatch:
    """Grad-CAM at `module` of each image's predicted class logit, then of the classes in each of
    `extra_targets` (one class index or None per image)."""
    import torch

    from vlmforge.evaluation.runners import LocalRunner

    captured: dict[str, Any] = {}

    def keep(_mod, _inp, out):
        captured["acts"] = out[0] if isinstance(out, (tuple, list)) else out

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            pixel_values = pixel_values.detach().requires_grad_(True)  # a graph even if weights are frozen
            img = LocalRunner._features(model.get_image_features(pixel_values=pixel_values))
            logits = model.logit_scale.exp() * img @ text_feats.T.to(img.dtype)
    finally:
        handle.remove()
    if "acts" not in captured:
        raise UserError("the chosen layer did not run during the image forward pass; pick a vision-tower layer")
    acts = captured["acts"]
    grid = to_grid(acts.detach()).float()
    target_lists = [logits.argmax(dim=-1).tolist(), *extra_targets]
    cams, zero = [], False
    for i, targets in enumerate(target_lists):
        picked = [(b, c) for b, c in enumerate(targets) if c is not None]
        if not picked:
            cams.append(torch.zeros(grid.shape[0], *grid.shape[2:]))
            continue
        score = sum(logits[b, c] for b, c in picked)
        (grad,) = torch.autograd.grad(score, acts, retain_graph=i < len(target_lists) - 1)
        grad = to_grid(grad).float()
        zero = zero or not bool(grad.abs().sum())
        cam = _cam(grid, grad).cpu()
        keep_rows = torch.tensor([c is not None for c in targets])
        cams.append(cam * keep_rows[:, None, None])
    return CamBatch(torch.softmax(logits.detach().float(), dim=-1).cpu(), cams, zero)


# -- pictures --------------------------------------------------------------------------------------
def model_view(image, processor, size: int):
    """The part of `image` the model sees (the centre square when the processor centre-crops), as a
    size x size RGB image: the heatmap's grid covers exactly this."""
    from PIL import Image

    ip = getattr(processor, "image_processor", processor)
    if getattr(ip, "do_center_crop", False):
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def overlay(view, cam, alpha: float = OVERLAY_ALPHA):
    """`view` with the heatmap (any grid, upsampled bilinearly) blended on top in the jet colour map."""
    import numpy as np
    import torch
    from matplotlib import colormaps
    from PIL import Image

    heat = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    heat = torch.nn.functional.interpolate(heat, size=(view.height, view.width), mode="bilinear",
                                           align_corners=False)[0, 0].clamp(0, 1).numpy()
    colour = colormaps["jet"](heat)[..., :3]
    base = np.asarray(view, dtype=np.float32) / 255.0
    mixed = (1 - alpha) * base + alpha * colour
    return Image.fromarray((mixed * 255).round().astype("uint8"))


def save_png(img, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, "PNG")  # Pillow writes no date or software chunks: same pixels, same bytes
    path.write_bytes(buf.getvalue())


def contact_sheet(cells: list[tuple[list[tuple[str, Any]], list[str], bool | None]], title: str, thumb: int = 160):
    """A grid of cells, each one or more titled overlays and caption lines; the caption turns green or
    red when the prediction is right or wrong."""
    from vlmforge.report.show import SheetLayout, draw_sheet

    colour = {None: (0, 0, 0), True: (20, 120, 40), False: (180, 30, 30)}
    return draw_sheet([([(name, img.resize((thumb, thumb))) for name, img in panels], caption, colour[correct])
                       for panels, caption, correct in cells], title, SheetLayout(thumb=thumb, caption_lines=3))


# -- the command -----------------------------------------------------------------------------------
def _write_item(sample, view, probs, cam_pred, cam_true, classes: Sequence[str], out: Path):
    """Save the overlays of one image; return its index entry and its (title, overlay) panels."""
    p = int(probs.argmax())
    item = {"key": sample.key, "image": f"overlays/{sample.key}.png", "true": sample.label,
            "predicted": classes[p], "confidence": round(float(probs[p]), 6),
            # None when the true class is unknown or not one of the classes: no answer could be right
            "correct": sample.label == classes[p] if sample.label in classes else None,
            "probabilities": [round(float(x), 6) for x in probs]}
    panels = [(f"pred: {classes[p]}", overlay(view, cam_pred))]
    if cam_true is not None:
        item["true_image"] = f"overlays/{sample.key}.true.png"
        panels.append((f"true: {sample.label}", overlay(view, cam_true)))
    for (_, img), name in zip(panels, ("image", "true_image")):
        save_png(img, out / item[name])
    return item, panels


def run_gradcam(model: str, shards: str | Path, out: Path, where: str | None = None, n: int = 16, seed: int = 0,
                classes: Sequence[str] | None = None, class_template: str | None = None, layer: str | None = None,
                true_class: bool = False, batch_size: int = 8, device: str = "cpu", dtype: str = "float32",
                size: int = 224, quiet: bool = False) -> Path:
    """Grad-CAM overlays (overlays/*.png), contact_sheet.png, heatmaps.npz and index.json in `out`."""
    import numpy as np

    from vlmforge.analysis.samples import read_test_samples, remove_stale
    from vlmforge.curation.models import check_device
    from vlmforge.evaluation.runners import pil_image
    from vlmforge.export import output_folder
    from vlmforge.progress import console, progress_bar

    if size > MAX_SIZE:  # a float RGBA heatmap of 20000 x 20000 pixels is gigabytes per image
        raise UserError(f"--size {size} is too large: an overlay is at most {MAX_SIZE} pixels a side")
    out = output_folder(out, "overlays/, contact_sheet.png, heatmaps.npz, index.json", "analysis")
    check_device(device)
    data = read_test_samples(shards, where, n, seed)
    data.warn_if_training(quiet)
    missing = [s.key for s in data.samples if s.image is None]
    if missing:
        raise UserError(f"{len(missing)} chosen sample(s) have no image (e.g. {missing[0]}); filter them with --where")
    runner = load_clip(model, device, dtype)
    classes = list(classes) if classes else default_classes(runner.name, data.labels)  # a run folder: its final/
    if len(classes) < 2:
        raise UserError(f"need at least two classes, found {classes}; give --classes or data with labels")
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:  # two prompts of one class split its probability and make its index ambiguous
        raise UserError(f"--classes names {', '.join(repr(c) for c in twice)} more than once")
    prompts = class_prompts(classes, class_template)
    feats = text_features(runner, prompts)
    layer_name, module = resolve_layer(runner.model, layer)
    index = {c: i for i, c in enumerate(classes)}

    (out / "overlays").mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    heat_pred, heat_true, cells = [], [], []
    zero_gradient = False
    with progress_bar("grad-cam", total=len(data.samples), disable=quiet) as advance:
        for start in range(0, len(data.samples), batch_size):
            batch = data.samples[start : start + batch_size]
            images = [pil_image(s.image, f"sample {s.key}") for s in batch]
            pixels = runner.processor(images=images, return_tensors="pt")["pixel_values"].to(runner.device, runner.model.dtype)
            extra = [[index.get(s.label) for s in batch]] if true_class else []
            res = gradcam(runner.model, module, pixels, feats, extra)
            zero_gradient = zero_gradient or res.zero_gradient
            for b, (s, img) in enumerate(zip(batch, images)):
                cam_true = res.cams[1][b] if true_class else None
                item, panels = _write_item(s, model_view(img, runner.processor, size), res.probs[b], res.cams[0][b],
                                           cam_true if s.label in index else None, classes, out)
                items.append(item)
                heat_pred.append(res.cams[0][b].numpy())
                if cam_true is not None:
                    heat_true.append(cam_true.numpy())
                if len(cells) < SHEET_MAX:
                    caption = [s.key, f"true: {s.label if s.label is not None else '?'}",
                               f"pred: {item['predicted']} ({item['confidence']:.2f})"]
                    cells.append((panels, caption, item["correct"]))
            advance(len(batch))
    if zero_gradient and not quiet:
        console.print(f"[yellow]warning[/] the class logits have zero gradient at {layer_name}: its tokens do not "
                      "reach the prediction (CLIP reads only the class token of the last block's output); "
                      "choose an earlier layer")

    arrays: dict[str, Any] = {"keys": np.array([s.key for s in data.samples]), "pred": np.stack(heat_pred)}
    if true_class:
        arrays["true"] = np.stack(heat_true)
    np.savez_compressed(out / "heatmaps.npz", **arrays)
    remove_stale(out / "overlays", {Path(it[k]).name for it in items for k in ("image", "true_image") if k in it}, ".png")
    known = [it for it in items if it["correct"] is not None]
    title = (f"Grad-CAM  {Path(model).name}  ·  {layer_name}  ·  {len(items)} images"
             + (f" (first {SHEET_MAX} shown)" if len(items) > SHEET_MAX else "") + (f"  ·  where {where}" if where else ""))
    save_png(contact_sheet(cells, title), out / "contact_sheet.png")
    doc = {"model": str(model), "data": data.source, "build_id": data.build_id, "where": where, "seed": seed,
           "splits": data.split_counts(), "layer": layer_name, "classes": classes, "class_prompts": prompts,
           "grid": list(heat_pred[0].shape), "n": len(items),
           "accuracy": (sum(it["correct"] for it in known) / len(known)) if known else None, "scored": len(known),
           "contact_sheet": "contact_sheet.png", "heatmaps": "heatmaps.npz", "items": items}
    (out / "index.json").write_text(json.dumps(doc, indent=1) + "\n")
    if not quiet:
        acc = f", accuracy {doc['accuracy']:.3f} ({len(known)} of a class)" if doc["accuracy"] is not None else ""
        console.print(f"[green]wrote[/] {len(items)} Grad-CAM overlays{acc} to {out} (layer {layer_name})")
    return out
