"""The thin trainer: shards in, a run folder out, with accelerate doing devices, precision and
gradient accumulation, and peft doing LoRA.

A run folder holds `run.json` (the configuration and the data it resolved to), `metrics.jsonl`
(training and validation figures), `checkpoint-NNNNNN/` folders (trainable weights, optimizer and
scheduler state, the loader position, and a usable export of the model under `model/`), `final/`
and, with validation data, `best/`. `--resume` continues from the newest checkpoint with the next
unseen sample.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from vlmforge.errors import UserError
from vlmforge.training.data import LoaderPosition, ShardRef, ShardStream, resolve_shards
from vlmforge.training.formatting import IMAGE_FIELDS

MODES = ("full", "lora", "projector", "clip")
VAL_SPLITS = ("val", "validation", "test")
STATE_FILE = "trainer_state.pt"
POSITION_FILE = "position.json"


@dataclass
class TrainConfig:
    """Every option of `vlmforge train` (see its --help for what each means)."""

    shards: list[str]
    model: str
    out: str
    mode: str = "lora"
    split: str | None = None
    weights: list[float] | None = None
    val_shards: list[str] | None = None
    val_split: str | None = None
    template: str = "chat"
    max_length: int = 2048
    pad_to_square: bool = True
    batch_size: int = 8
    grad_accum: int = 1
    loss_weighting: str | None = None  # tokens, or batches; None: tokens, but batches with --deepspeed
    lr: float = 2e-4
    projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 0
    shuffle_buffer: int = 1000
    workers: int = 2
    precision: str = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    train_projector: bool = True
    clip_objective: str = "classes"
    freeze_text: bool = False
    prompt: str = "a photo of a {label}."
    label_field: str = "label"
    select_by: str = "auto"
    save_every: int = 500
    eval_every: int | None = None
    log_every: int = 10
    keep_checkpoints: int = 2
    resume: bool = False
    log_keys: bool = False
    quiet: bool = False


# Schedules that need nothing beyond the warmup and total steps (others want a metric or extra
# arguments this command does not take).
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
              "inverse_sqrt")
# Settings a resumed run may change: how it is run and logged, not what it learns. Every other setting
# fixes the data order, the schedule or the weights, so changing it on --resume would make a run
# that no single configuration describes.
RESUMABLE_CHANGES = ("out", "resume", "workers", "quiet", "log_every", "save_every", "eval_every",
                     "keep_checkpoints", "log_keys", "precision", "gradient_checkpointing")


# ---------------------------------------------------------------------------------------------
# Tasks: what differs between LLaVA modes and CLIP


class LlavaTask:
    def __init__(self, cfg: TrainConfig):
        from vlmforge.training.collate import LlavaCollator
        from vlmforge.training.llava import configure, load_llava

        self.cfg = cfg
        model, self.processor = load_llava(cfg.model)
        if cfg.gradient_checkpointing:
            _checkpoint_activations(model)
            model.config.use_cache = False
        self.model = configure(model, cfg.mode, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                               cfg.train_projector)
        self.collate = LlavaCollator(self.processor, cfg.template, cfg.max_length, cfg.pad_to_square)
        self.higher_is_better = False
        self.select_metric = "loss"
        self.nothing_to_train = ("no sample has an assistant turn left after truncation (check the conversations "
                                 "and --max-length)")
        self.no_image_why = ", though its conversation shows an <image>"

    def is_projector(self, name: str) -> bool:
        from vlmforge.training.llava import PROJECTOR_PARTS, _is

        return _is(name, PROJECTOR_PARTS)

    def loss(self, model: Any, batch: dict[str, Any], device: Any) -> Any:
        from vlmforge.training.collate import model_inputs

        return model(**model_inputs(batch, device)).loss

    def weight(self, batch: dict[str, Any]) -> int:
        """The tokens a batch's loss is the mean over: labelled positions after the loss's shift by one."""
        return int((batch["labels"][:, 1:] != -100).sum())

    def eval_sums(self, model: Any, batches: Any, device: Any) -> dict[str, float]:
        """Token-weighted loss sums over some batches."""
        import torch

        from vlmforge.training.collate import model_inputs

        loss_sum, tokens = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                if "input_ids" not in batch:
                    continue
                n = self.weight(batch)
                loss_sum += float(model(**model_inputs(batch, device)).loss) * n
                tokens += n
        return {"loss_sum": loss_sum, "count": tokens}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["count"], "tokens": sums["count"]} if sums["count"] else {}

    def export(self, model: Any, out: Path) -> Path:
        from vlmforge.training.llava import export

        return export(model, self.processor, self.cfg.mode, _abs_model(self.cfg.model), out, self.cfg.template)


class ClipTask:
    def __init__(self, cfg: TrainConfig, train_shards: list[ShardRef], val_shards: list[ShardRef] | None):
        from vlmforge.training.clip import ClipCollator, ClipObjective, configure, labels_in, load_clip, text_positions

        self.cfg = cfg
        model, self.processor = load_clip(cfg.model)
        if cfg.gradient_checkpointing:
            _checkpoint_activations(model)
        self.model = configure(model, cfg.freeze_text)
        self.classes = labels_in(train_shards + (val_shards or []), cfg.label_field)
        self.objective = ClipObjective(self.processor, self.classes, cfg.clip_objective, cfg.prompt,
                                       text_positions(model))
        self.collate = ClipCollator(self.processor, self.classes, cfg.label_field, cfg.pad_to_square)
        metric = "accuracy" if cfg.select_by == "auto" else cfg.select_by  # checked in _check_config
        self.select_metric, self.higher_is_better = metric, metric == "accuracy"
        self.nothing_to_train = f"no sample has both an image that decodes and a {cfg.label_field!r} label"
        self.no_image_why = ", though it has a label"

    def is_projector(self, name: str) -> bool:
        return False

    def loss(self, model: Any, batch: dict[str, Any], device: Any) -> Any:
        return self.objective.loss(model, {"pixel_values": batch["pixel_values"].to(device),
                                           "class_idx": batch["class_idx"].to(device)})

    def weight(self, batch: dict[str, Any]) -> int:
        """Samples: the classes objective's loss is the mean over them (the contrastive one's nearly so)."""
        return len(batch["class_idx"])

    def eval_sums(self, model: Any, batches: Any, device: Any) -> dict[str, float]:
        m = self.objective.evaluate(model, batches, device)
        n = m.get("samples", 0)
        return {"loss_sum": m.get("loss", 0.0) * n, "correct": m.get("accuracy", 0.0) * n, "count": n}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums["count"]
        return {"loss": sums["loss_sum"] / n, "accuracy": sums["correct"] / n, "samples": n} if n else {}

    def export(self, model: Any, out: Path) -> Path:
        from vlmforge.training.clip import export

        return export(model, self.processor, _abs_model(self.cfg.model), self.classes, out)


def _checkpoint_activations(model: Any) -> None:
    """Recompute activations in the backward pass (transformers 5 renamed gradient checkpointing)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _abs_model(model: str) -> str:
    return str(Path(model).resolve()) if Path(model).exists() else model


# ---------------------------------------------------------------------------------------------
# The run folder


def _check_config(cfg: TrainConfig) -> None:
    if cfg.mode not in MODES:
        raise UserError(f"unknown mode {cfg.mode!r}; use {', '.join(MODES)}")
    for name in ("batch_size", "grad_accum", "epochs", "save_every", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_steps", "eval_every"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:  # --eval-every 0 fell back to --save-every
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    ranges = {"lr": (cfg.lr, "above 0", cfg.lr > 0), "weight_decay": (cfg.weight_decay, "0 or more", cfg.weight_decay >= 0),
              "warmup_ratio": (cfg.warmup_ratio, "between 0 and 1", 0 <= cfg.warmup_ratio <= 1),
              "max_grad_norm": (cfg.max_grad_norm, "0 (off) or more", cfg.max_grad_norm >= 0),
              "lora_dropout": (cfg.lora_dropout, "at least 0 and below 1", 0 <= cfg.lora_dropout < 1)}
    if cfg.projector_lr is not None:
        ranges["projector_lr"] = (cfg.projector_lr, "above 0", cfg.projector_lr > 0)
    for name, (value, want, ok) in ranges.items():
        if not ok:  # NaN fails every comparison, so it lands here too
            raise UserError(f"--{name.replace('_', '-')} must be {want} (got {value})")
    if cfg.workers < 0:
        raise UserError("--workers must be 0 or more")
    if cfg.weights is not None and len(cfg.weights) != len(cfg.shards):
        raise UserError(f"{len(cfg.weights)} weights for {len(cfg.shards)} --shards; give one weight per --shards")
    odd = next((w for w in cfg.weights or [] if not 0 <= w < math.inf), None)  # NaN fails the test too
    if odd is not None:  # inf and nan were tracebacks in the epoch's size, after the model had loaded
        raise UserError(f"--weights must be numbers of 0 or more (got {odd:g})")
    if cfg.precision not in ("auto", "no", "bf16", "fp16"):
        raise UserError("--precision must be auto, no, bf16 or fp16")
    if cfg.loss_weighting not in (None, "tokens", "batches"):
        raise UserError(f"unknown --loss-weighting {cfg.loss_weighting!r}; use tokens or batches")
    if cfg.loss_weighting == "tokens" and cfg.deepspeed:  # DeepSpeed accumulates itself: no step's gradient to rescale
        raise UserError("--loss-weighting tokens does not work with --deepspeed, which accumulates gradients itself; "
                        "use --loss-weighting batches")
    if cfg.deepspeed:
        _check_deepspeed(cfg.deepspeed)
    if cfg.select_by not in ("auto", "loss", "accuracy"):
        raise UserError(f"unknown --select-by {cfg.select_by!r}; use auto, loss or accuracy")
    if cfg.select_by == "accuracy" and cfg.mode != "clip":  # it was ignored: best/ went by loss
        raise UserError("--select-by accuracy needs --mode clip; the other modes keep best/ by validation loss")
    defaults = TrainConfig(shards=[], model="", out="")
    for mode, names in (("clip", ("clip_objective", "freeze_text", "prompt", "label_field")),
                        ("lora", ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "train_projector"))):
        changed = [n for n in names if getattr(cfg, n) != getattr(defaults, n)]
        if changed and cfg.mode != mode:  # read by no other mode: the run would go on as if not given
            option = "--freeze-projector" if changed[0] == "train_projector" else f"--{changed[0].replace('_', '-')}"
            raise UserError(f"{option} applies to --mode {mode}, not --mode {cfg.mode}")
    changed = [n for n in ("template", "max_length", "projector_lr") if getattr(cfg, n) != getattr(defaults, n)]
    if changed and cfg.mode == "clip":  # CLIP reads no conversation and has no projector
        raise UserError(f"--{changed[0].replace('_', '-')} applies to --mode full, lora and projector, not --mode clip")
    if not (cfg.val_shards or cfg.val_split) and (cfg.eval_every is not None or cfg.select_by != "auto"):
        option = "--eval-every" if cfg.eval_every is not None else "--select-by"
        raise UserError(f"{option} needs validation data (--val-split or --val-shards); without it nothing is validated")
    if cfg.projector_lr is not None and cfg.mode == "lora" and not cfg.train_projector:
        raise UserError("--projector-lr sets the projector's rate, and --freeze-projector keeps it from training")
    if cfg.scheduler not in SCHEDULERS:
        raise UserError(f"unknown --scheduler {cfg.scheduler!r}; use {', '.join(SCHEDULERS)}")
    _check_model(cfg.model)


def _check_deepspeed(config: str) -> None:
    import importlib.util

    if not Path(config).is_file():
        raise UserError(f"--deepspeed {config}: no such file (give a DeepSpeed JSON config)")
    try:
        json.loads(Path(config).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"--deepspeed {config} is not a JSON config ({e})") from None
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("--deepspeed needs DeepSpeed, which is not installed here (pip install deepspeed)")


def _check_model(model: str) -> None:
    """A model that is not whole fails here, before the data is read and anything is loaded."""
    from vlmforge.curation.models import check_model_name
    from vlmforge.training.llava import export_kind

    check_model_name(model)
    kind = export_kind(model)
    if kind in ("lora", "projector"):
        what = "a LoRA adapter" if kind == "lora" else "a projector-only export"
        raise UserError(f"{model} is {what}, not a full model; merge it into its base first "
                        f"(vlmforge model merge {model} --out DIR) and train with --model DIR")


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return sorted(p for p in out.glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / POSITION_FILE).exists())


def _open_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, Path | None]:
    """(cfg with its defaults resolved, the run folder, the checkpoint to resume from)."""
    out = Path(cfg.out)
    run_json = out / "run.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give the folder for the run")
    if (out / "predictions.jsonl").is_file():  # its run.json is the evaluation's: it was 'already holds a run'
        raise UserError(f"--out {out} is an evaluation's output folder (predictions.jsonl); choose a new or empty "
                        "folder for the run")
    if not run_json.exists() and out.is_dir() and any(out.iterdir()):  # a build, or other runs' parent folder
        raise UserError(f"--out {out} is not empty and holds no run (no run.json); choose a new or empty folder")
    if run_json.exists():
        if not cfg.resume:
            raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        before = _read_run_json(out)["config"]
        # Runs from before --loss-weighting weighed batches; not given on --resume, a run keeps its own.
        before["loss_weighting"] = _loss_weighting(before.get("loss_weighting", "batches"), before.get("deepspeed"))
        cfg = replace(cfg, loss_weighting=cfg.loss_weighting or before["loss_weighting"])
        now = asdict(cfg)
        # Keys missing from an older run.json are settings that did not exist then: nothing to compare.
        changed = [k for k in now if k not in RESUMABLE_CHANGES and k in before and before[k] != now[k]]
        if changed:
            values = ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed)
            raise UserError(f"cannot resume {out}: {', '.join(changed)} changed since the run started ({values}); "
                            f"resume with the settings in {run_json}, or start a new run in another --out")
    found = checkpoints(out) if out.exists() else []
    cfg = replace(cfg, loss_weighting=_loss_weighting(cfg.loss_weighting, cfg.deepspeed))
    return cfg, out, (found[-1] if cfg.resume and found else None)


def _loss_weighting(given: str | None, deepspeed: str | None) -> str:
    return given or ("batches" if deepspeed else "tokens")


def _read_run_json(out: Path) -> dict[str, Any]:
    try:
        record = json.loads((out / "run.json").read_text())
        record["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{out / 'run.json'} is damaged ({type(e).__name__}: {e}); it cannot be resumed: "
                        "start a new run in another --out") from None
    return record


def _check_same_data(out: Path, shards: list[ShardRef], epoch_size: int | None = None) -> None:
    """A checkpoint's position counts samples of the data the run started on: a build rebuilt in place
    (or tars rewritten) under the same paths would resume at another sample, and repeat or skip others.
    Builds and sample counts are compared before the model loads; the epoch's size once it is known."""
    before = _read_run_json(out)
    was = {b["path"]: b["build_id"] for b in before.get("builds", [])}
    now = {b["path"]: b["build_id"] for b in _source_builds(shards)}
    changed = [f"build {p} was {was[p]}, now {now[p]}" for p in sorted(set(was) & set(now)) if was[p] != now[p]]
    samples = sum(s.samples for s in shards)
    if "samples" in before and before["samples"] != samples:
        changed.append(f"{before['samples']} samples, now {samples}")
    if epoch_size is not None and before.get("epoch_size", epoch_size) != epoch_size:
        changed.append(f"{before['epoch_size']} samples an epoch, now {epoch_size}")
    if changed:
        raise UserError(f"cannot resume {out}: its training data changed since the run started ({'; '.join(changed)}); "
                        "resume on the data it started with, or start a new run in another --out")


def _source_builds(shards: list[ShardRef]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for s in shards:
        info = Path(s.path).parent / "build.json"
        if str(info) not in seen and info.exists():
            d = json.loads(info.read_text())
            seen[str(info)] = {"path": str(info.parent), "build_id": d.get("build_id"), "builder": d.get("builder"),
                               "version": d.get("version")}
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# The loop


def _accelerator(cfg: TrainConfig):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and local > torch.cuda.device_count():  # NCCL refuses two ranks on one GPU
        raise UserError(f"{local} processes on this machine and {torch.cuda.device_count()} GPU(s): start at most one "
                        f"process per GPU (--nproc_per_node {torch.cuda.device_count()}), or train on the CPU with "
                        "CUDA_VISIBLE_DEVICES=''")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    plugin = None
    if cfg.deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(hf_ds_config=cfg.deepspeed, gradient_accumulation_steps=cfg.grad_accum)
        ds = plugin.deepspeed_config
        if ds.get("train_micro_batch_size_per_gpu") in (None, "auto"):
            ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    if not int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several runs in one process (tests, notebooks): start accelerate's shared state afresh.
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    # Without a GPU, say so: accelerate then runs several launched processes as CPU ranks (gloo).
    cpu_only = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=precision, deepspeed_plugin=plugin,
                       cpu=cpu_only)


def _optimizer(task: Any, cfg: TrainConfig):
    import torch

    main, proj = [], []
    for n, p in task.model.named_parameters():
        if p.requires_grad:
            if p.dtype != torch.float32:
                p.data = p.data.float()  # trainable weights stay in full precision
            (proj if cfg.projector_lr and task.is_projector(n) else main).append(p)
    if not main and not proj:
        raise UserError("nothing to train: the mode left every weight frozen")
    groups = [{"params": main, "lr": cfg.lr}] if main else []
    if proj:
        groups.append({"params": proj, "lr": cfg.projector_lr})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _Log:
    def __init__(self, path: Path, main: bool, quiet: bool):
        self.path, self.main, self.quiet = path, main, quiet

    def write(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if not self.quiet:
            from vlmforge.progress import console

            figures = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                               if k not in ("keys",))
            console.print(figures, highlight=False, soft_wrap=True)


def train(cfg: TrainConfig, on_step: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    """Train as `cfg` says and return the run folder. `on_step(step, record)` is called after each
    optimizer step (tests use it)."""
    import torch
    import transformers
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from vlmforge.progress import progress_bar
    from vlmforge.training.llava import export_folder

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg = replace(cfg, model=export_folder(cfg.model))  # a run folder: its final/
    _check_config(cfg)
    cfg, out, resume_from = _open_run(cfg)
    accelerator = _accelerator(cfg)
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    if cfg.resume and resume_from is None and main and not cfg.quiet:  # a mistyped --out would start over unseen
        from vlmforge.progress import console

        console.print(f"[yellow]note:[/] {out} holds no checkpoint yet: --resume starts the run from its first step")

    shards = resolve_shards(cfg.shards, cfg.split, training=True)
    if resume_from is not None:  # before the model loads (minutes, for a 7B model)
        _check_same_data(out, shards)
    val = _val_shards(cfg)
    same = {s.path for s in val or []} & {s.path for s in shards}
    if same and main and not cfg.quiet:  # best/ would then be chosen on the training data itself
        from vlmforge.progress import console

        console.print(f"[yellow]warning:[/] {len(same)} validation shard(s) are also training shards "
                      f"(e.g. {sorted(same)[0]}); best/ is then chosen on data the model trains on")
    from vlmforge.training.llava import check_model_folder

    check_model_folder(cfg.model)  # after the data's checks (seconds), before the model loads (minutes)
    task = ClipTask(cfg, shards, val) if cfg.mode == "clip" else LlavaTask(cfg)
    optimizer = _optimizer(task, cfg)
    model, optimizer = accelerator.prepare(task.model, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    stream = ShardStream(shards, cfg.batch_size, task.collate, cfg.weights, cfg.seed, shuffle=True,
                         shuffle_buffer=cfg.shuffle_buffer, rank=rank, world_size=world)
    epoch_size = stream.epoch_size()
    rank_batches = math.ceil(math.ceil(epoch_size / cfg.batch_size) / world)
    total = cfg.max_steps or cfg.epochs * math.ceil(rank_batches / cfg.grad_accum)
    scheduler = transformers.get_scheduler(cfg.scheduler, optimizer.optimizer, int(cfg.warmup_ratio * total), total)

    position, step = LoaderPosition(seed=cfg.seed), 0
    if resume_from is not None:
        _check_same_data(out, shards, epoch_size)
        position, step = _load_checkpoint(resume_from, accelerator, model, optimizer, scheduler)
    if main:
        _write_run_json(out, cfg, shards, val, epoch_size, total, world, resume_from)
    accelerator.wait_for_everyone()  # the run folder exists before any rank writes into it
    log = _Log(out / "metrics.jsonl", main, cfg.quiet)
    keys_log = (out / ("keys.jsonl" if rank == 0 else f"keys-rank{rank}.jsonl")) if cfg.log_keys else None
    if cfg.resume:  # steps after the checkpoint are done again: their lines would show twice
        if main:
            _keep_lines(out / "metrics.jsonl", lambda r: r["step"] <= step)
        if keys_log is not None:
            _keep_lines(keys_log, lambda r: r["step"] < step)  # keys lines count steps from 0
    eval_every = cfg.eval_every or cfg.save_every
    best: float | None = _best_so_far(out) if resume_from else None

    window_loss, window_weight, window_samples, dropped = 0.0, 0, 0, 0
    prepared_again: set[str] = set()  # model-ready transforms unlike the processor's, reported once each
    images_transform = getattr(getattr(task.collate, "images", None), "transform", None)
    # tokens: each micro-batch's loss counts by its weight (trained tokens, or CLIP's samples), as in one big batch
    by_weight = cfg.loss_weighting == "tokens"
    # Backward takes loss * weight / unit, the unit the mean weight of a micro-batch in the step before (common to
    # every process) to a power of two: losses of about their own size, as fp16's loss scaler expects. The rescale
    # undoes it exactly.
    step_loss, step_weight, unit = 0.0, 0, 1.0
    t0 = time.time()
    ended = False
    first_no_image: str | None = None  # the first sample left out for want of an image, warned once
    # The step lines come every --log-every steps and say nothing of the total; the bar (a line every 30 s in a
    # log) shows how far the run is and how long it has left.
    with progress_bar("train steps", total=total, disable=cfg.quiet or not main) as advance:
        advance(step)  # a resumed run starts where its checkpoint stands
        while step < total and not ended:
            from_start = position.samples_seen == 0  # a resumed epoch may hold only batches without samples
            stream.set_position(position)
            # Its own generator: starting an iterator must not draw from the global RNG (dropout), or a
            # resumed run would diverge from an uninterrupted one.
            loader = DataLoader(stream, batch_size=None, num_workers=cfg.workers, generator=torch.Generator(),
                                worker_init_fn=_ignore_sigint if cfg.workers else None)
            with _ctrl_c_held():  # its workers start here
                epoch_batches = iter(loader)
            batches = trained = without_image = 0
            for batch, last in _with_last_kept(epoch_batches):
                position = LoaderPosition(batch["epoch"], batch["samples_seen"], cfg.seed)
                dropped += batch.get("dropped", 0)
                without_image += len(batch.get("no_image", []))
                if batch.get("no_image") and first_no_image is None:
                    first_no_image = batch["no_image"][0]
                    if not cfg.quiet:
                        from vlmforge.progress import console

                        console.print(f"[yellow]warning:[/] left out {first_no_image}: it has no image member "
                                      f"({', '.join(IMAGE_FIELDS)}){task.no_image_why}; every such sample is left out, "
                                      "counted in metrics.jsonl's dropped")
                if batch.get("unreadable") and not cfg.quiet:
                    from vlmforge.progress import console

                    console.print(f"[yellow]warning:[/] left out {len(batch['unreadable'])} sample(s) whose image does "
                                  f"not decode: {', '.join(batch['unreadable'])}")
                if batch.get("odd_turns") and not cfg.quiet:
                    from vlmforge.progress import console

                    console.print(f"[yellow]warning:[/] left out {len(batch['odd_turns'])} sample(s) with a conversation "
                                  f"turn from another role than human, gpt or system: {', '.join(batch['odd_turns'])}")
                for transform in batch.get("prepared_again", []):
                    if transform not in prepared_again and not cfg.quiet:
                        from vlmforge.progress import console

                        console.print(f"[yellow]warning:[/] images were made model-ready with {transform!r}, but "
                                      f"training prepares images with {images_transform!r}: they are prepared again "
                                      "(slower, and not the pixels the originals would give)")
                    prepared_again.add(transform)
                batches += 1
                if not batch["keys"]:
                    continue
                trained += 1
                if keys_log is not None:
                    with open(keys_log, "a") as f:
                        f.write(json.dumps({"step": step, "keys": batch["keys"]}) + "\n")
                model.train()
                if last:  # the epoch's last micro-batch ends the optimizer step: none spans two epochs
                    accelerator.step = cfg.grad_accum - 1
                with accelerator.accumulate(model):
                    loss = task.loss(model, batch, accelerator.device)
                    weight = task.weight(batch) if by_weight else 1
                    accelerator.backward(loss * (weight / unit))
                    # before clipping: it clips the step's gradient
                    if accelerator.sync_gradients and not cfg.deepspeed:
                        factor = _step_factor(accelerator, cfg.grad_accum, (step_weight + weight) / unit, world)
                        _rescale_step(model, factor)
                        # a power of two: scaling by it is exact, so a resumed run (unit 1 again) computes the same bits
                        unit = 2.0 ** round(math.log2(unit / factor)) if by_weight and unit / factor > 0 else 1.0
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                step_loss += float(loss.detach()) * weight
                step_weight += weight
                window_samples += len(batch["keys"])
                if not accelerator.sync_gradients:
                    continue
                used_lr = scheduler.get_last_lr()[0]  # the rate this optimizer step used; the scheduler moves on next
                scheduler.step()
                step += 1
                advance()
                # samples_seen counts over the whole run (the position's count starts again each epoch)
                record = {"step": step, "epoch": position.epoch,
                          "samples_seen": position.epoch * epoch_size + position.samples_seen,
                          "loss": step_loss / step_weight, "lr": used_lr}
                # the logged loss: over the window's tokens (tokens), or the mean of its steps' losses (batches)
                window_loss += step_loss if by_weight else record["loss"]
                window_weight += step_weight if by_weight else 1
                step_loss, step_weight = 0.0, 0
                if on_step is not None:
                    on_step(step, record)
                # The last epoch's last step: with batches that kept no sample, fewer steps than `total` counted
                ended = step >= total or (last and cfg.max_steps is None and position.epoch + 1 >= cfg.epochs)
                if step % cfg.log_every == 0 or ended:
                    sums = accelerator.reduce(torch.tensor([window_loss, window_weight], device=accelerator.device),
                                              "sum")
                    elapsed = time.time() - t0
                    log.write({**record, "loss": float(sums[0] / sums[1]),
                               "samples_per_s": window_samples * world / max(elapsed, 1e-9), "dropped": dropped})
                    window_loss, window_weight, window_samples, t0 = 0.0, 0, 0, time.time()
                if val and (step % eval_every == 0 or ended):
                    best = _evaluate(task, model, accelerator, val, cfg, step, log, out, best)
                if step % cfg.save_every == 0 or ended:
                    _save_checkpoint(out, step, position, accelerator, model, optimizer, scheduler, task, cfg)
                if ended:
                    break
            with _ctrl_c_held():  # its workers stop here, not in a destructor
                del epoch_batches
            if ended:
                break
            if batches and not trained and from_start:
                why = (f" ({without_image} sample(s) have no image member ({', '.join(IMAGE_FIELDS)}), e.g. "
                       f"{first_no_image})") if without_image else ""
                raise UserError(f"a whole epoch had nothing to train: {task.nothing_to_train}{why}")
            position = LoaderPosition(position.epoch + 1, 0, cfg.seed)  # the epoch is used up
    accelerator.wait_for_everyone()
    if main:
        final = out / "final"
        if final.exists():
            shutil.rmtree(final)
        task.export(accelerator.unwrap_model(model), final)
    accelerator.wait_for_everyone()
    return out


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Ctrl-C held back while a data loader's workers start or stop, and raised when that is done. Raised
    inside (in a library's after-fork hook, in an iterator's destructor) it was taken for an error of that
    code, printed as 'Exception ignored', and training went on."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


def _ignore_sigint(worker_id: int) -> None:
    """A data loader worker leaves Ctrl-C to the training process, which stops it in order: a terminal's
    Ctrl-C reaches every process of the job, and a worker ended by it first made the training process fail
    with 'DataLoader worker exited unexpectedly' instead of saying how to resume."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _step_factor(accelerator: Any, grad_accum: int, weight: float, world: int) -> float:
    """What a step's gradient is scaled by to be the weighted mean over the micro-batches it holds: each
    backward took loss * weight (in a unit common to the step; 1 with --loss-weighting batches) divided by
    --grad-accum, and an epoch's last step may hold fewer micro-batches. With several processes the gradients were
    averaged over them, and their weights differ (tokens; a batch that kept no sample): the weight is
    summed over all of them (at every step, so that each process joins the same collective)."""
    if world > 1:
        import torch

        weight = float(accelerator.reduce(torch.tensor([weight], device=accelerator.device), reduction="sum").item())
    return grad_accum * world / weight if weight else 1.0


def _rescale_step(model: Any, factor: float) -> None:
    if factor == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)


def _keep_lines(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines log with the records `keep` accepts (a line cut off by a kill goes too)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if keep(json.loads(line)):
                kept.append(line + "\n")
        except ValueError:
            continue
    path.write_text("".join(kept))


def _with_last_kept(batches: Any) -> Any:
    """(batch, whether it is the last batch that kept a sample) for each batch, in order, reading ahead
    past batches that kept none: an epoch ending in such batches still ends its optimizer step."""
    current, empty_after = None, []
    for batch in batches:
        if batch["keys"] and current is not None:
            yield current, False
            yield from ((b, False) for b in empty_after)
            empty_after = []
        if batch["keys"]:
            current = batch
        elif current is None:
            yield batch, False
        else:
            empty_after.append(batch)
    if current is not None:
        yield current, True
    yield from ((b, False) for b in empty_after)


def _write_run_json(out: Path, cfg: TrainConfig, shards: list[ShardRef], val: list[ShardRef] | None, epoch_size: int,
                    total: int, world: int, resume_from: Path | None) -> None:
    from vlmforge import __version__

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file on the way, or a folder this user cannot write
        raise UserError(f"cannot make the run folder {out}: {e.strerror} ({e.filename})") from None
    record = {"config": asdict(cfg), "epoch_size": epoch_size, "total_steps": total, "world_size": world,
              "shards": len(shards), "samples": sum(s.samples for s in shards), "builds": _source_builds(shards),
              "val_shards": len(val or []), "started_from": resume_from.name if resume_from else None,
              "package_version": __version__}
    tmp = out / "run.json.tmp"  # a kill while writing leaves the run.json before it whole
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out / "run.json")


def _val_shards(cfg: TrainConfig) -> list[ShardRef] | None:
    specs = cfg.val_shards or (cfg.shards if cfg.val_split else None)
    if not specs:
        return None
    if cfg.val_split:
        return resolve_shards(specs, cfg.val_split)
    for split in VAL_SPLITS:  # a build given as --val-shards: its validation split
        try:
            return resolve_shards(specs, split)
        except UserError:
            continue
    return resolve_shards(specs, None)


def _evaluate(task: Any, model: Any, accelerator: Any, val: list[ShardRef], cfg: TrainConfig, step: int, log: _Log,
              out: Path, best: float | None) -> float | None:
    import torch

    stream = ShardStream(val, cfg.batch_size, task.collate, shuffle=False, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, pad_ranks=False)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    sums = task.eval_sums(unwrapped, iter(stream), accelerator.device)
    keys = sorted(sums)
    reduced = accelerator.reduce(torch.tensor([float(sums[k]) for k in keys], device=accelerator.device), "sum")
    metrics = task.metrics(dict(zip(keys, reduced.tolist())))
    if not metrics:
        return best
    log.write({"step": step, "eval": metrics})
    value = metrics[task.select_metric]
    better = best is None or (value > best if task.higher_is_better else value < best)
    if better and accelerator.is_main_process:
        dst, tmp = out / "best", out / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        task.export(unwrapped, tmp)
        (tmp / "best.json").write_text(json.dumps({"step": step, "metric": task.select_metric, **metrics}) + "\n")
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return value if better else best


def _best_so_far(out: Path) -> float | None:
    p = out / "best" / "best.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    return d.get(d["metric"])


def _save_checkpoint(out: Path, step: int, position: LoaderPosition, accelerator: Any, model: Any, optimizer: Any,
                     scheduler: Any, task: Any, cfg: TrainConfig) -> None:
    import torch

    accelerator.wait_for_everyone()
    final = out / f"checkpoint-{step:06d}"
    tmp = out / f"checkpoint-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if cfg.deepspeed:
        accelerator.save_state(str(tmp / "deepspeed"))
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if not cfg.deepspeed:
            trainable = {n: p.detach().cpu() for n, p in unwrapped.named_parameters() if p.requires_grad}
            torch.save({"params": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "step": step, "torch_rng": torch.get_rng_state(), "device_rng": _device_rng(accelerator.device)},
                       tmp / STATE_FILE)
        task.export(unwrapped, tmp / "model")
        (tmp / POSITION_FILE).write_text(json.dumps({"step": step, **position.to_dict()}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(out)[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(ckpt: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any
                     ) -> tuple[LoaderPosition, int]:
    import pickle

    import torch

    try:  # written whole (a folder renamed into place), so only a damaged disk or a hand edit gets here
        pos = json.loads((ckpt / POSITION_FILE).read_text())
        LoaderPosition.from_dict(pos)
        state = None if (ckpt / "deepspeed").exists() else torch.load(ckpt / STATE_FILE, map_location="cpu",
                                                                        weights_only=False)
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        before = [c for c in checkpoints(ckpt.parent) if c.name < ckpt.name]
        then = f"resume from {before[-1].name}" if before else "start the run again"
        raise UserError(f"{ckpt} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"delete that folder and run the same command again to {then}") from None
    if state is None:
        accelerator.load_state(str(ckpt / "deepspeed"))
        scheduler.last_epoch = pos["step"]
    else:
        unwrapped = accelerator.unwrap_model(model)
        missing = set(state["params"]) - {n for n, _ in unwrapped.named_parameters()}
        if missing:
            raise UserError(f"{ckpt} does not fit this model (unknown weights such as {sorted(missing)[0]})")
        unwrapped.load_state_dict(state["params"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        _device_rng(accelerator.device, state.get("device_rng"))
    return LoaderPosition.from_dict(pos), int(pos["step"])


def _device_rng(device: Any, state: Any = None) -> Any:
    """The accelerator's random state (dropout on a GPU draws from it, not from the CPU's), or with `state`
    set it back; None on the CPU. Checkpoints from before it was kept have none."""
    import torch

    module = {"cuda": torch.cuda, "mps": getattr(torch, "mps", None)}.get(device.type)
    if module is None:
        return None
    if state is None:
        return module.get_rng_state(device) if device.type == "cuda" else module.get_rng_state()
    if device.type == "cuda":
        module.set_rng_state(state, device)
    else:
        module.set_rng_state(state)
    return None
