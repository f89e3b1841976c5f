"""`mix`: several builds combined into one, by counts, fractions or weights; lineage keeps every parent.

Per parent, `--take` says how much of it to keep: `all`, a count (`5000`, `5e3`), or a fraction (`0.5`);
or `--weights 1,3 --size N` shares N records between the parents in those proportions (largest
remainders, so the counts add up to N exactly). Which records are taken hashes (seed, key) within each
parent. Records keep their parent's split (or all go to `--into SPLIT`) and their key; a key that two
parents share is prefixed with its parent's build id so that both survive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from vlmforge.builders.base import BuildConfig
from vlmforge.builders.derived import DerivedBuilder, Plan, check_splits, iter_fields, lineage, parent_sample
from vlmforge.curation.selection import TEST_SPLIT, check_split_name, fit_cuts, fraction_sizes
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample, make_key
from vlmforge.sources.base import Record, Source
from vlmforge.sources.build import BuildSource


@dataclass
class MixConfig(BuildConfig):
    take: list[str] | None = None  # per parent: "all", a count, or a fraction (0 < f <= 1)
    weights: list[float] | None = None  # or: proportions of --size
    size: int | None = None
    into: str | None = None  # one output split for everything (default: keep the parents' splits)


class MultiBuildSource(Source):
    """Several parent builds read one after the other; records carry their parent's index."""

    def __init__(self, paths: list[str | Path], splits: list[str] | None = None):
        if len(paths) < 2:
            raise UserError("a mix needs at least two parent builds (--from A --from B)")
        self.build_sources = [BuildSource(p, splits=splits) for p in paths]
        self.chosen_splits = splits
        check_splits(list(dict.fromkeys(x for s in self.build_sources for x in s.build.info["splits"])),
                     splits, "--parent-split")
        ids = [s.build.build_id for s in self.build_sources]
        if len(set(ids)) != len(ids):
            raise UserError("the same parent build is named twice")
        self.name = "mix"
        self.parents = ids
        self.parent_infos = lineage(self)

    def splits(self) -> list[str]:
        out: list[str] = []
        for s in self.build_sources:
            out += [x for x in s.splits() if x not in out]
        return out

    def records(self, split: str) -> Iterator[Record]:
        for i, s in enumerate(self.build_sources):
            if split in s.splits():
                for rec in s.records(split):
                    rec["parent_index"] = i
                    yield rec

    def count(self, split: str) -> int:
        return sum(s.count(split) for s in self.build_sources if split in s.splits())

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256("".join(s.fingerprint() for s in self.build_sources).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "parents": [s.describe() for s in self.build_sources]}


def largest_remainder(weights: list[float], total: int) -> list[int]:
    """Integer shares of `total` proportional to `weights`, adding up to `total` exactly."""
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"--weights must be non-negative and not all zero: {weights}")
    exact = [w / sum(weights) * total for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def parse_take(spec: str, available: int) -> int:
    """'all' -> available; a fraction in (0, 1] ('0.5', '1.0': all) -> round(f * available); a whole
    count ('5000', '5e3', '5000.0') -> that many (checked)."""
    spec = str(spec).strip().lower()
    if spec == "all":
        return available
    try:
        x = float(spec)
    except ValueError:
        x = math.nan
    if ("." in spec or "e" in spec) and 0 < x <= 1:  # '1.0' is all of it, '1' one record
        return fraction_sizes([x], available)[0]
    if not (math.isfinite(x) and x >= 1 and x.is_integer()):
        hint = ""
        if spec.endswith("%") and spec[:-1].replace(".", "", 1).isdigit():
            hint = f" (for {spec} write {float(spec[:-1]) / 100:g})"
        raise UserError(f"--take takes all, a whole count of at least 1 (5000 or 5e3) or a fraction in (0, 1] "
                        f"(0.5); got {spec!r}{hint}")
    n = int(spec) if spec.isdigit() else int(x)  # digits exactly, beyond float precision too
    if n > available:
        raise UserError(f"--take {spec} asks for {n} records, more than the parent has ({available})")
    return n


class MixPlan(Plan):
    def __init__(self, config: MixConfig):
        super().__init__()
        self.config = config
        if (config.take is None) == (config.weights is None):
            raise UserError("give --take for every parent, or --weights with --size")
        if config.weights is not None and config.size is None:
            raise UserError("--weights needs --size N (the number of records in the mix)")
        if config.take is not None and config.size is not None:
            raise UserError("--size goes with --weights; with --take, each parent's count is its own")
        if config.size is not None and config.size < 1:
            raise UserError(f"--size must be at least 1, got {config.size}")
        if config.weights is not None and not all(math.isfinite(w) for w in config.weights):
            raise UserError(f"--weights must be finite numbers, got {config.weights}")
        if config.into is not None:
            check_split_name(config.into)

    def fit(self, src: Source) -> None:
        assert isinstance(src, MultiBuildSource)
        cfg, parents = self.config, src.build_sources
        available = [sum(p.count(s) for s in p.splits()) for p in parents]
        if 0 in available:  # before --take N is counted against nothing
            i = available.index(0)
            how = "has no records; leave it out or take more"
            if src.chosen_splits:
                how = (f"has no records in the --parent-split splits (its splits: "
                       f"{', '.join(parents[i].build.info['splits'])}); leave it out or name one of its splits")
            raise UserError(f"parent {i + 1} ({parents[i].build.path}) {how}")
        if cfg.take is not None:
            if len(cfg.take) != len(parents):
                raise UserError(f"--take: {len(cfg.take)} given for {len(parents)} parents; give one per --from, in order")
            wanted = [parse_take(t, n) for t, n in zip(cfg.take, available)]
        else:
            if len(cfg.weights) != len(parents):
                raise UserError(f"--weights: {len(cfg.weights)} given for {len(parents)} parents; give one per --from, in order")
            wanted = largest_remainder(cfg.weights, cfg.size)
            short = [(i, w, n) for i, (w, n) in enumerate(zip(wanted, available)) if w > n]
            if short:
                i, w, n = short[0]
                raise UserError(f"parent {i + 1} would give {w} records but has {n}; lower --size or its weight")
        empty = [i for i, w in enumerate(wanted) if w == 0]
        if empty:  # a parent in the lineage that gave nothing is a mistake in the options
            i = empty[0]
            if cfg.take is not None:
                how = f"would give 0 of its {available[i]} records (--take {cfg.take[i]})"
            else:
                how = f"would give 0 of its {available[i]} records (weight {cfg.weights[i]:g} of --size {cfg.size})"
            raise UserError(f"parent {i + 1} ({parents[i].build.path}) {how}; leave it out or take more")

        def keyed():
            for i, p in enumerate(parents):
                for split in p.splits():
                    for (key,) in iter_fields(p, split, []):
                        yield key, i, split

        self.cuts = fit_cuts(lambda: ((k, i) for k, i, _ in keyed()), cfg.seed, lambda i, n: [wanted[i]])
        # Keys taken from more than one parent get their parent's build id in front.
        taken: dict[str, int] = {}
        self.renamed: set[tuple[int, str]] = set()
        counts: dict[str, int] = {}
        for key, i, split in keyed():
            if self.cuts.part(key, i) == 0:
                if key in taken and taken[key] != i:
                    self.renamed.update({(taken[key], key), (i, key)})
                taken[key] = i
                out = cfg.into or split
                counts[out] = counts.get(out, 0) + 1
        del taken
        self._note_repeated_images(parents)
        if cfg.into is not None and not TEST_SPLIT.fullmatch(cfg.into):
            for i, p in enumerate(parents):  # e.g. --into train with a split build's test split unasked for
                held_out = [s for s in p.splits() if TEST_SPLIT.fullmatch(s) and p.count(s)]
                if held_out and not src.chosen_splits:
                    self.notes.append(f"--into {cfg.into} puts records of parent {i + 1}'s {held_out[0]} split into "
                                      f"{cfg.into}; --parent-split names the splits to read")
        self.out_splits = [cfg.into] if cfg.into else src.splits()
        self.counts = counts
        self.summary["taken"] = {p.build.build_id: w for p, w in zip(parents, wanted)}
        self.summary["available"] = {p.build.build_id: n for p, n in zip(parents, available)}
        if self.renamed:
            self.summary["renamed_keys"] = len(self.renamed)

    def _note_repeated_images(self, parents: list[BuildSource]) -> None:
        """Parents that share samples (a build and one derived from it, such as its train split) put
        them in the mix twice, and with them whatever the derived build left out (its test split)."""
        first: dict[str, int] = {}
        repeated: dict[int, int] = {}
        for i, p in enumerate(parents):
            for split in p.splits():
                for key, image, text in iter_fields(p, split, ["image_sha256", "json_sha256"]):
                    # A text-only record by its json. 64 bits of the hash are plenty for a note, and a
                    # quarter of the memory.
                    sha = "i" + image[:16] if image is not None else "t" + text[:16]
                    if self.cuts.part(key, i) == 0 and first.setdefault(sha, i) != i:
                        repeated[i] = repeated.get(i, 0) + 1
        for i, n in sorted(repeated.items()):
            self.notes.append(f"{n} records of parent {i + 1} ({parents[i].build.path}) have the image (text-only: the "
                              "json) of a record of an earlier parent: the same samples twice (is one parent derived "
                              "from the other?)")

    def assign(self, rec: Record, base_split: str) -> str | None:
        if self.cuts.part(rec["key"], rec["parent_index"]) != 0:
            return None
        return self.config.into or base_split

    def base_splits_for(self, out_split: str, src: Source) -> list[str]:
        return src.splits() if self.config.into else [out_split]


class MixBuilder(DerivedBuilder):
    name = "mix"
    VERSION = "1.1.0"
    Config = MixConfig
    description = "Several builds combined by counts, fractions or weights; every parent kept in the lineage."
    plan_class = MixPlan
    own_columns = [
        ("parent_build", pa.string(), "build id of the parent the sample came from"),
        ("parent_key", pa.string(), "the sample's key in its parent (differs only for keys two parents share)"),
    ]

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        if (kind or "builds") not in ("build", "builds"):
            raise UserError("mix reads parent builds: give --from A --from B ...")
        paths = options.get("paths") or []
        return MultiBuildSource(paths, splits=options.get("splits"))

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        out = []
        for rec in batch:
            i = rec["parent_index"]
            parent_id = self.src.parents[i]
            key = rec["key"]
            if (i, key) in self.plan.renamed:
                key = make_key(f"{parent_id[:8]}-{key}")  # as it is, unless too long for a key
            sample = parent_sample(rec, self.columns, key=key)
            sample.columns.update(parent_build=parent_id, parent_key=rec["key"])
            out.append([sample])
        return out
