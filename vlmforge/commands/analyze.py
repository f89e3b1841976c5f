"""`vlmforge analyze gradcam` (Grad-CAM of a CLIP classifier) and `vlmforge analyze ffn` (per-layer FFN
token analysis of a LLaVA-style model), both on test samples from a build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Model = Annotated[str, typer.Option("--model", "-m", help="checkpoint folder or Hub id (a PEFT adapter folder is merged onto its base)")]
Shards = Annotated[str, typer.Option("--shards", "-s", help="test data: a build folder, or a shard glob such as 'builds/copy/1.5.0/test-*.tar' (quote it)")]
Where = Annotated[Optional[str], typer.Option("--where", help="SQL condition on the build manifest, e.g. \"split = 'test' AND label IN ('cat', 'dog')\"")]
Seed = Annotated[int, typer.Option("--seed", help="which samples: they are taken in md5(seed:key) order; also seeds the random control neurons")]
Out = Annotated[Path, typer.Option("--out", "-o", help="output folder")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 ...")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="images per forward pass")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or summary")]


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    analyze_app = typer.Typer(help="Look inside a trained model with test data: Grad-CAM heatmaps of a CLIP "
                              "classifier, or which tokens the FFN neurons of a LLaVA-style model promote.",
                              no_args_is_help=True)
    app.add_typer(analyze_app, name="analyze")

    @analyze_app.command("gradcam")
    def gradcam(
        model: Model,
        shards: Shards,
        out: Out,
        where: Where = None,
        n: Annotated[int, typer.Option("--n", min=1, help="number of test images")] = 16,
        seed: Seed = 0,
        classes: Annotated[Optional[str], typer.Option("--classes", help="comma-separated class names, in the order the classifier uses (default: the classes in the model's vlmforge_export.json, else the labels of the test data, sorted)")] = None,
        class_template: Annotated[Optional[str], typer.Option("--class-template", help="class prompt with {} (or {label}) for the class name; default the evaluator's 'a photo of a {}.'")] = None,
        layer: Annotated[Optional[str], typer.Option("--layer", help="target module name as in model.named_modules(), e.g. vision_model.encoder.layers.10 (default: the last ViT block's input norm, layer_norm1, for class-token towers, else the last block)")] = None,
        true_class: Annotated[bool, typer.Option("--true-class", help="also draw the heatmap of the true class (when it is one of the classes)")] = False,
        size: Annotated[int, typer.Option("--size", min=32, help="side of each overlay PNG in pixels (at most 2048)")] = 224,
        batch_size: BatchSize = 8,
        device: Device = "cpu",
        dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto")] = "float32",
        quiet: Quiet = False,
    ) -> None:
        """Grad-CAM of a CLIP classifier over class prompts: for each test image, the heatmap of the predicted class (and with --true-class the true one) overlaid on the image (overlays/*.png), a contact_sheet.png, heatmaps.npz (the raw grids) and index.json (image, true, predicted, confidence).

        Example: vlmforge analyze gradcam --model runs/clip --shards builds/copy/1.5.0 --where "split = 'test'" --out analysis/gradcam"""
        from vlmforge.analysis.gradcam import run_gradcam

        names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        run_gradcam(model, shards, out, where=where, n=n, seed=seed, classes=names, class_template=class_template,
                    layer=layer, true_class=true_class, batch_size=batch_size, device=device, dtype=dtype, size=size,
                    quiet=quiet)

    @analyze_app.command("ffn")
    def ffn(
        model: Model,
        shards: Shards,
        out: Out,
        where: Where = None,
        n: Annotated[int, typer.Option("--n", min=1, help="number of prompts (test samples)")] = 100,
        seed: Seed = 0,
        top_k: Annotated[int, typer.Option("--top-k", min=1, help="most active neurons per layer (and as many random ones as the control)")] = 3,
        tokens: Annotated[int, typer.Option("--tokens", min=1, help="top tokens kept per neuron")] = 3,
        question: Annotated[Optional[str], typer.Option("--question", help="question asked with each image (default: the sample's own first question, else 'What is the object in the image?')")] = None,
        answer_prefix: Annotated[Optional[str], typer.Option("--answer-prefix", help="answer text placed before the class name, e.g. 'The object is a' (default: the sample's answer up to its label, as in Prompt the Unseen)")] = None,
        ffn_module: Annotated[Optional[str], typer.Option("--ffn-module", help="down-projection inside each decoder layer (default: the first of mlp.down_proj, mlp.fc2, mlp.dense_4h_to_h found)")] = None,
        batch_size: BatchSize = 4,
        device: Device = "cpu",
        dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16")] = "auto",
        quiet: Quiet = False,
    ) -> None:
        """Which tokens the most active FFN neurons promote, layer by layer: one forward pass per prompt (image + question + answer prefix up to the class name); at the last position of every decoder layer the top-k neurons by input activation of the FFN down-projection (and k random ones) are projected through the unembedding. Writes prompts/<key>.json per prompt, summary.json, summary.md (per layer, the share of prompts whose ground-truth class token is among the top tokens) and ffn_summary.png.

        Example: vlmforge analyze ffn --model models/demo-merged --shards builds/copy/1.5.0 --n 200 --out analysis/ffn"""
        from vlmforge.analysis.ffn import run_ffn

        run_ffn(model, shards, out, where=where, n=n, seed=seed, top_k=top_k, n_tokens=tokens, question=question,
                answer_prefix=answer_prefix, ffn_module=ffn_module, batch_size=batch_size, device=device,
                dtype=dtype, quiet=quiet)
