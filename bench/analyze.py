"""Cost of the analyses next to the plain forward passes they build on, measured in the same run.

- Grad-CAM: images/s of `gradcam()` (forward with grad + one backward per target) vs the evaluator's
  CLIP zero-shot scoring (`LocalRunner.clip_probabilities`, no grad) on the same images and batches.
- FFN analysis: prompts/s of `analyse_prompts()` (hooks on every down-projection, top-k, token
  projection of 2k neurons per layer) vs a plain forward pass of the same batches.

Tiny random models on CPU (CLIP at 224 px: a 28 x 28 patch grid), so the ratios say more than the
absolute figures.

  python bench/analyze.py [--images 32] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.eval import _png, _timed as _median_time  # noqa: E402  (small 48 x 64 PNGs; median of repeats)


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocator and kernel set-up
    return _median_time(fn, repeats)


def bench_gradcam(n: int, bs: int, repeats: int, work: Path) -> None:
    from vlmforge.analysis.gradcam import class_prompts, gradcam, load_clip, resolve_layer, text_features
    from vlmforge.evaluation.items import EvalItem
    from vlmforge.evaluation.runners import _pil
    from vlmforge.training.tiny import make_tiny_clip

    runner = load_clip(str(make_tiny_clip(work / "clip", image_size=224)))
    classes = ["cat", "dog", "bird", "horse"]
    prompts = class_prompts(classes, None)
    feats = text_features(runner, prompts)
    _, module = resolve_layer(runner.model, None)
    items = [EvalItem(id=str(i), prompt="", options=classes, image=_png(i)) for i in range(n)]

    def plain():
        for s in range(0, n, bs):
            runner.clip_probabilities(items[s : s + bs], [prompts] * len(items[s : s + bs]))

    def cams(true_class: bool):
        def run():
            for s in range(0, n, bs):
                chunk = items[s : s + bs]
                px = runner.processor(images=[_pil(it.image) for it in chunk], return_tensors="pt")["pixel_values"]
                gradcam(runner.model, module, px, feats, [[0] * len(chunk)] if true_class else [])
        return run

    base = _timed(plain, repeats)
    one = _timed(cams(False), repeats)
    two = _timed(cams(True), repeats)
    print(f"grad-cam, tiny CLIP at 224 px, {n} images, batch {bs}:")
    print(f"  zero-shot scoring (no grad)       {n / base:8.1f} images/s  1.00x")
    print(f"  grad-cam, predicted class         {n / one:8.1f} images/s  {base / one:.2f}x")
    print(f"  grad-cam, predicted + true class  {n / two:8.1f} images/s  {base / two:.2f}x")


def bench_ffn(n: int, bs: int, repeats: int, work: Path) -> None:
    import torch

    from vlmforge.analysis.ffn import PromptJob, analyse_prompts, load_vlm, prompt_texts
    from vlmforge.evaluation.runners import _pil
    from vlmforge.training.tiny import make_tiny_llava

    runner = load_vlm(str(make_tiny_llava(work / "llava")), dtype="float32")
    jobs = []
    for i in range(n):
        prompt, full = prompt_texts(runner.processor, "What is shown in this image?", "It is a", "cat")
        jobs.append(PromptJob(str(i), "cat", prompt, full, _png(i)))

    def plain():
        for s in range(0, n, bs):
            chunk = jobs[s : s + bs]
            batch = runner._encode([j.prompt for j in chunk], [_pil(j.image) for j in chunk], "left")
            with torch.no_grad():
                runner.model(**batch, logits_to_keep=1)  # as the analysis runs it

    base = _timed(plain, repeats)
    full = _timed(lambda: analyse_prompts(runner, jobs, top_k=3, n_tokens=3, batch_size=bs), repeats)
    print(f"ffn analysis, tiny LLaVA, {n} prompts, batch {bs}:")
    print(f"  plain forward (last logits only)  {n / base:8.1f} prompts/s  1.00x")
    print(f"  ffn analysis (top-3 + 3 random)   {n / full:8.1f} prompts/s  {base / full:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from vlmforge.progress import quiet_model_loading

    quiet_model_loading()
    with tempfile.TemporaryDirectory() as tmp:
        bench_gradcam(args.images, args.batch_size, args.repeats, Path(tmp))
        bench_ffn(args.images, args.batch_size, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
