"""`grading`: ordinal grade data (knee X-ray Kellgren-Lawrence grades 0-4, or any graded folder tree
`split/grade/image`) as LLaVA-format records, optionally drawn as balanced sets.

The grade is the class folder's name (its first integer when it has one: `2`, `KL2` and `grade_2` are
all grade 2). Prompt and answer come from templates (`{grade}`, `{description}`); descriptions per
grade default to the Kellgren-Lawrence scale and can be given as a JSON file. `--per-grade N` draws N
images of every grade (per split); `--size N` draws N in all, split evenly between the grades (the
first grades get one more when N does not divide). Draws hash (seed, key): order-independent. A
drawn image that cannot be read is a reject with its reason and the next record of its grade takes
its slot, so the draw counts usable images only.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlmforge.builders.base import BuildConfig, check_template
from vlmforge.builders.derived import (
    DerivedBuilder, Plan, check_column, iter_fields, parent_sample, unlabelled_note,
)
from vlmforge.curation.images import ImageError, load_for_storage
from vlmforge.curation.selection import key_clashes, rank_value
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample, make_key
from vlmforge.sources.base import Record, Source

KL_PROMPT = "<image>\nWhat is the Kellgren-Lawrence grade of this knee X-ray image?"
KL_ANSWER = "The most likely Kellgren-Lawrence grade of this knee X-ray image is Grade {grade}: {description}."
ANSWER_FIELDS = ["grade", "description"]  # what the answer is formatted with
# The Kellgren-Lawrence scale of knee osteoarthritis, in short.
KL_DESCRIPTIONS = {
    "0": "no radiographic signs of osteoarthritis",
    "1": "doubtful narrowing of the joint space and possible osteophytes",
    "2": "definite osteophytes and possible narrowing of the joint space",
    "3": "moderate multiple osteophytes, definite narrowing of the joint space and some sclerosis",
    "4": "large osteophytes, marked narrowing of the joint space, severe sclerosis and bone deformity",
}


@dataclass
class GradingConfig(BuildConfig):
    prompt: str = KL_PROMPT
    answer_template: str = KL_ANSWER
    descriptions: dict[str, str] | None = None  # grade -> description (default: Kellgren-Lawrence)
    per_grade: int | None = None  # draw this many per grade and split
    size: int | None = None  # or this many per split, spread evenly over the grades
    label_column: str = "label"  # for a parent build: the column holding the grade
    jpeg_quality: int = 95


def grade_of(name: Any) -> str:
    """'2', 'KL2', 'grade_2', 2 -> '2'; a name without digits stays itself."""
    m = re.search(r"\d+", str(name))
    return str(int(m.group())) if m else str(name)


def even_shares(total: int, grades: list[str]) -> dict[str, int]:
    """`total` spread over `grades` in order: equal shares, the first grades one more."""
    base, extra = divmod(total, len(grades))
    return {g: base + (1 if i < extra else 0) for i, g in enumerate(grades)}


def grade_sort_key(g: str) -> tuple:
    return (0, int(g), "") if g.isdigit() else (1, 0, g)


class GradingPlan(Plan):
    def __init__(self, config: GradingConfig):
        super().__init__()
        self.config = config
        self.picked: set[tuple[str, str]] | None = None  # (split, key) of the drawn records; None: all
        self.duplicates: dict[str, str] = {}  # file -> the file whose key it has
        if config.per_grade is not None and config.size is not None:
            raise UserError("give --per-grade or --size, not both")
        check_template(config.answer_template, ANSWER_FIELDS, "--answer-template")
        for opt, v in (("--per-grade", config.per_grade), ("--size", config.size)):
            if v is not None and v < 1:
                raise UserError(f"{opt} must be at least 1, got {v}")

    def label(self, rec: Record) -> Any:
        return rec.get("class_folder", rec.get("label")) if "build_path" not in rec else rec.get(self.config.label_column)

    def fit(self, src: Source) -> None:
        cfg = self.config
        from_build = _is_build(src)
        # With each record, what tells whether it is usable: its image file, or the parent's image format.
        fields = [cfg.label_column, "image_format"] if from_build else ["class_folder", "file"]
        if from_build:
            check_column(src, cfg.label_column, option="--label-column")
        drawing = cfg.per_grade is not None or cfg.size is not None
        per_split: dict[str, Counter] = {split: Counter() for split in src.splits()}
        members: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        rows = []
        unread: Counter = Counter()  # files of the folder that are no image to read: each a reject
        unlabelled = 0  # parent records without a grade: left out by the plan, and said
        for split in src.splits():
            for key, value, where in iter_fields(src, split, fields, key_of=_raw_key):
                if value is not None:
                    rows.append((split, key, grade_of(value), where))
                elif not from_build:
                    unread[split] += 1
                else:
                    unlabelled += 1
        if unlabelled and not rows:  # else an empty build whose note blames the --where
            raise UserError(f"the parent has no values in column {cfg.label_column!r}: it is not a labelled build "
                            "(name the column holding the grade with --label-column)")
        self.notes += unlabelled_note({"all": Counter({None: unlabelled})}, cfg.label_column)
        # Two files may differ by extension only: the first keeps the key, the other is a duplicate_key reject.
        self.duplicates = {} if from_build else key_clashes((key, where) for _, key, _, where in rows)
        for split, key, grade, where in rows:
            per_split[split][grade] += 1
            if drawing and where not in self.duplicates:
                members.setdefault((split, grade), []).append((key, where))
        self.out_splits = list(src.splits())
        descriptions = cfg.descriptions if cfg.descriptions is not None else KL_DESCRIPTIONS
        grades = sorted({g for c in per_split.values() for g in c}, key=grade_sort_key)
        missing = [g for g in grades if g not in descriptions]
        if "{description}" in cfg.answer_template and missing:
            raise UserError(f"no description for grade(s) {missing}; give --descriptions FILE (JSON: grade -> text)")
        self.summary["grades"] = {s: dict(sorted(c.items(), key=lambda kv: grade_sort_key(kv[0]))) for s, c in per_split.items()}
        if not drawing:
            self.picked = None
            self.counts = {s: sum(c.values()) + unread[s] for s, c in per_split.items()}
            return
        self._draw(per_split, members, from_build)
        for split, _, _, where in rows:
            if where in self.duplicates:
                self.counts[split] += 1
        for split, n in unread.items():
            self.counts[split] += n

    def _draw(self, per_split: dict[str, Counter], members: dict[tuple[str, str], list[tuple[str, Any]]],
              from_build: bool) -> None:
        """Each grade's share, walking its records in (rank value, key) order and counting only those
        whose image can be stored: an unusable one is drawn too (it becomes a reject with its reason)
        and the next record fills its slot."""
        cfg = self.config
        self.picked = set()
        drawn: dict[str, int] = {}
        unusable: dict[str, int] = {}
        short: dict[str, dict[str, int]] = {}
        self.counts = {s: 0 for s in self.out_splits}
        for split, cnt in per_split.items():
            split_grades = sorted(cnt, key=grade_sort_key)
            shares = (even_shares(cfg.size, split_grades) if cfg.size is not None
                      else {g: cfg.per_grade for g in split_grades})
            for g in split_grades:
                ranked = sorted(members.get((split, g), []), key=lambda m: (rank_value(cfg.seed, m[0]), m[0]))
                got = bad = position = 0
                while got < shares[g] and position < len(ranked):
                    # As many as still wanted, checked at once (in threads: decoding big X-rays is slow);
                    # each of them is taken, usable or not, so the result is that of a walk one by one.
                    batch = ranked[position : position + shares[g] - got]
                    position += len(batch)
                    for (key, _), ok in zip(batch, self._usable_many([w for _, w in batch], from_build)):
                        self.picked.add((split, key))
                        got, bad = (got + 1, bad) if ok else (got, bad + 1)
                self.counts[split] += got + bad
                drawn[f"{split}/{g}"] = got
                if bad:
                    unusable[f"{split}/{g}"] = bad
                if got < shares[g]:
                    short.setdefault(split, {})[g] = shares[g] - got
        self.summary["drawn"] = drawn
        if unusable:
            self.summary["unusable"] = unusable  # drawn, rejected (see rejects), and replaced by the next record
        if short:
            self.summary["short"] = short  # grades with fewer usable images than asked for: all were taken
            self.notes.append("fewer usable images than asked for (all taken): " + ", ".join(
                f"{split} grade {g} short by {n}" for split, per in short.items() for g, n in per.items()))

    def _usable_many(self, wheres: list[Any], from_build: bool) -> list[bool]:
        """The check process() makes, for each record: the image loads for storage (a parent sample has
        an image)."""
        if from_build:
            return [w is not None for w in wheres]
        from concurrent.futures import ThreadPoolExecutor

        def usable(path: str) -> bool:
            try:
                load_for_storage(path, "quick", self.config.jpeg_quality)
            except ImageError:
                return False
            return True

        if len(wheres) < 2:
            return [usable(w) for w in wheres]
        with ThreadPoolExecutor(min(len(wheres), os.cpu_count() or 1, 16)) as pool:
            return list(pool.map(usable, wheres))

    def assign(self, rec: Record, base_split: str) -> str | None:
        if "unusable" in rec:  # drawn or not, a reject
            return base_split
        value = self.label(rec)
        if value is None:
            return None
        if self.picked is None or rec.get("file") in self.duplicates:
            return base_split
        return base_split if (base_split, _raw_key(rec)) in self.picked else None


def _is_build(src: Source) -> bool:
    from vlmforge.sources.build import BuildSource

    return isinstance(src, BuildSource)


def _raw_key(rec: Record) -> str:
    """Keys as the copy builder makes them: the parent's key, or the image's path without extension."""
    if "build_path" in rec:
        return rec["key"]
    return make_key(rec["source_id"].rsplit(".", 1)[0])


class GradingBuilder(DerivedBuilder):
    name = "grading"
    VERSION = "1.4.0"
    Config = GradingConfig
    description = "Ordinal grade data (e.g. knee X-ray KL grades) as LLaVA records, optionally balanced per grade."
    batch_size = 32
    plan_class = GradingPlan
    own_columns = [
        ("label", pa.string(), "the grade as text (the class folder's grade)"),
        ("grade", pa.int32(), "the grade as a number; null for grades named without digits"),
        ("original_format", pa.string(), "image format as read from the source"),
    ]

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        """imagefolder (option root: ROOT/<split>/<grade>/<image>) or build (path, where, splits)."""
        kind = kind or ("build" if options.get("path") else "imagefolder")
        if kind == "build":
            return super().open_source(kind, **options)
        if kind != "imagefolder":
            raise UserError("grading reads a graded folder tree (--root) or a labelled build (--from)")
        from vlmforge.sources import open_source

        return open_source("imagefolder", root=options.get("root"))

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        return [[self._one(rec)] for rec in batch]

    def _one(self, rec: Record) -> Sample | Reject:
        if "unusable" in rec:  # a file of the folder that is no image to read
            reason, detail = rec["unusable"]
            return Reject(rec["source_id"], reason, "source", detail)
        cfg = self.config
        grade = grade_of(self.plan.label(rec))
        descriptions = cfg.descriptions if cfg.descriptions is not None else KL_DESCRIPTIONS
        answer = cfg.answer_template.format(grade=grade, description=descriptions.get(grade, ""))
        if "build_path" in rec:
            sample = parent_sample(rec, self.columns)
            if sample.image is None:
                return Reject(rec["source_id"], "no_image", "grading", "the parent sample has no image")
        elif rec["file"] in self.plan.duplicates:
            return Reject(rec["source_id"], "duplicate_key", "grading", f"{rec['file']} has the key of "
                          f"{self.plan.duplicates[rec['file']]} (the same path without its extension)")
        else:
            try:
                img = load_for_storage(rec["file"], "quick", cfg.jpeg_quality)
            except ImageError as e:
                return Reject(rec["source_id"], e.reason, "read_image", e.detail)
            sample = Sample(key=_raw_key(rec), doc={}, image=img.data, image_ext=img.ext, width=img.width,
                            height=img.height, source_id=rec["source_id"], columns={"original_format": img.original_format})
        prompt = cfg.prompt if "<image>" in cfg.prompt else "<image>\n" + cfg.prompt
        sample.doc = {"id": sample.key, "grade": grade, "label": grade,
                      "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
        sample.columns.update(label=grade, grade=int(grade) if grade.isdigit() else None)
        return sample


def load_descriptions(path: str | Path) -> dict[str, str]:
    """A JSON object grade -> description, keys normalised like folder grades."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read --descriptions {p}: {e}") from None
    if not isinstance(doc, dict):
        raise UserError(f"--descriptions {p} must be a JSON object: grade -> description")
    return {grade_of(k): str(v) for k, v in doc.items()}
