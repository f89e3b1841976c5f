"""Test samples for the analyses: from a build folder or a shard glob, optionally filtered with SQL;
and the checks of --out and --device both analyses make before they load a model.

The choice is deterministic and spread over the data: samples are taken in md5(seed:key) order (the
order `vlmforge show` uses), so `--n 16` of a build sorted by class does not return 16 images
of the first class. Loose shards (no build.json beside them) are read whole and ordered the same way.
"""

from __future__ import annotations

import glob
import hashlib
import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import UserError
from vlmforge.manifests.read import Build, iter_tar_samples, open_build
from vlmforge.sample import IMAGE_FIELDS

LABEL_KEYS = ("label", "class", "grade")


@dataclass
class TestSample:
    """One test sample: key, image bytes, its json document, its label and split (None when unknown)."""

    key: str
    image: bytes | None
    doc: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    split: str | None = None


@dataclass
class TestSet:
    """The chosen samples, and every label seen in the data they were chosen from (sorted)."""

    samples: list[TestSample]
    labels: list[str]
    source: str
    build_id: str | None = None

    def split_counts(self) -> dict[str, int]:
        """Chosen samples per split (samples read from a build; loose shards have no split)."""
        counts: dict[str, int] = {}
        for s in self.samples:
            if s.split is not None:
                counts[s.split] = counts.get(s.split, 0) + 1
        return dict(sorted(counts.items()))

    def warn_if_training(self, quiet: bool = False) -> None:
        """Say how many chosen samples are training data: a build folder gives every split unless
        --where picks one, and an analysis of training images reads better than it should."""
        from vlmforge.progress import console

        n = self.split_counts().get("train", 0)
        if n and not quiet:
            console.print(f"[yellow]warning[/] {n} of the {len(self.samples)} chosen samples are from the train "
                          "split; --where \"split = 'test'\" takes test samples only")


def label_of(doc: dict[str, Any], row: dict[str, Any] | None = None) -> str | None:
    """The manifest's `label` column when present, else the json's label, class or grade."""
    for value in ([row.get("label")] if row else []) + [doc.get(k) for k in LABEL_KEYS]:
        if value is not None and str(value).strip():
            return str(value)
    return None


def _order(seed: int, key: str) -> str:
    return hashlib.md5(f"{seed}:{key}".encode()).hexdigest()


def _expand(shards: str | Path) -> tuple[Build | None, list[Path]]:
    """A build folder -> (build, []); a glob -> (its build or None, the shard paths)."""
    path = Path(str(shards)).expanduser()
    if path.is_dir():
        if not (path / "build.json").exists():
            tars = sorted(path.glob("*.tar"))
            if not tars:
                raise UserError(f"{path} is neither a build folder (no build.json) nor a folder of .tar shards")
            return None, tars
        return open_build(path), []
    paths = sorted(Path(p) for p in glob.glob(str(path)))
    if not paths:
        raise UserError(f"no shards match {shards}")
    parents = {p.parent for p in paths}
    if len(parents) == 1 and (next(iter(parents)) / "build.json").exists():
        return open_build(next(iter(parents))), paths
    return None, paths


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _build_labels(build: Build, shard_cond: str) -> list[str] | None:
    cols = list(build.sql("SELECT * FROM samples LIMIT 0").columns)
    if "label" not in cols:
        return None
    cond = f"WHERE label IS NOT NULL{' AND ' + shard_cond if shard_cond else ''}"
    return sorted({str(r[0]) for r in build.sql(f"SELECT DISTINCT label FROM samples {cond}").fetchall()})


def _from_build(build: Build, shards: list[Path], where: str | None, n: int | None, seed: int) -> TestSet:
    from vlmforge.report.show import choose_samples, load_sample

    shard_cond = f"shard IN ({', '.join(_quote(p.name) for p in shards)})" if shards else ""
    cond = " AND ".join(c for c in (f"({where}\n)" if where else "", shard_cond) if c) or None  # \n: ends a -- comment
    rows = choose_samples(build, cond, n or max(len(build), 1), seed)
    samples = []
    for row in rows:
        s = load_sample(build, row)
        doc = s.get("json") or {}
        image = next((s[f] for f in IMAGE_FIELDS if f in s), None)
        samples.append(TestSample(row["key"], image, doc, label_of(doc, row), row.get("split")))
    labels = _build_labels(build, shard_cond)
    if labels is None:
        labels = sorted({s.label for s in samples if s.label is not None})
    return TestSet(samples, labels, str(build.path), build.build_id)


def _iter_loose(paths: list[Path]) -> Iterator[TestSample]:
    import tarfile

    for p in paths:
        try:
            for s in iter_tar_samples(p):
                doc = json.loads(s["json"]) if "json" in s else {}
                image = next((s[f] for f in IMAGE_FIELDS if f in s), None)
                yield TestSample(s["__key__"], image, doc, label_of(doc))
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{p} is not a readable tar shard ({e})") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{p}: a sample's json does not parse ({e})") from None


def read_test_samples(shards: str | Path, where: str | None = None, n: int | None = None, seed: int = 0) -> TestSet:
    """Up to `n` samples (all when None) of a build folder or shard glob, matching the SQL condition
    `where` (which needs a manifest: a build folder, or shards inside one)."""
    if n is not None and n < 1:
        raise UserError("--n must be at least 1")
    build, paths = _expand(shards)
    if build is not None and not len(build):
        from vlmforge.manifests.read import no_samples_line

        raise UserError(no_samples_line(build))
    if build is not None:
        out = _from_build(build, paths, where, n, seed)
    else:
        if where:
            raise UserError(f"--where needs a manifest, but {shards} are shards outside a build folder; "
                            "give the build folder instead")
        labels: set[str] = set()

        def keyed() -> Iterator[tuple[str, int, TestSample]]:
            for i, s in enumerate(_iter_loose(paths)):
                if s.label is not None:
                    labels.add(s.label)
                yield _order(seed, s.key), i, s

        chosen = heapq.nsmallest(n, keyed()) if n else sorted(keyed())
        out = TestSet([s for _, _, s in chosen], sorted(labels), str(shards))
    if not out.samples:
        raise UserError("no sample matches" + (f" --where {where!r}" if where else f" in {shards}"))
    return out


def remove_stale(folder: Path, written: set[str], suffix: str) -> None:
    """Delete the files ending in `suffix` in `folder` that this run did not write: left by an earlier
    run into the same output with another choice of samples, they would read as part of this one."""
    for p in folder.glob(f"*{suffix}"):
        if p.name not in written:
            p.unlink()
