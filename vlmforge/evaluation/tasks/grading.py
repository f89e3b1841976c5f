"""grading: ordinal grades (knee X-ray Kellgren-Lawrence 0-4, or any graded set).

Data: a build from `vlmforge build grading` (json `grade`, or a numeric `label`), a graded folder tree
(`root/[split/]grade/image`), or a JSON/JSONL file of {image, grade}. Grades are parsed from free text;
unparseable and multiple-grade answers, and ties of option scores, are counted apart and count as wrong
in `accuracy` (and are left out of `accuracy_parsed`, the confusion matrix, MAE and kappa). With option scores (CLIP
zero-shot, or loss scoring) it adds per-grade one-vs-rest AUC and the binary AUC of grades 2-4 vs 0-1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import (
    Dataset, EvalItem, ReadOptions, apply_limit, collect_items, first_turns, no_split, read_records, resolve_image,
)
from vlmforge.evaluation.metrics import (
    accuracy, binary_auc, confusion_matrix, grouped_accuracy, mean_absolute_error, one_vs_rest_auc,
    quadratic_weighted_kappa,
)
from vlmforge.evaluation.parsers import Parsed, parse_grade
from vlmforge.evaluation.report import plot_bars, plot_confusion
from vlmforge.evaluation.tasks import Record, Task, fill_template
from vlmforge.sources.imagefolder import IMAGE_SUFFIXES, unread_file

DEFAULT_PROMPT = ("What is the Kellgren-Lawrence grade of this knee X-ray image? "
                  "Answer with the grade (0, 1, 2, 3 or 4).")
BINARY_FROM = 2  # KL 2-4 (definite osteoarthritis) vs 0-1


def _grade_of(doc: dict[str, Any], where: str, num_grades: int) -> int:
    for key in ("grade", "label"):
        value = doc.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return int(value)
    _, gpt = first_turns(doc)
    parsed = parse_grade(gpt, num_grades)
    if parsed.ok:
        return parsed.value
    raise UserError(f"{where} has no grade (no integer 'grade' or 'label', and none in its answer)")


def _folder_images(root: Path, split: str | None) -> tuple[list[tuple[str, Path, int]], str | None]:
    """(id, path, grade) from root/grade/* or root/split/grade/*."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if subdirs and not any(d.name.isdigit() for d in subdirs):  # splits; some grades among others: stray folders
        names = [d.name for d in subdirs]
        split = split or ("test" if "test" in names else None)
        if split is None:
            raise UserError(f"{root} holds {', '.join(names)}; choose one with --split")
        if not (root / split).is_dir():
            raise UserError(f"{root} has no split {split!r} (it holds {', '.join(names)})")
        root = root / split
        subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    other = [d.name for d in subdirs if not d.name.isdigit() and not d.name.startswith(".")]
    if other:  # their images were left out of every metric without a word
        raise UserError(f"{root} holds folders that are not grades: {', '.join(other[:3])}"
                        + (" ..." if len(other) > 3 else "") + "; a graded folder holds one folder per grade, "
                        "named 0, 1, ... (move the others out)")
    out, unread = [], []
    for d in subdirs:
        if not d.name.isdigit():
            continue
        for f in sorted(d.rglob("*")):
            if not f.is_file():
                continue
            why = unread_file(f, d)
            if why is None and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f"{d.name}/{f.relative_to(d).as_posix()}", f, int(d.name)))
            elif why is not None and why[0] == "unsupported_image":
                unread.append(f"{f.relative_to(root).as_posix()} ({why[1]})")
    if unread:  # an image left out would change every metric without a word
        raise UserError(f"{root} holds {len(unread)} image file(s) that cannot be read: {'; '.join(unread[:3])}"
                        + (" ..." if len(unread) > 3 else ""))
    return out, split


def _softmax_neg(losses: list[float]) -> list[float]:
    low = min(losses)
    w = [math.exp(low - x) for x in losses]
    return [x / sum(w) for x in w]


class GradingTask(Task):
    name = "grading"
    description = "ordinal grades (Kellgren-Lawrence 0-4): accuracy, confusion, MAE, QWK, AUC"
    clip_template = "a knee X-ray with Kellgren-Lawrence grade {}"

    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        k = opts.num_grades
        options = [f"Grade {g}" for g in range(k)]

        def item(ident: str, prompt: str, grade: int, **image: Any) -> EvalItem:
            if not 0 <= grade < k:
                raise UserError(f"{ident} has grade {grade}, outside 0..{k - 1}; set --num-grades")
            return EvalItem(id=ident, prompt=opts.prompt or prompt or DEFAULT_PROMPT, answer=grade, options=options,
                            meta={"grade": grade}, **image)

        def from_sample(key: str, doc: dict[str, Any], image: bytes | None) -> EvalItem:
            return item(key, first_turns(doc)[0], _grade_of(doc, f"sample {key}", k), image=image)

        folder_splits: list[str | None] = []

        def from_path(path: Path) -> list[EvalItem]:
            if path.is_dir():  # a graded folder tree
                images, used = _folder_images(path, opts.split)
                folder_splits.append(used)
                return [item(ident, "", grade, image_path=str(f)) for ident, f, grade in images]
            no_split(opts, f"{path} is a file, not a build or a graded folder")
            return [item(str(rec.get("id", i)), first_turns(rec)[0] or rec.get("text", ""),
                         _grade_of(rec, f"{path} record {rec.get('id', i)}", k),
                         image_path=resolve_image(rec.get("image"), [opts.image_root, path.parent]))
                    for i, rec in enumerate(read_records(path))]

        items, build_id, split = collect_items(paths, opts.split, from_sample, from_path)
        return Dataset(apply_limit(items, opts.limit), source=", ".join(map(str, paths)), build_id=build_id,
                       info={"num_grades": k}, split=split or next((s for s in folder_splits if s), None))

    def class_prompts(self, item: EvalItem, template: str | None) -> list[str]:
        return [fill_template(template or self.clip_template, g) for g in range(len(item.options))]

    def parse(self, rec: Record) -> Parsed:
        return parse_grade(rec["prediction"], len(rec["options"]))

    def score(self, records: list[Record]) -> dict[str, Any]:
        k = max((len(r["options"]) for r in records), default=5)
        parsed = [self.interpret(r) for r in records]
        gold = [r["answer"] for r in records]
        correct = [p.ok and p.value == g for p, g in zip(parsed, gold)]
        ok = [(g, p.value) for g, p in zip(gold, parsed) if p.ok]
        g_ok, p_ok = [g for g, _ in ok], [p for _, p in ok]
        labels = list(range(k))
        out: dict[str, Any] = {
            "accuracy": accuracy(correct),
            "accuracy_parsed": accuracy([g == p for g, p in ok]),
            "mae": mean_absolute_error(g_ok, p_ok),
            "qwk": quadratic_weighted_kappa(g_ok, p_ok, k),
            "n": len(records),
            "unparsed": sum(p.status == "unparsed" for p in parsed),
            "multiple": sum(p.status == "multiple" for p in parsed),
            "ties": sum(p.status == "tie" for p in parsed),
            "by_grade": grouped_accuracy(correct, gold),
            "confusion": {"labels": [str(x) for x in labels], "matrix": confusion_matrix(g_ok, p_ok, labels)},
        }
        if records and all(r.get("scores") for r in records):
            probs = [r["scores"] if r.get("scoring") != "loss" else _softmax_neg(r["scores"]) for r in records]
            out["auc_binary"] = binary_auc(probs, gold, BINARY_FROM) if k > BINARY_FROM else None
            out["by_grade_auc"] = {g: {"auc": v} for g, v in one_vs_rest_auc(probs, gold).items()}
        return out

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        conf = metrics["confusion"]
        return [
            plot_confusion(conf["matrix"], conf["labels"], out / "confusion_matrix.png",
                           "grade: gold vs predicted (parsed answers)"),
            plot_bars({k: v["accuracy"] for k, v in metrics["by_grade"].items()}, out / "per_class_accuracy.png",
                      "accuracy per grade"),
        ]
