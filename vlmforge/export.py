"""Builds out to the formats other tools read.

`export_llava` writes a LLaVA instruction JSON and an image folder that the official LLaVA training
scripts take as they are (`--data_path OUT/llava.json --image_folder OUT`): records `id`, `image`
(relative to OUT), `conversations` of human and gpt turns in turn, human first, one `<image>` in every
record with an image (in the first human turn when the sample has none), none in text-only records;
a sample LLaVA's preprocess would stop on stops the export, named. The JSON is written record by record, so a
large build never sits in memory.

`split_llava_json` splits a LLaVA JSON file into LLaVA JSON files directly, keeping the very records
`vlmforge build split --source llava-json` keeps (same keys, same hashing), copied byte for byte.

Both record what they wrote in `OUT/vlmforge.export.json`. Exporting the same thing again (the same
build, another split of it, the same split settings) updates the folder in place; a folder holding
another export (another build, other settings) or files of the kind an export writes that no export
recorded is refused unless `overwrite`, which removes the other export's files once the new ones are
written, so that the folder never mixes two exports. Files no export recorded are never removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from vlmforge.errors import UserError

if TYPE_CHECKING:
    from vlmforge.manifests.read import Build

IMAGE_TOKEN = "<image>"
EXPORT_RECORD = "vlmforge.export.json"  # a dot: no split name (and so no split file) can take it


def llava_record(key: str, doc: dict[str, Any], image_rel: str | None) -> dict[str, Any]:
    """The record LLaVA's scripts read, from a sample's json: conversations checked, `<image>` placed."""
    raw = doc.get("conversations") or []
    if not raw:
        raise UserError(f"sample {key} has no conversation; LLaVA needs at least one human and one gpt turn")
    if not all(isinstance(t, dict) for t in raw):
        raise UserError(f"sample {key}: a conversation turn is not an object with 'from' and 'value'")
    turns = [{"from": t.get("from"), "value": str(t.get("value", ""))} for t in raw]
    if turns[0]["from"] != "human":
        raise UserError(f"sample {key}: the conversation must start with a human turn")
    for i, t in enumerate(turns):  # LLaVA's preprocess asserts this (and knows no other role)
        if t["from"] != ("human", "gpt")[i % 2]:
            raise UserError(f"sample {key}: turn {i + 1} is from {t['from']!r}; LLaVA's scripts take turns from "
                            "human and gpt in turn, human first")
    tokens = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if image_rel is None:
        for t in turns:
            t["value"] = t["value"].replace(IMAGE_TOKEN, "").strip()
    elif tokens > 1:  # LLaVA would look for as many images, and stop
        raise UserError(f"sample {key} has {tokens} {IMAGE_TOKEN} tokens; LLaVA's scripts take one per image")
    elif not tokens:
        turns[0]["value"] = f"{IMAGE_TOKEN}\n{turns[0]['value']}"
    rec: dict[str, Any] = {"id": key}
    if image_rel is not None:
        rec["image"] = image_rel
    rec["conversations"] = turns
    return rec


def output_folder(path: str | Path, holds: str, what: str = "export") -> Path:
    """The output folder, made if missing; a path that cannot be one is a UserError."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; the {what} needs a folder (for {holds})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the {what} folder {out}: {e.strerror or e}") from None
    return out


def _is_llava_export_file(name: str) -> bool:
    return name == "images" or (name.startswith("llava") and name.endswith(".json"))


class ExportClaim:
    """An export's hold on its folder, kept in EXPORT_RECORD: the files it wrote, whether images/ is
    its own (made by it, not found there), and what it still has to remove of the export it replaces
    (so that a rerun after an interruption finishes the job). Only files an export recorded are ever
    removed; files of the kind no export recorded are named, and kept."""

    def __init__(self, out: Path, command: str, ident: dict[str, Any], about: str,
                 of_kind: Callable[[str], bool], writes: set[str], overwrite: bool, source: str = ""):
        self.out, self.command, self.ident, self.about, self.source = out, command, ident, about, source
        prior = _read_record(out / EXPORT_RECORD)
        same = prior is not None and prior.get("command") == command and prior.get("identity") == ident
        self.kept: dict[str, Any] = dict(prior["files"]) if same else {}
        self.stale: list[str] = list(prior.get("stale") or []) if same else []
        self.sweep = bool(prior.get("sweep_images")) if same else False
        self.own_images = (bool(prior.get("own_images")) if same  # (an export of JSON files only has none)
                           else of_kind("images") and not _holds_files(out / "images"))
        if same or not out.is_dir():
            return
        recorded = set(prior["files"]) if prior else set()
        theirs = sorted(n for n in recorded if (out / n).is_file())
        if prior and prior.get("own_images") and _holds_files(out / "images"):
            theirs.insert(0, "images/")
        foreign = sorted(p.name + "/" * p.is_dir() for p in out.iterdir() if p.name not in recorded and of_kind(p.name)
                         and (p.is_file() or (_holds_files(p) and p.name + "/" not in theirs)))
        if not theirs and not foreign:
            return
        if not overwrite:
            held = ([f"{prior.get('about') or 'another export'}: {', '.join(theirs)}"] if theirs else []) + (
                [f"files no vlmforge export recorded: {', '.join(foreign)}"] if foreign else [])
            raise UserError(f"{out} holds {' and '.join(held)}; export to a new folder, or add --overwrite to replace "
                            + ("them" if not foreign else "them (files no export recorded are overwritten or kept, never removed)"))
        self.stale = [n for n in theirs if n not in writes and not n.endswith("/")]
        self.sweep = self.own_images = "images/" in theirs or self.own_images

    def begin(self, files: dict[str, Any]) -> None:
        """Record the export before its first file is written."""
        self._write({**self.kept, **files}, stale=self.stale, sweep_images=self.sweep)

    def finish(self, files: dict[str, Any], images: set[str] = frozenset()) -> None:
        """Remove what the replaced export left (its files; its images this export did not write), then
        record the export as complete."""
        for name in self.stale:
            path = self.out / name
            if path.is_file() or path.is_symlink():
                path.unlink()
        if self.sweep and set(self.kept) <= set(files):  # another file of this export may need every image
            _remove_images_except(self.out / "images", images)
        self._write({**self.kept, **files})

    def _write(self, files: dict[str, Any], **pending: Any) -> None:
        doc = {"command": self.command, "identity": self.ident, "about": self.about, "source": self.source,
               "files": dict(sorted(files.items())), "own_images": self.own_images,
               **{k: v for k, v in pending.items() if v}}
        path = self.out / EXPORT_RECORD
        tmp = path.with_name(path.name + ".tmp")
        try:  # the export's first write: a folder it cannot write to is said here
            tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def check_llava_export_folder(out_dir: str | Path, build_dir: Path, overwrite: bool) -> None:
    """For a build that exports when it ends: a folder holding the export of another build folder is
    refused now, not after the build. (The export of an earlier build in the same folder is replaced
    only with the build's --overwrite, without which that build is not replaced either.)"""
    out, build_dir = Path(out_dir), Path(build_dir).resolve()
    prior = _read_record(out / EXPORT_RECORD)
    if prior is not None and prior.get("command") == "export llava" and prior.get("source") == str(build_dir):
        return
    ExportClaim(out, "export llava", {"build": str(build_dir)}, "", _is_llava_export_file, set(), overwrite)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else None


def _remove_images_except(folder: Path, keep: set[str]) -> None:
    if not folder.is_dir():
        return
    for sub in sorted(folder.iterdir()):
        for f in sorted(sub.iterdir()) if sub.is_dir() else [sub]:
            if f.is_file() and f"images/{sub.name}/{f.name}" not in keep:
                f.unlink()
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()


def _is_json_file(name: str) -> bool:
    return name.endswith(".json") and name != EXPORT_RECORD


def _image_rel(key: str, ext: str) -> str:
    # 256 subfolders, so that no folder holds hundreds of thousands of files.
    return f"images/{hashlib.sha1(key.encode()).hexdigest()[:2]}/{key}.{ext}"


def export_llava(build: "str | Path | Build", out_dir: str | Path, split: str | None = None, quiet: bool = False,
                 overwrite: bool = False) -> Path:
    """Write `out_dir/llava.json` (or `llava_<split>.json`) and `out_dir/images/`; returns the JSON path.
    Exporting the same build into a folder again reuses the images already there that are byte-identical
    and replaces the others; the export of another build there is refused unless `overwrite`, which
    replaces it (its JSON files and the images this export does not write are removed)."""
    from vlmforge.manifests.read import Build, check_shards, open_build

    b = build if isinstance(build, Build) else open_build(build)
    if split is not None and split not in b.info["splits"]:
        raise UserError(f"the build has no split {split!r}; it has: {', '.join(b.info['splits'])}")
    check_shards(b.path, b.info, split)  # a missing or cut shard stops the export before anything is written
    if not len(b):  # an empty llava.json would train on nothing without a word
        from vlmforge.manifests.read import no_samples_line

        raise UserError(f"{no_samples_line(b)}; there is nothing to export")
    if Path(out_dir).resolve().is_relative_to(b.path.resolve()):  # a build is read, never written into
        raise UserError(f"{out_dir} is inside the build {b.path}; export to a folder of its own")
    for folder in (Path(out_dir).resolve(), *Path(out_dir).resolve().parents):  # nor is any other
        if (folder / "build.json").is_file() and (folder / "manifest").is_dir():
            raise UserError(f"{out_dir} is inside the build {folder}; export to a folder of its own")
    total = sum(s["samples"] for s in b.info["shards"] if split is None or s["split"] == split)
    if not total:  # a split of rejects only: an empty JSON would train on nothing without a word
        raise UserError(f"the split {split} of {b.path} has no samples, and {b.info['splits'][split]['rejects']} rejects; "
                        "there is nothing to export")
    target_name = f"llava_{split}.json" if split else "llava.json"
    ident = {"build_id": b.build_id, "builder": b.info["builder"], "version": b.info["version"]}
    about = f"the export of build {b.info['builder']} {b.info['version']} {b.build_id} ({b.path})"
    claim = ExportClaim(Path(out_dir), "export llava", ident, about, _is_llava_export_file, {target_name}, overwrite,
                        source=str(b.path.resolve()))
    out = output_folder(out_dir, "llava.json and images/")
    claim.begin({target_name: {"split": split}})
    target = out / target_name
    tmp = target.with_name(target.name + ".tmp")
    images: set[str] = set()
    from vlmforge.progress import progress_bar

    written, damage = 0, ""
    try:
        with open(tmp, "w", encoding="utf-8") as f, progress_bar(f"export {target.name}", total=total, disable=quiet) as advance:
            f.write("[")
            for rec in _records(b, split, out, images):
                f.write(",\n" if written else "\n")
                f.write(json.dumps(rec, ensure_ascii=False))
                written += 1
                advance(1)
            f.write("\n]\n")
    except tarfile.TarError as e:
        damage = f" ({e})"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if written != total:  # a damaged member header ends a tar stream early without an error
        tmp.unlink(missing_ok=True)
        raise UserError(f"read {written} of the {total} samples build.json lists{damage}; a shard of {b.path} "
                        f"is damaged (`vlmforge verify {b.path}` names it)")
    os.replace(tmp, target)
    claim.finish({target_name: {"split": split, "records": written}}, images)
    if split is None and len(b.info["splits"]) > 1 and not quiet:  # e.g. test records in a training file
        from vlmforge.progress import console

        counts = ", ".join(f"{name} {agg['samples']}" for name, agg in sorted(b.info["splits"].items()))
        console.print(f"[yellow]note:[/] {target.name} holds every split ({counts}); --split NAME exports one")
    return target


def _records(b: "Build", split: str | None, out: Path, images: set[str]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    from vlmforge.manifests.read import iter_tar_samples

    for s in b.info["shards"]:
        if split not in (None, s["split"]):
            continue
        part = b.path / "manifest" / s["shard"].replace(".tar", ".parquet")
        rows = {r["key"]: r for r in pq.read_table(part, columns=["key", "image_format", "image_sha256", "json_sha256"]).to_pylist()}
        for sample in iter_tar_samples(b.path / s["shard"]):
            key = sample["__key__"]
            _check_digests(sample, rows.get(key), s["shard"], b.path)
            doc = json.loads(sample["json"])
            ext = rows[key]["image_format"] or None  # the member the manifest hashed as the image
            rel = None
            if ext is not None:
                rel = _image_rel(key, ext)
                images.add(rel)
                path = out / rel
                # A rerun skips images already written; an older build's image under the same key is replaced.
                if not path.exists() or path.stat().st_size != len(sample[ext]) or path.read_bytes() != sample[ext]:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(sample[ext])
            try:
                rec = llava_record(key, doc, rel)
            except UserError as e:  # export has no filter: say which build to export instead
                columns = {r[0] for r in b.sql("SELECT column_name FROM (DESCRIBE samples)").fetchall()}
                where = "n_turns > 0" if not doc.get("conversations") and "n_turns" in columns else f"key <> '{key}'"
                raise UserError(f"{e}; export a subset without such samples instead: vlmforge build subset --from "
                                f"{b.path} --where \"{where}\"") from None
            yield rec


def _check_digests(sample: dict[str, Any], row: dict[str, Any] | None, shard: str, build_dir: Path) -> None:
    """A sample whose json or image bytes are not those its manifest row hashed is damaged: never exported."""
    image = sample.get(row["image_format"]) if row and row["image_format"] else None
    if (row is None or hashlib.sha256(sample.get("json", b"")).hexdigest() != row["json_sha256"]
            or (row["image_format"] and (image is None or hashlib.sha256(image).hexdigest() != row["image_sha256"]))):
        raise UserError(f"sample {sample['__key__']} in {shard} is not the one its manifest row describes "
                        f"(other bytes or key); the build is damaged (`vlmforge verify {build_dir}` says more)")


def split_llava_json(path: str | Path, out_dir: str | Path, *, fraction: float | None = None,
                     splits: str | None = None, stratify_by: str | None = None, seed: int = 0,
                     overwrite: bool = False, quiet: bool = False) -> dict[str, Path]:
    """Split a LLaVA JSON file into `out_dir/<split>.json` files, streaming: one pass indexes the file
    (ids, sub-datasets, byte spans), the hashed selection is fitted on the keys, and a second pass
    copies the chosen records' bytes. Returns {split: path}. The split of another file or with other
    settings in `out_dir` is refused unless `overwrite`, which replaces it."""
    from array import array

    from vlmforge.curation.selection import check_fraction, fit_cuts, fraction_sizes, parse_named_fractions, rank_value
    from vlmforge.sources.jsonstream import SpanReader
    from vlmforge.sources.llava_json import sample_key, scan

    if (fraction is None) == (splits is None):
        raise UserError("give either --fraction F or --splits NAME=F,NAME=F")
    parts = parse_named_fractions(splits) if splits else [("train", check_fraction(fraction, "--fraction"))]
    if stratify_by not in (None, "source", "subsource"):
        raise UserError("a LLaVA JSON file can be stratified by source (its sub-dataset) only")
    src = Path(path)
    if src.is_dir():
        raise UserError(f"{src} is a folder; give the LLaVA JSON file to split (a list of records)")
    if not src.is_file():
        raise UserError(f"LLaVA JSON file not found: {src}")
    if any((Path(out_dir) / f"{name}.json").resolve() == src.resolve() for name, _ in parts):
        raise UserError(f"--out {out_dir} would write over {src}, the file being split; give another folder")
    settings = {"fraction": fraction} if splits is None else {"splits": ",".join(f"{n}={f}" for n, f in parts)}
    settings.update(stratify_by=stratify_by, seed=seed)
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v is not None)
    ident = {"source": src.name, "source_bytes": src.stat().st_size, **settings}

    def of_kind(name: str) -> bool:  # a JSON file, but not the one being split
        return _is_json_file(name) and (Path(out_dir) / name).resolve() != src.resolve()

    claim = ExportClaim(Path(out_dir), "export llava-split", ident, f"the split of {src.name} ({options})", of_kind,
                        {f"{name}.json" for name, _ in parts}, overwrite)
    idx = scan(src)
    n = len(idx.ids)
    keys, idx.ids = [sample_key(sid) for sid in idx.ids], []  # the ids are needed only as keys
    values = array("Q", (rank_value(seed, k) for k in keys))  # computed once, for fitting and assigning
    groups = idx.subsources if stratify_by else [None] * n
    invalid = idx.invalid
    fractions = [f for _, f in parts]
    cuts = fit_cuts(lambda: ((keys[i], groups[i], values[i]) for i in range(n) if i not in invalid), seed,
                    lambda g, size: fraction_sizes(fractions, size))
    out = output_folder(out_dir, "the split files")
    targets = {name: out / f"{name}.json" for name, _ in parts}
    claim.begin({p.name: {"split": name} for name, p in targets.items()})
    files = {name: open(p.with_name(p.name + ".tmp"), "wb") for name, p in targets.items()}
    written = {name: 0 for name in targets}
    try:
        for f in files.values():
            f.write(b"[")
        with open(src, "rb") as fin:
            reader = SpanReader(fin)
            for i in range(n):
                p = None if i in invalid else cuts.part(keys[i], groups[i], values[i])
                if p is None:
                    continue
                name = parts[p][0]
                files[name].write(b",\n" if written[name] else b"\n")
                files[name].write(reader.read(idx.starts[i], idx.ends[i]))
                written[name] += 1
        for f in files.values():
            f.write(b"\n]\n")
    finally:
        for f in files.values():
            f.close()
    for name, p in targets.items():
        os.replace(p.with_name(p.name + ".tmp"), p)
    claim.finish({p.name: {"split": name, "records": written[name]} for name, p in targets.items()})
    if invalid and not quiet:  # no rejects table here: said, not dropped without a word
        from vlmforge.progress import console

        first = ", ".join(f"#{i}" for i in sorted(invalid)[:5])
        console.print(f"[yellow]note:[/] {len(invalid)} of the {n} records are no usable LLaVA record (not an object with "
                      f"a 'conversations' list, or holding a lone surrogate escape) and are in no split file: {first}"
                      f"{' ...' if len(invalid) > 5 else ''}")
    return targets
