"""`subset`: class-aware subsets of a labelled build, for data-efficiency and generalisation studies.

Modes (the class is a manifest column, `label` unless told otherwise):
- `class-preserving --fraction F`: every class stays, with round(F * n) of its n samples (at least 1).
- `class-exclusive --fraction F`: round(F * C) of the C classes (at least 1) stay, with all their samples.
- `seen-unseen`: the class vocabulary is cut into seen and unseen classes (`--unseen-fraction U`
  chosen by hash, or the seen classes listed in `--classes-from FILE`). Training splits keep only
  seen classes; every other split S becomes S_seen and S_unseen. Chosen by hash, a class without a
  training record is unseen.
- no mode: only the `--where` SQL condition over the parent manifest filters.
Choices hash (seed, key) or (seed, class name); the class lists and the equivalent SQL condition are
recorded in build.json (`source.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from vlmforge.builders.base import BuildConfig
from vlmforge.builders.derived import (
    TRAIN_SPLITS, DerivedBuilder, Plan, build_key, check_splits, class_name, count_labels, iter_fields, parent_sample,
    unlabelled_note,
)
from vlmforge.curation.selection import check_fraction, choose, fit_cuts, round_half_up
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record, Source

MODES = ("class-preserving", "class-exclusive", "seen-unseen")


@dataclass
class SubsetConfig(BuildConfig):
    mode: str | None = None  # class-preserving, class-exclusive, seen-unseen, or None (--where only)
    fraction: float | None = None  # of each class's samples (preserving) or of the classes (exclusive)
    label_column: str = "label"
    unseen_fraction: float | None = None  # seen-unseen: fraction of classes held out as unseen
    seen_classes: list[str] | None = None  # seen-unseen: the seen classes (from --classes-from FILE)
    train_splits: list[str] | None = None  # splits that keep seen classes only (default: train)


def sql_in(column: str, values: list[str]) -> str:
    """`"label" IN ('a', 'b')`: the SQL condition that selects these classes."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f'"{column}" IN ({quoted})'


class SubsetPlan(Plan):
    def __init__(self, config: SubsetConfig):
        super().__init__()
        self.config = config
        if config.mode is not None and config.mode not in MODES:
            raise UserError(f"unknown --mode {config.mode!r}; use {', '.join(MODES)}")
        if config.mode in ("class-preserving", "class-exclusive"):
            check_fraction(config.fraction, "--fraction")
            given = [o for o, v in (("--unseen-fraction", config.unseen_fraction), ("--classes-from", config.seen_classes),
                                    ("--train-split", config.train_splits)) if v is not None]
            if given:
                raise UserError(f"{given[0]} applies to --seen-unseen only, not --mode {config.mode}")
        if config.mode is None:  # a --where-only subset: a fraction here would be ignored, the whole parent kept
            given = [o for o, v in (("--fraction", config.fraction), ("--unseen-fraction", config.unseen_fraction),
                                    ("--classes-from", config.seen_classes), ("--train-split", config.train_splits))
                     if v is not None]
            if given:
                raise UserError(f"{given[0]} needs a --mode ({', '.join(MODES)}); without one, only --where filters")
        if config.mode == "seen-unseen":
            if config.fraction is not None:
                raise UserError("--fraction applies to class-preserving and class-exclusive, not seen-unseen "
                                "(--unseen-fraction holds classes out)")
            if config.unseen_fraction is not None and config.seen_classes is not None:
                raise UserError("give --unseen-fraction or --classes-from, not both")
            if config.unseen_fraction is None and config.seen_classes is None:
                raise UserError("seen-unseen needs either --unseen-fraction U or --classes-from FILE (the seen classes)")
            if config.unseen_fraction is not None and not 0 < config.unseen_fraction < 1:
                raise UserError(f"--unseen-fraction must be in (0, 1), got {config.unseen_fraction}")
        self.train_splits = tuple(config.train_splits or TRAIN_SPLITS)

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, src: Source) -> None:
        cfg = self.config
        self.out_splits = list(src.splits())
        if cfg.mode is None:
            self.counts = {s: src.count(s) for s in self.out_splits}
            return
        col = cfg.label_column
        per_split = count_labels(src, col)
        classes = sorted({c for cnt in per_split.values() for c in cnt if c is not None})
        unlabelled = sum(cnt[None] for cnt in per_split.values())
        self.summary["classes"] = len(classes)
        if unlabelled:
            self.summary["unlabelled_left_out"] = unlabelled
            self.notes += unlabelled_note(per_split, col)
        if not classes:  # an empty parent (e.g. a --where matching no record): an empty subset
            self.counts = {}
            return
        getattr(self, "_fit_" + cfg.mode.replace("-", "_"))(src, classes, per_split)

    def _fit_class_preserving(self, src: Source, classes: list[str], per_split) -> None:
        col, f = self.config.label_column, self.config.fraction

        def items():
            for split in src.splits():
                for key, label in iter_fields(src, split, [col]):
                    if label is not None:
                        yield key, (split, class_name(label))

        lifted = []  # classes too small for the fraction to keep one: each keeps one all the same

        def size(group, n: int) -> list[int]:
            want = round_half_up(f * n) if n else 0
            if n and want < 1:
                lifted.append(group)
            return [max(1, want) if n else 0]

        self.cuts = fit_cuts(items, self.config.seed, size)
        sizes = self.cuts.counts()
        self.counts = {s: sum(v[0] for (b, _), v in sizes.items() if b == s) for s in self.out_splits}
        if lifted:  # else a build of far more than the fraction asked for, without a word
            labelled = sum(c for cnt in per_split.values() for label, c in cnt.items() if label is not None)
            self.notes.append(f"{len(lifted)} split/class groups are too small for --fraction {f} to keep a sample "
                              f"(e.g. {'/'.join(lifted[0])}): each keeps one, so {sum(self.counts.values())} of "
                              f"{labelled} labelled samples are kept")

    def _fit_class_exclusive(self, src: Source, classes: list[str], per_split) -> None:
        n = max(1, round_half_up(self.config.fraction * len(classes)))
        self.kept = set(choose(classes, self.config.seed, n, salt="class:"))
        self.counts = {s: sum(c for label, c in cnt.items() if label in self.kept) for s, cnt in per_split.items()}
        self.summary["kept_classes"] = sorted(self.kept)
        self.summary["where"] = sql_in(self.config.label_column, sorted(self.kept))
        self.summary["rule"] = (f"rank classes by sha256('{self.config.seed}:class:' + name), keep the first "
                                f"max(1, round({self.config.fraction} * {len(classes)}))")

    def _fit_seen_unseen(self, src: Source, classes: list[str], per_split) -> None:
        cfg = self.config
        check_splits(src.splits(), cfg.train_splits, "--train-split")
        if cfg.seen_classes is not None:
            listed = set(cfg.seen_classes)
            missing = sorted(listed - set(classes))
            if missing:
                raise UserError(f"--classes-from names classes the parent does not have: {missing[:10]}")
            if not listed or listed == set(classes):
                raise UserError(f"--classes-from lists {len(listed)} of the parent's {len(classes)} classes as seen; "
                                "a seen/unseen subset needs both seen and unseen classes")
            self.seen = listed
        else:
            n_unseen = max(1, round_half_up(cfg.unseen_fraction * len(classes)))
            if n_unseen >= len(classes):
                raise UserError(f"--unseen-fraction {cfg.unseen_fraction} leaves no seen class of {len(classes)}")
            self.seen = set(classes) - set(choose(classes, cfg.seed, n_unseen, salt="unseen:"))
        trained = {c for split, cnt in per_split.items() if split in self.train_splits for c in cnt if c is not None}
        untrained = sorted(self.seen - trained) if trained else []  # no training split: nothing to tell
        if untrained:
            # A class no training record has is not seen: in test_seen it would pass for one the model learnt.
            if cfg.seen_classes is None:
                self.seen -= set(untrained)
                if not self.seen:
                    raise UserError("no class of the training splits is left seen; lower --unseen-fraction")
                self.summary["unseen_without_training_records"] = untrained
            how = "so they are unseen" if cfg.seen_classes is None else "yet --classes-from lists them as seen"
            self.notes.append(f"{len(untrained)} classes have no record in {', '.join(self.train_splits)}, {how}: "
                              f"{', '.join(untrained[:5])}{' ...' if len(untrained) > 5 else ''}")
        self.unseen = set(classes) - self.seen
        self._note_unseen_synonyms()
        outs: list[str] = []
        self.counts = {}
        left_out = 0  # training records of unseen classes
        for split, cnt in per_split.items():
            seen_n = sum(c for label, c in cnt.items() if label in self.seen)
            unseen_n = sum(c for label, c in cnt.items() if label in self.unseen)
            if split in self.train_splits:
                outs.append(split)
                self.counts[split] = seen_n
                left_out += unseen_n
            else:
                outs += [f"{split}_seen", f"{split}_unseen"]
                self.counts[f"{split}_seen"], self.counts[f"{split}_unseen"] = seen_n, unseen_n
        if not any(s not in self.train_splits for s in per_split):
            raise UserError("seen-unseen needs a test split besides the training splits "
                            f"{list(self.train_splits)}; make one first, e.g. "
                            "`vlmforge build split --splits train=0.8,test=0.2`")
        if not any(s in self.train_splits for s in per_split):
            self.notes.append(f"the parent has no training split {', '.join(self.train_splits)}: no split keeps seen classes "
                              "only (name yours with --train-split)")
        if left_out:
            self.notes.append(f"{left_out} records of unseen classes in {', '.join(s for s in per_split if s in self.train_splits)} "
                              "are left out (training keeps seen classes only)")
        self.out_splits = outs
        self.summary.update(seen_classes=sorted(self.seen), unseen_classes=sorted(self.unseen),
                            unseen_left_out_of_training=left_out,
                            where_seen=sql_in(cfg.label_column, sorted(self.seen)),
                            where_unseen=sql_in(cfg.label_column, sorted(self.unseen)),
                            train_splits=list(self.train_splits))

    def _note_unseen_synonyms(self) -> None:
        """Unseen classes that name a seen one (case, a synonym or plural: 'Dog', 'puppy', 'woman' for
        'dog', 'dog', 'man') were seen under another name: said, as the split is by name."""
        from vlmforge.builders.mcqa import coco_meaning

        seen = {coco_meaning(c): c for c in sorted(self.seen)}
        pairs = [f"{c} ~ {seen[coco_meaning(c)]}" for c in sorted(self.unseen) if coco_meaning(c) in seen]
        if pairs:
            self.notes.append(f"{len(pairs)} unseen classes name the same thing as a seen class ({', '.join(pairs[:5])}"
                              f"{' ...' if len(pairs) > 5 else ''}); a column of categories (--label-column) "
                              "holds them out together")

    # -- assigning --------------------------------------------------------------------------
    def assign(self, rec: Record, base_split: str) -> str | None:
        mode = self.config.mode
        if mode is None:
            return base_split
        label = class_name(rec.get(self.config.label_column))
        if label is None:
            return None
        if mode == "class-preserving":
            return base_split if self.cuts.part(build_key(rec), (base_split, label)) == 0 else None
        if mode == "class-exclusive":
            return base_split if label in self.kept else None
        if base_split in self.train_splits:
            return base_split if label in self.seen else None
        return f"{base_split}_{'seen' if label in self.seen else 'unseen'}"

    def base_splits_for(self, out_split: str, src: Source) -> list[str]:
        if self.config.mode == "seen-unseen" and out_split not in self.train_splits:
            return [out_split.rsplit("_", 1)[0]]
        return [out_split] if out_split in src.splits() else []

    def class_set(self, rec: Record) -> str | None:
        if self.config.mode != "seen-unseen":
            return None
        return "seen" if class_name(rec.get(self.config.label_column)) in self.seen else "unseen"


class SubsetBuilder(DerivedBuilder):
    name = "subset"
    VERSION = "1.2.0"
    Config = SubsetConfig
    description = "Class-preserving, class-exclusive or seen/unseen subsets of a labelled build, or a SQL-filtered one."
    plan_class = SubsetPlan
    own_columns = [("class_set", pa.string(), "seen or unseen (seen-unseen subsets); null otherwise")]

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        out = []
        for rec in batch:
            sample = parent_sample(rec, self.columns)
            class_set = self.plan.class_set(rec)
            if class_set is not None:
                sample.columns["class_set"] = class_set
                sample.doc["class_set"] = class_set
            out.append([sample])
        return out
