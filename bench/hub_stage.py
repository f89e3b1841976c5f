"""Throughput of `publish` staging and `pull` restoring, next to GNU cp copying the same shards.

Builds a throwaway build of N noise JPEGs (~150 KB) with a `mask.png` member, then times, three runs
each (medians, page cache warm): cp of the shards; staging re-packed to half the shard size with the
field rename (mask.png -> mask_png, every tar header rewritten); staging re-packed with no rename (a
plain byte copy); restoring the build from the renamed repo. Usage: python bench/hub_stage.py [N]
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlmforge import hub
from vlmforge.builders.base import BuildConfig, Builder, run_build
from vlmforge.manifests.read import open_build
from vlmforge.manifests.writer import ShardLimits
from vlmforge.sample import Sample
from vlmforge.sources.base import Source


class NoiseSource(Source):
    name = "noise"

    def __init__(self, n: int):
        self.n = n

    def splits(self):
        return ["train"]

    def records(self, split):
        for i in range(self.n):
            yield {"source_id": str(i), "i": i}

    def fingerprint(self):
        return f"noise-{self.n}"


class NoiseBuilder(Builder):
    name = "noise"
    VERSION = "0.0.0"
    Config = BuildConfig

    def process(self, batch):
        out = []
        for rec in batch:
            rng = np.random.default_rng(rec["i"])
            img, mask = io.BytesIO(), io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (360, 480, 3), np.uint8)).save(img, "JPEG", quality=90)
            Image.new("L", (480, 360), 0).save(mask, "PNG")
            out.append([Sample(key=f"{rec['i']:08d}", doc={"i": rec["i"]}, image=img.getvalue(), width=480, height=360,
                               source_id=rec["source_id"], extras={"mask.png": mask.getvalue()})])
        return out


def timed(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(n: int = 400) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    try:
        b = open_build(run_build(NoiseBuilder(BuildConfig(), NoiseSource(n)), work / "builds",
                                 limits=ShardLimits(max_samples=n // 4), quiet=True))
        total = sum(s["bytes"] for s in b.info["shards"])
        shard = b.info["shards"][0]["bytes"]
        print(f"build: {len(b)} samples, {len(b.info['shards'])} shards, {total / 1e6:.1f} MB")

        def cp():
            dst = work / "cp"
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()
            subprocess.run(["cp", *map(str, b.shards()), str(dst)], check=True)

        def stage(rename: bool):
            def run():
                d = work / "stage"
                shutil.rmtree(d, ignore_errors=True)
                plan = hub.plan_publish(b, target_shard_bytes=shard // 2)
                if not rename:
                    plan.fields = {k: k for k in plan.fields}
                hub.stage(plan, d, "bench/noise", quiet=True)
            return run

        stage(True)()
        staged = work / "stage" / "repo"

        def restore():
            shutil.rmtree(work / "pulled", ignore_errors=True)
            hub.restore_build(staged, work / "pulled")

        t_cp = timed(cp)
        rows = [("GNU cp of the shards", t_cp), ("stage, re-pack + rename", timed(stage(True))),
                ("stage, re-pack, no rename", timed(stage(False)))]
        stage(True)()
        rows.append(("pull restore (rename back)", timed(restore)))
        for name, t in rows:
            print(f"{name:28s} {t:7.3f} s  {total / t / 1e6:8.1f} MB/s  {t_cp / t:5.2f}x cp")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
