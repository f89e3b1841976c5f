"""Builder: name, VERSION, typed Config, the run loop, and build identity.

A builder module reads like a recipe: a `Config` dataclass, a `source()` that opens the input, an
optional `setup()` that loads models once per worker, and `process(batch)` that turns each record into
samples and rejects. `run_build` does the rest: folder, resume, shards, manifest, build.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pyarrow as pa

from vlmforge.errors import BuildError
from vlmforge.manifests.schema import BASE_COLUMNS
from vlmforge.manifests.writer import ShardLimits, SplitWriter, complete_shards, remove_incomplete
from vlmforge.progress import progress_bar
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record, Source

PENDING = "build.pending.json"


@dataclass
class BuildConfig:
    """Fields every builder config has. Subclasses add their own; all must be JSON-serialisable."""

    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Builder:
    name: ClassVar[str] = "builder"
    VERSION: ClassVar[str] = "0.0.0"
    Config: ClassVar[type[BuildConfig]] = BuildConfig
    description: ClassVar[str] = ""
    # Builder-specific manifest columns: (name, arrow type, description).
    columns: ClassVar[list[tuple[str, pa.DataType, str]]] = []
    batch_size: ClassVar[int] = 16

    def __init__(self, config: BuildConfig, source: Source):
        self.config = config
        self.src = source
        # Processes the executor runs (set by run_build): prepare() may use as many for corpus-wide work.
        self.processes = 1

    def __getstate__(self) -> dict[str, Any]:
        # A builder is pickled only to go to workers: its source goes in its worker form (for COCO,
        # the categories without the per-image tables, which the records carry; for train2017 that
        # is most of 450 MB of annotations not copied into every worker).
        state = dict(self.__dict__)
        state["src"] = self.src.for_workers()
        return state

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        """The builder's source from the CLI's --source and its options. Builders narrow or extend it."""
        from vlmforge.sources import open_source

        return open_source(kind or "coco", **options)

    def prepare(self) -> None:
        """Work that needs every record before the first batch (corpus statistics, per-class
        generation). Runs once in the driver each time a build starts or resumes, not when the build
        is already complete; keep results on `self` (they travel to workers with the builder, so drop
        loaded models in __getstate__) and make it cheap to repeat (cache model calls)."""

    def with_prepared(self, records: Iterator[Record]) -> Iterator[Record]:
        """Records on their way from the source to `process`, in the driver: a builder whose
        prepare() made per-record data (the occlusion builder's caption entities) adds each record's
        part here, so that workers get it with the record instead of all of it with the builder."""
        return records

    def setup(self) -> None:
        """Load models or lookup tables. Called once per worker, after forking."""

    def prefetch(self, batch: list[Record]) -> None:
        """Where batches run in the build process itself, called with the next batch just before the
        current one is processed: a builder may start reading that batch's inputs in a thread (work that
        releases the GIL), to be picked up by its `process`. Never changes what `process` returns."""

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        """For each record of `batch`, the samples and rejects it yields (one list per record)."""
        raise NotImplementedError

    # -- identity -------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        ident = {
            "builder": self.name,
            "version": self.VERSION,
            "config": self.config.to_dict(),
            "source": self.src.describe(),
            "source_fingerprint": self.src.fingerprint(),
            "parents": list(self.src.parents),
        }
        ident["build_id"] = build_id_of(ident)
        return ident


def build_id_of(ident: dict[str, Any]) -> str:
    """The build id: a hash of what makes the build (`verify` checks build.json's against it)."""
    return hashlib.sha256(
        json.dumps({k: ident[k] for k in ("builder", "version", "config", "source_fingerprint", "parents")},
                   sort_keys=True).encode()
    ).hexdigest()[:16]


def check_template(template: str, fields: list[str], option: str) -> None:
    """A UserError naming the placeholders of `template` outside `fields`: caught before the build, not
    as a KeyError in the middle of it."""
    import string

    try:
        used = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # an unmatched brace
        raise BuildError(f"{option} {template!r} is not a valid template: {e}; write {{{{ and }}}} for literal braces") from None
    unknown = sorted({n for n in used if n not in fields})
    if unknown:
        names = ", ".join("{" + n + "}" for n in unknown)
        raise BuildError(f"{option} has unknown placeholder(s) {names}; use {', '.join('{' + f + '}' for f in fields)}")


def _batches(records, batch_size: int, start: int):
    """Batches aligned to absolute input indices, so a resumed run forms the same batches
    (model outputs can depend on batch composition through padding). Yields (first_index, batch)."""
    batch: list[Record] = []
    first = 0
    for i, rec in enumerate(records):
        if i < start - (start % batch_size):
            continue
        if not batch:
            first = i
        batch.append(rec)
        if len(batch) == batch_size:
            yield first, batch
            batch = []
    if batch:
        yield first, batch


def build_dir_for(out: Path, builder: Builder) -> Path:
    return Path(out) / builder.name / builder.VERSION


def _check_folder(build_dir: Path, ident: dict[str, Any], overwrite: bool) -> bool:
    """Returns True when the folder already holds this exact, finished build."""
    info_path = build_dir / "build.json"
    pending_path = build_dir / PENDING
    for path in (info_path, pending_path):
        if not path.exists():
            continue
        try:
            other = json.loads(path.read_text())
        except ValueError:
            other = None
        if not isinstance(other, dict):  # a damaged record of some build: replaced with --overwrite, like any other
            other = {"build_id": "unreadable"}
        if other.get("build_id") == ident["build_id"]:
            return path == info_path
        # An unfinished build that finished no shard holds nothing to keep (a run that failed early,
        # say on a wrong option): the corrected command replaces it without --overwrite.
        empty = path == pending_path and not any((build_dir / "manifest").glob("*.stats.json"))
        if not overwrite and not empty:
            state = "an unfinished build" if path == pending_path else "another build"
            raise BuildError(
                f"{build_dir} holds {state} of {ident['builder']} {ident['version']} "
                f"(build id {other.get('build_id')}, config or source differ); "
                "pass --overwrite to replace it or --out to build elsewhere"
            )
        shutil.rmtree(build_dir)
        return False
    if build_dir.exists() and any(build_dir.iterdir()) and not overwrite:
        raise BuildError(f"{build_dir} exists and is not a vlmforge build; pass --overwrite or choose another --out")
    return False


def run_build(
    builder: Builder,
    out: Path | str = "builds",
    executor=None,
    limits: ShardLimits = ShardLimits(),
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Build (or resume, or find finished) `builder`'s output under `out`. Returns the build folder."""
    from vlmforge.executors.local import LocalExecutor
    from vlmforge.executors.memory import tune_allocator

    tune_allocator()  # this process reads (one worker) or writes every image: reuse its buffers
    executor = executor or LocalExecutor(1)
    ident = builder.identity()
    build_dir = build_dir_for(Path(out), builder)
    _check_not_a_parent(build_dir, builder.src)
    with _build_lock(build_dir):
        return _run_locked(builder, build_dir, ident, executor, limits, overwrite, quiet)


def _make_folder(folder: Path, build_dir: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # --out names a file, or a folder this user cannot write
        raise BuildError(f"cannot make the build folder {build_dir}: {e.strerror} ({e.filename})") from None


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Held while a process builds into `build_dir`: a second build of the same folder (the same
    command in another terminal, or another config) stops with one line instead of both writing the
    same shards. The lock is the kernel's (flock), so a killed build never leaves it held (only, at
    worst, an empty `.<version>.lock` file beside the folder)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    # Folders made here (OUT/, OUT/<builder>/) are removed again if the build leaves them empty (it
    # failed before its first shard): a failed first command leaves nothing behind.
    made = [p for p in (build_dir.parent, *build_dir.parent.parents) if not p.exists()]
    _make_folder(build_dir.parent, build_dir)
    # Beside the folder, not in it: --overwrite deletes the folder while the lock is held. Removed at
    # the end, while still held; a process that opened the file just before finds it gone (another
    # inode at that path, or none) and stops as if it were held.
    path = build_dir.parent / f".{build_dir.name}.lock"
    try:
        fh = open(path, "a+")
    except FileNotFoundError:  # another build removed the folder it had made, just now: make it again
        _make_folder(build_dir.parent, build_dir)
        fh = open(path, "a+")
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                raise OSError
        except OSError:
            raise BuildError(f"another vlmforge process is building into {build_dir}; wait for it to end, "
                             "or pass another --out") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)
            for folder in made:  # deepest first; stops at the first that is not empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def _run_locked(builder: Builder, build_dir: Path, ident: dict[str, Any], executor, limits: ShardLimits,
                overwrite: bool, quiet: bool) -> Path:
    from vlmforge.manifests.finalize import finalize_build

    if _check_folder(build_dir, ident, overwrite):
        if not quiet:
            from vlmforge.progress import console
            console.print(f"[green]up to date[/] {build_dir} (build {ident['build_id']})")
        return build_dir
    fresh = not build_dir.exists()
    _make_folder(build_dir / "manifest", build_dir)
    (build_dir / PENDING).write_text(json.dumps(ident, indent=1, sort_keys=True))
    builder.processes = max(1, int(getattr(executor, "workers", None) or getattr(executor, "concurrency", None) or 1))
    builder.quiet = quiet  # prepare() shows its progress bars unless quiet
    try:
        builder.prepare()
        _write_splits(builder, build_dir, executor, limits, quiet)
    except BaseException:
        if fresh and not any((build_dir / "manifest").glob("*.stats.json")):
            # No shard was finished: nothing to resume, and a corrected rerun (another config, another
            # build id) must not be refused as meeting an unfinished build.
            shutil.rmtree(build_dir, ignore_errors=True)
        raise
    return finalize_build(build_dir, ident, builder, quiet=quiet)


def _write_splits(builder: Builder, build_dir: Path, executor, limits: ShardLimits, quiet: bool) -> None:
    """Every split's shards, after those already complete."""
    seen_keys: set[str] = set()
    columns = builder.columns
    reserved = {name for name, _, _ in BASE_COLUMNS}
    clash = reserved & {name for name, _, _ in columns}
    if clash:
        raise BuildError(f"builder {builder.name} declares reserved manifest columns {sorted(clash)}")
    identity_cols = {"builder": builder.name, "version": builder.VERSION, "source": builder.src.name}
    for split in builder.src.splits():
        done = complete_shards(build_dir, split)
        remove_incomplete(build_dir, split, keep=len(done))
        for stats in done:
            seen_keys.update(_keys_of_part(build_dir, stats["shard"]))
        start = done[-1]["input_end"] if done else 0
        writer = SplitWriter(build_dir, split, columns, identity_cols, limits, seen_keys, first_index=len(done))
        records = builder.src.records(split)
        n_inputs = start
        with progress_bar(f"{builder.name} {split}", total=builder.src.count(split), disable=quiet) as advance:
            if start:
                advance(start)
            stream = executor.map_batches(builder, _batches(builder.with_prepared(records), builder.batch_size, start))
            try:
                for first, n, results in stream:
                    for offset, per_record in enumerate(results):
                        idx = first + offset
                        if idx >= start:
                            writer.add(idx, per_record)
                            advance(1)
                    n_inputs = first + n
            except BaseException:
                writer.abort()
                stream.close()  # an interrupt or a writer error: the executor stops its workers now
                raise
        writer.finish(max(n_inputs, start))


def _check_not_a_parent(build_dir: Path, src: Source) -> None:
    """A derived build never lands in, above or inside the folder of a build it reads: --overwrite would
    delete its own parent (or the parent's, the child). (`split --from builds/split/1.3.0` with the default --out builds does.) Nor
    under a folder the source lists file by file: the build would be part of its next input."""
    here = build_dir.resolve()
    for parent in getattr(src, "build_sources", [src]):
        path = getattr(getattr(parent, "build", None), "path", None)
        if path is not None and (Path(path).resolve() == here or here in Path(path).resolve().parents):
            raise BuildError(f"{build_dir} is the folder of the parent build {path}; choose another --out")
        if path is not None and Path(path).resolve() in here.parents:  # --out the parent's own folder
            raise BuildError(f"{build_dir} lies inside the parent build {path}, whose --overwrite would delete it; "
                             "choose an --out outside it")
    listed = getattr(src, "listed_root", None)  # a folder read file by file (imagefolder)
    if listed is not None and (Path(listed).resolve() == here or Path(listed).resolve() in here.parents):
        raise BuildError(f"{build_dir} lies inside --root {listed}: the next build from it would read this "
                         "build's shards as images; choose an --out outside it")


def _keys_of_part(build_dir: Path, shard: str) -> list[str]:
    import pyarrow.parquet as pq

    part = build_dir / "manifest" / shard.replace(".tar", ".parquet")
    return pq.read_table(part, columns=["key"]).column("key").to_pylist()
