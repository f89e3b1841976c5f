"""scienceqa: ScienceQA multiple choice, from the official problems.json + pid_splits.json or from
LLaVA-format question files (llava_test_CQM-A.json; give problems.json too for the groupings).

Letters are parsed as LLaVA's eval_science_qa.py does (exact letter, "X. " prefix, one "The answer is
X."); anything else is wrong. Accuracy overall and by subject (NAT, SOC, LAN), context modality (TXT:
has a text hint, IMG: has an image, NO: neither; TXT and IMG overlap) and grade band (G1-6, G7-12).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import (
    LETTER_INSTRUCTION, Dataset, EvalItem, ReadOptions, apply_limit, first_turns, is_build, no_split, option_lines,
    read_records, resolve_image,
)
from vlmforge.evaluation.metrics import accuracy, grouped_accuracy
from vlmforge.evaluation.parsers import LETTERS, Parsed, parse_letter
from vlmforge.evaluation.report import plot_bars
from vlmforge.evaluation.tasks import Record, Task

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_OPTION_LINE = re.compile(r"^\(?([A-Z])[.)]\s+(.*)$", re.M)
_INLINE_OPTION = re.compile(r"\(([A-Z])\)\s+")


def _options_in(text: str) -> list[str]:
    """Option texts of a question: one line "Options: (A) x (B) y" (LLaVA's convert_sqa_to_llava), or
    one option a line ("A. x", "(A) x")."""
    for line in text.splitlines():
        parts = _INLINE_OPTION.split(line)  # [before, "A", "x ", "B", "y"]
        letters = parts[1::2]
        if len(letters) >= 2 and "".join(letters) == LETTERS[: len(letters)]:
            return [o.strip() for o in parts[2::2]]
    return [m.group(2).strip() for m in _OPTION_LINE.finditer(text)]


def _grade_band(grade: str | None) -> str | None:
    m = re.search(r"\d+", grade or "")
    if not m:
        return None
    return "G1-6" if int(m.group()) <= 6 else "G7-12"


def _meta(problem: dict[str, Any]) -> dict[str, Any]:
    return {"subject": SUBJECTS.get(problem.get("subject", ""), problem.get("subject")),
            "has_text": bool(problem.get("hint")), "has_image": bool(problem.get("image")),
            "grade": _grade_band(problem.get("grade"))}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); is it cut short?") from None


def _load_problems(paths: list[Path]) -> tuple[dict[str, Any], dict[str, list[str]], Path | None]:
    for p in paths:
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if is_build(p):
            raise UserError(f"{p} is a vlmforge build; scienceqa reads ScienceQA's folder (problems.json, "
                            "pid_splits.json) or LLaVA-format question files")
    for p in paths:
        folder = p if p.is_dir() else p.parent
        file = p / "problems.json" if p.is_dir() else p
        if file.name == "problems.json" and file.exists():
            splits_file = folder / "pid_splits.json"
            splits = _read_json(splits_file) if splits_file.exists() else {}
            problems = _read_json(file)
            if not isinstance(problems, dict) or not problems:
                raise UserError(f"{file} holds no problems (ScienceQA's problems.json maps ids to problems)")
            return problems, splits, folder
    return {}, {}, None


class ScienceQATask(Task):
    name = "scienceqa"
    description = "ScienceQA (problems.json + pid_splits.json, or LLaVA-format question files)"

    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        problems, splits, folder = _load_problems(paths)
        llava_files = [p for p in paths if p.is_file() and p.name != "problems.json"]
        split = opts.split or "test"
        items: list[EvalItem] = []
        if llava_files:
            no_split(opts, "LLaVA-format question files are one split each")
            for f in llava_files:
                items += [self._from_llava(rec, problems, f, opts) for rec in read_records(f)]
        elif problems:
            pids = splits.get(split) or [pid for pid, pr in problems.items() if pr.get("split") == split]
            if not pids:
                raise UserError(f"no ScienceQA problems in split {split!r} (splits: {', '.join(sorted(splits))})")
            items = [self._from_problem(pid, problems[pid], folder, split, opts) for pid in pids]
        else:
            raise UserError("give ScienceQA's folder with problems.json (and pid_splits.json) or a LLaVA-format question file")
        return Dataset(apply_limit(items, opts.limit), source=", ".join(map(str, paths)),
                       split=None if llava_files else split)

    def _from_problem(self, pid: str, pr: dict[str, Any], folder: Path | None, split: str, opts: ReadOptions) -> EvalItem:
        choices = [str(c) for c in pr["choices"]]
        context = f"Context: {pr['hint']}\n" if pr.get("hint") else ""
        prompt = f"{context}{pr['question']}\n{option_lines(choices)}\n{LETTER_INSTRUCTION}"
        image = None
        if pr.get("image"):
            roots = [opts.image_root / pid if opts.image_root else None]
            if folder is not None:
                roots += [folder / "images" / split / pid, folder / split / pid]
            image = resolve_image(pr["image"], roots)
        return EvalItem(id=str(pid), prompt=prompt, answer=int(pr["answer"]), options=choices, meta=_meta(pr),
                        image_path=image)

    def _from_llava(self, rec: dict[str, Any], problems: dict[str, Any], f: Path, opts: ReadOptions) -> EvalItem:
        if not isinstance(rec, dict) or not ({"id", "question_id"} & set(rec)):  # was 'record None has no gold answer'
            keys = ", ".join(map(str, rec)) if isinstance(rec, dict) else type(rec).__name__
            raise UserError(f"{f} is not a LLaVA-format ScienceQA question file: a record has no id or question_id "
                            f"(its keys: {keys}); give that file, or ScienceQA's folder with problems.json")
        pid = str(rec.get("id", rec.get("question_id")))
        human, gpt = first_turns(rec)
        human = human or rec.get("text", "")
        pr = problems.get(pid)
        options = _options_in(human) or (pr or {}).get("choices", [])
        if pr is not None:
            answer = int(pr["answer"])
            meta = _meta(pr)
        else:
            parsed = parse_letter(gpt, len(options), strict=True)
            if not parsed.ok:
                raise UserError(f"{f}: record {pid} has no gold answer (gpt turn {gpt!r}) and no problems.json given")
            answer = parsed.value
            has_text = bool(re.search(r"Context:\s*\S", human)) and "Context: N/A" not in human
            meta = {"subject": None, "has_text": has_text, "has_image": "image" in rec, "grade": None}
        if LETTER_INSTRUCTION not in human:  # LLaVA's model_vqa_science adds it (--single-pred-prompt)
            human = f"{human}\n{LETTER_INSTRUCTION}"
        return EvalItem(id=pid, prompt=human, answer=answer, options=[str(o) for o in options], meta=meta,
                        image_path=resolve_image(rec.get("image"), [opts.image_root, f.parent]))

    def parse(self, rec: Record) -> Parsed:
        strict = self.options.get("strict")
        return parse_letter(rec["prediction"], len(rec["options"]), rec["options"],
                            strict=True if strict is None else bool(strict))

    def score(self, records: list[Record]) -> dict[str, Any]:
        correct = [self.is_correct(r, self.interpret(r)) for r in records]
        meta = [r["meta"] for r in records]
        context: dict[str, Any] = {}
        for name, test in (("TXT", lambda m: m.get("has_text")), ("IMG", lambda m: m.get("has_image")),
                           ("NO", lambda m: not m.get("has_text") and not m.get("has_image"))):
            picked = [c for c, m in zip(correct, meta) if test(m)]
            context[name] = {"accuracy": accuracy(picked), "n": len(picked)}
        subjects = [(c, m["subject"]) for c, m in zip(correct, meta) if m.get("subject")]
        grades = [(c, m["grade"]) for c, m in zip(correct, meta) if m.get("grade")]
        return {
            "accuracy": accuracy(correct),
            "n": len(records),
            "by_subject": grouped_accuracy([c for c, _ in subjects], [s for _, s in subjects]),
            "by_context": context,
            "by_grade": grouped_accuracy([c for c, _ in grades], [g for _, g in grades]),
        }

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        values = {}
        for group in ("by_subject", "by_context", "by_grade"):
            values.update({k: v["accuracy"] for k, v in metrics[group].items()})
        return [plot_bars(values, out / "per_group_accuracy.png", "ScienceQA accuracy by subject, context and grade")]
