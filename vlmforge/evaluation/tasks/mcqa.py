"""mcqa: multiple-choice class questions from `vlmforge build mcqa` or "Prompt the Unseen" MCQA files.

Metrics: accuracy and macro accuracy (the mean of per-class accuracies, the paper's headline number),
per class and per gold position (a model that favours "A" shows here). With option scores (loss, CLIP),
options that share the best score are a tie and count as wrong (`tasks.best_indices`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import (
    LETTER_INSTRUCTION, Dataset, EvalItem, ReadOptions, apply_limit, collect_items, first_turns, no_split,
    option_lines, read_records, resolve_image,
)
from vlmforge.evaluation.metrics import accuracy, confusion_matrix, grouped_accuracy, macro_accuracy
from vlmforge.evaluation.parsers import LETTERS, Parsed, parse_letter
from vlmforge.evaluation.report import plot_bars, plot_confusion
from vlmforge.evaluation.tasks import Record, Task

# Keys under which MCQA files keep options and the gold index ("Prompt the Unseen" files, our builds).
OPTION_KEYS = ("options", "choices", "candidates", "mcqa_options", "mcqa_choices", "mcqa_candidates", "losses")
GOLD_KEYS = ("answer_index", "mcqa_gt", "gt_index", "gold_index", "label_index", "answer_idx")
_BOX_ANSWER = re.compile(r"^\s*(\[[^\]]*\])\s*(.*)$", re.S)  # "[x1, y1, x2, y2] class name"
_LISTS_OPTIONS = re.compile(r"(?:^|\s)\(?A[.)]\s")  # "A. cat" or "(A) cat", not "U.S.A. flag"


def class_of_option(text: str) -> str:
    """"[0.1, 0.2, 0.5, 0.6] Black footed Albatross" -> "Black footed Albatross"."""
    m = _BOX_ANSWER.match(text)
    return (m.group(2) if m else text).strip()


def _option_text(opt: Any) -> str:
    if isinstance(opt, dict):
        for key in ("prompt", "text", "option", "name", "label", "class"):
            if isinstance(opt.get(key), str):
                return opt[key]
        raise UserError(f"cannot read an option from {sorted(opt)}")
    return str(opt)


class McqaTask(Task):
    name = "mcqa"
    description = "multiple-choice class questions (vlmforge mcqa builds, Prompt the Unseen MCQA JSON)"

    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        def from_file(path: Path) -> list[EvalItem]:
            no_split(opts, f"{path} is a file, not a build")
            prefix = f"{path.stem}-" if len(paths) > 1 else ""  # ids stay unique across files
            return [self._from_unseen_record(rec, i, path, opts, prefix) for i, rec in enumerate(read_records(path))]

        items, build_id, split = collect_items(paths, opts.split, self._from_build_sample, from_file)
        return Dataset(apply_limit(items, opts.limit), source=", ".join(map(str, paths)), build_id=build_id,
                       split=split)

    def _from_build_sample(self, key: str, doc: dict[str, Any], image: bytes | None) -> EvalItem:
        if not isinstance(doc.get("options"), list) or not isinstance(doc.get("answer_index"), int):
            raise UserError(f"sample {key} has no 'options' list and 'answer_index'; "
                            "is it a build from `vlmforge build mcqa`?")
        options = [str(o) for o in doc["options"]]
        if not 0 <= doc["answer_index"] < len(options):  # was an IndexError, or for -1 the last option taken as gold
            raise UserError(f"sample {key} has answer_index {doc['answer_index']} for {len(options)} options")
        prompt, _ = first_turns(doc)
        if not prompt:
            question = doc.get("question") or "What is the main object in the image?"
            prompt = f"{question}\n{option_lines(options)}\n{LETTER_INSTRUCTION}"
        label = doc.get("label", options[doc["answer_index"]])
        return EvalItem(id=key, prompt=prompt, answer=doc["answer_index"], options=options,
                        meta={"class": str(label)}, image=image,
                        loss_prefix="", loss_targets=options)

    def _from_unseen_record(self, rec: dict[str, Any], i: int, path: Path, opts: ReadOptions, prefix: str) -> EvalItem:
        key = next((k for k in OPTION_KEYS if isinstance(rec.get(k), list)), None)
        if key is None:
            raise UserError(f"record {i} of {path} has no options (looked for {', '.join(OPTION_KEYS)}); "
                            f"its keys: {', '.join(sorted(rec))}")
        raw = [_option_text(o) for o in rec[key]]
        names = [class_of_option(o) for o in raw]
        human, gpt = first_turns(rec)
        box = _BOX_ANSWER.match(gpt)
        gold = next((rec[k] for k in GOLD_KEYS if isinstance(rec.get(k), int)), None)
        if gold is None:
            wanted = [class_of_option(gpt)] if gpt else []
            wanted += [str(rec[k]) for k in ("label", "synset", "name", "class") if rec.get(k)]
            gold = next((names.index(w) for w in wanted if w in names), None)
        if gold is None or not 0 <= gold < len(names):
            raise UserError(f"record {i} of {path}: cannot tell which option is right "
                            f"(no {'/'.join(GOLD_KEYS)} and no answer naming an option)")
        label = rec.get("label") or names[gold]
        if human:
            question = human
        elif box:
            question = f"What is the object in the region {box.group(1)}?"
        else:
            question = "What is the main object in the image?"
        if not _LISTS_OPTIONS.search(question):
            question = f"{question}\n{option_lines(names)}\n{LETTER_INSTRUCTION}"
        # Loss scoring as the paper does: the model's loss of "[box] name" for each candidate name.
        loss_prefix = box.group(1) if box else ""
        targets = [f" {n}" if loss_prefix else n for n in names]
        ident = rec.get("id", rec.get("question_id", i))
        return EvalItem(id=f"{prefix}{ident}", prompt=question, answer=gold, options=names,
                        meta={"class": str(label)},
                        image_path=resolve_image(rec.get("image"), [opts.image_root, path.parent]),
                        loss_prefix=loss_prefix, loss_targets=targets)

    # -- parsing --------------------------------------------------------------------------------
    def parse(self, rec: Record) -> Parsed:
        if rec.get("scoring") == "index":  # foreign files that store the chosen index
            return Parsed(int(rec["prediction"]))
        return parse_letter(rec["prediction"], len(rec["options"]), rec["options"],
                            strict=bool(self.options.get("strict")))

    def records_from_foreign(self, lines: list[Record], path: Path) -> list[Record] | None:
        """"Prompt the Unseen" prediction files: [{mcqa_gt, mcqa_pred, losses: [{prompt, ...}]}]."""
        if not lines or not all("mcqa_gt" in ln and "mcqa_pred" in ln for ln in lines):
            return None
        out = []
        for i, ln in enumerate(lines):
            names = [class_of_option(_option_text(o)) for o in ln.get("losses") or []]
            try:  # were a ValueError traceback, or a gold option past the options, scored as wrong
                gold, pred = int(ln["mcqa_gt"]), int(ln["mcqa_pred"])
                if names and not 0 <= gold < len(names):
                    raise ValueError
            except (TypeError, ValueError):
                raise UserError(f"record {i} of {path}: mcqa_gt {ln['mcqa_gt']!r} and mcqa_pred {ln['mcqa_pred']!r} "
                                f"are not option indices (0 to {len(names) - 1 if names else 'n-1'})") from None
            out.append({"id": str(ln.get("id", i)), "answer": gold, "options": names,
                        "meta": {"class": names[gold] if gold < len(names) else str(gold)},
                        "scoring": "index", "prediction": str(pred)})
        return out

    # -- metrics --------------------------------------------------------------------------------
    def score(self, records: list[Record]) -> dict[str, Any]:
        parsed = [self.interpret(r) for r in records]
        correct = [self.is_correct(r, p) for r, p in zip(records, parsed)]
        classes = [r["meta"].get("class", "") for r in records]
        positions = [LETTERS[r["answer"]] for r in records]
        chosen = [LETTERS[p.value] if p.ok and isinstance(p.value, int) else "tie" if p.status == "tie" else "?"
                  for p in parsed]
        letters = sorted(set(positions) | {c for c in chosen if c not in ("?", "tie")}) + ["?"]
        letters += ["tie"] if "tie" in chosen else []
        return {
            "accuracy": accuracy(correct),
            "macro_accuracy": macro_accuracy(correct, classes),
            "n": len(records),
            "n_classes": len(set(classes)),
            "by_class": grouped_accuracy(correct, classes),
            "by_gold_position": grouped_accuracy(correct, positions),
            "predicted_positions": {c: chosen.count(c) for c in letters},
            "confusion": {"labels": letters, "matrix": confusion_matrix(positions, chosen, letters)},
        }

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        conf = metrics["confusion"]
        return [
            plot_bars({k: v["accuracy"] for k, v in metrics["by_class"].items()}, out / "per_class_accuracy.png",
                      "MCQA accuracy per class", sort=True),
            plot_confusion(conf["matrix"], conf["labels"], out / "confusion_matrix.png",
                           "gold vs predicted option (? = unparsed, tie = several options share the best score)"),
        ]
