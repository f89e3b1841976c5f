"""Publish a build to the Hugging Face Hub as a WebDataset repo with a dataset card, and pull it back.

The published repo (what `publish` uploads and `pull` restores a build from):

    README.md        dataset card: YAML front matter (configs/data_files, features, license, tags, ...)
                     and a body written from the build (what, config, lineage, counts, examples, loading)
    build.json       the build's own record, unchanged: identity, lineage, hashes of the build's shards
    publish.json     how published shards map back to build shards, and which fields were renamed
    data/<split>/<split>-NNNNNN.tar        shards re-packed to about --target-shard-bytes
    data/<split>/NNNN/<split>-NNNNNN.tar   the same when a split has more shards than one folder holds
    manifest/...     the build's manifest parts (Parquet, rejects, stats), unchanged

Why re-pack and rename. The Hub wants files near 1 GB and at most 10,000 files per folder. The
`datasets` library names a column after everything past a member's first dot, so `<key>.mask.png`
would become a column `mask.png`, which reads like a flattened struct field and needs quoting in SQL;
published members are renamed (`mask.png` -> `mask_png`) and the card declares each field's type so
that images still decode. Renaming keeps name lengths and samples keep their order, so `pull`
rebuilds the build's shards byte for byte and `verify` checks them against build.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import UserError
from vlmforge.manifests.read import Build, open_build, read_build_info, read_sample_at, shard_problems

BLOCK = 512
RECORD = 20 * BLOCK
DEFAULT_TARGET_SHARD_BYTES = 1 << 30
MAX_FILES_PER_FOLDER = 10_000
PUBLISH_FORMAT = 1
IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # the split names `datasets` accepts


# -- field names ------------------------------------------------------------------------------
def hub_field(name: str) -> str:
    """A member field as published: lower case, `[a-z0-9_]` only ('mask.png' -> 'mask_png').
    Same length as the original, so renamed tar headers keep their layout."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def hub_split(split: str) -> str:
    """A split as the card names it: `datasets` refuses other characters ('val-hard' -> 'val_hard'). The
    repo's folders and `pull` keep the build's own name."""
    return split if _SPLIT_NAME.match(split) else re.sub(r"\W", "_", split)


def field_feature(name: str) -> str:
    """The `datasets` dtype the card declares for an original member field."""
    ext = name.rsplit(".", 1)[-1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext == "json":
        return "json"
    if ext in ("txt", "text"):
        return "string"
    return "binary"


def field_map(fields: list[str]) -> dict[str, str]:
    """{original field: published field}; refuses two fields that would publish under one name."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for f in sorted(fields):
        pub = hub_field(f)
        if pub in seen:
            raise UserError(f"fields {seen[pub]!r} and {f!r} would both be published as {pub!r}; rename one in the builder")
        seen[pub] = f
        out[f] = pub
    return out


# -- tar members ------------------------------------------------------------------------------
def _header_name(header: bytes) -> str:
    if header[345:500].strip(b"\0"):
        raise UserError("a shard member uses a ustar name prefix; vlmforge shards never do, so this is not a vlmforge shard")
    return header[:100].split(b"\0", 1)[0].decode("ascii")


def _member_size(header: bytes) -> int:
    if header[156:157] not in (b"0", b"\0"):
        raise UserError(f"shard member {_header_name(header)!r} is not a regular file (tar type {header[156:157]!r})")
    return int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)


def _renamed_header(header: bytes, rename: dict[str, str]) -> bytes:
    """The header with its field renamed and the checksum redone; unchanged when no rule applies."""
    name = _header_name(header)
    key, _, fld = name.partition(".")
    new_field = rename.get(fld)
    if new_field is None or new_field == fld:
        return header
    new = f"{key}.{new_field}".encode("ascii")
    h = bytearray(header)
    h[: len(new)] = new
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _walk(f, start: int, end: int) -> Iterator[tuple[bytes, int]]:
    """(header, data size) of each member in [start, end) of an open shard, leaving f at its data."""
    pos = start
    while pos < end:
        f.seek(pos)
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise UserError(f"shard {getattr(f, 'name', '?')} ends inside a member at byte {pos}")
        size = _member_size(header)
        yield header, size
        pos += BLOCK + size + (-size % BLOCK)


def _fields_in(path: Path, start: int, end: int) -> set[str]:
    with open(path, "rb") as f:
        return {_header_name(h).partition(".")[2] for h, _ in _walk(f, start, end)}


class _HashingWriter:
    def __init__(self, path: Path):
        self.f = open(path, "wb", buffering=1 << 20)
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)

    def copy(self, src, n: int) -> None:
        while n:
            chunk = src.read(min(n, 1 << 22))
            if not chunk:
                raise UserError(f"{getattr(src, 'name', 'a shard')} is shorter than recorded (in the build's "
                                "manifest, or in publish.json for a published shard): truncated, e.g. by a partial download")
            self.write(chunk)
            n -= len(chunk)

    def close(self) -> str:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return self.sha.hexdigest()


def _copy_members(src: Path, start: int, end: int, out: _HashingWriter, rename: dict[str, str]) -> None:
    """Copy the samples in [start, end) of shard `src`, renaming fields by `rename`."""
    with open(src, "rb") as f:
        if not rename:
            f.seek(start)
            out.copy(f, end - start)
            return
        for header, size in _walk(f, start, end):
            out.write(_renamed_header(header, rename))
            out.copy(f, size + (-size % BLOCK))


def _tar_end(data_bytes: int) -> int:
    """Bytes of end-of-archive padding after `data_bytes`: two zero blocks, then up to a 10 KiB record
    (what vlmforge's shard writer, GNU tar and Python's tarfile write)."""
    end = 2 * BLOCK
    return end + (-(data_bytes + end) % RECORD)


def _place(path: Path, src: Path) -> None:
    """Hard-link `src` to `path` (no copy of a large shard), or copy it across file systems."""
    path.unlink(missing_ok=True)
    try:
        os.link(src, path)
    except OSError:
        shutil.copyfile(src, path)


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class Piece:
    """A run of consecutive samples of one build shard: bytes [start, end), `samples` of them."""

    shard: str
    start: int
    end: int
    samples: int


@dataclass
class HubShard:
    path: str  # path in the repo
    split: str
    pieces: list[Piece] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(p.samples for p in self.pieces)

    @property
    def data_bytes(self) -> int:
        return sum(p.end - p.start for p in self.pieces)

    @property
    def bytes(self) -> int:
        return self.data_bytes + _tar_end(self.data_bytes)

    def recipe(self, build_id: str, rename: dict[str, str]) -> str:
        """Identity of this file's content: same recipe, same bytes (a resumed stage reuses it)."""
        doc = [build_id, sorted(rename.items()), [[p.shard, p.start, p.end] for p in self.pieces]]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


@dataclass
class Plan:
    build: Build
    fields: dict[str, str]  # original field -> published field, every field of the build
    shards: list[HubShard]
    manifest: list[tuple[str, Path]]  # (path in repo, local file)
    data_files: dict[str, str]  # split -> glob in the repo

    @property
    def rename(self) -> dict[str, str]:
        return {k: v for k, v in self.fields.items() if k != v}

    def files(self) -> list[tuple[str, int]]:
        """Every file the repo will hold, with its size (README.md and publish.json excluded)."""
        out = [(s.path, s.bytes) for s in self.shards]
        out += [(p, f.stat().st_size) for p, f in self.manifest]
        out.append(("build.json", (self.build.path / "build.json").stat().st_size))
        return out


def _chunked(prefix: str, names: list[str], max_files: int) -> list[str]:
    """Repo paths for `names` under `prefix`, in numbered subfolders when there are too many."""
    if len(names) <= max_files:
        return [f"{prefix}/{n}" for n in names]
    return [f"{prefix}/{i // max_files:04d}/{n}" for i, n in enumerate(names)]


def build_fields(build: Build) -> list[str]:
    """The member fields of a build: the first sample of each shard, plus every image field the
    manifest names (a text-only sample may come first). Staging checks every sample against it."""
    import pyarrow.parquet as pq

    fields = {r[0] for r in build.sql("SELECT DISTINCT image_format FROM samples WHERE image_format IS NOT NULL").fetchall()}
    for s in build.info["shards"]:
        if not s["samples"]:
            continue
        part = pq.read_table(build.path / "manifest" / s["shard"].replace(".tar", ".parquet"),
                             columns=["offset", "sample_bytes"]).slice(0, 1).to_pylist()[0]
        sample = read_sample_at(build.path / s["shard"], part["offset"], part["sample_bytes"])
        fields.update(k for k in sample if k != "__key__")
    return sorted(fields)


def plan_publish(build: Build, target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
                 max_files_per_folder: int = MAX_FILES_PER_FOLDER) -> Plan:
    """Which repo file holds which samples. Samples keep the build's order; a published shard closes
    before the next sample would take it past `target_shard_bytes` (a larger sample goes alone)."""
    import pyarrow.parquet as pq

    if target_shard_bytes < 1:
        raise UserError("--target-shard-bytes must be positive")
    if max_files_per_folder < 1:
        raise UserError("max files per folder must be positive")
    if not len(build):  # no data file for the card's configs to name, nothing for `datasets` to load
        from vlmforge.manifests.read import no_samples_line

        raise UserError(f"{no_samples_line(build)}; there is nothing to publish")
    by_split: dict[str, list[HubShard]] = {}
    for s in build.info["shards"]:
        shards = by_split.setdefault(s["split"], [])
        if not s["samples"]:
            continue
        t = pq.read_table(build.path / "manifest" / s["shard"].replace(".tar", ".parquet"), columns=["offset", "sample_bytes"])
        for offset, size in zip(t.column("offset").to_pylist(), t.column("sample_bytes").to_pylist()):
            cur = shards[-1] if shards else None
            if cur is None or (cur.samples and cur.data_bytes + size > target_shard_bytes):
                cur = HubShard("", s["split"])
                shards.append(cur)
            last = cur.pieces[-1] if cur.pieces else None
            if last is not None and last.shard == s["shard"] and last.end == offset:
                last.end += size
                last.samples += 1
            else:
                cur.pieces.append(Piece(s["shard"], offset, offset + size, 1))
    loads_as: dict[str, str] = {}
    for split in by_split:
        if loads_as.setdefault(hub_split(split), split) != split:
            raise UserError(f"splits {loads_as[hub_split(split)]!r} and {split!r} would both load as {hub_split(split)!r} "
                            "(`datasets` takes letters, digits and _ in split names); rename one in a split build")
    hub_shards: list[HubShard] = []
    data_files: dict[str, str] = {}
    for split, shards in by_split.items():
        names = [f"{split}-{i:06d}.tar" for i in range(len(shards))]
        for shard, path in zip(shards, _chunked(f"data/{split}", names, max_files_per_folder)):
            shard.path = path
        hub_shards.extend(shards)
        if shards:  # a split whose inputs were all rejected has no files to point at
            deep = len(names) > max_files_per_folder
            data_files[split] = f"data/{split}/*/*.tar" if deep else f"data/{split}/*.tar"
    parts = sorted(p for p in (build.path / "manifest").iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    manifest = list(zip(_chunked("manifest", [p.name for p in parts], max_files_per_folder), parts))
    return Plan(build, field_map(build_fields(build)), hub_shards, manifest, data_files)


# -- staging ----------------------------------------------------------------------------------
STAGE_LOG = "staged.jsonl"


def _read_log(stage_dir: Path) -> dict[str, dict]:
    log = stage_dir / STAGE_LOG
    done: dict[str, dict] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            done[entry["path"]] = entry
    return done


def _write_hub_shard(plan: Plan, shard: HubShard, target: Path) -> tuple[int, str]:
    """Write one published shard (or link the build's shard when it is the same bytes)."""
    build_dir = plan.build.path
    rename = plan.rename
    known = set(plan.fields)
    for p in shard.pieces:  # the plan saw the first sample of each shard; check all of them
        extra = _fields_in(build_dir / p.shard, p.start, p.end) - known
        if extra:
            raise UserError(f"{p.shard} has fields {sorted(extra)} that its first sample lacks; "
                            "every sample of a build must have the same fields")
    info = {s["shard"]: s for s in plan.build.info["shards"]}
    only = shard.pieces[0]
    whole = info[only.shard]
    if (len(shard.pieces) == 1 and not rename and only.start == 0
            and whole["bytes"] == only.end + _tar_end(only.end)):
        _place(target, build_dir / only.shard)
        return whole["bytes"], whole["sha256"]
    tmp = target.with_name(target.name + ".tmp")
    out = _HashingWriter(tmp)
    try:
        for p in shard.pieces:
            _copy_members(build_dir / p.shard, p.start, p.end, out, rename)
        out.write(bytes(_tar_end(out.size)))
    finally:
        sha = out.close()
    os.replace(tmp, target)
    return out.size, sha


def stage(plan: Plan, stage_dir: Path, repo_id: str, license: str = "unknown", tag: str | None = None,
          quiet: bool = False) -> dict[str, dict]:
    """Write the repo's files under `stage_dir/repo`. Resumable: shards staged by an earlier run with
    the same recipe are kept (`staged.jsonl` records them); files the plan no longer has are removed.
    Returns {path in repo: {"bytes", "sha256"}} for the data shards."""
    from vlmforge.progress import progress_bar

    repo = stage_dir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    done = _read_log(stage_dir)
    build_id = plan.build.build_id
    rename = plan.rename
    staged: dict[str, dict] = {}
    with open(stage_dir / STAGE_LOG, "a") as log, \
            progress_bar("stage", total=sum(s.bytes for s in plan.shards), disable=quiet) as advance:
        for shard in plan.shards:
            target = repo / shard.path
            recipe = shard.recipe(build_id, rename)
            prev = done.get(shard.path)
            if prev and prev["recipe"] == recipe and target.exists() and target.stat().st_size == prev["bytes"]:
                staged[shard.path] = {"bytes": prev["bytes"], "sha256": prev["sha256"], "reused": True}
                advance(shard.bytes)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            size, sha = _write_hub_shard(plan, shard, target)
            log.write(json.dumps({"path": shard.path, "recipe": recipe, "bytes": size, "sha256": sha}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            staged[shard.path] = {"bytes": size, "sha256": sha, "reused": False}
            advance(shard.bytes)
    for path, src in plan.manifest:
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.exists() and target.stat().st_size == src.stat().st_size
                and target.read_bytes() == src.read_bytes()):
            shutil.copyfile(src, target)
    shutil.copyfile(plan.build.path / "build.json", repo / "build.json")
    (repo / "publish.json").write_text(json.dumps(publish_record(plan, staged), indent=1, sort_keys=True) + "\n")
    (repo / "README.md").write_text(render_card(plan, repo_id, license=license, tag=tag))
    _remove_unplanned(repo, plan)
    return staged


def _remove_unplanned(repo: Path, plan: Plan) -> None:
    keep = {s.path for s in plan.shards} | {p for p, _ in plan.manifest}
    for top in ("data", "manifest"):
        for p in sorted((repo / top).rglob("*"), reverse=True):
            rel = p.relative_to(repo).as_posix()
            if p.is_file() and rel not in keep:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def publish_record(plan: Plan, staged: dict[str, dict] | None = None) -> dict[str, Any]:
    """publish.json: what `pull` needs to turn the published files back into the build."""
    staged = staged or {}
    return {
        "format": PUBLISH_FORMAT,
        "build_id": plan.build.build_id,
        "builder": plan.build.info["builder"],
        "version": plan.build.info["version"],
        "fields": plan.fields,
        "data_files": plan.data_files,
        "shards": [{"path": s.path, "split": s.split, "samples": s.samples, "bytes": s.bytes,
                    "sha256": staged.get(s.path, {}).get("sha256"),
                    "pieces": [[p.shard, p.start, p.end, p.samples] for p in s.pieces]} for s in plan.shards],
        "manifest": [p for p, _ in plan.manifest],
    }


# -- the dataset card -------------------------------------------------------------------------
def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n samples (the values huggingface_hub's DatasetCardData lists)."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
              (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>1T"


def card_metadata(plan: Plan, license: str = "unknown") -> dict[str, Any]:
    """The card's YAML front matter as a dict."""
    info = plan.build.info
    features = [{"name": pub, "dtype": field_feature(orig)} for orig, pub in plan.fields.items()]
    features += [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    return {
        "pretty_name": f"vlmforge {info['builder']} {info['version']}",
        "license": license,
        "task_categories": ["image-text-to-text", "visual-question-answering"],
        "language": ["en"],
        "tags": ["vlmforge", "webdataset", "llava", info["builder"]],
        "size_categories": [size_category(len(plan.build))],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": hub_split(split), "path": glob} for split, glob in plan.data_files.items()]}],
        "dataset_info": {"features": features},
    }


def _md(text: Any, limit: int = 160) -> str:
    """One table cell: no newlines or pipes, shortened."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(plan: Plan, repo_id: str, license: str = "unknown", tag: str | None = None) -> str:
    """README.md for the repo: YAML front matter and a body written from the build. Deterministic."""
    import yaml

    b = plan.build
    info = b.info
    meta = yaml.safe_dump(card_metadata(plan, license), sort_keys=False, allow_unicode=True, width=1000)
    rev = tag or info["version"]
    con = b.connect()
    cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'samples'").fetchall()}
    rejects = dict(con.execute("SELECT split, count(*) FROM rejects GROUP BY 1").fetchall())
    out = [f"---\n{meta}---\n", f"# {info['builder']} {info['version']} (vlmforge build {b.build_id})\n",
           (info.get("description") or "A vlmforge build.") + "\n",
           "Made with vlmforge: WebDataset shards of LLaVA-format conversations, a manifest with one row "
           "per sample, and the build's full record (`build.json`), so the build can be checked and rebuilt.\n",
           "## Build\n",
           _md_table(["", ""], [["builder", info["builder"]], ["version", info["version"]], ["build id", b.build_id],
                                ["vlmforge version", info.get("package_version", "")],
                                ["source", json.dumps(info.get("source", {}), sort_keys=True)],
                                ["source fingerprint", info.get("source_fingerprint", "")]]) + "\n",
           "Config:\n", "```json\n" + json.dumps(info.get("config", {}), indent=1, sort_keys=True) + "\n```\n"]
    parents = info.get("parent_builds") or []
    if parents:
        # What was read of each direct parent (its splits, a filter) and, for a mix, how many samples.
        source = info.get("source") or {}
        read = {e.get("build_id"): e for e in source.get("parents") or [source] if isinstance(e, dict)}
        taken = (source.get("selection") or {}).get("taken") or {}

        def what_read(build_id: str) -> str:
            e = read.get(build_id)
            if e is None:
                return ""
            where = f" where {e['where']}" if e.get("where") else ""
            return (", ".join(e["splits"]) if e.get("splits") else "all") + where

        head = ["build id", "builder", "version", "its parents", "splits read"] + (["samples taken"] if taken else [])
        out.append("### Parent builds\n")
        table = [[p.get("build_id"), p.get("builder"), p.get("version"), ", ".join(p.get("parents", [])),
                  what_read(p.get("build_id"))] + ([taken.get(p.get("build_id"), "")] if taken else []) for p in parents]
        out.append(_md_table(head, table) + "\n")
    out.append("## Contents\n")
    hub_by_split: dict[str, list[HubShard]] = {}
    for s in plan.shards:
        hub_by_split.setdefault(s.split, []).append(s)
    out.append(_md_table(["split", "samples", "rejects", "shards", "bytes", "files"],
                         [[split, agg["samples"], rejects.get(split, 0), len(hub_by_split.get(split, [])),
                           sum(s.bytes for s in hub_by_split.get(split, [])), f"`{plan.data_files.get(split, '')}`"]
                          for split, agg in info["splits"].items()]) + "\n")
    renamed = [f"`{split}` as `{hub_split(split)}`" for split in plan.data_files if hub_split(split) != split]
    if renamed:
        out.append(f"`datasets` loads the split{'s' if len(renamed) > 1 else ''} {', '.join(renamed)} "
                   "(it takes letters, digits and _ in split names).\n")
    if "label" in cols:
        labels = con.execute("SELECT label, count(*) FROM samples WHERE label IS NOT NULL "
                             "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        if labels:
            out.append(f"### Labels ({len(labels)})\n")
            shown = labels[:30]
            out.append(_md_table(["label", "samples"], [list(r) for r in shown]) + "\n")
            if len(labels) > len(shown):
                out.append(f"... and {len(labels) - len(shown)} more (see the manifest).\n")
            unlabelled = sum(agg["samples"] for agg in info["splits"].values()) - sum(n for _, n in labels)
            if unlabelled:  # e.g. a mix's records of a parent without labels
                out.append(f"{unlabelled} samples have no label.\n")
    reasons = con.execute("SELECT reason, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    if reasons:
        out.append("### Rejects by reason\n")
        out.append(_md_table(["reason", "rejects"], [list(r) for r in reasons]) + "\n")
    out.append("## Fields\n")
    out.append("Each sample is a group of tar members `<key>.<field>`. Field names are published lower-case "
               "and without dots, because the `datasets` library names a column after everything past the "
               "key's first dot; `vlmforge pull` restores the build's own names.\n")
    out.append(_md_table(["field", "type", "member in the build"],
                         [[f"`{pub}`", field_feature(orig), f"`<key>.{orig}`"] for orig, pub in plan.fields.items()])
               + "\n")
    examples = _examples(b)
    if examples:
        out.append("## Examples\n")
        out.append(_md_table(["key", "label", "question", "answer"], examples) + "\n")
    out.append("## Manifest\n")
    out.append("`manifest/` holds the build's Parquet manifest, one part per build shard (`shard` and `offset` "
               "refer to the build's shards, which `vlmforge pull` restores), the rejects (inputs, or parts "
               "of one such as an entity, that became no sample) in "
               "`*.rejects.parquet`, and per-shard stats.\n")
    out.append(_md_table(["column", "description"], [[f"`{k}`", v] for k, v in info.get("columns", {}).items()]) + "\n")
    first_split = next(iter(plan.data_files), "train")
    out.append("## Loading\n")
    out.append("With `datasets` (images decode to PIL, `json` to a dict):\n")
    out.append("```python\nfrom datasets import load_dataset\n\n"
               f"ds = load_dataset(\"{repo_id}\", revision=\"{rev}\")\n"
               f"sample = ds[\"{hub_split(first_split)}\"][0]\n"
               "sample[\"json\"][\"conversations\"]  # LLaVA format\n```\n")
    out.append("With `webdataset`, streaming the shards:\n")
    out.append("```python\nimport webdataset as wds\nfrom huggingface_hub import HfFileSystem\n\n"
               "fs = HfFileSystem()\n"
               f"urls = [fs.url(f) for f in fs.glob(\"datasets/{repo_id}@{rev}/{plan.data_files.get(first_split, '')}\")]\n"
               "ds = wds.WebDataset(urls, shardshuffle=False).decode(\"pil\")\n```\n")
    kept_bytes = [pub for orig, pub in plan.fields.items() if pub != orig and field_feature(orig) == "image"]
    out.append("Fields in `webdataset` are the published names above."
               + (f" `decode(\"pil\")` decodes images by the extension after a field's last dot, so renamed image "
                  f"fields ({', '.join(f'`{f}`' for f in kept_bytes)}) stay bytes; open one with "
                  f"`PIL.Image.open(io.BytesIO(sample[\"{kept_bytes[0]}\"]))`." if kept_bytes else "") + "\n")
    out.append("As a vlmforge build folder (byte-identical to the original, checked by `vlmforge verify`):\n")
    out.append(f"```bash\nvlmforge pull {repo_id} --revision {rev} --out builds\n"
               f"vlmforge manifest stats builds/{info['builder']}/{info['version']}\n```\n")
    return "\n".join(out)


def _examples(b: Build, n: int = 3) -> list[list[Any]]:
    from vlmforge.report.show import first_turns

    rows = []
    for sample in b.samples():
        doc = sample.get("json") or {}
        q, a = first_turns(doc)
        rows.append([sample["__key__"], doc.get("label", ""), doc.get("question") or q, a])
        if len(rows) == n:
            break
    return rows


# -- talking to the Hub -----------------------------------------------------------------------
# The license ids a card may name, in the order of the Hub's list (huggingface/hub-docs,
# docs/hub/repositories-licenses.md, with the ids added to it up to 2026): the Hub refuses a commit
# whose README.md names another, which would come only after the whole upload.
HUB_LICENSES = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0",
    "odc-by", "odbl", "openmdw-1.0", "openmdw-1.1", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2",
    "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
)


def check_license(license: str) -> None:
    """Refuse a --license the Hub does not know, naming the closest ids it does."""
    import difflib

    if license in HUB_LICENSES:
        return
    lower = (license or "").strip().lower()
    close = [lower] if lower in HUB_LICENSES else difflib.get_close_matches(lower, HUB_LICENSES, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"--license {license!r} is not a Hugging Face Hub license id; {hint}"
                    "use an id from https://huggingface.co/docs/hub/repositories-licenses (e.g. cc-by-4.0, "
                    "apache-2.0), or 'other' for a license not listed there")


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id or ""):
        raise UserError(f"{repo_id!r} is not a Hub repo id; use NAMESPACE/NAME, e.g. my-lab/occlusion-coco")


def check_tag(tag: str) -> None:
    """A tag git accepts as a ref name (checked before staging: the Hub refuses it only after the upload)."""
    bad = (not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+/-]*", tag or "") or ".." in tag or "//" in tag
           or tag.endswith((".", "/", ".lock")) or "/." in tag)
    if bad:
        raise UserError(f"--revision {tag!r} is not a valid tag name; use letters, digits and . _ + - / "
                        "(e.g. 1.2.0 or v1.2.0-coco)")
    if tag == "main" or tag.startswith("refs/"):
        raise _branch_not_tag(tag)


def _branch_not_tag(tag: str) -> UserError:
    return UserError(f"--revision {tag!r} names a branch of the repo, but --revision is the tag this publish makes "
                     "(the commit goes to main); choose a tag name such as 1.2.0")


def _scrub(text: str, token: str | None) -> str:
    """`text` with the token blanked, for error messages that quote library exceptions."""
    return text.replace(token, "***") if token else text


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports for files not stored in LFS/Xet)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_state(stage_dir: Path, staged: dict[str, dict]) -> dict[str, dict]:
    """{path in repo: {"size", "sha256", "git"}} of everything staged for upload."""
    repo = stage_dir / "repo"
    out: dict[str, dict] = {}
    for p in sorted(repo.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(repo).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # .cache/huggingface and the like: never uploaded (huggingface_hub ignores them too)
        if rel in staged:
            out[rel] = {"size": staged[rel]["bytes"], "sha256": staged[rel]["sha256"], "git": None}
        else:
            data = p.read_bytes()
            out[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "git": git_blob_sha1(data)}
    return out


def remote_state(api, repo_id: str, revision: str | None) -> dict[str, dict]:
    """{path: {"size", "sha256" (LFS/Xet files) or None, "git"}} of a Hub revision."""
    out: dict[str, dict] = {}
    for entry in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True):
        if not hasattr(entry, "size"):  # folders
            continue
        lfs = getattr(entry, "lfs", None)
        out[entry.path] = {"size": entry.size, "sha256": lfs.sha256 if lfs else None, "git": entry.blob_id}
    return out


def still_to_upload(local: dict[str, dict], remote: dict[str, dict]) -> list[str]:
    """Staged files the remote lacks or holds with other content."""
    todo = []
    for path, want in local.items():
        have = remote.get(path)
        if have is None or have["size"] != want["size"]:
            todo.append(path)
        elif have["sha256"] is not None and have["sha256"] != want["sha256"]:
            todo.append(path)
        elif have["sha256"] is None and want["git"] is not None and have["git"] != want["git"]:
            todo.append(path)
    return todo


def _existing_tag(api, repo_id: str, tag: str) -> str | None:
    """The build id the tag marks on the Hub, or None when there is no such tag."""
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    if tag not in {t.name for t in refs.tags}:
        return None
    path = api.hf_hub_download(repo_id, "build.json", repo_type="dataset", revision=tag)
    return json.loads(Path(path).read_text()).get("build_id", "?")


def _tagged(api, repo_id: str, tag: str, build_id: str) -> bool:
    """Whether the tag already marks this build; a tag that marks another build is refused."""
    tagged = _existing_tag(api, repo_id, tag)
    if tagged is not None and tagged != build_id:
        raise UserError(f"tag {tag!r} on {repo_id} already marks build {tagged}; pass --revision with a new tag")
    return tagged is not None


def _hub_line(e: BaseException) -> str:
    """An error of huggingface_hub or the network on one line (theirs span several, with a link to MDN)."""
    lines = [line.strip() for line in str(e).splitlines()
             if line.strip() and not line.startswith("For more information check")]
    return f"{type(e).__name__}: {' '.join(lines)}"


def _status(e: BaseException) -> int | None:
    return getattr(getattr(e, "response", None), "status_code", None)


def check_hub(api, repo_id: str, build_id: str, tag: str, private: bool = False) -> None:
    """Before verifying and staging (minutes for a large build): the token is valid and may write, an
    existing repo is private when --private asks for it, and the tag marks no other build."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        who = api.whoami()
    except Exception as e:
        if _status(e) == 401:
            raise UserError(f"the Hub refused the token: {str(e).splitlines()[0]} (set HF_TOKEN or run "
                            "`hf auth login`); nothing was staged") from None
        raise UserError(f"cannot reach the Hub to publish {repo_id} ({_hub_line(e)}); nothing was staged") from None
    if ((who.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise UserError("the Hugging Face token is read-only; publishing needs a token with write access "
                        "(https://huggingface.co/settings/tokens)")
    owners = [who.get("name")] + [o.get("name") for o in who.get("orgs") or []]
    if who.get("name") and repo_id.split("/")[0] not in owners:
        raise UserError(f"the token is {who['name']}'s, who cannot make repos under {repo_id.split('/')[0]!r} (its user "
                        f"and organizations: {', '.join(map(str, owners))}); nothing was staged")
    try:
        info = api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return  # upload() creates it
    except Exception as e:
        raise UserError(f"cannot read {repo_id} on the Hub ({_hub_line(e)}); nothing was staged") from None
    if private and not info.private:
        raise UserError(f"{repo_id} exists and is public, and --private does not change an existing repo: nothing "
                        "was uploaded; make it private in its settings on the Hub, or publish to a new repo")
    try:
        branches = {b.name for b in api.list_repo_refs(repo_id, repo_type="dataset").branches}
        if tag in branches:
            raise _branch_not_tag(tag)
        _tagged(api, repo_id, tag, build_id)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read the refs of {repo_id} on the Hub ({_hub_line(e)}); nothing was staged") from None


def upload(api, repo_id: str, stage_dir: Path, staged: dict[str, dict], build_id: str, tag: str,
           private: bool = False) -> dict[str, Any]:
    """Create the repo if needed, upload the staged folder (huggingface_hub's resumable, multi-commit
    upload: files already on the Hub are skipped), check the Hub now holds every staged file, then tag.
    Returns {"commit", "uploaded", "skipped", "tag"}."""
    from vlmforge.progress import console

    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    tagged = _tagged(api, repo_id, tag, build_id)
    local = local_state(stage_dir, staged)
    todo = still_to_upload(local, remote_state(api, repo_id, None))
    if todo:
        console.print(f"uploading {len(todo)} of {len(local)} files to {repo_id} "
                      f"({sum(local[p]['size'] for p in todo):,} bytes)")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(stage_dir / "repo"), repo_type="dataset",
                                 commit_message=f"vlmforge build {build_id}",
                                 delete_patterns=["data/*", "manifest/*"])
        commit = info.oid
    else:
        console.print(f"{repo_id} already holds all {len(local)} files")
        branches = api.list_repo_refs(repo_id, repo_type="dataset").branches
        commit = next((b.target_commit for b in branches if b.name == "main"), branches[0].target_commit)
    left = still_to_upload(local, remote_state(api, repo_id, commit))
    if left:
        raise UserError(f"the Hub lacks {len(left)} staged files after the upload (e.g. {left[0]}); "
                        "run the same command again to resume")
    moved = tagged and bool(still_to_upload(local, remote_state(api, repo_id, tag)))
    if moved:  # same build, other files (a new card: another --license): else the tag keeps the old card
        api.delete_tag(repo_id, tag=tag, repo_type="dataset")
        console.print(f"tag {tag} marked this build with other files (e.g. an earlier card); it now marks {commit[:12]}")
    if not tagged or moved:
        api.create_tag(repo_id, tag=tag, revision=commit, repo_type="dataset",
                       tag_message=f"vlmforge build {build_id}")
    return {"commit": commit, "uploaded": len(todo), "skipped": len(local) - len(todo), "tag": tag}


def default_stage_dir(build: Build) -> Path:
    from vlmforge.sources.sample_coco import default_cache

    return default_cache() / "publish" / build.build_id


def _check_stage(stage_dir: Path) -> None:
    """Refuse a --stage under a file before any work (it is made only when staging starts)."""
    for p in (stage_dir / "repo", stage_dir, *stage_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"--stage {stage_dir}: {p} is a file; the staged repo needs a folder")
            return


def print_plan(plan: Plan, repo_id: str, tag: str) -> None:
    """The file plan as a table on stdout: one row per repo folder."""
    from rich.console import Console
    from rich.table import Table

    rows: dict[str, list[int]] = {}
    for s in plan.shards:
        r = rows.setdefault(s.path.rsplit("/", 1)[0] + "/", [0, 0, 0])
        r[0] += 1
        r[1] += s.samples
        r[2] += s.bytes
    for path, f in plan.manifest:
        r = rows.setdefault(path.rsplit("/", 1)[0] + "/", [0, 0, 0])
        r[0] += 1
        r[2] += f.stat().st_size
    t = Table(title=f"{repo_id} @ {tag}: build {plan.build.build_id}")
    for name in ("folder", "files", "samples", "bytes"):
        t.add_column(name, justify="left" if name == "folder" else "right")
    for folder, (files, samples, size) in rows.items():
        t.add_row(folder, str(files), str(samples) if samples else "", f"{size:,}")
    t.add_row("./", "3", "", "README.md, build.json, publish.json")
    biggest = max((s.bytes for s in plan.shards), default=0)
    Console(width=120).print(t)
    Console(width=120).print(f"largest shard {biggest:,} bytes; renamed fields: "
                             + (", ".join(f"{k} -> {v}" for k, v in plan.rename.items()) or "none"))


def _refuse_damaged(b: Build, problems: list[str]) -> None:
    raise UserError(f"{b.path} fails verification, so it is not published: {problems[0]}"
                    + (f" (and {len(problems) - 1} more; `vlmforge verify` lists them)" if len(problems) > 1 else ""))


def publish(build_path: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
            dry_run: bool = False, target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES, license: str = "unknown",
            stage_dir: Path | None = None, api=None, max_files_per_folder: int = MAX_FILES_PER_FOLDER,
            quiet: bool = False) -> dict[str, Any]:
    """Publish a build to `repo_id` (see the module docstring for the layout).

    A dry run writes README.md and publish.json under `stage_dir/repo` and prints the file plan, with no
    network call. Otherwise the token comes from HF_TOKEN or the login cache (never printed); the
    upload resumes after an interruption when run again. `api` defaults to `huggingface_hub.HfApi`."""
    from vlmforge.progress import console

    check_repo_id(repo_id)
    check_license(license)
    b = open_build(build_path)
    missing = shard_problems(b.path, b.info)
    if missing:  # planning reads every shard: refuse before it ends in a traceback
        _refuse_damaged(b, missing)
    plan = plan_publish(b, target_shard_bytes, max_files_per_folder)
    tag = revision or b.info["version"]
    check_tag(tag)
    stage_dir = Path(stage_dir) if stage_dir else default_stage_dir(b)
    _check_stage(stage_dir)
    print_plan(plan, repo_id, tag)
    if dry_run:
        repo = stage_dir / "repo"
        repo.mkdir(parents=True, exist_ok=True)
        (repo / "README.md").write_text(render_card(plan, repo_id, license=license, tag=tag))
        (repo / "publish.json").write_text(json.dumps(publish_record(plan), indent=1, sort_keys=True) + "\n")
        console.print(f"dry run: wrote {repo / 'README.md'} and publish.json; nothing was uploaded")
        return {"dry_run": True, "stage": stage_dir, "plan": plan}
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN or the login cache; handed to huggingface_hub only, never shown
    if api is None:
        from huggingface_hub import HfApi

        if not token:
            raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
        api = HfApi(token=token)
    try:
        check_hub(api, repo_id, b.build_id, tag, private)
    except UserError as e:
        raise UserError(_scrub(str(e), token)) from None
    from vlmforge.manifests.verify import verify_build

    problems = verify_build(b, quiet=quiet)  # never upload a damaged build (pull would refuse it anyway)
    if problems:
        _refuse_damaged(b, problems)
    staged = stage(plan, stage_dir, repo_id, license=license, tag=tag, quiet=quiet)
    reused = sum(1 for v in staged.values() if v["reused"])
    console.print(f"staged {len(staged)} shards in {stage_dir / 'repo'} ({reused} kept from an earlier run)")
    try:
        result = upload(api, repo_id, stage_dir, staged, b.build_id, tag, private=private)
    except UserError as e:
        raise UserError(_scrub(str(e), token)) from None
    except Exception as e:  # network and Hub errors: say how to resume, never echo the token
        if _status(e) in (401, 403):
            raise UserError(_scrub(f"the Hub refused the upload to {repo_id} ({_hub_line(e)}); the token needs "
                                   f"write access to {repo_id.split('/')[0]}", token)) from None
        raise UserError(_scrub(f"upload to {repo_id} stopped ({_hub_line(e)}); run the same command "
                               f"again to resume (staged files stay in {stage_dir})", token)) from None
    console.print(f"[green]published[/] build {b.build_id} to https://huggingface.co/datasets/{repo_id} "
                  f"(tag {tag}, {result['uploaded']} files uploaded, {result['skipped']} already there)")
    return {"dry_run": False, "stage": stage_dir, "plan": plan, **result}


# -- pulling back -----------------------------------------------------------------------------
def restore_build(src: Path, out: Path, overwrite: bool = False) -> Path:
    """Turn a published repo folder `src` back into the build folder `out/<builder>/<version>`,
    rebuilding the build's own shards (original field names and shard boundaries)."""
    from vlmforge.export import output_folder
    from vlmforge.manifests.finalize import write_index
    from vlmforge.manifests.verify import builder_columns

    src = Path(src)
    for name in ("build.json", "publish.json"):
        if not (src / name).exists():
            raise UserError(f"{src} is not a vlmforge publish: {name} is missing")
    info = read_build_info(src / "build.json")
    try:
        pub = json.loads((src / "publish.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{src}/publish.json is not valid JSON ({e}); the published build is damaged") from None
    if pub.get("format") != PUBLISH_FORMAT or pub.get("build_id") != info.get("build_id"):
        raise UserError(f"{src}/publish.json does not describe the build in build.json (or is of a newer format)")
    repo_paths = [hs["path"] for hs in pub["shards"]] + pub["manifest"]
    names = [info["builder"], info["version"]] + [s["shard"] for s in info["shards"]]
    unsafe = [p for p in repo_paths if not _inside(p)] + [n for n in names if not _inside(n) or "/" in n]
    if unsafe:  # a crafted repo must not read or write outside the folders it is given
        raise UserError(f"{src} names a path outside its folder ({unsafe[0]!r}); it is not a vlmforge publish")
    missing = [p for p in repo_paths if not (src / p).is_file()]
    if missing:  # e.g. a partial download: one line, before anything is written
        raise UserError(f"{src} lacks {len(missing)} file(s) that publish.json names (e.g. {missing[0]}); "
                        "the published build is incomplete, download it again")
    dest = Path(out) / info["builder"] / info["version"]
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is a file; the pulled build needs a folder there (choose another --out)")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        same = (dest / "build.json").exists() and json.loads((dest / "build.json").read_text()).get("build_id") == info["build_id"]
        if same:
            return dest
        raise UserError(f"{dest} holds something else; pass --overwrite or choose another --out")
    work = dest.with_name(dest.name + ".pulling")
    shutil.rmtree(work, ignore_errors=True)
    output_folder(work / "manifest", "the pulled build", "pull")
    inverse = {p: o for o, p in pub["fields"].items() if o != p}
    pieces: dict[str, list[tuple[str, int, int, int]]] = {}
    for hs in pub["shards"]:
        pos = 0
        for shard, start, end, _ in hs["pieces"]:
            pieces.setdefault(shard, []).append((hs["path"], pos, end - start, start))
            pos += end - start
    try:
        for s in info["shards"]:
            _restore_shard(src, work / s["shard"], s, pieces.get(s["shard"], []), inverse)
        for rel in pub["manifest"]:
            shutil.copyfile(src / rel, work / "manifest" / rel.rsplit("/", 1)[-1])
        shutil.copyfile(src / "build.json", work / "build.json")
        write_index(work, info, builder_columns(info["builder"]))
    except BaseException:  # a shard that does not rebuild, an interrupt: leave no half build behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, dest)
    return dest


def _inside(path: str) -> bool:
    """A relative path that stays inside the folder it is joined to."""
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts and "\\" not in path


def _restore_shard(src: Path, target: Path, s: dict, pieces: list[tuple[str, int, int, int]],
                   inverse: dict[str, str]) -> None:
    at = 0
    for _, _, length, start in pieces:
        if start != at:
            raise UserError(f"publish.json does not cover {s['shard']} in order (gap at byte {at})")
        at += length
    if len(pieces) == 1 and not inverse and (src / pieces[0][0]).stat().st_size == s["bytes"]:
        _place(target, src / pieces[0][0])  # published unchanged; `verify` re-hashes it
        return
    out = _HashingWriter(target)
    try:
        for path, pos, length, _ in pieces:
            _copy_members(src / path, pos, pos + length, out, inverse)
        if out.size > s["bytes"]:
            raise UserError(f"{s['shard']}: published samples exceed its recorded size")
        out.write(bytes(s["bytes"] - out.size))
    finally:
        sha = out.close()
    if sha != s["sha256"]:
        raise UserError(f"{s['shard']}: rebuilt shard has sha256 {sha[:12]}..., build.json says {s['sha256'][:12]}...")


def pull(repo: str, revision: str | None = None, out: Path = Path("builds"), overwrite: bool = False,
         download_dir: Path | None = None) -> Path:
    """Download a published build (or read a local clone of one) into `out/<builder>/<version>`."""
    src = Path(repo)
    if src.is_dir() and revision:
        raise UserError(f"{repo} is a local folder, read as it is: --revision applies to a Hub repo "
                        "(check the revision out in the clone instead)")
    if not src.is_dir():
        if src.exists() or repo.startswith(("/", ".", "~")) or repo.count("/") > 1:
            raise UserError(f"{repo} is not a folder (a local clone of a published repo) nor a Hub repo id (NAMESPACE/NAME)")
        check_repo_id(repo)
        from huggingface_hub import snapshot_download

        from vlmforge.sources.sample_coco import default_cache

        local = download_dir or default_cache() / "pull" / repo.replace("/", "--") / (revision or "main")
        token = None
        try:
            from huggingface_hub import get_token

            token = get_token()
            src = Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, local_dir=local))
        except Exception as e:  # offline, missing repo, bad revision: one line, no token
            raise UserError(_scrub(f"could not download {repo}"
                                   f"{'@' + revision if revision else ''}: {_hub_line(e)}", token)) from None
    return restore_build(src, out, overwrite)
