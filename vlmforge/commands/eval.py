"""`vlmforge eval` (run a model on a task), `vlmforge eval score` (score predictions with no model) and
`vlmforge eval tasks` (list the tasks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

Task = Annotated[Optional[str], typer.Option("--task", "-t", help="mcqa, pope, scienceqa, mmbench, grading or open (required to evaluate or score; `vlmforge eval tasks` lists them)")]
Split = Annotated[Optional[str], typer.Option("--split", help="split to read (builds, ScienceQA pid_splits, graded folders, the MMBench TSV's split column); default test (a build without one: its only split, unless that is train; an MMBench TSV: every row)")]
ImageRoot = Annotated[Optional[Path], typer.Option("--image-root", help="folder that image paths in question files are relative to (COCO val2014 for POPE, ScienceQA images/test, VG images)")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="only the first N items (MMBench: whole questions)")]
Rounds = Annotated[Optional[int], typer.Option("--rounds", min=1, help="MMBench: rotations per question (default: one per option; 1 = no circular evaluation)")]
NumGrades = Annotated[int, typer.Option("--num-grades", min=2, help="grading: number of grades (0..N-1)")]
Parse = Annotated[Optional[str], typer.Option("--parse", help="letter parsing: strict (LLaVA's ScienceQA rule) or lenient (also '(B)', 'answer: B', option text); default strict for scienceqa, lenient otherwise")]
Embedder = Annotated[Optional[str], typer.Option("--embedder", help="open: sentence-transformers model for soft matching (default: offline MiniLM)")]
SoftThreshold = Annotated[Optional[float], typer.Option("--soft-threshold", help="open: cosine at or above which an answer soft-matches (default 0.85)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or table")]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="skip the PNG plots")]


BACKENDS = ("local", "openai", "vllm", "transformers")  # the backends that answer a model's questions


def _task(name: Optional[str], parse: Optional[str], embedder: Optional[str], soft_threshold: Optional[float]):
    from vlmforge.errors import UserError
    from vlmforge.evaluation.tasks import get_task

    if not name:
        raise UserError("give --task (see `vlmforge eval tasks`)")
    if parse not in (None, "strict", "lenient"):
        raise UserError("--parse must be strict or lenient")
    if soft_threshold is not None and not -1 <= soft_threshold <= 1:
        raise UserError(f"--soft-threshold is a cosine similarity, from -1 to 1 (got {soft_threshold})")
    strict = None if parse is None else parse == "strict"
    return get_task(name, strict=strict, embedder=embedder, soft_threshold=soft_threshold)


def _check_applies(task_name: str, **given) -> None:
    """Refuse a task option given to a task that does not read it: it would be silently ignored."""
    from vlmforge.errors import UserError

    for option, (value, tasks) in given.items():
        if value is not None and task_name not in tasks:
            raise UserError(f"--{option.replace('_', '-')} applies to {' and '.join(tasks)}, not {task_name}")


def _slug(text: str) -> str:
    """The model's folder in evals/<task>/: its last name, with the names above it while that is a run's
    final/, best/, checkpoint-N/ or model/ (every run's final/ was evals/<task>/final, so a second run's
    evaluation was refused as another run's, and --overwrite discarded the first's)."""
    parts = [p for p in text.rstrip("/").split("/") if p not in ("", ".")]
    name = parts[-1:] if parts else []
    while len(parts) > len(name) and re.fullmatch(r"final|best|model|checkpoint-\d+", name[0]):
        name.insert(0, parts[-len(name) - 1])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(name)).strip("-") or "model"


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    eval_app = typer.Typer(
        help="Evaluate a model on a task (mcqa, pope, scienceqa, mmbench, grading, open) and write "
        "predictions.jsonl (resumable), summary.json, a Markdown table and plots. "
        "`vlmforge eval score` scores existing predictions without a model.",
        invoke_without_command=True,
    )
    app.add_typer(eval_app, name="eval")

    @eval_app.callback()
    def eval_run(
        ctx: typer.Context,
        task: Task = None,
        data: Annotated[Optional[list[Path]], typer.Option("--data", "-d", help="a build folder or the benchmark's files (repeat for several: e.g. a LLaVA ScienceQA file and the folder with problems.json)")] = None,
        model: Annotated[Optional[str], typer.Option("--model", "-m", help="checkpoint path or Hub id (local), or the model name an API serves")] = None,
        backend: Annotated[str, typer.Option("--backend", help="local (transformers: LLaVA-style or CLIP), or a generation backend: openai, vllm, transformers")] = "local",
        scoring: Annotated[Optional[str], typer.Option("--scoring", help="generate (parse the answer), loss (lowest loss over the options) or clip (CLIP zero-shot); default: clip for CLIP models, else generate")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output folder (default evals/<task>/<model's name>, e.g. evals/mcqa/run1-final for runs/run1/final); rerun with the same folder to resume")] = None,
        split: Split = None,
        image_root: ImageRoot = None,
        limit: Limit = None,
        prompt: Annotated[Optional[str], typer.Option("--prompt", help="grading/open: question to ask instead of the data's own")] = None,
        prompt_suffix: Annotated[Optional[str], typer.Option("--prompt-suffix", help="pope: text added after each question (default: 'Answer the question using a single word or phrase.'; '' for none)")] = None,
        rounds: Rounds = None,
        num_grades: NumGrades = 5,
        parse: Parse = None,
        class_template: Annotated[Optional[str], typer.Option("--class-template", help="CLIP: class prompt with {} (or {label}) for the class or grade (default per task, e.g. 'a photo of a {}.')")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="items per model call (loss scoring: sequences)")] = 8,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="longest generated answer")] = 64,
        device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 ... (local backend: default cpu; transformers backend: default a GPU if there is one)")] = None,
        dtype: Annotated[Optional[str], typer.Option("--dtype", help="auto, float32, bfloat16 or float16 (local, transformers and vllm backends; default auto)")] = None,
        system: Annotated[Optional[str], typer.Option("--system", help="system prompt (default: none, or LLaVA-1.5's for a run trained with --template vicuna_v1)")] = None,
        api_base: Annotated[Optional[str], typer.Option("--api-base", help="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL or api.openai.com)")] = None,
        api_key_env: Annotated[str, typer.Option("--api-key-env", help="openai: environment variable holding the API key (never printed)")] = "OPENAI_API_KEY",
        concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai: requests in flight at once")] = 8,
        max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="openai: retries on 429/5xx/timeouts, with exponential backoff (an endpoint that cannot be reached fails after one quick retry)")] = 6,
        timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="openai: seconds to wait for each answer before retrying")] = 120.0,
        image_urls: Annotated[Optional[Path], typer.Option("--image-urls", help="openai: CSV of id,url (item id or image file name) to send URLs instead of image bytes")] = None,
        embedder: Embedder = None,
        soft_threshold: SoftThreshold = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="discard predictions already in --out and start again")] = False,
        quiet: Quiet = False,
        no_plots: NoPlots = False,
    ) -> None:
        """Run a model on a task. Example: vlmforge eval --task mcqa --data builds/mcqa/1.1.0 --model ckpt/ --out evals/run1"""
        if ctx.invoked_subcommand is not None:
            return
        if task is None and not data:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)
        from vlmforge.errors import UserError
        from vlmforge.evaluation.items import ReadOptions
        from vlmforge.evaluation.run import evaluate
        from vlmforge.evaluation.runners import GeneratorRunner, LocalRunner, attach_image_urls, load_image_urls
        from vlmforge.progress import console

        t = _task(task, parse, embedder, soft_threshold)
        _check_applies(t.name, prompt=(prompt, ("grading", "open")), prompt_suffix=(prompt_suffix, ("pope",)),
                       rounds=(rounds, ("mmbench",)))
        if not data:
            raise UserError("give --data (a build folder or the benchmark's files)")
        from vlmforge.evaluation.predictions import check_not_an_evaluation

        for path in data:
            check_not_an_evaluation(path, "--data")
        if backend not in BACKENDS:  # 'template' writes builders' answers from templates: it asked, then failed mid-run
            raise UserError(f"unknown --backend {backend!r}; use {', '.join(BACKENDS)}")
        if not model:
            raise UserError(f"give --model for the {backend} backend")
        if image_urls is not None and backend != "openai":  # other backends read the image files: URLs went unused
            raise UserError(f"--image-urls is for the openai backend; the {backend} backend reads the images themselves")
        if api_base is not None and backend != "openai":
            raise UserError(f"--api-base is for the openai backend, not {backend}")
        if backend in ("transformers", "vllm"):  # they load the model at the first batch, the output folder made
            from vlmforge.training.llava import check_model_folder, export_folder, export_kind

            if export_kind(export_folder(model)) != "clip":  # the backend says a CLIP model does not generate
                check_model_folder(export_folder(model))  # a folder without weights or tokenizer was a traceback
        if device is not None and backend in ("local", "transformers"):
            from vlmforge.curation.models import check_device

            check_device(device)  # before the data is read and the run's folder is made
        opts = ReadOptions(split=split, image_root=image_root, limit=limit, prompt=prompt, prompt_suffix=prompt_suffix,
                           rounds=rounds, num_grades=num_grades)
        dataset = t.read([p.resolve() for p in data], opts)  # absolute, so a resume from elsewhere matches
        if backend == "local":
            runner = LocalRunner(model, device=device or "cpu", dtype=dtype or "auto", batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, system=system)
        else:
            # Options the backend reads; one it has not would be ignored, so it is refused.
            takes = {"transformers": {"device": device, "dtype": dtype},
                     "vllm": {"dtype": dtype}}.get(backend, {})
            given = [name for name, value in (("device", device), ("dtype", dtype)) if value is not None and name not in takes]
            if given:
                raise UserError(f"--{given[0]} does not apply to the {backend} backend"
                                + (" (vLLM places the model on the GPUs itself)" if backend == "vllm" else ""))
            extra = {"base_url": api_base, "api_key_env": api_key_env, "concurrency": concurrency,
                     "max_retries": max_retries, "timeout": timeout} if backend == "openai" else takes
            runner = GeneratorRunner(backend, model, batch_size=max(batch_size, concurrency * 2 if backend == "openai" else batch_size),
                                     max_new_tokens=max_new_tokens, system=system, **extra)
        if image_urls is not None:
            n = attach_image_urls(dataset.items, load_image_urls(image_urls))
            if not quiet:
                console.print(f"{n} of {len(dataset)} items get their image by URL from {image_urls}")
        out = out or Path("evals") / t.name / _slug(model or backend)
        if split is None and dataset.split not in (None, "test") and not quiet:
            console.print(f"evaluating split {dataset.split!r}, the only split of {dataset.source}")
        settings = {"split": dataset.split, "prompt": prompt, "prompt_suffix": prompt_suffix, "rounds": rounds,
                    "num_grades": num_grades, "max_new_tokens": max_new_tokens, "system": system, "dtype": dtype or "auto"}
        try:
            evaluate(t, dataset, runner, out, scoring=scoring, class_template=class_template, overwrite=overwrite,
                     quiet=quiet, plots=not no_plots, settings=settings)
        except KeyboardInterrupt:  # the CLI framework would end with a bare newline
            typer.echo(f"\ninterrupted: the predictions so far are in {out / 'predictions.jsonl'}; run the same "
                       "command again to resume", err=True)
            raise typer.Exit(130) from None

    @eval_app.command("score")
    def eval_score(
        predictions: Annotated[Path, typer.Option("--predictions", "-p", help="predictions.jsonl from `vlmforge eval`, a LLaVA answers file (question_id, text), or a Prompt the Unseen prediction JSON")],
        task: Task = None,
        annotations: Annotated[Optional[list[Path]], typer.Option("--annotations", "-a", help="the task's data, to join answers by id (POPE question/annotation files, ScienceQA folder, MMBench TSV, a build); not needed for our own predictions.jsonl")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="where summary.json and plots go (default: beside the predictions, in <name>-<task>-scores/)")] = None,
        split: Split = None,
        image_root: ImageRoot = None,
        rounds: Rounds = None,
        num_grades: NumGrades = 5,
        parse: Parse = None,
        embedder: Embedder = None,
        soft_threshold: SoftThreshold = None,
        quiet: Quiet = False,
        no_plots: NoPlots = False,
    ) -> None:
        """Score existing predictions without a model, e.g. LLaVA's answer files, to compare with published numbers."""
        from vlmforge.evaluation.items import ReadOptions
        from vlmforge.evaluation.run import score_predictions

        from vlmforge.evaluation.predictions import check_not_an_evaluation

        t = _task(task, parse, embedder, soft_threshold)
        _check_applies(t.name, rounds=(rounds, ("mmbench",)))
        check_not_an_evaluation(predictions, "--predictions")
        for path in annotations or []:
            check_not_an_evaluation(path, "--annotations")
        opts = ReadOptions(split=split, image_root=image_root, rounds=rounds, num_grades=num_grades)
        out = out or predictions.parent / f"{predictions.stem}-{t.name}-scores"
        score_predictions(t, predictions, list(annotations or []), opts, out, quiet=quiet, plots=not no_plots)

    @eval_app.command("tasks")
    def eval_tasks() -> None:
        """List the evaluation tasks and what each reads."""
        from vlmforge.evaluation.tasks import TASKS, get_task

        for name in TASKS:
            t = get_task(name)
            typer.echo(f"{name:10s} {t.description}  [scoring: {', '.join(t.scoring_modes)}]")
