"""Tasks are data: a reader, a prompt, a parser and metrics, registered here by name.

A prediction record (one JSONL line) carries everything scoring needs - id, gold answer, options,
meta, the model's text or option scores - so `vlmforge eval score` can rescore a file with no
model and no data. Parsing happens again at score time, so a better parser improves old runs too.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import Dataset, EvalItem, ReadOptions
from vlmforge.evaluation.parsers import Parsed

Record = dict[str, Any]

# name -> "module:Class"; imported on demand so `vlmforge eval --help` stays fast.
TASKS: dict[str, str] = {
    "mcqa": "vlmforge.evaluation.tasks.mcqa:McqaTask",
    "pope": "vlmforge.evaluation.tasks.pope:PopeTask",
    "scienceqa": "vlmforge.evaluation.tasks.scienceqa:ScienceQATask",
    "mmbench": "vlmforge.evaluation.tasks.mmbench:MMBenchTask",
    "grading": "vlmforge.evaluation.tasks.grading:GradingTask",
    "open": "vlmforge.evaluation.tasks.open:OpenTask",
}


class Task:
    """Base class. Subclasses set `name`, `description`, and implement `read`, `parse`, `score`."""

    name: str = "task"
    description: str = ""
    # --scoring modes the task supports: generate (parse the text), loss (lowest loss over
    # item.loss_targets), clip (CLIP zero-shot over class prompts).
    scoring_modes: tuple[str, ...] = ("generate", "loss", "clip")
    clip_template: str = "a photo of a {}."
    checks_prompts: bool = False  # see `same_question`: tasks whose answer files record prompts we know the form of

    def __init__(self, **options: Any):
        self.options = options

    # -- reading --------------------------------------------------------------------------------
    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        raise NotImplementedError

    def class_prompts(self, item: EvalItem, template: str | None) -> list[str]:
        """Texts CLIP compares the image with, one per option."""
        return [fill_template(template or self.clip_template, opt) for opt in item.options]

    # -- records and parsing --------------------------------------------------------------------
    def make_record(self, item: EvalItem, text: str | None = None, scores: list[float] | None = None,
                    scoring: str = "generate") -> Record:
        rec: Record = {"id": item.id, "answer": item.answer, "options": item.options, "meta": item.meta,
                       "scoring": scoring, "prediction": text}
        if scores is not None:
            rec["scores"] = [round(float(s), 6) for s in scores]
            best = best_indices(rec)
            if len(best) > 1:
                rec["tied"] = best
            elif rec["prediction"] is None and item.options:
                rec["prediction"] = item.options[best[0]]
        parsed = self.interpret(rec)
        rec["parsed"], rec["status"] = parsed.value, parsed.status
        return rec

    def interpret(self, rec: Record) -> Parsed:
        """The parsed prediction of a record: from option scores when it has them, else its text.
        Several options sharing the best score are a tie: no answer (see `best_indices`)."""
        if rec.get("scores"):
            best = best_indices(rec)
            return Parsed(None, "tie") if len(best) > 1 else Parsed(self.value_from_index(rec, best[0]))
        if rec.get("prediction") is None:
            return Parsed(None, "unparsed")
        return self.parse(rec)

    def tie_has_gold(self, rec: Record) -> bool:
        """Whether the right answer is among the options of a tie (a random pick could have been right)."""
        return any(self.value_from_index(rec, i) == rec["answer"] for i in best_indices(rec))

    def parse(self, rec: Record) -> Parsed:
        raise NotImplementedError

    def fits(self, rec: Record) -> bool:
        """Whether one of our own prediction records can be a prediction of this task."""
        return True

    def value_from_index(self, rec: Record, index: int) -> Any:
        """The answer value meant by choosing option `index` (loss or CLIP scoring)."""
        return index

    def is_correct(self, rec: Record, parsed: Parsed) -> bool:
        return parsed.ok and parsed.value == rec["answer"]

    # -- foreign prediction files (LLaVA answer files and the like) ------------------------------
    def external_id(self, line: Record) -> str | None:
        """The item id a foreign prediction line answers."""
        for key in ("id", "question_id", "qid", "pid"):
            if line.get(key) is not None:
                return str(line[key])
        return None

    def same_question(self, line: Record, item: EvalItem) -> bool:
        """Whether a foreign prediction line that records its prompt (LLaVA's answer files do) was asked the
        item's question: the item's first line (the question, or the hint before it) must be in it. Ids
        alone pair answers with other questions when they are numbered as in another question file."""
        prompt = line.get("prompt")
        if not self.checks_prompts or not isinstance(prompt, str) or not item.prompt.strip():
            return True
        return " ".join(item.prompt.split("\n", 1)[0].lower().split()) in " ".join(prompt.lower().split())

    def external_text(self, line: Record) -> str | None:
        for key in ("prediction", "text", "response", "output", "answer_text"):
            if isinstance(line.get(key), str):
                return line[key]
        return None

    def records_from_foreign(self, lines: list[Record], path: Path) -> list[Record] | None:
        """Records from a prediction file that carries its own gold answers (no annotations needed),
        or None when this file needs annotations."""
        return None

    # -- scoring and reports --------------------------------------------------------------------
    def score(self, records: list[Record]) -> dict[str, Any]:
        raise NotImplementedError

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        return []

    def extra_outputs(self, records: list[Record], dataset: Dataset | None, out: Path) -> list[Path]:
        """Task-specific files beside the summary (MMBench: the submission sheet)."""
        return []


def get_task(name: str, **options: Any) -> Task:
    try:
        target = TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(**options)


def fill_template(template: str, value: Any) -> str:
    """A class prompt: the template with the class where {} (or {label}, as `train --prompt` has it) stands.
    Other braces are left alone."""
    return template.replace("{label}", "{}").replace("{}", str(value))


def check_template(template: str | None) -> None:
    """A template without a place for the class makes every option the same text (all ties)."""
    if template is not None and "{}" not in template and "{label}" not in template:
        raise UserError(f"--class-template {template!r} has no {{}} where the class goes, e.g. 'a photo of a {{}}.'")


def best_indices(rec: Record) -> list[int]:
    """The options with the best score (lowest loss, else highest probability), as recorded (6 decimals).

    More than one is a tie: options the model cannot tell apart, usually because they tokenize the same
    (case, trailing punctuation, unknown words, text cut at the tokenizer's length). A tie counts as no
    answer, like a text naming several options: wrong in accuracy, counted apart (`ties`, and
    `ties_with_gold` for those a lucky pick would have got right). Taking the first option instead
    would reward the gold position A."""
    scores = rec["scores"]
    best = (min if rec.get("scoring") == "loss" else max)(scores)
    return [i for i, s in enumerate(scores) if s == best]


def parse_counts(task: Task, records: list[Record]) -> dict[str, int]:
    """How many predictions parsed, failed to parse, named several answers, or tied on their scores."""
    counts = {"ok": 0, "unparsed": 0, "multiple": 0, "tie": 0}
    for rec in records:
        counts[task.interpret(rec).status] += 1
    return counts
