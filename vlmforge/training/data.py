"""The training loader: shards (globs or build folders, with weights) streamed as batches.

How an epoch is laid out, so that splitting is exact and resuming is cheap:

1. The *epoch order* is decided once, the same in every process: shard-sized runs of sample ids
   in a shuffled shard order (seeded by seed and epoch), passed through a shuffle buffer. It never
   depends on the number of ranks or workers.
2. That order is cut into global batches of `batch_size`. Rank r takes global batches r, r+R,
   r+2R, ...; among a rank's dataloader workers, worker w takes the rank's local batches w, w+W, ...
   Torch's DataLoader hands batches out round-robin, so every rank sees its batches in order, and
   after k steps on every rank exactly the first k*R*batch_size samples of the epoch are consumed.
3. A position is therefore just {epoch, samples_seen, seed}: a resumed run rebuilds the same order
   and starts at `samples_seen`, whatever its number of workers or ranks.

Samples are read by byte range (the manifest's `offset` and `sample_bytes`, or offsets found by
scanning tar headers for shards outside a build), so a worker reads only its own samples.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vlmforge.curation.selection import TEST_SPLIT
from vlmforge.errors import UserError
from vlmforge.manifests.finalize import BUILD_JSON
from vlmforge.manifests.read import (
    TRAINING_RUN, check_shards, is_training_run, long_name, parse_tar_bytes, read_build_info, split_member, tar_header,
)

# Most samples one epoch may hold: its order is an array of 8 bytes a sample (1e9: 8 GB), made in every worker.
MAX_EPOCH = 1_000_000_000

# ---------------------------------------------------------------------------------------------
# Where the samples are


@dataclass
class ShardRef:
    """One shard: its path, sample count, which `--shards` entry it came from, and where its sample
    offsets live (a manifest Parquet part, or arrays found by scanning the tar)."""

    path: str
    samples: int
    source: int
    part: str | None = None
    offsets: np.ndarray | None = field(default=None, repr=False)
    lengths: np.ndarray | None = field(default=None, repr=False)

    def locations(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, byte lengths) of the shard's samples in file order; loaded on first use."""
        if self.offsets is None:
            if self.part is not None:
                import pyarrow.parquet as pq

                # ParquetFile, not read_table: read_table's first call imports pyarrow.dataset (~0.6 s).
                t = pq.ParquetFile(self.part).read(columns=["offset", "sample_bytes"])
                off = _int64_column(t, "offset")
                order = np.argsort(off, kind="stable")
                self.offsets, self.lengths = off[order], _int64_column(t, "sample_bytes")[order]
            else:
                self.offsets, self.lengths = scan_tar(self.path)
            if len(self.offsets) != self.samples:
                raise UserError(f"{self.path}: the index lists {len(self.offsets)} samples, expected {self.samples}; "
                                "the shard or its manifest changed after the build")
        return self.offsets, self.lengths  # type: ignore[return-value]


def _int64_column(table: Any, name: str) -> np.ndarray:
    """An int64 column without nulls as a numpy array, read from its buffers: Arrow's to_numpy()
    imports pandas on first use (~0.5 s in every dataloader worker)."""
    parts = []
    for chunk in table.column(name).chunks:
        if chunk.null_count:
            raise UserError(f"the manifest column {name!r} has missing values")
        chunk = chunk.cast("int64")
        parts.append(np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset : chunk.offset + len(chunk)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def scan_tar(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Sample offsets and byte lengths of a WebDataset tar, by reading its 512-byte headers only.
    A sample's bytes start at its first member's header, extended (pax or GNU) headers included."""
    offsets: list[int] = []
    ends: list[int] = []
    last_key = None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 512 or size % 512:  # a tar is whole 512-byte blocks; a text file this short was read as 0 samples
            raise UserError(f"{path} is not a tar file, or one cut short ({size} bytes, not a whole number of "
                            "512-byte blocks)")
        pos = 0
        start: int | None = None  # where the current member's extended headers began
        pending: str | None = None
        while pos + 512 <= size:
            f.seek(pos)
            header = f.read(512)
            if header == bytes(512):
                break
            try:
                name, length = tar_header(header)
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{path} is not a tar file (bad header at byte {pos})") from None
            kind = header[156:157]
            end = pos + 512 + length + (-length % 512)
            if kind in (b"x", b"L"):
                start = pos if start is None else start
                pending = long_name(kind, f.read(length)) or pending
            elif kind in (b"0", b"\0"):
                key, _ = split_member(pending or name)
                if key != last_key:
                    offsets.append(pos if start is None else start)
                    ends.append(end)
                    last_key = key
                else:
                    ends[-1] = end
                start, pending = None, None
            else:
                start, pending = None, None
            pos = end
    off = np.asarray(offsets, dtype=np.int64)
    return off, np.asarray(ends, dtype=np.int64) - off


def _build_shards(build_dir: Path, info: dict, source: int, split: str | None = None,
                  only: set[str] | None = None) -> list[ShardRef]:
    """A build's shards: those whose resolved path is in `only`, else those of `split` (default train,
    or every split when the build has no train split)."""
    shards = info["shards"]
    if only is None and split is None:
        split = "train" if any(s["split"] == "train" for s in shards) else None
    out = []
    for s in shards:
        path = build_dir / s["shard"]
        if only is not None:
            if str(path.resolve()) not in only:
                continue
        elif split is not None and s["split"] != split:
            continue
        check_shards(build_dir, {"shards": [s]})  # a missing tar would end in a data loader worker's traceback
        part = build_dir / "manifest" / (Path(s["shard"]).stem + ".parquet")
        out.append(ShardRef(str(path), int(s["samples"]), source, str(part) if part.exists() else None))
    return out


def _expand(spec: str) -> list[str]:
    from braceexpand import braceexpand

    paths: list[str] = []
    missing: list[str] = []
    for pattern in braceexpand(spec):
        if glob.has_magic(pattern):
            paths.extend(sorted(glob.glob(os.path.expanduser(pattern))))
        elif os.path.exists(os.path.expanduser(pattern)):
            paths.append(os.path.expanduser(pattern))
        else:
            missing.append(pattern)
    if missing and (paths or len(missing) > 1):  # a brace range naming shards that are not there
        raise UserError(f"{len(missing)} of the shards {spec!r} names do not exist (first: {missing[0]})")
    return paths


def resolve_shards(specs: Sequence[str], split: str | None = None, training: bool = False) -> list[ShardRef]:
    """Shards named by `specs`: build folders (their `split` shards; default train, or every split when
    the build has no train split), tar paths, globs or brace patterns (`train-{000000..000009}.tar`).
    Tars inside a build folder take their counts and offsets from its manifest; others are scanned.
    With `training`, a build without a train split but with a test split needs `split` named: its
    default, every split, would train on the test data."""
    if split is not None and not any(Path(spec).is_dir() for spec in specs):  # it would be ignored
        raise UserError(f"split {split!r} applies to build folders, and none is given ({specs[0]} is a shard "
                        "path: shard paths have no splits)")
    refs: list[ShardRef] = []
    infos: dict[Path, dict | None] = {}  # build.json of each folder a globbed tar lives in
    for i, spec in enumerate(specs):
        p = Path(spec)
        if p.is_dir():
            if not (p / BUILD_JSON).exists():
                evaluation = (p / "predictions.jsonl").is_file()  # its run.json made it pass for a training run
                what = ("an evaluation's output folder (predictions.jsonl), not data" if evaluation
                        else TRAINING_RUN if is_training_run(p) else "a folder without build.json")
                raise UserError(f"{spec} is {what}; give a finished build or shard paths")
            info = read_build_info(p / BUILD_JSON)
            splits = sorted({s["split"] for s in info["shards"]})
            tests = [s for s in splits if TEST_SPLIT.fullmatch(s)]
            if training and split is None and tests and "train" not in splits:
                raise UserError(f"build {spec} has no train split, so training on all of it would train on its "
                                f"{tests[0]} split (splits: {', '.join(splits)}); name a split with --split to do so")
            found = _build_shards(p, info, i, split)
            if not found:
                if not splits:
                    raise UserError(f"build {spec} is empty (no shards, 0 samples)")
                raise UserError(f"build {spec} has no shards of split {split!r} (splits: {', '.join(splits)})")
            refs.extend(found)
            continue
        paths = _expand(spec)
        if not paths:
            raise UserError(f"no shards match {spec!r}")
        matched: set[str] = set()  # splits of build shards the pattern matched
        for path in paths:
            resolved = Path(path).resolve()
            if resolved.parent not in infos:
                info_path = resolved.parent / BUILD_JSON
                infos[resolved.parent] = read_build_info(info_path) if info_path.exists() else None
            info = infos[resolved.parent]
            found = _build_shards(resolved.parent, info, i, only={str(resolved)}) if info else []
            if found:
                refs.extend(found)
                matched.update(s["split"] for s in info["shards"] if s["shard"] == resolved.name)
            else:
                off, lengths = scan_tar(resolved)
                refs.append(ShardRef(str(resolved), len(off), i, None, off, lengths))
        tests = sorted(s for s in matched if TEST_SPLIT.fullmatch(s))
        if training and tests and len(matched) > 1:  # 'build/*.tar': the train and the test shards
            raise UserError(f"{spec!r} matches shards of the splits {', '.join(sorted(matched))}, so training would "
                            f"read {tests[0]} data; give the build folder (its train split) or one split's shards")
    empty = next((spec for i, spec in enumerate(specs) if not any(r.source == i and r.samples for r in refs)), None)
    if empty is not None:  # a source of no samples among others went unnoticed, and so did empty validation data
        raise UserError(f"{empty} holds no samples (its shards are empty)")
    return [r for r in refs if r.samples > 0]


# ---------------------------------------------------------------------------------------------
# The epoch order


@dataclass
class LoaderPosition:
    """Where training stands in the data: the epoch, how many of its samples the run has consumed
    (summed over ranks), and the seed that fixes every epoch's order. Saved with each checkpoint."""

    epoch: int = 0
    samples_seen: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoaderPosition":
        return cls(int(d["epoch"]), int(d["samples_seen"]), int(d["seed"]))


def seeded_rng(*parts: Any) -> np.random.Generator:
    """A generator seeded from its labels, e.g. (seed, epoch, 'shards'): no global random stream."""
    import hashlib

    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def epoch_stream(counts: Sequence[int], sources: Sequence[int], weights: Sequence[float], epoch: int, seed: int,
                 shuffle: bool = True) -> np.ndarray:
    """Global sample ids of one epoch before the shuffle buffer, as shard-sized runs.

    A source of n samples with weight w contributes round(w * n) samples: whole copies, plus a seeded
    subset for the fraction (weights below 1 subsample, above 1 repeat). Runs come in a seeded shard
    order when `shuffle`, else in the order given."""
    counts = np.asarray(counts, dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(counts)])
    runs: list[np.ndarray] = []
    for s, w in enumerate(weights):
        mine = [i for i, src in enumerate(sources) if src == s]
        n = int(sum(counts[i] for i in mine))
        if n == 0:
            continue
        full, rem = divmod(int(round(w * n)), n)
        for _ in range(full):
            runs.extend(np.arange(base[i], base[i + 1]) for i in mine)
        if rem:
            ids = np.concatenate([np.arange(base[i], base[i + 1]) for i in mine])
            picked = np.sort(ids[seeded_rng(seed, epoch, "subset", s).permutation(n)[:rem]])
            shard_of = np.searchsorted(base, picked, side="right") - 1
            runs.extend(picked[shard_of == i] for i in mine if np.any(shard_of == i))
    if shuffle and len(runs) > 1:
        runs = [runs[j] for j in seeded_rng(seed, epoch, "shards").permutation(len(runs))]
    return np.concatenate(runs) if runs else np.zeros(0, dtype=np.int64)


class BufferedOrder:
    """A stream passed through a seeded shuffle buffer, computed lazily up to the positions asked for.

    Each incoming item replaces a randomly chosen slot of a buffer of `size` items, whose old item is
    emitted; at the end the buffer is emptied in a random order. Only integers move here, so every
    worker can afford to compute the same order and keep its own positions."""

    def __init__(self, stream: np.ndarray, size: int, rng: np.random.Generator):
        self.n = len(stream)
        self.size = max(1, min(size, self.n))
        self.out = np.empty(self.n, dtype=np.int64)
        self.done = 0
        if self.size <= 1:
            self.out[:] = stream
            self.done = self.n
            return
        self._stream = stream
        self._buf = stream[: self.size].tolist()
        self._next = self.size
        self._picks = rng.integers(0, self.size, size=self.n - self.size)
        self._rng = rng

    def _fill(self, upto: int) -> None:
        steady = self.n - self.size  # outputs made while input remains
        stop = min(upto, steady)
        if self.done < stop:
            buf, out, done = self._buf, self.out, self.done
            picks = self._picks[done:stop].tolist()
            incoming = self._stream[self._next : self._next + (stop - done)].tolist()
            for j, x in zip(picks, incoming):
                out[done] = buf[j]
                buf[j] = x
                done += 1
            self._next += stop - self.done
            self.done = done
        if upto > steady and self.done == steady:
            self.out[steady:] = self._rng.permutation(np.asarray(self._buf, dtype=np.int64))
            self.done = self.n

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions):
            need = int(positions.max()) + 1
            if need > self.done:
                # Work ahead in chunks so the Python loop runs rarely.
                self._fill(min(self.n, max(need, self.done + 8192)))
        return self.out[positions]


def batch_plan(total: int, start: int, batch_size: int, world: int, rank: int, workers: int, worker: int,
               pad_ranks: bool = False) -> Iterator[tuple[int, np.ndarray, int]]:
    """The global batches one (rank, worker) produces: (global batch index, positions in the epoch
    order, samples_seen after it). Global batch g covers positions start + g*B ...; rank r takes
    g = k*R + r for its local batch k, and worker w takes the local batches k = w, w+W, ...

    With `pad_ranks`, ranks left without a last batch get one made of the epoch's first positions
    (as torch's DistributedSampler pads), so all ranks take the same number of steps."""
    remaining = max(0, total - start)
    n_batches = math.ceil(remaining / batch_size)
    rounds = math.ceil(n_batches / world)
    limit = rounds * world if pad_ranks else n_batches
    k = worker
    while True:
        g = k * world + rank
        if g >= limit:
            return
        lo = start + g * batch_size
        if g < n_batches:
            pos = np.arange(lo, min(lo + batch_size, total))
        else:
            pos = np.arange(lo, lo + batch_size) % max(total, 1)
        yield g, pos, min(total, start + (g // world + 1) * world * batch_size)
        k += workers


# ---------------------------------------------------------------------------------------------
# Reading


class SampleReader:
    """Reads samples by global id with one open file per shard (opened lazily, per worker)."""

    def __init__(self, shards: Sequence[ShardRef]):
        self.shards = shards
        self.base = np.concatenate([[0], np.cumsum([s.samples for s in shards])]).astype(np.int64)
        self._fds: dict[int, int] = {}

    def read(self, gid: int, decode_json: bool = True) -> dict[str, Any]:
        i = int(np.searchsorted(self.base, gid, side="right") - 1)
        ref = self.shards[i]
        offsets, lengths = ref.locations()
        fd = self._fds.get(i)
        if fd is None:
            fd = self._fds[i] = os.open(ref.path, os.O_RDONLY)
        local = gid - int(self.base[i])
        raw = os.pread(fd, int(lengths[local]), int(offsets[local]))
        sample: dict[str, Any] = {"__source__": ref.source}
        for name, data in parse_tar_bytes(raw):
            key, fld = split_member(name)
            sample["__key__"] = key
            sample[fld] = data
        if decode_json and "json" in sample:
            sample["json"] = json.loads(sample["json"])
        return sample

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _samples_only(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"samples": samples}


def _iterable_base():
    try:
        from torch.utils.data import IterableDataset

        return IterableDataset
    except ImportError:  # pragma: no cover - torch is part of the training stack
        return object


class ShardStream(_iterable_base()):  # type: ignore[misc]
    """Batches from shards for a torch DataLoader (use `batch_size=None`: batching happens here).

    Each batch is `collate(samples)` (a dict; by default {'samples': [...]}) with `epoch` and
    `samples_seen` (the run's position once every rank has taken this step) added. Samples are
    dicts of tar fields (bytes) with 'json' parsed, '__key__' and '__source__' (index into `specs`).
    """

    def __init__(self, shards: Sequence[ShardRef], batch_size: int, collate: Callable[[list[dict]], dict] | None = None,
                 weights: Sequence[float] | None = None, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 1000, position: LoaderPosition | None = None, rank: int | None = None,
                 world_size: int | None = None, pad_ranks: bool | None = None):
        if batch_size < 1:
            raise UserError("the batch size must be at least 1")
        self.shards = list(shards)
        if not self.shards:
            raise UserError("no samples to train on: the shards are empty")
        n_sources = max(s.source for s in self.shards) + 1
        self.weights = list(weights) if weights is not None else [1.0] * n_sources
        if len(self.weights) < n_sources:
            raise UserError(f"{n_sources} shard sources but {len(self.weights)} weights; give one weight per --shards")
        if any(w < 0 for w in self.weights):
            raise UserError("weights must not be negative")
        if any(not w < math.inf for w in self.weights):  # NaN too: no whole number of samples
            raise UserError("weights must be finite numbers")
        size = self.epoch_size()
        if size == 0:  # an epoch of nothing: the run would wait for a batch forever
            raise UserError(f"the weights {','.join(f'{w:g}' for w in self.weights)} leave no sample in an epoch")
        if size > MAX_EPOCH:  # the epoch's order is held in memory: 8 bytes a sample (1e300 hung the run)
            many = f"{size:,}" if size < 10**15 else f"about 10^{len(str(size)) - 1}"
            raise UserError(f"the weights {','.join(f'{w:g}' for w in self.weights)} make an epoch of {many} "
                            f"samples, more than {MAX_EPOCH:,}; give smaller weights and more --epochs")
        self.batch_size = batch_size
        self.collate = collate or _samples_only
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer if shuffle else 1
        self.position = position or LoaderPosition(seed=seed)
        self.rank, self.world_size, self.pad_ranks = rank, world_size, pad_ranks
        if any(s.part is not None for s in self.shards):
            import pyarrow.parquet  # noqa: F401  (imported here once, not in every dataloader worker)

    def epoch_order(self, epoch: int) -> BufferedOrder:
        """The epoch's order (global sample ids), the same in every process."""
        stream = epoch_stream([s.samples for s in self.shards], [s.source for s in self.shards], self.weights,
                              epoch, self.position.seed, self.shuffle)
        return BufferedOrder(stream, self.shuffle_buffer, seeded_rng(self.position.seed, epoch, "buffer"))

    def epoch_size(self) -> int:
        """Samples in one epoch (weights applied)."""
        total = 0
        for s, w in enumerate(self.weights):
            total += int(round(w * sum(r.samples for r in self.shards if r.source == s)))
        return total

    def set_position(self, position: LoaderPosition) -> None:
        self.position = position

    def _layout(self) -> tuple[int, int, int, int]:
        rank, world = (self.rank, self.world_size) if self.rank is not None else _dist_rank_world()
        world = self.world_size or world
        try:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
        except ImportError:  # pragma: no cover
            info = None
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self._layout()
        yield from self.iter_as(rank, world, worker, workers)

    def iter_as(self, rank: int, world: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        """The batches of one (rank, worker) consumer; `__iter__` finds its own place."""
        pos = self.position
        order = self.epoch_order(pos.epoch)
        pad = self.pad_ranks if self.pad_ranks is not None else world > 1
        reader = SampleReader(self.shards)
        try:
            for _, positions, seen in batch_plan(order.n, pos.samples_seen, self.batch_size, world, rank, workers,
                                                 worker, pad):
                samples = [reader.read(int(g)) for g in order[positions]]
                batch = self.collate(samples)
                batch["epoch"], batch["samples_seen"] = pos.epoch, seen
                yield batch
        finally:
            reader.close()
