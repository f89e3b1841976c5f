"""`mcqa`: multiple-choice test sets from a labelled build.

Each parent sample becomes one question with k options: its class and k-1 distractors drawn from the
other classes of the same split (or of `--classes-from FILE`), either at random or as the nearest
classes by sentence-embedding similarity (`--distractors hard`). The gold letter's position is
balanced exactly: within a split, keys ranked by sha256(seed:key) are cut into k equal runs, run i
puts the answer at letter i. Everything is seeded by (seed, key), so the set is deterministic and
does not depend on input order. The question is --question, else the parent's own without its request
for reasoning (an occlusion sample asks what is hidden), else "What is the main object in this image?".
Two options of a question never mean the same class: names equal after case and space folding, or
naming one COCO category (the parent's `category` column where it has one, as occlusion builds do;
else by name, synonym or plural: 'dog', 'puppy' and 'dogs'; 'car' and 'automobile'), are one class,
so a synonym of the answer is never a distractor.
"""

from __future__ import annotations

import functools
import random
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from vlmforge.builders.base import BuildConfig
from vlmforge.builders.derived import (
    DerivedBuilder, Plan, build_key, check_column, class_name, count_labels, iter_fields, parent_sample, unlabelled_note,
)
from vlmforge.curation.instructions import question_stem
from vlmforge.curation.selection import fit_cuts, fraction_sizes
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record, Source

DEFAULT_QUESTION = "What is the main object in this image?"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class McqaConfig(BuildConfig):
    options: int = 4  # k options per question
    distractors: str = "random"  # random, or hard: the nearest classes by embedding similarity
    question: str | None = None  # default: the parent's own question (occlusion), else DEFAULT_QUESTION
    label_column: str = "label"
    classes: list[str] | None = None  # the answer vocabulary (from --classes-from); default: per split
    embedder: str | None = None  # sentence-transformers model for hard distractors (default MiniLM)


def fold(name: str) -> str:
    """Class names that mean the same option: case, surrounding and repeated spaces, '_' ignored."""
    return " ".join(name.replace("_", " ").lower().split())


@functools.lru_cache(maxsize=1)
def _coco_words() -> dict[str, str]:
    from vlmforge.curation.grounding import word_to_category

    return word_to_category()


def coco_meaning(name: str) -> str:
    """The COCO category `name` is a name, synonym or plural of ('puppy' and 'dogs' -> 'dog'), else its
    folded name."""
    folded = fold(name)
    return _coco_words().get(folded, folded)


def distinct_meanings(names: list[str], meaning: Callable[[str], str]) -> list[str]:
    """`names` in order, each one whose meaning an earlier one already has left out."""
    seen: set[str] = set()
    out = []
    for n in names:
        if meaning(n) not in seen:
            seen.add(meaning(n))
            out.append(n)
    return out


def format_prompt(question: str, options: list[str]) -> str:
    """'<image>\\n{question}\\nA. x\\nB. y\\n...\\nAnswer with the option's letter ...'."""
    lines = [f"{string.ascii_uppercase[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(["<image>", question, *lines, INSTRUCTION])


class McqaPlan(Plan):
    def __init__(self, config: McqaConfig):
        super().__init__()
        self.config = config
        if not 2 <= config.options <= 26:
            raise UserError(f"--options must be between 2 and 26, got {config.options}")
        if config.distractors not in ("random", "hard"):
            raise UserError(f"--distractors must be random or hard, got {config.distractors!r}")
        if config.embedder is not None and config.distractors != "hard":
            raise UserError("--embedder goes with --distractors hard (random distractors use no model)")
        if config.question is not None and not config.question.strip():
            raise UserError("--question is empty; give the question asked before the options")
        self.categories: dict[str, str] = {}
        self._meanings: dict[str, str] = {}

    def fit(self, src: Source) -> None:
        cfg, k, col = self.config, self.config.options, self.config.label_column
        per_split = count_labels(src, col)
        self.notes += unlabelled_note(per_split, col)
        labels = {split: Counter({label: n for label, n in cnt.items() if label is not None})
                  for split, cnt in per_split.items()}
        self.categories = self._data_categories(src)
        self.vocab: dict[str, list[str]] = {}
        synonyms: set[tuple[str, ...]] = set()
        for split, cnt in labels.items():
            names = sorted(set(cfg.classes)) if cfg.classes is not None else sorted(cnt)
            # One spelling per folded name; names of one class (synonyms) stay answers, never distractors.
            by_fold: dict[str, str] = {}
            for n in names:
                by_fold.setdefault(fold(n), n)
            self.vocab[split] = sorted(by_fold.values())
            groups: dict[str, list[str]] = {}
            for n in self.vocab[split]:
                groups.setdefault(self.meaning(n), []).append(n)
            synonyms.update(tuple(g) for g in groups.values() if len(g) > 1)
            if cnt and len(groups) < k:
                where = "the --classes-from vocabulary" if cfg.classes is not None else f"split {split!r}"
                merged = [g for g in groups.values() if len(g) > 1]
                same = f" (names of one class count once, e.g. {' and '.join(merged[0])})" if merged else ""
                raise UserError(f"{where} has {len(groups)} distinct class{'' if len(groups) == 1 else 'es'}{same}; "
                                f"{k} options need at least {k} "
                                "(use fewer --options or give --classes-from)")
        if synonyms:
            self.summary["synonyms"] = [list(g) for g in sorted(synonyms)]
        if cfg.classes is not None:  # else the answer would be the one option from outside the vocabulary
            known = {fold(c) for c in cfg.classes}
            missing = sorted({label for cnt in labels.values() for label in cnt if fold(label) not in known})
            if missing:
                raise UserError(f"--classes-from lacks {len(missing)} of the parent's classes (e.g. "
                                f"{', '.join(repr(m) for m in missing[:3])}); add them, or leave their records out with --where")

        def items():
            for split in src.splits():
                for key, label in iter_fields(src, split, [col]):
                    if label is not None:
                        yield key, split

        self.cuts = fit_cuts(items, cfg.seed, lambda g, n: fraction_sizes([1 / k] * k, n))
        self.out_splits = list(src.splits())
        self.counts = {s: sum(v) for s, v in self.cuts.counts().items()}
        self.summary["gold_positions"] = {s: dict(zip(string.ascii_uppercase, v)) for s, v in self.cuts.counts().items()}
        self.summary["classes_per_split"] = {s: len(v) for s, v in self.vocab.items()}
        self.nearest: dict[str, dict[str, list[str]]] = {}
        if cfg.distractors == "hard":
            self._fit_nearest(labels)

    def _data_categories(self, src: Source) -> dict[str, str]:
        """Folded label -> the COCO category its records were grounded to, from the parent's `category`
        column (occlusion builds), for labels whose records all have one: it knows the grounder's
        matches by similarity ('doggie' -> dog) that the synonym table does not."""
        try:
            check_column(src, "category", scalar=True)
        except UserError:  # no such column: the synonym table alone
            return {}
        found: dict[str, set[str]] = {}
        for split in src.splits():
            for _, label, category in iter_fields(src, split, [self.config.label_column, "category"]):
                if label is not None and category is not None:
                    found.setdefault(fold(class_name(label)), set()).add(str(category))
        return {label: cats.pop() for label, cats in found.items() if len(cats) == 1}

    def meaning(self, name: str) -> str:
        """The class an option names: the COCO category of its records, else the one it is a name,
        synonym or plural of, else its folded name. Options of one question never share a meaning."""
        found = self._meanings.get(name)
        if found is None:  # asked for every option of every record: worked out once per name
            found = self._meanings[name] = self.categories.get(fold(name)) or coco_meaning(name)
        return found

    def _fit_nearest(self, labels: dict[str, Counter]) -> None:
        """For every class of a split, the vocabulary's other classes ordered by cosine similarity of
        their names' embeddings (ties by name)."""
        from vlmforge.curation.embedding import SentenceEmbedder

        embedder = SentenceEmbedder(self.config.embedder)
        for split, vocab in self.vocab.items():
            rows = sorted(set(vocab) | set(labels[split]))
            vecs = embedder.encode(rows)
            cols = np.array([rows.index(v) for v in vocab])
            sims = vecs @ vecs[cols].T
            table = {}
            for i, name in enumerate(rows):
                cand = [j for j in range(len(vocab)) if self.meaning(vocab[j]) != self.meaning(name)]
                cand.sort(key=lambda j: (-round(float(sims[i, j]), 6), vocab[j]))
                table[name] = distinct_meanings([vocab[j] for j in cand], self.meaning)
            self.nearest[split] = table
        self.summary["embedder"] = embedder.model_name

    def assign(self, rec: Record, base_split: str) -> str | None:
        if rec.get(self.config.label_column) is None:
            return None
        return base_split if self.cuts.part(build_key(rec), base_split) is not None else None

    def question(self, rec: Record, split: str) -> tuple[list[str], int]:
        """The options and the gold index for one record."""
        cfg, k = self.config, self.config.options
        key, label = build_key(rec), str(rec[cfg.label_column])
        gold = self.cuts.part(key, split)
        assert gold is not None
        rng = random.Random(f"{cfg.seed}:{key}:distractors")
        if cfg.distractors == "hard":
            pool = self.nearest[split][label][: k - 1]
            rng.shuffle(pool)
        else:
            others = [c for c in self.vocab[split] if self.meaning(c) != self.meaning(label)]
            rng.shuffle(others)
            pool = distinct_meanings(others, self.meaning)[: k - 1]
        if len(pool) < k - 1:
            raise UserError(f"class {label!r} has only {len(pool)} possible distractors; {k - 1} are needed")
        options = pool[:gold] + [label] + pool[gold:]
        return options, gold


class McqaBuilder(DerivedBuilder):
    name = "mcqa"
    VERSION = "1.1.0"
    Config = McqaConfig
    description = "Multiple-choice test sets from a labelled build: k options, balanced gold positions."
    plan_class = McqaPlan
    own_columns = [
        ("label", pa.string(), "the class: the correct option"),
        ("options", pa.list_(pa.string()), "the options in letter order (A, B, ...)"),
        ("answer_index", pa.int32(), "index of the correct option (0 = A)"),
        ("answer", pa.string(), "letter of the correct option"),
    ]

    def asked(self, rec: Record) -> str:
        """--question, else the parent's own question without its request for reasoning (an occlusion
        sample asks for the hidden object, not the main one), else DEFAULT_QUESTION."""
        if self.config.question is not None:
            return self.config.question
        own = rec.get("question")
        return question_stem(own) if isinstance(own, str) and own.strip() else DEFAULT_QUESTION

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        out: list[list[Sample | Reject]] = []
        for rec in batch:
            split = rec["split"]
            options, gold = self.plan.question(rec, split)
            sample = parent_sample(rec, self.columns)
            if sample.image is None:
                out.append([Reject(rec["source_id"], "no_image", "mcqa", "the parent sample has no image")])
                continue
            letter = string.ascii_uppercase[gold]
            question = self.asked(rec)
            sample.doc = {
                "id": sample.key,
                "label": str(rec[self.config.label_column]),
                "question": question,
                "options": options,
                "answer_index": gold,
                "answer": letter,
                "conversations": [{"from": "human", "value": format_prompt(question, options)},
                                  {"from": "gpt", "value": letter}],
                "parent": {"build_id": self.src.parents[0], "key": rec["key"]},
            }
            for extra in ("class_set", "synset", "grade"):
                if extra in rec and rec[extra] is not None:
                    sample.doc[extra] = rec[extra]
            sample.columns.update(label=sample.doc["label"], options=options, answer_index=gold, answer=letter)
            if "question" in sample.columns:
                sample.columns["question"] = question
            out.append([sample])
        return out
