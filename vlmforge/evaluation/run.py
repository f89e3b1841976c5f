"""The two ways in: `evaluate` (run a model on a task's items, resumably) and `score_predictions`
(score an existing predictions file, ours or a LLaVA answers file, with no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmforge import __version__
from vlmforge.errors import UserError
from vlmforge.evaluation.items import Dataset, EvalItem, ReadOptions, read_records
from vlmforge.evaluation.predictions import PREDICTIONS, RUN_FILE, PredictionLog, check_run, not_an_evaluation
from vlmforge.evaluation.report import markdown_report, write_summary
from vlmforge.evaluation.runners import PartialPredictions, Runner
from vlmforge.evaluation.tasks import Record, Task, best_indices, check_template, parse_counts
from vlmforge.progress import console, progress_bar

MAX_FAILURE_EXAMPLES = 20


def predict_batch(task: Task, runner: Runner, items: list[EvalItem], scoring: str,
                  class_template: str | None = None) -> list[Record]:
    """Model outputs for a batch, as prediction records."""
    if scoring == "generate":
        texts = runner.generate(items)
        return [task.make_record(it, text=t) for it, t in zip(items, texts)]
    if scoring == "loss":
        losses = runner.option_losses(items)
        return [task.make_record(it, scores=s, scoring="loss") for it, s in zip(items, losses)]
    if scoring == "clip":
        probs = runner.clip_probabilities(items, [task.class_prompts(it, class_template) for it in items])
        return [task.make_record(it, scores=p, scoring="clip") for it, p in zip(items, probs)]
    raise UserError(f"unknown --scoring {scoring!r}; use generate, loss or clip")


def check_images(dataset: Dataset) -> None:
    """Fail before any model call when image files are missing (usually a wrong --image-root)."""
    missing = [it.image_path for it in dataset.items if it.image_path and not it.image_url and not Path(it.image_path).exists()]
    if missing:
        raise UserError(f"{len(missing)} of {len(dataset)} images are missing, e.g. {missing[0]}; check --image-root")


def seen_in_training(dataset: Dataset, model: str) -> tuple[int, Path] | None:
    """How many items show an image the model was trained on, and its run folder, when `model` is a
    vlmforge run's export (final/, best/, a checkpoint's model/, or one merged from it) whose training
    builds are still there; None otherwise. Images are compared by sha256 against the training
    shards' manifests."""
    import hashlib

    import pyarrow.parquet as pq

    from vlmforge.training.data import resolve_shards
    from vlmforge.training.llava import EXPORT_INFO, export_folder, export_info

    export = Path(export_folder(model))
    if export_info(str(export)).get("merged_from"):  # `vlmforge model merge RUN`: that run's export
        export = Path(export_info(str(export))["merged_from"])
    runs = [p for p in (export.parent, export.parent.parent) if (p / "run.json").is_file()]  # the training run's
    if not (export / EXPORT_INFO).is_file() or not runs:
        return None
    try:
        cfg = json.loads((runs[0] / "run.json").read_text())["config"]
        shards = resolve_shards(cfg["shards"], cfg.get("split"))
        trained = {h for s in shards if s.part for h in pq.read_table(s.part, columns=["image_sha256"])[0].to_pylist()}
    except (OSError, KeyError, TypeError, ValueError, UserError):  # the training data moved or changed
        return None
    trained.discard(None)
    images = (it.image_bytes() for it in dataset.items)
    return sum(b is not None and hashlib.sha256(b).hexdigest() in trained for b in images), runs[0]


def check_same_questions(done: dict[str, Record], dataset: Dataset, predictions: Path) -> None:
    """Predictions kept for a resume must be of the questions as they are now: an item whose gold answer
    or options changed since (a corrected label, another file at the same path) would be scored
    against the old ones."""
    for it in dataset.items:
        rec = done.get(it.id)
        if rec is not None and (rec.get("answer"), rec.get("options")) != (it.answer, list(it.options)):
            raise UserError(f"the data changed since {predictions} was written: item {it.id} has answer "
                            f"{it.answer!r} and options {it.options}, its prediction there was made for answer "
                            f"{rec.get('answer')!r} and options {rec.get('options')}; pass --overwrite to ask "
                            "again, or rescore those answers with `vlmforge eval score --annotations DATA`")


def evaluate(task: Task, dataset: Dataset, runner: Runner, out: Path, scoring: str | None = None,
             class_template: str | None = None, overwrite: bool = False, quiet: bool = False,
             plots: bool = True, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict every item not yet in OUT/predictions.jsonl, then score all of them and write the report.

    `settings` (prompt and generation options) join the run's identity: a resume with other settings
    is refused, since its predictions would not be comparable. Scoring-only options (the parse mode,
    the soft-match threshold) are not part of it; change them freely, or rescore with `eval score`."""
    out = Path(out)
    if not dataset.items:  # before the model loads
        raise UserError(f"no items to evaluate in {dataset.source}")
    check_template(class_template)
    if scoring is None and not set(runner.scorings) & set(task.scoring_modes):  # e.g. a CLIP model on POPE
        raise UserError(f"model {runner.name} can only do --scoring {', '.join(runner.scorings)}, which task "
                        f"{task.name} does not support (it supports {', '.join(task.scoring_modes)}): give a "
                        "vision-language model")
    scoring = scoring or runner.default_scoring
    if scoring not in task.scoring_modes:
        raise UserError(f"task {task.name} does not support --scoring {scoring} (it supports {', '.join(task.scoring_modes)})")
    if scoring not in runner.scorings:
        raise UserError(f"model {runner.name} cannot do --scoring {scoring} (it can: {', '.join(runner.scorings)})")
    ids = [it.id for it in dataset.items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"item id {dup!r} occurs more than once in {dataset.source}")
    check_images(dataset)
    seen = seen_in_training(dataset, runner.name)
    if seen and seen[0] and not quiet:
        console.print(f"[yellow]warning:[/] {seen[0]} of {len(dataset)} items show an image the model was trained on "
                      f"(run {seen[1]}): their scores are not held-out")
    run = {"task": task.name, "model": runner.name, "backend": runner.backend, "scoring": scoring,
           "data": dataset.source, "data_build_id": dataset.build_id, "class_template": class_template,
           **(settings or {})}
    check_run(out, run, overwrite, items=len(ids))
    log = PredictionLog(out / PREDICTIONS)
    done = log.load()
    check_same_questions(done, dataset, log.path)
    todo = [it for it in dataset.items if it.id not in done]
    with progress_bar(f"eval {task.name}", total=len(ids), disable=quiet) as advance:
        advance(len(ids) - len(todo))
        for start in range(0, len(todo), runner.batch_size):
            batch = todo[start : start + runner.batch_size]
            try:
                records, error = predict_batch(task, runner, batch, scoring, class_template), None
            except PartialPredictions as part:  # an API model answered part of the batch
                records, error = part.records(task, batch), part.error
            log.append(records)
            if error is not None:
                raise error
            done.update((r["id"], r) for r in records)
            advance(len(batch))
    records = [done[i] for i in ids]
    return finish(task, records, out, dataset=dataset, model=runner.name, backend=runner.backend, scoring=scoring,
                  quiet=quiet, plots=plots, extra_counts={"seen_in_training": seen[0]} if seen else None)


def finish(task: Task, records: list[Record], out: Path, dataset: Dataset | None = None, model: str | None = None,
           backend: str | None = None, scoring: str | None = None, quiet: bool = False, plots: bool = True,
           predictions: str = PREDICTIONS, extra_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Score records, write summary.json, plots and task files, print the Markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = task.score(records)
    parsed = parse_counts(task, records)
    counts = {"items": len(records), "parsed": parsed["ok"], "unparsed": parsed["unparsed"],
              "multiple": parsed["multiple"], **(extra_counts or {})}
    failures, ties = [], []
    for rec in records:
        parsed = task.interpret(rec)
        if parsed.status == "tie":
            ties.append(rec)
        elif not parsed.ok and len(failures) < MAX_FAILURE_EXAMPLES:
            failures.append({"id": rec["id"], "status": parsed.status, "prediction": rec.get("prediction")})
    refused = [rec for rec in records if rec.get("refused")]
    if refused:
        counts["refused"] = len(refused)
    if any(rec.get("scores") for rec in records):  # only option scores can tie
        counts["ties"] = len(ties)
        counts["ties_with_gold"] = sum(task.tie_has_gold(rec) for rec in ties)
    files = [p.name for p in task.extra_outputs(records, dataset, out)]
    plot_files = [p.name for p in task.plots(records, metrics, out)] if plots and records else []
    summary = {
        "task": task.name,
        "model": model,
        "backend": backend,
        "scoring": scoring,
        "task_options": {k: v for k, v in sorted(task.options.items()) if v is not None},
        "data": dataset.source if dataset is not None else None,
        "data_build_id": dataset.build_id if dataset is not None else None,
        "split": dataset.split if dataset is not None else None,
        "metrics": metrics,
        "counts": counts,
        "parse_failures": {"count": counts["unparsed"] + counts["multiple"], "examples": failures},
        "ties": {"count": len(ties), "with_gold": counts.get("ties_with_gold", 0),
                 "examples": [_tie_example(rec) for rec in ties[:MAX_FAILURE_EXAMPLES]]},
        "predictions": predictions,
        "plots": plot_files,
        "files": files,
        "vlmforge_version": __version__,
    }
    write_summary(out, summary)
    if ties and not quiet:
        ex = _tie_example(ties[0])
        console.print(f"[yellow]warning:[/] {len(ties)} of {len(records)} items tie: several options share the "
                      f"best score (e.g. {ex['id']}: {' = '.join(map(repr, ex['options']))}), usually because "
                      f"they tokenize the same; ties count as wrong ({counts['ties_with_gold']} held the right "
                      "option)")
    if refused and not quiet:
        console.print(f"[yellow]warning:[/] the endpoint refused {len(refused)} of {len(records)} items (e.g. "
                      f"{refused[0]['id']}: {refused[0]['refused']}); they count as wrong (--overwrite asks "
                      "every item again)")
    if not quiet:
        print(markdown_report(summary), flush=True)  # stdout, so the table can be redirected into a file
        console.print(f"wrote {out / 'summary.json'}")
    return summary


def _tie_example(rec: Record) -> dict[str, Any]:
    return {"id": rec["id"], "options": [rec["options"][i] for i in best_indices(rec) if i < len(rec["options"])]}


def _is_own_record(line: Record) -> bool:
    return all(k in line for k in ("id", "answer", "options", "meta")) and "prediction" in line


def _check_own_task(task: Task, records: list[Record], predictions: Path) -> None:
    """Our predictions.jsonl scored as another task would give numbers that mean nothing (or crash)."""
    run_file = predictions.parent / RUN_FILE
    made_by = None
    if run_file.exists():
        try:
            made_by = json.loads(run_file.read_text()).get("task")
        except json.JSONDecodeError:
            pass  # not ours, or damaged: the records themselves are checked below
    if made_by and made_by != task.name:
        raise UserError(f"{predictions} holds {made_by} predictions ({run_file} says so); score them with --task {made_by}")
    odd = next((r for r in records if not task.fits(r)), None)
    if odd is not None:
        raise UserError(f"{predictions} does not hold {task.name} predictions (record {odd['id']} has answer "
                        f"{odd['answer']!r}); score it with the task that made it")


def _once_per_item(records: list[Record], predictions: Path, quiet: bool) -> tuple[list[Record], dict[str, int]]:
    """Records with each item once: a line that repeats an earlier answer of its item (answer files
    merged from chunks, a file appended twice) is counted in `repeated_predictions` and scored once;
    two different answers to one item are an error (which one counts?)."""
    first: dict[str, Record] = {}
    for rec in records:
        prev = first.setdefault(str(rec["id"]), rec)
        if prev is not rec and (prev.get("prediction"), prev.get("scores")) != (rec.get("prediction"), rec.get("scores")):
            raise UserError(f"{predictions} answers item {rec['id']} twice, differently "
                            f"({prev.get('prediction')!r} and {rec.get('prediction')!r}); keep one answer per item")
    repeats = len(records) - len(first)
    if repeats and not quiet:
        console.print(f"[yellow]warning:[/] {repeats} lines of {predictions} repeat an answer already given; "
                      "each item is scored once")
    return list(first.values()), ({"repeated_predictions": repeats} if repeats else {})


def score_predictions(task: Task, predictions: Path, annotations: list[Path], opts: ReadOptions, out: Path,
                      quiet: bool = False, plots: bool = True) -> dict[str, Any]:
    """Score a predictions file with no model: our own predictions.jsonl (self-contained), a file that
    carries its gold answers (Prompt the Unseen), or answers joined by id to --annotations (LLaVA's
    answer files: question_id + text)."""
    if not predictions.exists():
        raise UserError(f"{predictions} does not exist")
    other = not_an_evaluation(Path(out)) if Path(out).is_dir() else None
    if other:  # the summary and plots would land among a build's shards or a model's files, as eval's would
        raise UserError(f"--out {out} is {other}; write the scores elsewhere")
    # A file in the way was a FileExistsError or NotADirectoryError traceback once everything was scored.
    blocking = next((p for p in (Path(out), *Path(out).parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"--out {out}: {blocking} is a file; give a folder for the scores")
    lines = read_records(predictions)
    dataset = None
    extra: dict[str, int] = {}
    if annotations:
        dataset = task.read(annotations, opts)
        by_id = {it.id: it for it in dataset.items}
        records, unmatched, other = [], [], []
        for line in lines:
            ident = str(line["id"]) if _is_own_record(line) else task.external_id(line)
            item = by_id.get(ident) if ident is not None else None
            if item is None:
                unmatched.append(ident)
                continue
            if _is_own_record(line):
                records.append(task.make_record(item, text=line.get("prediction"), scores=line.get("scores"),
                                                scoring=line.get("scoring", "generate")))
            elif not task.same_question(line, item):
                other.append((line, item))
            else:
                records.append(task.make_record(item, text=task.external_text(line)))
        if other:
            line, item = other[0]
            raise UserError(f"{len(other)} answers in {predictions} were asked other questions than the items of "
                            f"the annotations with their ids (e.g. id {item.id}: asked {line['prompt'][:80]!r}, the "
                            f"item is {item.prompt.splitlines()[0][:80]!r}); give the question file the answers were "
                            "made from (POPE: LLaVA's llava_pope_test.jsonl with the coco_pope files)")
        if not records:
            raise UserError(f"no prediction in {predictions} matches an item of the annotations "
                            f"(prediction ids like {unmatched[:3]}, item ids like {list(by_id)[:3]})")
        records, extra = _once_per_item(records, predictions, quiet)
        extra.update({"unmatched_predictions": len(unmatched), "items_without_prediction": len(by_id) - len(records)})
        if not quiet and (unmatched or len(records) < len(by_id)):  # the score covers part of the data only
            console.print(f"[yellow]warning:[/] scored {len(records)} of {len(by_id)} items; "
                          f"{len(unmatched)} predictions match no item (ids like {unmatched[:3]})")
    else:
        records = task.records_from_foreign(lines, predictions)
        if records is None:
            if not lines or not all(_is_own_record(ln) for ln in lines):
                raise UserError(f"{predictions} holds no gold answers; pass --annotations with the task's data "
                                "(question files, problems.json, the TSV, the build)")
            _check_own_task(task, lines, predictions)
            records = lines
        records, extra = _once_per_item(records, predictions, quiet)
    origin: dict[str, Any] = {}
    if dataset is None and predictions.name == PREDICTIONS and (predictions.parent / RUN_FILE).is_file():
        try:  # our own eval's predictions: its run.json says what model and data they are of
            origin = json.loads((predictions.parent / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            origin = {}
        if origin.get("data"):
            dataset = Dataset([], source=origin["data"], build_id=origin.get("data_build_id"),
                              split=origin.get("split"))
        if isinstance(origin.get("items"), int) and len(records) < origin["items"]:  # a run stopped part way
            extra["items_without_prediction"] = origin["items"] - len(records)
            if not quiet:
                console.print(f"[yellow]warning:[/] {predictions} answers {len(records)} of the {origin['items']} "
                              "items its run asks: the run stopped; rerun its eval command to finish it")
    return finish(task, records, out, dataset=dataset, model=origin.get("model"), backend=origin.get("backend"),
                  scoring=records[0].get("scoring") if records else None, quiet=quiet, plots=plots,
                  predictions=str(predictions), extra_counts=extra)
