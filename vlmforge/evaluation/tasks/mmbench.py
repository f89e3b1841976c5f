"""mmbench: MMBench TSV (base64 images, hint, options A-D, answer, category, l2-category).

Circular evaluation: each question is asked once per rotation of its options (round r shows the
options shifted left by r, as LLaVA's model_vqa_mmbench --all-rounds does) and counts as right only
if every round is right. TSVs that already hold the rotated copies (index >= 1,000,000, as in the
original MMBench files) are grouped by index mod 1,000,000 instead of rotated again (--rounds keeps the
first copies). A question with a round unanswered (answers of round 0 only) is left out of circular
accuracy and counted in `n_incomplete_questions`. Writes the
submission sheet (index, question, options, prediction, ...) as TSV, and as XLSX when openpyxl is
installed.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import LETTER_INSTRUCTION, Dataset, EvalItem, ReadOptions, option_lines
from vlmforge.evaluation.metrics import accuracy
from vlmforge.evaluation.parsers import LETTERS, Parsed, parse_letter
from vlmforge.evaluation.report import plot_bars
from vlmforge.evaluation.tasks import Record, Task

CIRCULAR_OFFSET = 1_000_000
DROPPED_IN_SUBMISSION = {"hint", "category", "source", "image", "comment", "l2-category", "L2-category"}


def _missing(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() == "nan"


def _index(row: dict[str, str], path: Path) -> int:
    try:
        return int(row["index"])
    except (TypeError, ValueError):
        raise UserError(f"{path}: index {row['index']!r} is not a number; is it an MMBench TSV?") from None


def read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except UnicodeDecodeError as e:  # an image or a parquet file given for the TSV: was a traceback
        raise UserError(f"{path} is not a text file (byte {e.start} is not UTF-8); give the MMBench .tsv") from None


class MMBenchTask(Task):
    name = "mmbench"
    description = "MMBench TSV with circular evaluation over option rotations; submission export"
    checks_prompts = True

    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        if len(paths) != 1:
            raise UserError("give one MMBench .tsv file")
        if not paths[0].exists():
            raise UserError(f"{paths[0]} does not exist")
        if not paths[0].is_file():
            raise UserError(f"{paths[0]} is a folder; give the MMBench .tsv file itself")
        columns, rows = read_tsv(paths[0])
        for col in ("index", "question", "A", "B"):
            if col not in columns:
                raise UserError(f"{paths[0]} has no column {col!r}; is it an MMBench TSV? columns: {', '.join(columns)}")
        if "image" not in columns:  # MMBench is a visual benchmark: a TSV without images scores text alone
            from vlmforge.progress import console

            console.print(f"[yellow]warning:[/] {paths[0]} has no 'image' column: every question is asked without its image")
        images = {r["index"]: r.get("image", "") for r in rows}
        if opts.split is not None:  # MMBench TSVs name each row's split (dev, test)
            if "split" not in columns:
                raise UserError(f"--split {opts.split}: {paths[0]} has no 'split' column to choose rows by")
            found = sorted({r.get("split") or "" for r in rows})
            rows = [r for r in rows if r.get("split") == opts.split]
            if not rows:
                raise UserError(f"{paths[0]} has no rows of split {opts.split!r} (splits: {', '.join(found)})")
        has_copies = any(_index(r, paths[0]) >= CIRCULAR_OFFSET for r in rows)
        if has_copies and opts.rounds:  # the copies are the rounds: keep the first --rounds of each question
            rows = [r for r in rows if _index(r, paths[0]) // CIRCULAR_OFFSET < opts.rounds]
        copies = Counter(_index(r, paths[0]) % CIRCULAR_OFFSET for r in rows)
        option_cols = [c for c in LETTERS if c in columns]
        items: list[EvalItem] = []
        for row in rows:
            options = [row[c] for c in option_cols if not _missing(row.get(c))]
            index = _index(row, paths[0])
            gold = None if _missing(row.get("answer")) else row["answer"].strip().upper()
            if gold is not None and gold not in LETTERS[: len(options)]:
                raise UserError(f"{paths[0]}: row {index} has answer {row['answer']!r}, not the letter of one of "
                                f"its {len(options)} options")
            gold = None if gold is None else LETTERS.index(gold)
            rounds = 1 if has_copies else min(opts.rounds or len(options), len(options))
            asked = copies[index % CIRCULAR_OFFSET] if has_copies else rounds  # rounds the question is asked in
            for r in range(rounds):
                order = list(range(r, len(options))) + list(range(r))
                shown = [options[i] for i in order]
                question = row["question"] if _missing(row.get("hint")) else f"{row['hint']}\n{row['question']}"
                items.append(EvalItem(
                    id=f"{index}-{r}", prompt=f"{question}\n{option_lines(shown)}\n{LETTER_INSTRUCTION}",
                    answer=None if gold is None else order.index(gold), options=shown,
                    meta={"index": index % CIRCULAR_OFFSET, "round": r if not has_copies else index // CIRCULAR_OFFSET,
                          "rounds": asked, "order": order, "category": row.get("category"),
                          "l2_category": row.get("l2-category", row.get("L2-category")),
                          "question": row["question"], "split": row.get("split")},
                    image=self._image(row.get("image", ""), images, f"{paths[0]}: row {index}"),
                ))
        if opts.limit:
            keep = {it.meta["index"] for it in items[: opts.limit]}  # whole questions, all their rounds
            items = [it for it in items if it.meta["index"] in keep]
        return Dataset(items, source=str(paths[0]), info={"columns": columns, "option_columns": option_cols},
                       split=opts.split)

    @staticmethod
    def _image(value: str, images: dict[str, str], where: str) -> bytes | None:
        # Rotated copies may point at the row holding the image by its index.
        if value and value.isdigit() and len(value) < 16 and value in images:
            value = images[value]
        try:
            return base64.b64decode(value) if value else None
        except binascii.Error as e:
            raise UserError(f"{where} has an image that is not base64 ({e}); is the TSV cut short?") from None

    def parse(self, rec: Record) -> Parsed:
        return parse_letter(rec["prediction"], len(rec["options"]), rec["options"],
                            strict=bool(self.options.get("strict")))

    def external_id(self, line: Record) -> str | None:
        """LLaVA's answer files: question_id is the TSV index, round_id the rotation."""
        if "question_id" in line:
            return f"{line['question_id']}-{line.get('round_id', 0)}"
        return super().external_id(line)

    def score(self, records: list[Record]) -> dict[str, Any]:
        scored = [r for r in records if r["answer"] is not None]
        by_question: dict[int, list[bool]] = defaultdict(list)
        seen: dict[int, set[int]] = defaultdict(set)
        first: dict[int, Record] = {}
        meta: dict[int, dict[str, Any]] = {}
        for r in scored:
            q = r["meta"]["index"]
            meta.setdefault(q, r["meta"])
            by_question[q].append(self.is_correct(r, self.interpret(r)))
            seen[q].add(r["meta"]["round"])
            if r["meta"]["round"] == 0:
                first[q] = r
        # A question with rounds unanswered (answers of round 0 only, a partial file) is not circular-right
        # because the rounds it has are; it is left out and counted. Records without "rounds" predate it.
        incomplete = {q for q in by_question if len(seen[q]) < meta[q].get("rounds", 0)}
        circular = {q: all(v) for q, v in by_question.items() if q not in incomplete}

        def grouped(field: str) -> dict[str, Any]:
            groups: dict[str, list[bool]] = defaultdict(list)
            for q, ok in circular.items():
                groups[str(meta[q].get(field))].append(ok)
            return {g: {"accuracy": accuracy(v), "n": len(v)} for g, v in sorted(groups.items())}

        return {
            "circular_accuracy": accuracy(list(circular.values())),
            "single_pass_accuracy": accuracy([self.is_correct(r, self.interpret(r)) for r in first.values()]),
            "n_questions": len(circular),
            "n_incomplete_questions": len(incomplete),
            "n_rounds": len(scored),
            "n_without_answer": len(records) - len(scored),
            "by_category": grouped("category"),
            "by_l2_category": grouped("l2_category"),
        }

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        if not metrics["by_category"]:
            return []
        return [plot_bars({k: v["accuracy"] for k, v in metrics["by_category"].items()}, out / "per_category_accuracy.png",
                          "MMBench circular accuracy per category", sort=True)]

    def extra_outputs(self, records: list[Record], dataset: Dataset | None, out: Path) -> list[Path]:
        """The submission sheet from round-0 answers, in the original option lettering."""
        rows = []
        width = max((len(r["options"]) for r in records), default=0)
        letters = list(LETTERS[:width])
        for r in sorted((r for r in records if r["meta"]["round"] == 0), key=lambda r: r["meta"]["index"]):
            parsed = self.interpret(r)
            opts = dict(zip(LETTERS, r["options"]))  # round 0 shows the original order
            pred = LETTERS[parsed.value] if parsed.ok else (r.get("prediction") or "")
            row = {"index": r["meta"]["index"], "question": r["meta"].get("question", ""),
                   **{c: opts.get(c, "") for c in letters}, "prediction": pred}
            if r["answer"] is not None:
                row["answer"] = LETTERS[r["answer"]]
            if r["meta"].get("split"):
                row["split"] = r["meta"]["split"]
            rows.append(row)
        if not rows:
            return []
        header = list(dict.fromkeys(k for row in rows for k in row))
        tsv = out / "mmbench_submission.tsv"
        with open(tsv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=header, delimiter="\t")
            w.writeheader()
            w.writerows(rows)
        written = [tsv]
        try:
            import openpyxl  # noqa: F401
            import pandas as pd

            xlsx = out / "mmbench_submission.xlsx"
            pd.DataFrame(rows, columns=header).to_excel(xlsx, index=False)
            written.append(xlsx)
        except ImportError:
            pass
        return written
