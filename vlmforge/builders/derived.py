"""What derived builds (split, subset, mix, mcqa, grading) share.

A derived build reads its parent through a `SelectedSource`: the parent's records seen through a
`Plan` that decides, before any sample is written, which output split each record goes to (or none).
Plans fit on keys and a few columns only (SQL over the parent manifest, or the LLaVA JSON index), so
fitting a 665k-record parent keeps a few bytes per record. Unselected records are not rejects: the
rule that left them out is the build's config, and the plan's summary lands in build.json. Lineage is
the whole chain: build.json's `parent_builds` names the parents and every build before them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, ClassVar, Hashable, Iterator

import pyarrow as pa

from vlmforge.builders.base import BuildConfig, Builder
from vlmforge.errors import UserError
from vlmforge.manifests.schema import BASE_COLUMNS
from vlmforge.sample import Sample, make_key
from vlmforge.sources.base import Record, Source
from vlmforge.sources.build import BuildSource, load_record_sample

Column = tuple[str, pa.DataType, str]
KeyOf = Callable[[Record], str]
TRAIN_SPLITS = ("train",)


def build_key(rec: Record) -> str:
    """The key a record keeps in a derived build: the parent's key, or (raw sources) the copy
    builder's key from the source id."""
    return rec["key"] if "build_path" in rec else make_key(rec["source_id"])


def open_parent(path: str | Path | None, where: str | None = None, splits: list[str] | None = None) -> BuildSource:
    """The parent build as a source, filtered by a SQL condition over its manifest and by split."""
    if path is None:
        raise UserError("a derived build needs its parent: --from BUILD_FOLDER")
    src = BuildSource(path, where=where, splits=splits)
    check_splits(src.build.info["splits"], splits, "--parent-split")
    return src


def check_splits(have, wanted: list[str] | None, option: str) -> None:
    """A clear error when `option` names a split the parent does not have (a typo would otherwise
    quietly select less, or nothing)."""
    unknown = [s for s in wanted or [] if s not in have]
    if unknown:
        raise UserError(f"{option}: the parent has no split {unknown[0]!r}; it has: {', '.join(have)}")


def lineage(src: Source) -> list[dict[str, Any]]:
    """The parent builds' records (as BuildSource keeps them), then their ancestors' from each parent's
    `parent_builds`, each build once, nearest first: a mix of a split of a subset names all three
    builds before it. Raw sources (no parent build) have none."""
    parents = [s for s in getattr(src, "build_sources", [src]) if isinstance(s, BuildSource)]
    chain = [info for s in parents for info in s.parent_infos]
    chain += [p for s in parents for p in s.build.info.get("parent_builds") or [] if isinstance(p, dict)]
    out, seen = [], set()
    for info in chain:
        if info.get("build_id") not in seen:
            seen.add(info.get("build_id"))
            out.append(info)
    return out


def parent_columns(src: Source, own: list[Column] = ()) -> list[Column]:
    """Manifest columns a derived build carries: the parent's own (non-base) columns with their types
    and descriptions, then `own` columns not already among them. A parent without samples (no manifest
    part) names its columns but leaves their types to the other parents."""
    builds = [s.build for s in getattr(src, "build_sources", [src]) if isinstance(s, BuildSource)]
    reserved = {name for name, _, _ in BASE_COLUMNS}
    seen: dict[str, list] = {}  # name -> [type or None, description]
    for build in builds:
        descriptions = build.info.get("columns", {})
        for name, typ in _manifest_types(build).items():
            if name in reserved:
                continue
            have = seen.setdefault(name, [typ, descriptions.get(name, "")])
            if have[0] is None:
                have[0] = typ
            elif typ is not None and have[0] != typ:
                raise UserError(f"column {name!r} is {have[0]} in one parent and {typ} in another")
    for name, typ, desc in own:
        have = seen.setdefault(name, [typ, desc])
        have[0] = have[0] or typ
    return [(name, typ or pa.string(), desc) for name, (typ, desc) in seen.items()]


def _manifest_types(build) -> dict[str, pa.DataType | None]:
    import pyarrow.parquet as pq

    parts = sorted(p for p in (build.path / "manifest").glob("*.parquet") if not p.name.endswith(".rejects.parquet"))
    if parts:
        schema = pq.read_schema(parts[0])
        return {f.name: f.type for f in schema}
    return {name: None for name in build.info.get("columns", {})}


class Plan:
    """Decides the output split of each parent record. Subclasses implement `fit` and `assign`."""

    def __init__(self) -> None:
        self._fitted = False
        self.out_splits: list[str] = []
        self.counts: dict[str, int] = {}
        self.summary: dict[str, Any] = {}
        self.notes: list[str] = []  # printed after the build's summary, not recorded

    def ensure_fitted(self, src: Source) -> None:
        if not self._fitted:
            self.fit(src)
            self._fitted = True

    def fit(self, src: Source) -> None:
        raise NotImplementedError

    def assign(self, rec: Record, base_split: str) -> str | None:
        raise NotImplementedError

    def base_splits_for(self, out_split: str, src: Source) -> list[str]:
        """Parent splits that can feed `out_split` (all of them unless a plan knows better)."""
        return src.splits()


class KeepAllPlan(Plan):
    """Every parent record, in its own split: for derived builds that change samples, not selections."""

    def __init__(self, config: BuildConfig | None = None):
        super().__init__()

    def fit(self, src: Source) -> None:
        self.out_splits = list(src.splits())
        self.counts = {s: src.count(s) for s in self.out_splits}

    def assign(self, rec: Record, base_split: str) -> str | None:
        return base_split

    def base_splits_for(self, out_split: str, src: Source) -> list[str]:
        return [out_split]


class SelectedSource(Source):
    """`base` seen through `plan`: only the records the plan assigns, under their output split."""

    def __init__(self, base: Source, plan: Plan):
        self.base = base
        self.plan = plan
        self.name = base.name
        self.parents = list(base.parents)
        self.parent_infos = lineage(base)
        self.build_sources = list(getattr(base, "build_sources", [base]))
        self.listed_root = getattr(base, "listed_root", None)  # a graded folder tree: no build lands in it

    def splits(self) -> list[str]:
        self.plan.ensure_fitted(self.base)
        return [s for s in self.plan.out_splits if self.plan.counts.get(s, 0) > 0]

    def count(self, split: str) -> int:
        self.plan.ensure_fitted(self.base)
        return self.plan.counts.get(split, 0)

    def records(self, split: str) -> Iterator[Record]:
        self.plan.ensure_fitted(self.base)
        for base_split in self.plan.base_splits_for(split, self.base):
            for rec in self.base.records(base_split):
                if self.plan.assign(rec, base_split) == split:
                    yield rec

    @property
    def notes(self) -> list[str]:
        return self.plan.notes + getattr(self.base, "notes", [])

    def fingerprint(self) -> str:
        return self.base.fingerprint()

    def describe(self) -> dict[str, Any]:
        self.plan.ensure_fitted(self.base)
        return {**self.base.describe(), "selection": {"counts": dict(self.plan.counts), **self.plan.summary}}


class DerivedBuilder(Builder):
    """A builder whose source is a parent build seen through its `plan_class`. It carries the parent's
    manifest columns, then its `own_columns`."""

    plan_class: ClassVar[type[Plan]] = Plan
    own_columns: ClassVar[list[Column]] = []
    batch_size = 64

    def __init__(self, config: BuildConfig, source: Source):
        if isinstance(source, SelectedSource):
            self.plan = source.plan
        else:
            self.plan = self.plan_class(config)  # type: ignore[call-arg]
            source = SelectedSource(source, self.plan)
        super().__init__(config, source)
        self.columns = parent_columns(source.base, self.own_columns)

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        """The parent build (options path, where, splits)."""
        if (kind or "build") != "build":
            raise UserError(f"{cls.name} reads a parent build: give --from BUILD_FOLDER")
        return open_parent(options.get("path"), options.get("where"), options.get("splits"))


def iter_fields(src: Source, split: str, fields: list[str], key_of: KeyOf = build_key) -> Iterator[tuple]:
    """(key, *fields) for every record of `split`, cheaply: SQL over a parent manifest, the index of
    a LLaVA JSON file, or (other sources) the records themselves."""
    if isinstance(src, BuildSource):
        cols = ", ".join(["key"] + [f'"{f}" AS _f{i}' for i, f in enumerate(fields)])  # aliased: a field may be `key`
        for row in src.rows(split, cols):
            yield tuple(row.values())
        return
    from vlmforge.sources.llava_json import LlavaJsonSource, sample_key

    if isinstance(src, LlavaJsonSource) and set(fields) <= {"subsource"}:
        idx = src.index()
        for i, sid in enumerate(idx.ids):
            if i not in idx.invalid:
                yield (sample_key(sid),) + tuple(idx.subsources[i] for _ in fields)
        return
    for rec in src.records(split):
        if "invalid" in rec or "orphan" in rec:
            continue
        yield (key_of(rec),) + tuple(rec.get(f) for f in fields)


def check_column(src: Source, column: str, scalar: bool = False, option: str | None = None) -> None:
    """A clear error when a plan names a column the parent manifest does not have (or, with `scalar`,
    one whose values are lists or structs, which cannot be class labels). `option`: the one naming it."""
    builds = [s for s in getattr(src, "build_sources", [src]) if isinstance(s, BuildSource)]
    for b in builds:
        types = dict(b.build.sql("SELECT column_name, column_type FROM (DESCRIBE samples)").fetchall())
        if column not in types:
            raise UserError(f"{option + ': ' if option else ''}the parent build has no column {column!r}; "
                            f"its columns: {', '.join(sorted(types))}")
        if scalar and any(mark in types[column] for mark in ("[", "STRUCT", "MAP", "UNION")):
            raise UserError(f"column {column!r} holds {types[column]} values, not class labels; "
                            "name a text or number column with --label-column")


def class_name(value: Any) -> str | None:
    """A label value as a class name: text whatever the column's type (a grade is a number), None for
    unlabelled."""
    return None if value is None else str(value)


def count_labels(src: Source, column: str) -> dict[str, Counter]:
    """Records per class name (None: unlabelled) in each split of `src`. A parent with records but no
    label at all is an error; one with no records at all (a --where that matches none) is not."""
    check_column(src, column, scalar=True, option="--label-column")
    per_split = {split: Counter(class_name(label) for _, label in iter_fields(src, split, [column]))
                 for split in src.splits()}
    total = sum(sum(c.values()) for c in per_split.values())
    if total and total == sum(c[None] for c in per_split.values()):
        raise UserError(f"the parent has no values in column {column!r}: it is not a labelled build "
                        "(name another column with --label-column)")
    return per_split


def unlabelled_note(per_split: dict[str, Counter], column: str) -> list[str]:
    """The note a plan prints when it leaves unlabelled records out (they are not rejects: the rule
    that drops them is the build's config)."""
    n = sum(c[None] for c in per_split.values())
    return [f"{n} parent records without a {column!r} value are left out"] if n else []


def parent_sample(rec: Record, columns: list[Column], key: str | None = None) -> Sample:
    """The parent's sample of a BuildSource record, image and json unchanged, with `columns` taken
    from the parent manifest row. Its `image_sha256` is the parent's, checked on reading: a builder
    that replaces the image sets it to None."""
    parent = load_record_sample(rec)
    doc = json.loads(parent.pop("json"))
    parent_key = parent.pop("__key__")
    image_ext = rec["image_format"]
    image = parent.pop(image_ext) if image_ext else None
    return Sample(key=key or parent_key, doc=doc, image=image, image_ext=image_ext or "jpg", width=rec["width"],
                  height=rec["height"], source_id=rec["source_id"], extras=parent,
                  columns={name: rec.get(name) for name, _, _ in columns},
                  image_sha256=rec["image_sha256"] if image is not None else None)


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (class lists); '#' starts a comment line. A byte order
    mark (Windows editors write one) is not part of the first name."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {p} is not UTF-8 text (byte {e.start}); give one name per line") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def group_key(value: Hashable) -> Hashable:
    """Group values as they come from DuckDB or a record dict (lists become tuples)."""
    return tuple(value) if isinstance(value, list) else value
