"""`split`: keep a fraction of a build (or of a LLaVA JSON file), or partition it into named splits.

Which records are kept is decided by hashing (seed, key) (see `curation.selection`), so the kept set
does not depend on input order or sharding, and each part is exact to within one record:
`--fraction 0.5` keeps round(n / 2) records of every parent split (the LLaVA-1.5 data-efficiency
half); `--splits train=0.9,val=0.1` pools the parent's records and cuts them into new splits;
`--stratify-by COLUMN` applies the fraction within each value of a manifest column (`source` means
the LLaVA sub-dataset: coco, gqa, ocr_vqa, textvqa, vg, text-only). `--group-by COLUMN` keeps the
records that share a value together (`image_id`: an occlusion build's samples of one image): the
fractions then count the column's values, hashed as keys, and a record without a value is its own group.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from vlmforge.builders.copy import CopyBuilder, CopyConfig
from vlmforge.builders.derived import (
    DerivedBuilder, Plan, build_key, check_column, group_key, iter_fields, open_parent,
)
from vlmforge.curation.selection import TEST_SPLIT, check_fraction, fit_cuts, fraction_sizes, parse_named_fractions
from vlmforge.errors import UserError
from vlmforge.sources.base import Record, Source
from vlmforge.sources.build import BuildSource


@dataclass
class SplitConfig(CopyConfig):
    fraction: float | None = None  # keep this fraction of every parent split
    splits: str | None = None  # or partition into named splits: "train=0.9,val=0.1"
    stratify_by: str | None = None  # exact fraction within each value of this column
    group_by: str | None = None  # records sharing a value of this column go to one split together

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["group_by"] is None:
            del d["group_by"]  # builds from before this option keep their id
        return d


def stratum_column(src: Source, name: str | None) -> str | None:
    """The column to stratify by. 'source' names the LLaVA sub-dataset column (`subsource`), since
    the manifest's own `source` column is the same for every record of a build."""
    if name is None:
        return None
    if name == "source":
        if isinstance(src, BuildSource) and "subsource" not in src.build.info.get("columns", {}):
            raise UserError("--stratify-by source means the LLaVA sub-dataset (the `subsource` column), "
                            "which the parent build does not have; name one of its columns instead")
        return "subsource"
    return name


class SplitPlan(Plan):
    def __init__(self, config: SplitConfig):
        super().__init__()
        self.config = config
        if (config.fraction is None) == (config.splits is None):
            raise UserError("give either --fraction F or --splits NAME=F,NAME=F")
        self.parts = parse_named_fractions(config.splits) if config.splits else None
        if self.parts is None:
            check_fraction(config.fraction, "--fraction")
        if config.stratify_by is not None and not config.stratify_by.strip():
            raise UserError("--stratify-by is empty; name a column (or 'source'), or leave the option out")
        if config.group_by is not None and not config.group_by.strip():
            raise UserError("--group-by is empty; name a column (e.g. image_id), or leave the option out")
        if config.group_by is not None and config.stratify_by is not None:
            raise UserError("--group-by and --stratify-by cannot be combined: a group may span strata")
        self.column: str | None = None

    def _group(self, base_split: str, stratum: Any) -> Any:
        # With --fraction every parent split is its own group; partitions pool the parent splits.
        return (base_split if self.parts is None else None, group_key(stratum))

    def fit(self, src: Source) -> None:
        self.column = stratum_column(src, self.config.stratify_by)
        if self.column and not isinstance(src, BuildSource) and self.column != "subsource":
            # A raw record has no such field: every record would be one stratum, the split unstratified.
            raise UserError(f"--stratify-by {self.config.stratify_by}: a LLaVA JSON file can be stratified by source "
                            "(its sub-dataset) only; to stratify by a column, copy it into a build first "
                            "(vlmforge build copy --source llava-json) and split that")
        if self.column:
            check_column(src, self.column, option="--stratify-by")
        by = self.config.group_by
        if by and not isinstance(src, BuildSource):  # a raw record lacking the field would be a group alone
            raise UserError("--group-by needs a parent build (--from); copy the JSON into a build first "
                            "(vlmforge build copy --source llava-json) and split that")
        if by:
            check_column(src, by, option="--group-by")
        fields = [self.column] if self.column else [by] if by else []
        fractions = [f for _, f in self.parts] if self.parts else [self.config.fraction]

        def items():
            seen = set()  # with --group-by, each group once: the unit the fractions count
            for split in src.splits():
                for key, *values in iter_fields(src, split, fields):
                    if by:
                        item = (_unit(key, values[0]), self._group(split, None))
                        if item not in seen:
                            seen.add(item)
                            yield item
                    else:
                        yield key, self._group(split, values[0] if values else None)

        self.cuts = fit_cuts(items, self.config.seed, lambda group, n: fraction_sizes(fractions, n))
        sizes = self.cuts.counts()
        if by:
            sizes = self._record_sizes(src, by, sizes)
        if self.parts:
            self.out_splits = [name for name, _ in self.parts]
            self.counts = {name: sum(s[i] for s in sizes.values()) for i, (name, _) in enumerate(self.parts)}
        else:
            self.out_splits = list(src.splits())
            self.counts = {s: sum(v[0] for (b, _), v in sizes.items() if b == s) for s in self.out_splits}
            emptied = [s for s in self.out_splits if not self.counts[s] and src.count(s)]
            if emptied:  # rounding to no record: else the split is gone from the build without a word
                self.notes.append(f"--fraction {self.config.fraction} keeps no record of split(s) {', '.join(emptied)} "
                                  f"(e.g. round({self.config.fraction} x {src.count(emptied[0])}) = 0): they are not "
                                  "in the build")
        if self.column:
            self._check_strata(src, sizes, fractions)
            per_stratum: dict[str, dict[str, int]] = {}
            for (b, stratum), v in sorted(sizes.items(), key=repr):
                names = [n for n, _ in self.parts] if self.parts else [b]
                for name, count in zip(names, v):
                    row = per_stratum.setdefault(str(stratum), {})
                    row[name] = row.get(name, 0) + count
            self.summary["per_stratum"] = per_stratum
        self.summary["rule"] = (f"rank keys by sha256('{self.config.seed}:' + key), keep the first "
                                f"round(fraction * n) per group")
        if self.parts and sum(fractions) < 1 - 1e-9:
            self._note_left_out(src, sum(fractions))
        if self.parts:
            self._note_test_records_trained(src, fields)
        self._note_shared_images(src, fields)

    def _note_test_records_trained(self, src: Source, fields: list[str]) -> None:
        """A partition pools the parent's splits: its held-out test records may land in train."""
        if not isinstance(src, BuildSource) or src.chosen_splits is not None:
            return
        names = [n for n, _ in self.parts]
        for split in (s for s in src.splits() if TEST_SPLIT.fullmatch(s)):
            parts = [self._part(key, split, values[0] if fields else None)
                     for key, *values in iter_fields(src, split, fields)]
            moved = Counter(names[i] for i in parts if i is not None and not TEST_SPLIT.fullmatch(names[i]))
            if moved:
                where = ", ".join(f"{n} to {name}" for name, n in sorted(moved.items()))
                self.notes.append(f"--splits pools every parent split: records of the parent's {split} split go to other "
                                  f"splits ({where}); --parent-split names the splits to read")

    def _note_left_out(self, src: Source, total: float) -> None:
        """A partition whose fractions add up to less than 1 (a split forgotten) leaves records out: said."""
        from vlmforge.sources.llava_json import LlavaJsonSource

        n = sum(src.count(s) for s in src.splits())
        if isinstance(src, LlavaJsonSource):
            n -= len(src.index().invalid)  # rejects, not records
        left = n - sum(self.counts.values())
        if left:
            self.notes.append(f"the --splits fractions add up to {total:g}: {left} of the {n} records are in no split")

    def _note_shared_images(self, src: Source, fields: list[str]) -> None:
        """Records are split one by one: samples of one image (an occlusion build hides several objects
        of it) may land in train and test, so a test image's scene was seen in training."""
        if not self.parts or not isinstance(src, BuildSource) or "image_id" not in src.build.info.get("columns", {}):
            return
        parts: dict[Any, set[int]] = {}
        for split in src.splits():
            for key, *values in iter_fields(src, split, fields + ["image_id"]):
                i = self._part(key, split, values[0] if fields else None)
                if i is not None and values[-1] is not None:
                    parts.setdefault(values[-1], set()).add(i)
        shared = sum(len(p) > 1 for p in parts.values())
        if shared:
            self.notes.append(f"{shared} of {len(parts)} images (image_id) have samples in more than one of the new "
                              "splits: they are not disjoint by image (--group-by image_id keeps them together)")

    def _record_sizes(self, src: Source, by: str, groups: dict) -> dict:
        """The parts' sizes in records (the cuts count groups), and a summary of both."""
        sizes = {g: [0] * len(v) for g, v in groups.items()}
        for split in src.splits():
            for key, value in iter_fields(src, split, [by]):
                i = self._part(key, split, value)
                if i is not None:
                    sizes[self._group(split, None)][i] += 1
        names = [n for n, _ in self.parts] if self.parts else None
        per = {}
        for (b, _), v in sorted(groups.items(), key=repr):
            for name, count in zip(names or [b], v):
                per[name] = per.get(name, 0) + count
        self.summary["groups"] = {"column": by, "per_split": per}
        return sizes

    def _check_strata(self, src: Source, sizes: dict, fractions: list[float]) -> None:
        """Each stratum rounds on its own: refuse a column with one record per value (every record kept
        whole or dropped whole, and a build.json entry per record), note a total far off the fraction."""
        per_split = {s: src.count(s) for s in src.splits()}
        n = sum(per_split.values())
        if n > 1 and len(sizes) == n:
            raise UserError(f"--stratify-by {self.config.stratify_by}: every record has a value of its own, so "
                            "each stratum of one record is kept or dropped whole; name a coarser column")
        if self.parts:
            target = dict(zip(self.out_splits, fraction_sizes(fractions, n)))
        else:
            target = {s: fraction_sizes(fractions, per_split[s])[0] for s in self.out_splits}
        for name, want in target.items():
            got = self.counts.get(name, 0)
            if abs(got - want) > max(1, 0.05 * want):
                self.notes.append(f"{name}: {got} records where the fraction gives {want}: each of the {len(sizes)} "
                                  f"strata of {self.config.stratify_by} rounds on its own")

    def _part(self, key: str, split: str, value: Any) -> int | None:
        """The part a record falls in; `value`: its --group-by or --stratify-by field (None without)."""
        if self.config.group_by:
            return self.cuts.part(_unit(key, value), self._group(split, None))
        return self.cuts.part(key, self._group(split, value))

    def assign(self, rec: Record, base_split: str) -> str | None:
        if "invalid" in rec and "build_path" not in rec:  # a raw record that is no LLaVA record: a reject, always
            return self.parts[0][0] if self.parts else base_split
        field = self.config.group_by or self.column
        i = self._part(build_key(rec), base_split, rec.get(field) if field else None)
        if i is None:
            return None
        return self.parts[i][0] if self.parts else base_split


def _unit(key: str, value: Any) -> str:
    """What --group-by hashes for a record: its group's value, or its own key when it has none (the
    two never meet: a key has no '=')."""
    return f"={value}" if value is not None else key


class SplitBuilder(DerivedBuilder, CopyBuilder):
    """Copy's processing (raw LLaVA JSON records or parent samples) behind a SplitPlan."""

    name = "split"
    VERSION = "1.3.0"
    Config = SplitConfig
    description = "A hashed fraction of a parent build or LLaVA JSON, or its partition into named splits."
    plan_class = SplitPlan
    own_columns = CopyBuilder.columns

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        """`build` (default: options path, splits) or `llava-json` (options json, image_root)."""
        from vlmforge.sources import open_source

        options = {k: v for k, v in options.items() if v is not None}
        kind = kind or "build"
        parent_only = [opt for key, opt in (("where", "--where"), ("splits", "--parent-split")) if key in options]
        if kind == "build":
            raw = [opt for key, opt in (("json", "--json"), ("image_root", "--image-root")) if key in options]
            if raw:
                raise UserError(f"{' and '.join(raw)}: only with --source llava-json, not with a parent build (--from)")
            return open_parent(options.get("path"), options.get("where"), options.get("splits"))
        if "path" in options:
            raise UserError(f"--from (a parent build) and --source {kind} exclude each other: give one")
        if parent_only:
            # A raw source has no manifest to filter: its copy build has one.
            raise UserError(f"{' and '.join(parent_only)}: only with a parent build, not with --source {kind}; "
                            f"to filter it, copy it into a build first (vlmforge build copy --source {kind}) and split that")
        return open_source(kind, **options)
