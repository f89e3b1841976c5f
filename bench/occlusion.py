"""Occlusion pipeline throughput, per stage and overall, next to decoding and re-encoding the same JPEGs.

  python bench/occlusion.py [--images 200] [--coco-root DIR --split val2017 --limit N] [--repeats 3]

The baseline decodes each source JPEG to RGB and encodes it again as JPEG (quality 95): the least
work any pipeline that writes new images must do. The pipeline rows run the default `occlusion`
builder (spaCy entities, co-occurrence causality, annotation grounding and masks, blocks fill) in one
process, models loaded once beforehand (start-up is reported apart), and write the shards. Images per
second count source images; each may yield several samples.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image


def baseline(files: list[str]) -> float:
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=95)
    return time.perf_counter() - t


def pipeline(source, out: Path) -> dict:
    from vlmforge.builders.base import _batches
    from vlmforge.builders.occlusion import OcclusionBuilder, OcclusionConfig
    from vlmforge.manifests.writer import ShardLimits, SplitWriter
    from vlmforge.sample import finish_results

    b = OcclusionBuilder(OcclusionConfig(), source)
    from vlmforge.curation.embedding import shared_embedder

    t = time.perf_counter()
    shared_embedder(None).setup()  # model loading is start-up, reported apart
    b.prepare()
    prep = time.perf_counter() - t
    t = time.perf_counter()
    b.setup()
    startup = time.perf_counter() - t
    t_all = time.perf_counter() - prep
    split = source.splits()[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest").mkdir(exist_ok=True)
    w = SplitWriter(out, split, b.columns, {"builder": b.name, "version": b.VERSION, "source": "coco"}, ShardLimits(), set())
    write = 0.0
    n = samples = 0
    for first, batch in _batches(source.records(split), b.batch_size, 0):
        results = finish_results(b.process(batch))
        t = time.perf_counter()
        for k, per in enumerate(results):
            w.add(first + k, per)
            samples += sum(1 for r in per if hasattr(r, "key"))
        write += time.perf_counter() - t
        n += len(batch)
    t = time.perf_counter()
    w.finish(n)
    write += time.perf_counter() - t
    total = time.perf_counter() - t_all
    stages = dict(b.stage_seconds)
    stages.pop("_encode_in_batch", None)
    stages["write shards"] = write
    return {"total": total, "stages": stages, "startup": startup, "images": len(source.ds.images), "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="images in the generated sample")
    ap.add_argument("--coco-root", type=Path, help="also measure on a COCO root (official layout)")
    ap.add_argument("--split", default="val2017")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from vlmforge.sources.coco import CocoSource
    from vlmforge.sources.sample_coco import make_sample

    work = Path(tempfile.mkdtemp(prefix="vlmforge-bench-"))
    datasets = {"sample": make_sample(work / "coco", images=args.images)}
    if args.coco_root:
        datasets["coco"] = args.coco_root
    try:
        for name, root in datasets.items():
            source = CocoSource.from_paths(unit="image", coco_root=root, split=args.split)
            files = [str(source.ds.image_path(i)) for i in sorted(source.ds.images)]
            base, runs = [], []
            for rep in range(args.repeats):
                base.append(baseline(files))
                shutil.rmtree(work / "out", ignore_errors=True)
                runs.append(pipeline(CocoSource.from_paths(unit="image", coco_root=root, split=args.split), work / "out"))
            n = len(files)
            b_rate = n / statistics.median(base)
            best = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
            p_rate = n / best["total"]
            print(f"\n[{name}] {n} images -> {best['samples']} samples; model start-up {best['startup']:.1f}s (not counted)")
            print(f"{'stage':<22}{'seconds':>9}{'images/s':>11}")
            for stage, sec in best["stages"].items():
                print(f"{stage:<22}{sec:>9.2f}{(n / sec if sec else float('inf')):>11.0f}")
            print(f"{'pipeline overall':<22}{best['total']:>9.2f}{p_rate:>11.0f}")
            print(f"{'decode+encode baseline':<22}{statistics.median(base):>9.2f}{b_rate:>11.0f}")
            print(f"pipeline / baseline = {p_rate / b_rate:.2f}x (target >= 0.5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
