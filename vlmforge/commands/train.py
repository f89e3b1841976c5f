"""`vlmforge train` and the `vlmforge model` commands (init-tiny, merge)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

model_app = typer.Typer(help="Make, merge and inspect models for training.", no_args_is_help=True)

TINY_TRAINABLE_INIT = 0.2  # weights large enough that every mode's loss moves within a few dozen steps


def _floats(text: str | None, what: str) -> list[float] | None:
    from vlmforge.errors import UserError

    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{what} must be numbers separated by commas, e.g. 2,1") from None


def _quiet_transformers() -> None:
    """No 'Loading weights' / 'Writing model shards' bars or load reports between our own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def interrupted_note(out: Path) -> str:
    """What to run after Ctrl-C: the same command again is refused once the run folder exists."""
    from vlmforge.training.trainer import checkpoints

    if not (out / "run.json").exists():
        return "interrupted; run the same command to start again"
    found = checkpoints(out)
    if not found:
        return "interrupted before the first checkpoint; add --resume to the same command to start the run again"
    return (f"interrupted; add --resume to the same command to continue from {found[-1].name} (the steps after it "
            "are trained again)")


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")

    @app.command("train")
    def train_cmd(
        shards: Annotated[list[str], typer.Option("--shards", help="a build folder, tar path, glob or brace pattern; repeat to mix several sources")],
        model: Annotated[str, typer.Option("--model", help="model path or Hub id (a LLaVA-style model, or CLIP for --mode clip)")],
        out: Annotated[Path, typer.Option("--out", help="run folder: run.json, metrics.jsonl, checkpoint-*/, final/, best/")],
        mode: Annotated[str, typer.Option("--mode", help="full (language model + projector), lora, projector, or clip")] = "lora",
        split: Annotated[Optional[str], typer.Option("--split", help="split of build folders to train on (default train, or all when a build has no train split and no test split)")] = None,
        weights: Annotated[Optional[str], typer.Option("--weights", help="one weight per --shards, e.g. 2,1: a source of n samples gives round(w*n) samples per epoch (default: 1 each)")] = None,
        val_shards: Annotated[Optional[list[str]], typer.Option("--val-shards", help="validation data: a build folder (its val, validation or test split unless --val-split), tar paths or globs; default: no validation")] = None,
        val_split: Annotated[Optional[str], typer.Option("--val-split", help="validation split; without --val-shards it is read from the --shards builds (default: no validation)")] = None,
        template: Annotated[str, typer.Option("--template", help="chat (the model's chat template) or vicuna_v1 (LLaVA-1.5 checkpoints)")] = "chat",
        max_length: Annotated[int, typer.Option("--max-length", min=8, help="truncate longer sequences (an image's tokens are never split)")] = 2048,
        pad_to_square: Annotated[Optional[bool], typer.Option("--pad-to-square/--no-pad-to-square", help="pad images to a square with the processor's mean colour, as LLaVA-1.5 (default: on, off for clip)")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="samples per device per step")] = 8,
        grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="gradient accumulation steps")] = 1,
        loss_weighting: Annotated[Optional[str], typer.Option("--loss-weighting", help="tokens: a step's loss and gradient weigh each micro-batch by its trained tokens (samples for clip), as one batch --grad-accum times larger would; batches: each micro-batch alike, as LLaVA's own training (default: tokens, batches with --deepspeed)")] = None,
        lr: Annotated[float, typer.Option("--lr", help="peak learning rate")] = 2e-4,
        projector_lr: Annotated[Optional[float], typer.Option("--projector-lr", help="separate learning rate for the projector (default: --lr)")] = None,
        weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay")] = 0.0,
        warmup_ratio: Annotated[float, typer.Option("--warmup-ratio", help="share of steps spent warming up")] = 0.03,
        scheduler: Annotated[str, typer.Option("--scheduler", help="learning-rate schedule: cosine, linear, constant, ...")] = "cosine",
        max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="clip gradients to this norm (0: off)")] = 1.0,
        epochs: Annotated[int, typer.Option("--epochs", min=1, help="passes over the training data")] = 1,
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="stop after this many optimizer steps (overrides --epochs; default: --epochs decides)")] = None,
        seed: Annotated[int, typer.Option("--seed", help="seed of the data order and of new weights")] = 0,
        shuffle_buffer: Annotated[int, typer.Option("--shuffle-buffer", min=1, help="samples in the shuffle buffer (1: shard order only)")] = 1000,
        workers: Annotated[int, typer.Option("--workers", min=0, help="dataloader worker processes per device")] = 2,
        precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where the GPU supports it), no, bf16 or fp16")] = "auto",
        gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="recompute activations to save memory")] = False,
        deepspeed: Annotated[Optional[Path], typer.Option("--deepspeed", help="DeepSpeed JSON config (launch with `accelerate launch`)")] = None,
        lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="lora mode: rank of the LoRA matrices")] = 8,
        lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="lora mode: LoRA scaling (alpha / r)")] = 16,
        lora_dropout: Annotated[float, typer.Option("--lora-dropout", help="lora mode: dropout on the LoRA inputs")] = 0.05,
        lora_targets: Annotated[str, typer.Option("--lora-targets", help="language-model module names to adapt, comma-separated")] = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        train_projector: Annotated[bool, typer.Option("--train-projector/--freeze-projector", help="lora mode: train the projector in full too")] = True,
        clip_objective: Annotated[str, typer.Option("--clip-objective", help="clip mode: classes (cross-entropy over all class prompts) or contrastive")] = "classes",
        freeze_text: Annotated[bool, typer.Option("--freeze-text", help="clip mode: keep the text encoder fixed")] = False,
        prompt: Annotated[str, typer.Option("--prompt", help="clip mode: class prompt with {label}")] = "a photo of a {label}.",
        label_field: Annotated[str, typer.Option("--label-field", help="clip mode: the json field holding the label")] = "label",
        select_by: Annotated[str, typer.Option("--select-by", help="keep best/ by validation loss or accuracy (auto: accuracy for clip, loss otherwise)")] = "auto",
        save_every: Annotated[int, typer.Option("--save-every", min=1, help="checkpoint every N steps")] = 500,
        eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="validate every N steps (default: --save-every)")] = None,
        log_every: Annotated[int, typer.Option("--log-every", min=1, help="write a metrics.jsonl line (and a step line with its figures) every N steps")] = 10,
        keep_checkpoints: Annotated[int, typer.Option("--keep-checkpoints", min=1, help="keep the newest N checkpoint-*/ folders, deleting older ones")] = 2,
        resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its newest checkpoint")] = False,
        log_keys: Annotated[bool, typer.Option("--log-keys", help="write the sample keys of every batch to keys.jsonl")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar, step lines or warnings")] = False,
    ) -> None:
        """Train on shards: full, LoRA or projector-only for LLaVA-style models, or CLIP on image-label shards.

        Example: vlmforge train --shards builds/occlusion/2.6.0 --model llava-hf/llava-1.5-7b-hf --mode lora --out runs/occ
        """
        from vlmforge.progress import console
        from vlmforge.training.trainer import TrainConfig, train

        cfg = TrainConfig(
            shards=list(shards), model=model, out=str(out), mode=mode, split=split, weights=_floats(weights, "--weights"),
            val_shards=list(val_shards) if val_shards else None, val_split=val_split, template=template,
            max_length=max_length, pad_to_square=(mode != "clip") if pad_to_square is None else pad_to_square,
            batch_size=batch_size, grad_accum=grad_accum, loss_weighting=loss_weighting, lr=lr, projector_lr=projector_lr,
            weight_decay=weight_decay, warmup_ratio=warmup_ratio, scheduler=scheduler, max_grad_norm=max_grad_norm, epochs=epochs,
            max_steps=max_steps, seed=seed, shuffle_buffer=shuffle_buffer, workers=workers, precision=precision,
            gradient_checkpointing=gradient_checkpointing, deepspeed=str(deepspeed) if deepspeed else None,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets,
            train_projector=train_projector, clip_objective=clip_objective, freeze_text=freeze_text, prompt=prompt,
            label_field=label_field, select_by=select_by, save_every=save_every, eval_every=eval_every,
            log_every=log_every, keep_checkpoints=keep_checkpoints, resume=resume, log_keys=log_keys, quiet=quiet,
        )
        import os

        try:
            run = train(cfg)
        except KeyboardInterrupt:
            from vlmforge.errors import quiet_teardown

            quiet_teardown()
            typer.echo(interrupted_note(out), err=True)
            raise typer.Exit(130) from None
        if not quiet and int(os.environ.get("RANK", "0")) == 0:
            console.print(f"[green]done[/] {run}: final model in {run / 'final'}")

    @model_app.command("init-tiny")
    def init_tiny(
        out: Annotated[Path, typer.Option("--out", help="folder to write (loads with from_pretrained like any checkpoint)")],
        kind: Annotated[str, typer.Option("--kind", help="llava (CLIP tower + Llama), clip, causal-lm, mlm, grounding-dino or sam")] = "llava",
        seed: Annotated[int, typer.Option("--seed", help="seed of the random weights")] = 0,
        init_range: Annotated[float, typer.Option("--init-range", help="std of the random weights (llava)")] = TINY_TRAINABLE_INIT,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="write into a folder that is not empty")] = False,
    ) -> None:
        """Write a tiny randomly initialised model with its processor and tokenizer (no download), for
        trying training and evaluation on a CPU."""
        from vlmforge.progress import console
        from vlmforge.training.tiny import make_tiny, make_tiny_llava

        from vlmforge.errors import UserError

        if not 0 < init_range <= 1:  # transformers' config refused it with a traceback (NaN fails the test too)
            raise UserError(f"--init-range must be above 0 and at most 1 (got {init_range})")
        if kind != "llava" and init_range != TINY_TRAINABLE_INIT:  # the other kinds have their own: it went unused
            raise UserError(f"--init-range applies to --kind llava, not {kind}")
        for name, what in (("build.json", "a build"), ("run.json", "a training run or an evaluation")):
            if (out / name).is_file():  # the model's files mixed into it: neither loaded as a model nor as itself
                raise UserError(f"--out {out} is {what} ({name}): a model written there would mix with it, "
                                "--overwrite or not; choose another --out")
        if not overwrite:
            from vlmforge.training.llava import check_empty_out

            check_empty_out(out, "pass --overwrite or choose another --out")
        _quiet_transformers()
        if kind == "llava":
            make_tiny_llava(out, seed=seed, init_range=init_range)
        else:
            make_tiny(kind, out, seed=seed)  # clip and the other registered kinds
        console.print(f"[green]wrote[/] tiny {kind} model to {out}")

    @model_app.command("merge")
    def merge_cmd(
        src: Annotated[Path, typer.Argument(help="a run folder (uses final/), a checkpoint, or an export folder")],
        out: Annotated[Path, typer.Option("--out", help="folder for the merged full model")],
        base: Annotated[Optional[str], typer.Option("--base", help="base model path or Hub id (default: the one the run trained)")] = None,
    ) -> None:
        """Fold a LoRA adapter into its base model, or put a trained projector into it, and save a full
        checkpoint that loads without peft."""
        from vlmforge.progress import console
        from vlmforge.training.merge import merge

        _quiet_transformers()
        path = merge(src, out, base)
        console.print(f"[green]wrote[/] merged model to {path}")

    @model_app.command("compose")
    def compose_cmd(
        vision: Annotated[str, typer.Option("--vision", help="vision tower path or Hub id: CLIP, SigLIP, DINOv2, ViT or MAE")],
        language_model: Annotated[str, typer.Option("--language-model", help="causal LM path or Hub id: Llama, Qwen2, Mistral, ...")],
        out: Annotated[Path, typer.Option("--out", help="folder for the composed model and its processor")],
        feature_layer: Annotated[int, typer.Option("--feature-layer", help="vision hidden layer fed to the projector (LLaVA: -2)")] = -2,
        strategy: Annotated[str, typer.Option("--strategy", help="default (drop the CLS token) or full")] = "default",
        seed: Annotated[int, typer.Option("--seed", help="seed of the new projector's weights")] = 0,
    ) -> None:
        """Join a pretrained vision tower and a pretrained language model with a new projector into a
        LLaVA-style model; train the projector first (`vlmforge train --mode projector`)."""
        from vlmforge.progress import console
        from vlmforge.training.compose import compose_llava

        _quiet_transformers()
        path = compose_llava(vision, language_model, out, feature_layer, strategy, seed)
        console.print(f"[green]wrote[/] composed model to {path}")

