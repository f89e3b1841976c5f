"""Reading a finished build: its identity, its manifest through DuckDB, and its samples."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import duckdb

from vlmforge.errors import UserError
from vlmforge.manifests.finalize import BUILD_JSON, MANIFEST_DB, write_index

# Statement types a user's query may be. Everything else (CREATE, INSERT, COPY, ATTACH, INSTALL,
# LOAD, SET, PRAGMA, EXPORT, ...) is refused before it reaches DuckDB.
_READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


def split_member(name: str) -> tuple[str, str]:
    """'000123.mask.png' -> ('000123', 'mask.png'): WebDataset's rule, key up to the first dot."""
    base = name.rsplit("/", 1)[-1]
    key, _, field = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + key, field


def iter_tar_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Group a shard's members into samples: {'__key__': key, field: bytes, ...}, in file order."""
    current: dict[str, Any] | None = None
    with tarfile.open(path, "r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, field = split_member(member.name)
            data = tf.extractfile(member).read()  # type: ignore[union-attr]
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[field] = data
    if current is not None:
        yield current


@dataclass
class Build:
    """A finished build folder. `info` is build.json; `sql()` runs read-only queries on the manifest."""

    path: Path
    info: dict[str, Any] = field(repr=False)  # build.json: pages of text at a prompt

    @property
    def build_id(self) -> str:
        return self.info["build_id"]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection to manifest.duckdb with access to other files switched off."""
        db = self.path / MANIFEST_DB
        if not db.exists():
            check_manifest_parts(self)
            try:
                write_index(self.path, self.info)
            except duckdb.Error as e:  # a damaged manifest part
                raise DamagedBuildError(f"the manifest of {self.path} cannot be read ({str(e).splitlines()[0]}); "
                                        "the build folder is damaged, rebuild it with --overwrite") from None
        try:
            return duckdb.connect(str(db), read_only=True, config={"enable_external_access": False})
        except duckdb.Error as e:  # not a DuckDB file (damaged), or locked
            raise UserError(f"cannot open {db}: {str(e).splitlines()[0]}; `vlmforge manifest reindex {self.path}` "
                            "rebuilds it from the manifest parts") from None

    def sql(self, query: str, params: list | None = None) -> duckdb.DuckDBPyRelation:
        """Run one read-only statement and return its relation (call .fetchall(), .df(), ...)."""
        check_read_only(query)
        con = self.connect()
        return con.sql(query, params=params) if params else con.sql(query)

    @property
    def manifest(self) -> duckdb.DuckDBPyRelation:
        return self.connect().table("samples")

    def shards(self, split: str | None = None) -> list[Path]:
        return [self.path / s["shard"] for s in self.info["shards"] if split is None or s["split"] == split]

    def samples(self, split: str | None = None, decode: bool = True) -> Iterator[dict[str, Any]]:
        """Samples in shard order: '__key__', image bytes under their field, 'json' parsed when decode.
        A split the build does not have is an error, not an empty loop (b.samples("validation")); so is
        a shard that is missing or not the size build.json records (check_shards)."""
        if split is not None and not self.shards(split):
            have = sorted({s["split"] for s in self.info["shards"]})
            raise UserError(f"{self.path} has no split {split!r} (splits: {', '.join(have) or 'none'})")
        check_shards(self.path, self.info, split)
        return self._samples(split, decode)

    def _samples(self, split: str | None, decode: bool) -> Iterator[dict[str, Any]]:
        for shard in self.shards(split):
            for sample in iter_tar_samples(shard):
                if decode and "json" in sample:
                    sample["json"] = json.loads(sample["json"])
                yield sample

    def __len__(self) -> int:
        return sum(s["samples"] for s in self.info["shards"])


def no_samples_line(build: Build) -> str:
    """What a build without samples holds instead: the line commands that would show samples say (not
    'no sample matches', which blames a filter)."""
    rejects = sum(s["rejects"] for s in build.info["splits"].values())
    if rejects:
        return (f"{build.path} has no samples, and {rejects} rejects (vlmforge manifest stats {build.path} "
                "counts them by reason)")
    return (f"{build.path} has no samples and no rejects: its source gave no record (e.g. a --where or "
            "--parent-split that matched none)")


def shard_problems(path: Path, info: dict[str, Any], split: str | None = None) -> list[str]:
    """'<shard>: missing' or '<shard>: N bytes, build.json records M' for each shard of `split` (every
    split when None) that is not as build.json records it. A stat per shard, no hashing (`verify` hashes)."""
    out = []
    for s in info["shards"]:
        if split is not None and s["split"] != split:
            continue
        try:
            size = (Path(path) / s["shard"]).stat().st_size
        except OSError:
            out.append(f"{s['shard']}: missing")
            continue
        if "bytes" in s and size != s["bytes"]:
            out.append(f"{s['shard']}: {size} bytes, build.json records {s['bytes']}")
    return out


def check_shards(path: Path, info: dict[str, Any], split: str | None = None) -> None:
    """Refuse to read a build whose shards are not all there: its samples would be cut short without a
    word, or end in a traceback part way."""
    problems = shard_problems(path, info, split)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DamagedBuildError(f"{path} is damaged: shard {problems[0]}{more}; `vlmforge verify {path}` lists "
                                "the problems, rebuild it with --overwrite")


def manifest_part_problems(build: Build) -> dict[str, str]:
    """{manifest/<part>: what is wrong} for each sample or rejects part of build.json's shards that is
    missing or unreadable, and each Parquet file in manifest/ of no shard in build.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = []
    for s in build.info["shards"]:
        part = s["shard"].replace(".tar", ".parquet")
        names += [part, part.replace(".parquet", ".rejects.parquet")]
    problems: dict[str, str] = {}
    for name in names:
        path = build.path / "manifest" / name
        if not path.is_file():
            problems[f"manifest/{name}"] = "missing"
            continue
        try:
            pq.read_metadata(path)
        except (pa.ArrowException, OSError) as e:
            problems[f"manifest/{name}"] = f"unreadable ({str(e).splitlines()[0]})"
    for p in sorted((build.path / "manifest").glob("*.parquet")):
        if p.name not in set(names):
            problems[f"manifest/{p.name}"] = "of no shard in build.json"
    return problems


def check_manifest_parts(build: Build) -> None:
    """Refuse to index a manifest whose parts do not match build.json: its rows would be wrong without a word."""
    problems = manifest_part_problems(build)
    if problems:
        path, what = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{build.path}: manifest part {path} {what}{more}; the build folder is damaged "
                        "(`vlmforge verify` lists the problems), rebuild it with --overwrite")


def open_build(path: str | Path) -> Build:
    p = Path(path)
    info_path = p / BUILD_JSON
    if not info_path.exists():
        if not p.exists():
            raise UserError(f"build folder not found: {p}")
        if p.is_file():  # e.g. its build.json, or a shard
            hint = f"; its build folder: {p.parent}" if (p.parent / BUILD_JSON).is_file() else ""
            raise UserError(f"{p} is a file, not a build folder{hint}")
        if (p / "build.pending.json").exists():
            raise UserError(f"{p} is an unfinished build; run the same build command again to resume it")
        inside = sorted(str(b.parent) for pattern in (f"*/{BUILD_JSON}", f"*/*/{BUILD_JSON}")
                        for b in p.glob(pattern)) if p.is_dir() else []
        hint = f"; builds under it: {', '.join(inside[:3])}" + (" ..." if len(inside) > 3 else "") if inside else ""
        if is_training_run(p):
            hint = f"; it is {TRAINING_RUN}"
        elif (p / EVALUATION_MARK).is_file():
            hint = "; it is an evaluation's output folder (predictions.jsonl)"
        raise UserError(f"{p} is not a vlmforge build folder (no build.json){hint}")
    return Build(p, read_build_info(info_path))


TRAINING_RUN = "a training run (a model: give it as --model)"


EVALUATION_MARK = "predictions.jsonl"  # an evaluation's folder holds a run.json too


def is_training_run(path: Path) -> bool:
    """A `vlmforge train` output folder, given where a build is expected (not an evaluation's, which also
    writes a run.json: it was called a training run, 'a model: give it as --model')."""
    return (path / "run.json").is_file() and not (path / EVALUATION_MARK).is_file()


class DamagedBuildError(UserError):
    """build.json is there but cannot be read as a build's record (`verify` reports it as a problem)."""


def read_build_info(info_path: Path) -> dict[str, Any]:
    """build.json, checked for the keys readers rely on, so that a damaged file is one error line."""
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedBuildError(f"{info_path} is not valid JSON ({e}); the build folder is damaged, "
                                "rebuild it with --overwrite") from None
    missing = [k for k in ("build_id", "builder", "version", "splits", "shards") if not isinstance(info, dict) or k not in info]
    if missing:
        raise DamagedBuildError(f"{info_path} lacks {', '.join(missing)}; the build folder is damaged, "
                                "rebuild it with --overwrite")
    # The fields every reader walks (counts, shard names): a hand-edited value of another shape would be a
    # traceback in stats, show or report. Other fields of an entry are verify's to check, one by one.
    wrong = ("splits is not an object of split counts" if not isinstance(info["splits"], dict)
             or not all(isinstance(v, dict) for v in info["splits"].values())
             else "shards is not a list of shard entries" if not isinstance(info["shards"], list)
             or not all(isinstance(e, dict) for e in info["shards"]) else None)
    if wrong is None:
        lacks = next(([i, k] for i, e in enumerate(info["shards"]) for k in _READ_FIELDS if k not in e), None)
        if lacks is not None:
            wrong = f"shard entry number {lacks[0]} lacks {lacks[1]}"
    if wrong:
        raise DamagedBuildError(f"{info_path}: {wrong}; the build folder is damaged, rebuild it with --overwrite")
    return info


_READ_FIELDS = ("shard", "split", "samples", "rejects", "bytes")  # of each shard entry, read by every command


def check_read_only(query: str) -> None:
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise UserError(f"the query does not parse: {str(e).splitlines()[0]}") from None
    if not statements:
        raise UserError("the query is empty")
    if len(statements) > 1:
        raise UserError("give one statement at a time")
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1].upper()
        if kind == "MULTI":  # a PIVOT that first reads its ON column's values (it makes a type for them)
            raise UserError("the manifest is read-only, and this statement runs as several that write (a PIVOT "
                            "without IN?): name the values, e.g. PIVOT samples ON split IN ('train', 'test') "
                            "USING count(*)")
        if kind not in _READ_ONLY_TYPES:
            raise UserError(f"the manifest is read-only: {kind} statements are refused (use SELECT)")


def tar_header(header: bytes) -> tuple[str, int]:
    """(member name with its ustar prefix, data size) from one 512-byte tar header."""
    name = header[0:100].split(b"\0", 1)[0].decode()
    prefix = header[345:500].split(b"\0", 1)[0].decode()
    if prefix:
        name = f"{prefix}/{name}"
    return name, int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)


def long_name(kind: bytes, data: bytes) -> str | None:
    """The name a pax ('x') or GNU ('L') extended header gives the next member, else None.
    (Tars written by Python's tarfile, webdataset's writers among them, use pax headers.)"""
    if kind == b"L":
        return data.split(b"\0", 1)[0].decode()
    if kind != b"x":
        return None
    pos = 0
    while pos < len(data):  # records: b"<length> <key>=<value>\n", length counting the whole record
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode()
        pos += length
    return None


def parse_tar_bytes(raw: bytes) -> list[tuple[str, bytes]]:
    """Regular-file members of a run of tar records (one sample's slice of a shard): [(name, data)]."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    pending: str | None = None
    while pos + 512 <= len(raw):
        header = raw[pos : pos + 512]
        if header == bytes(512):
            break
        name, size = tar_header(header)
        kind = header[156:157]
        data = raw[pos + 512 : pos + 512 + size]
        pos += 512 + size + (-size % 512)
        if kind in (b"x", b"L"):
            pending = long_name(kind, data) or pending
        elif kind in (b"0", b"\0"):
            out.append((pending or name, data))
            pending = None
        else:  # directories, links, global pax headers
            pending = None
    return out


def read_sample_at(shard: str | Path, offset: int, length: int) -> dict[str, Any]:
    """One sample read by its manifest `offset` and `sample_bytes`: {'__key__': key, field: bytes}."""
    with open(shard, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    sample: dict[str, Any] = {}
    for name, data in parse_tar_bytes(raw):
        key, field = split_member(name)
        sample["__key__"] = key
        sample[field] = data
    return sample
