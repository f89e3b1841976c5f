"""Shard-writing throughput: vlmforge's writer vs GNU tar vs webdataset.ShardWriter, same files, same run.

Writes N passthrough JPEG samples (default 10,000 files of ~160 KB) as shards and prints samples/s of
each writer and its ratio to GNU tar. Each writer runs `--repeats` times, interleaved, and the median
counts (the machine is noisy). Page cache is warm for all of them (the files are read once first).

  python bench/shards.py [--samples 10000] [--repeats 3] [--work bench/_work]

`GNU tar + sha256` is tar followed by `openssl dgst -sha256` of its archive: the same job a build's
writer does (build.json records each shard's sha256), for context; the target is plain tar.

vlmforge rows:
- `vlmforge writer`: what the writer process of a (multi-worker) build does with passthrough images:
  it unpickles the result batches the workers sent (16 samples each, made beforehand by the same
  `finish_results` the workers run: each image a FileSpan, path and size, the json member encoded),
  and writes them: each image is copied file to file in the kernel (copy_file_range) after its tar
  header; json member, the shard's sha256 (on a second thread, from the page cache), manifest row,
  Parquet part.
- `vlmforge writer, image bytes`: the same with the image bytes in the writer's memory (it reads
  each file itself): what it does with images a builder made, or in a one-worker build.
- `vlmforge writer+image sha`: the bytes row with each image's sha256 computed in the writer process,
  as in a one-worker build.
- `vlmforge writer, no shard sha`: the first vlmforge row with the shard sha256 switched off, to show
  what that hash costs (builds always compute it: build.json records it).
- `vlmforge copy build` (1 worker, in one process) and `..., 2 workers`: the whole `vlmforge build
  copy` on the same files (source enumeration, image header check, image sha256, batching,
  manifest.duckdb), for reference.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


digests: dict[str, str] = {}
sizes: dict[str, int] = {}


def make_files(folder: Path, n: int, distinct: int = 40) -> list[Path]:
    """n JPEGs of ~160 KB (noisy 640x480 at quality 92), `distinct` different ones repeated."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("*.jpg"))
    if len(files) == n:
        return files
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(distinct):
        base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((640, 480), Image.BILINEAR)
        arr = np.asarray(img).astype(np.int16) + rng.normal(0, 18, (480, 640, 3)).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
        blobs.append(buf.getvalue())
    for i in range(n):
        (folder / f"{i:012d}.jpg").write_bytes(blobs[i % distinct])
    return sorted(folder.glob("*.jpg"))


def read_file(path: Path) -> bytes:
    """One open, one fstat, one read: the cheapest way Python gets a file's bytes (used by every row)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def warm(files: list[Path]) -> int:
    return sum(len(f.read_bytes()) for f in files)


def run_gnu_tar(files: list[Path], out: Path) -> None:
    lst = out.with_suffix(".list")
    lst.write_text("\n".join(f.name for f in files) + "\n")
    subprocess.run(["tar", "cf", str(out), "-C", str(files[0].parent), "-T", str(lst)], check=True)


def run_gnu_tar_sha(files: list[Path], out: Path) -> None:
    """GNU tar doing what a build does, a checksum of each archive: tar, then the archive's sha256
    with `openssl dgst` (SHA-NI; coreutils' sha256sum measured 4x slower here)."""
    run_gnu_tar(files, out)
    with open(f"{out}.sha256", "wb") as fh:
        subprocess.run(["openssl", "dgst", "-sha256", str(out)], check=True, stdout=fh)


def run_webdataset(files: list[Path], out: Path) -> None:
    import webdataset as wds

    with wds.ShardWriter(str(out) + "-%06d.tar", maxcount=100_000, maxsize=1 << 30, verbose=0) as sink:
        for f in files:
            sink.write({"__key__": f.stem, "jpg": read_file(f),
                        "json": {"id": f.stem, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                                 {"from": "gpt", "value": "An image."}]}})


def doc_of(stem: str) -> dict:
    return {"id": stem, "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                          {"from": "gpt", "value": "An image."}]}


def worker_batches(files: list[Path], batch: int = 16) -> list[bytes]:
    """The pickled result batches that the workers of a copy build send the writer (not timed: the
    workers' part of the build)."""
    import pickle

    from vlmforge.sample import Sample, finish_results

    out = []
    for start in range(0, len(files), batch):
        results = [[Sample(key=f.stem, image=read_file(f), image_ext="jpg", width=640, height=480, source_id=f.name,
                           image_file=str(f), doc=doc_of(f.stem))] for f in files[start : start + batch]]
        out.append(pickle.dumps(finish_results(results, by_reference=True), protocol=pickle.HIGHEST_PROTOCOL))
    return out


BATCHES: list[bytes] = []


def run_vlmforge_writer_process(files: list[Path], out: Path) -> None:
    """The writer process of a multi-worker build: unpickle each batch as it arrives, write it."""
    import pickle

    from vlmforge.manifests.writer import ShardLimits, SplitWriter

    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest").mkdir(exist_ok=True)
    w = SplitWriter(out, "train", [], {"builder": "bench", "version": "0", "source": "files"},
                    ShardLimits(max_samples=100_000, max_bytes=1 << 30), set())
    i = 0
    for blob in BATCHES:
        for per_record in pickle.loads(blob):
            w.add(i, per_record)
            i += 1
    w.finish(i)


def run_vlmforge(files: list[Path], out: Path, digest_upstream: bool = True) -> None:
    """The writer fed samples made in the same loop, each image's bytes read by the writer itself (a
    one-worker build, or images a builder made)."""
    from vlmforge.manifests.writer import ShardLimits, SplitWriter
    from vlmforge.sample import Sample

    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest").mkdir(exist_ok=True)
    w = SplitWriter(out, "train", [], {"builder": "bench", "version": "0", "source": "files"},
                    ShardLimits(max_samples=100_000, max_bytes=1 << 30), set())
    for i, f in enumerate(files):
        s = Sample(key=f.stem, image=read_file(f), image_ext="jpg", width=640, height=480, source_id=f.name,
                   image_sha256=digests[f.name] if digest_upstream else None,
                   doc=doc_of(f.stem))
        w.add(i, [s])
    w.finish(len(files))


def run_vlmforge_inline_digest(files: list[Path], out: Path) -> None:
    run_vlmforge(files, out, digest_upstream=False)


def run_vlmforge_no_shard_hash(files: list[Path], out: Path) -> None:
    """The writer with the shard's sha256 switched off: isolates the cost of that hash (build.json
    needs it, so builds never run this way)."""
    import vlmforge.manifests.tarwriter as tw

    class _NoHash:
        def __init__(self, path: str) -> None:
            pass

        def advanced(self, written: int) -> None:
            pass

        def finish(self, size: int) -> None:
            pass

        def digest(self) -> str:
            return "0" * 64

        def done(self) -> bool:
            return True

        def stop(self) -> None:
            pass

    real = tw._FileHasher
    tw._FileHasher = _NoHash
    try:
        run_vlmforge_writer_process(files, out)
    finally:
        tw._FileHasher = real


def run_copy_build(files: list[Path], out: Path, workers: int = 1) -> None:
    import vlmforge

    vlmforge.build("copy", "imagefolder", out=out, source_options={"root": str(files[0].parent.parent)}, quiet=True,
                   workers=workers)


def run_copy_build_2(files: list[Path], out: Path) -> None:
    run_copy_build(files, out, workers=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "_work")
    ap.add_argument("--no-copy-build", action="store_true", help="skip the whole-build reference rows")
    args = ap.parse_args()
    from vlmforge.executors.memory import tune_allocator

    tune_allocator()  # every build process runs with it (run_build, workers): so do all rows, every repeat
    src = args.work / "jpegs" / "images"  # ROOT/<class>/<image> layout for the imagefolder source
    files = make_files(src, args.samples)
    total = warm(files)
    print(f"{len(files)} JPEG files, {total / len(files) / 1024:.0f} KB each on average, {total / 2**30:.2f} GiB")
    global digests, sizes, BATCHES
    # In a build, workers compute each image's sha256 (vlmforge.sample.finish_results) in parallel;
    # the writer process packs, hashes the shard and writes the manifest: the vlmforge writer rows.
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    sizes = {f.name: f.stat().st_size for f in files}
    BATCHES = worker_batches(files)
    writers = {"GNU tar": run_gnu_tar, "GNU tar + sha256": run_gnu_tar_sha, "webdataset ShardWriter": run_webdataset,
               "vlmforge writer": run_vlmforge_writer_process, "vlmforge writer, image bytes": run_vlmforge,
               "vlmforge writer+image sha": run_vlmforge_inline_digest,
               "vlmforge writer, no shard sha": run_vlmforge_no_shard_hash}
    if not args.no_copy_build:
        writers["vlmforge copy build"] = run_copy_build
        writers["vlmforge copy build, 2 workers"] = run_copy_build_2
    times: dict[str, list[float]] = {k: [] for k in writers}
    out_root = args.work / "out"
    for rep in range(args.repeats):
        for name, fn in writers.items():
            shutil.rmtree(out_root, ignore_errors=True)
            out_root.mkdir(parents=True)
            target = out_root / ("x.tar" if name.startswith("GNU tar") else "x")
            t = time.perf_counter()
            fn(files, target)
            times[name].append(time.perf_counter() - t)
        print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    shutil.rmtree(out_root, ignore_errors=True)
    base = len(files) / statistics.median(times["GNU tar"])
    print(f"\n{'writer':<28}{'samples/s':>12}{'MB/s':>9}{'vs GNU tar':>12}")
    result = {}
    for name, ts in times.items():
        rate = len(files) / statistics.median(ts)
        result[name] = rate
        print(f"{name:<28}{rate:>12,.0f}{total / statistics.median(ts) / 1e6:>9,.0f}{rate / base:>11.2f}x")
    print(json.dumps({"samples": len(files), "median_samples_per_s": {k: round(v) for k, v in result.items()},
                      "ratio_vs_gnu_tar": {k: round(v / base, 3) for k, v in result.items()}}))


if __name__ == "__main__":
    sys.exit(main())
