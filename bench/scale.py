"""Build throughput as the executor scales: 1 and 2 local worker processes, and Ray with 2 CPUs.

Builds the same source with each executor, `--repeats` times, interleaved (the machine is noisy), and
prints the median samples/s of each and its ratio to 1 local worker, in the same run. Every build is
also checked byte-identical to the first 1-worker build. Ray runs on a local instance with 2 CPUs
started once before the timings (its start-up is printed on its own line, not counted per build).

  python bench/scale.py [--images 400] [--repeats 3] [--builder copy] [--check-images full]
                        [--work bench/_work] [--memory 40000]

With `--memory N`, it measures memory instead: a 2-worker copy build of N tiny images (an image folder
of 16x16 JPEGs, so that per-record overhead dominates) runs as the CLI would, and the build process's
resident memory is printed at each quarter of the run, with its peak and the largest worker's. A flat
line is the aim: nothing the driver keeps may grow with the number of records beyond their keys.

Source: the embedded COCO-format sample at `--images` images (`vlmforge sample coco`). With the copy
builder, `--check-images full` decodes every pixel of every image in the workers, so there is CPU work
to spread; `quick` only checks headers and the build is bound by the single writer. Another builder
(`--builder occlusion`) uses its own default configuration on the same source.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's vlmforge and tests, from any working directory


def build_once(builder: str, source: Path, out: Path, executor, check_images: str) -> Path:
    from vlmforge.builders import get_builder
    from vlmforge.builders.base import run_build

    cls = get_builder(builder)
    src = cls.open_source("coco", coco_root=str(source), split="val2017")
    config = cls.Config(check_images=check_images) if builder == "copy" else cls.Config()
    return run_build(cls(config, src), out, executor, overwrite=True, quiet=True)


def tiny_folder(root: Path, n: int) -> Path:
    """`n` 16x16 JPEGs in 10 class folders (made once)."""
    import cv2
    import numpy as np

    if len(list(root.glob("*/*.jpg"))) == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        ok, jpg = cv2.imencode(".jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        (folder / f"{i:07d}.jpg").write_bytes(jpg.tobytes())
    return root


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - out)
            out |= kids
    return out


def memory(n: int, work: Path) -> int:
    """The build process's resident memory over a 2-worker copy build of `n` tiny images (Linux)."""
    import subprocess

    root = tiny_folder(work / f"tiny-{n}", n)
    out = work / "memory-out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "vlmforge.cli", "build", "copy", "--source", "imagefolder", "--root", str(root),
           "--out", str(out), "--workers", "2", "-q"]
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, env=env)
    samples: list[tuple[float, float]] = []  # (driver MB, largest worker MB)
    while proc.poll() is None:
        workers = [_rss_mb(k) for k in _children(proc.pid)]
        driver = _rss_mb(proc.pid)
        if driver:  # 0: it ended between poll() and the read; not a figure
            samples.append((driver, max(workers, default=0.0)))
        time.sleep(0.1)
    took = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0 or len(samples) < 4:
        print(f"error: the build exited with {proc.returncode} after {took:.1f}s", file=sys.stderr)
        return 1
    quarters = [samples[len(samples) * q // 4 - 1][0] for q in (1, 2, 3, 4)]
    print(f"copy build of {n:,} tiny images, 2 workers, {took:.1f}s; build process RSS (MB) at each quarter "
          f"of the run: {', '.join(f'{m:.0f}' for m in quarters)}; peak {max(s[0] for s in samples):.0f}; "
          f"largest worker {max(s[1] for s in samples):.0f}")
    print(json.dumps({"images": n, "seconds": round(took, 1), "driver_rss_mb_quarters": [round(m) for m in quarters],
                      "driver_peak_mb": round(max(s[0] for s in samples)),
                      "worker_peak_mb": round(max(s[1] for s in samples))}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--builder", default="copy")
    ap.add_argument("--check-images", default="full", choices=["quick", "full"])
    ap.add_argument("--work", type=Path, default=Path(__file__).parent / "_work")
    ap.add_argument("--memory", type=int, metavar="N", help="measure memory over a build of N tiny images instead")
    args = ap.parse_args()
    if args.memory:
        return memory(args.memory, args.work)

    from tests.helpers import build_files
    from vlmforge.executors.local import LocalExecutor
    from vlmforge.executors.ray import RayExecutor
    from vlmforge.sources.sample_coco import make_sample

    source = args.work / f"coco-{args.images}"
    if not (source / "annotations").exists():
        make_sample(source, images=args.images, seed=0)
    n = args.images

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024**2)
    print(f"ray start-up (2 CPUs): {time.perf_counter() - t:.1f}s, not counted below", flush=True)

    executors = {"local, 1 worker": lambda: LocalExecutor(1), "local, 2 workers": lambda: LocalExecutor(2),
                 "ray, 2 CPUs": lambda: RayExecutor()}
    times: dict[str, list[float]] = {k: [] for k in executors}
    reference = None
    out = args.work / "scale-out"
    try:
        for rep in range(args.repeats):
            for name, make in executors.items():
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                path = build_once(args.builder, source, out, make(), args.check_images)
                times[name].append(time.perf_counter() - t)
                files = build_files(path)
                if reference is None:
                    reference = files
                elif files != reference:
                    print(f"error: the {name} build differs from the 1-worker build", file=sys.stderr)
                    return 1
            print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)

    base = n / statistics.median(times["local, 1 worker"])
    print(f"\n{args.builder} build of {n} sample images (check_images={args.check_images}), "
          f"{os.cpu_count()} cores, median of {args.repeats}; all outputs byte-identical")
    print(f"{'executor':<20}{'samples/s':>12}{'vs 1 worker':>13}")
    rates = {}
    for name, ts in times.items():
        rates[name] = n / statistics.median(ts)
        print(f"{name:<20}{rates[name]:>12,.0f}{rates[name] / base:>12.2f}x")
    print(json.dumps({"builder": args.builder, "images": n, "check_images": args.check_images,
                      "median_samples_per_s": {k: round(v, 1) for k, v in rates.items()},
                      "ratio_vs_1_worker": {k: round(v / base, 3) for k, v in rates.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
