"""pope: object-hallucination yes/no questions (POPE: random, popular and adversarial sets).

Reads POPE question files (JSON lines: question_id, image, text, label, and category or a file name
like coco_pope_adversarial.json), one file or a folder of them. LLaVA's combined question file
(llava_pope_test.jsonl) has categories but no labels; give the coco_pope_*.json files too and each
question takes the label of the same category, image and question there (in file order, as LLaVA's
eval_pope.py does, when the files do not hold the same questions). Answers are parsed with
LLaVA's rule; metrics per category and over all: accuracy, precision, recall, F1, yes-ratio.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import (
    Dataset, EvalItem, ReadOptions, apply_limit, is_build, no_split, read_records, resolve_image,
)
from vlmforge.evaluation.metrics import binary_metrics, confusion_matrix
from vlmforge.evaluation.parsers import Parsed, parse_yes_no
from vlmforge.evaluation.report import plot_bars, plot_confusion
from vlmforge.evaluation.tasks import Record, Task

CATEGORIES = ("random", "popular", "adversarial")
SUFFIX = "Answer the question using a single word or phrase."


def _category_from_name(path: Path) -> str | None:
    stem = path.stem.lower()
    return next((c for c in CATEGORIES if stem.endswith(c) or f"_{c}" in stem), None)


def _question_key(rec: dict[str, Any], category: str | None) -> tuple:
    """A question as (category, image, text without the answer instruction)."""
    return category, rec.get("image"), str(rec.get("text", "")).replace(SUFFIX, "").strip()


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if is_build(p):
            raise UserError(f"{p} is a vlmforge build; pope reads POPE question files (coco_pope_*.json)")
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl"))
        elif p.exists():
            out.append(p)
        else:
            raise UserError(f"{p} does not exist")
    return out


class PopeTask(Task):
    name = "pope"
    description = "POPE yes/no object hallucination (random, popular, adversarial)"
    scoring_modes = ("generate", "loss")
    checks_prompts = True

    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        no_split(opts, "POPE question files have no splits")
        lines: list[tuple[dict[str, Any], str | None, Path]] = []
        for f in _files(paths):
            cat = _category_from_name(f)
            lines += [(rec, rec.get("category") or cat, f) for rec in read_records(f)]
        if not lines:
            raise UserError(f"no POPE questions in {', '.join(map(str, paths))}")
        questions = [x for x in lines if "text" in x[0]]
        if not questions:
            raise UserError(f"no POPE questions (records with 'text') in {', '.join(map(str, paths))}")
        with_text = {f for _, _, f in questions}
        odd = next(((rec, f) for rec, _, f in lines if "text" not in rec and f in with_text), None)
        if odd is not None:  # it was left out of the evaluation without a word
            raise UserError(f"{odd[1]}: question {odd[0].get('question_id')} has no 'text' (the question), though "
                            "other questions of the file have one; give it its text, or remove it")
        labelled = [x for x in questions if x[0].get("label") is not None]
        unlabelled = [x for x in questions if x[0].get("label") is None]
        with_labels = {f for _, _, f in labelled}
        half = next(((rec, f) for rec, _, f in unlabelled if f in with_labels), None)
        # Taken for LLaVA's combined question file, such a file lost its labelled questions from the evaluation,
        # and the unlabelled one was scored against another question's label.
        if half is not None:
            rec, f = half
            raise UserError(f"{f}: question {rec.get('question_id')} has no label, though other questions of the "
                            "file have one; give it its label (yes or no), or remove it")
        if unlabelled:
            # The combined question file: each question's label from the per-category file's question on
            # the same image with the same text; failing that, in order, as LLaVA's eval_pope.py does.
            by_question = {_question_key(rec, cat): rec["label"] for rec, cat, _ in labelled}
            if len(by_question) == len(labelled) and all(_question_key(rec, cat) in by_question
                                                         for rec, cat, _ in unlabelled):
                for rec, cat, _ in unlabelled:
                    rec["label"] = by_question[_question_key(rec, cat)]
            by_cat: dict[str | None, list[str]] = defaultdict(list)
            for rec, cat, f in labelled:
                by_cat[cat].append(rec["label"])
            cursor: dict[str | None, int] = defaultdict(int)
            for rec, cat, f in (x for x in unlabelled if x[0].get("label") is None):
                if cursor[cat] >= len(by_cat[cat]):
                    raise UserError(f"{f}: question {rec.get('question_id')} has no label and no "
                                    f"coco_pope_{cat}.json was given to take it from")
                rec["label"] = by_cat[cat][cursor[cat]]
                cursor[cat] += 1
            questions = unlabelled
        qids = [str(rec.get("question_id")) for rec, _, _ in questions]
        unique = len(set(qids)) == len(qids)
        suffix = SUFFIX if opts.prompt_suffix is None else opts.prompt_suffix
        items = []
        for (rec, cat, f), qid in zip(questions, qids):
            text = rec["text"].strip()
            if suffix and suffix not in text:
                text = f"{text}\n{suffix}"
            label = str(rec["label"]).strip().lower()
            if label not in ("yes", "no"):
                raise UserError(f"{f}: question {qid} has label {rec['label']!r}; POPE labels are yes or no")
            if not rec.get("image"):  # asked without it, every answer is a guess
                raise UserError(f"{f}: question {qid} names no image; POPE questions are about one ('image': file name)")
            items.append(EvalItem(
                id=qid if unique else f"{cat}-{qid}", prompt=text, answer=label, options=["Yes", "No"],
                meta={"category": cat or "all", "question_id": rec.get("question_id")},
                image_path=resolve_image(rec.get("image"), [opts.image_root, f.parent]),
            ))
        return Dataset(apply_limit(items, opts.limit), source=", ".join(map(str, paths)))

    def parse(self, rec: Record) -> Parsed:
        return parse_yes_no(rec["prediction"])

    def fits(self, rec: Record) -> bool:
        return rec.get("answer") in ("yes", "no")

    def value_from_index(self, rec: Record, index: int) -> Any:
        return ("yes", "no")[index]

    def score(self, records: list[Record]) -> dict[str, Any]:
        gold = [r["answer"] == "yes" for r in records]
        # No answer (a yes/no tie of loss scores, or no text) counts as the wrong one.
        pred = [p.value == "yes" if p.ok else not g for p, g in zip(map(self.interpret, records), gold)]
        cats = [r["meta"].get("category", "all") for r in records]
        out: dict[str, Any] = dict(binary_metrics(pred, gold))
        by: dict[str, Any] = {}
        for cat in sorted(set(cats), key=lambda c: (CATEGORIES.index(c) if c in CATEGORIES else 9, c)):
            idx = [i for i, c in enumerate(cats) if c == cat]
            by[cat] = binary_metrics([pred[i] for i in idx], [gold[i] for i in idx])
        out["by_category"] = by
        labels = ["yes", "no"]
        out["confusion"] = {"labels": labels, "matrix": confusion_matrix(
            ["yes" if g else "no" for g in gold], ["yes" if p else "no" for p in pred], labels)}
        return out

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        conf = metrics["confusion"]
        return [
            plot_confusion(conf["matrix"], conf["labels"], out / "confusion_matrix.png", "POPE: gold vs answer"),
            plot_bars({c: m["f1"] for c, m in metrics["by_category"].items()}, out / "per_category_f1.png",
                      "POPE F1 per category", ylabel="F1"),
        ]
