"""Splitting a 665k-record LLaVA JSON: vlmforge's streaming split vs json.load + random.sample, same run.

Generates a mix665k-like file (665,298 records, ~1 GB: the sub-dataset mix of llava_v1_5_mix665k.json,
repeated ids, 1-8 turn pairs per record) once, then keeps half of it with each side, every side in its
own fresh Python process so that peak memory (ru_maxrss of that process) is its own:

- `json.load + random.sample`: the plain script: load the list, sample half, json.dump the half.
- `vlmforge export llava-split`: `vlmforge.export.split_llava_json` (one streaming pass indexes ids,
  sub-datasets and byte spans, the hashed selection is fitted on the keys, a second pass copies the
  kept records' bytes). Keeps the same records as `vlmforge build split --source llava-json`.
- with `--build`: `vlmforge build split --source llava-json --fraction 0.5` end to end (shards +
  manifest; images from a pool of 1,000 tiny JPEGs that the records point to), for reference: it
  writes a build, not a JSON, so its time is not comparable, its memory is.

Sides run `--repeats` times, interleaved; medians are printed with the ratios to the baseline.

  python bench/split.py [--records 665298] [--repeats 3] [--build] [--work bench/_work/split]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Shares of llava_v1_5_mix665k.json by image folder (haotian-liu/LLaVA issue 657).
MIX = {"coco": 364100, "vg": 86417, "gqa": 72140, "ocr_vqa": 80000, "textvqa": 21953, None: 40688}
FOLDERS = {"coco": "coco/train2017", "vg": "vg/VG_100K", "gqa": "gqa/images", "ocr_vqa": "ocr_vqa/images",
           "textvqa": "textvqa/train_images"}
POOL = 1000  # distinct image files the records point to (for --build)

BASELINE = r"""
import json, random, resource, sys, time
src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
with open(src) as f:
    data = json.load(f)
half = random.Random(seed).sample(data, round(len(data) / 2))
with open(dst, "w") as f:
    json.dump(half, f)
print(json.dumps({"seconds": time.perf_counter() - t, "kept": len(half),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

OURS = r"""
import json, resource, sys, time
t = time.perf_counter()
from vlmforge.export import split_llava_json
out = split_llava_json(sys.argv[1], sys.argv[2], fraction=0.5, seed=int(sys.argv[3]), overwrite=True)
kept = sum(1 for _ in open(out["train"], "rb")) - 2  # one record per line between '[' and ']'
print(json.dumps({"seconds": time.perf_counter() - t, "kept": kept,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BUILD = r"""
import json, resource, sys, time
t = time.perf_counter()
import vlmforge
b = vlmforge.build("split", "llava-json", out=sys.argv[2], overwrite=True, fraction=0.5, seed=int(sys.argv[3]),
                   source_options={"json": sys.argv[1], "image_root": sys.argv[4]}, max_samples_per_shard=50000)
print(json.dumps({"seconds": time.perf_counter() - t, "kept": len(b),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(path: Path, records: int, seed: int = 0) -> None:
    """A mix665k-like file: sub-datasets in the real shares, every 9th id repeated, ~1.5 KB/record."""
    rng = random.Random(seed)
    words = ("the a of on in with person dog car red blue left right above below what is there how many "
             "color bus table man woman sitting standing holding wearing shirt sign street building tree "
             "sky water food plate cat window door white black green yellow small large two three").split()
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 60))) for _ in range(4000)]
    total = sum(MIX.values())
    kinds = [k for k, n in MIX.items() for _ in range(round(n / total * 1000))]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("[\n")
        for i in range(records):
            kind = kinds[rng.randrange(len(kinds))]
            rid = f"{i - 1:09d}" if i % 9 == 8 else f"{i:09d}"
            turns = []
            for t in range(rng.choice((1, 1, 2, 3, 4, 6, 8))):
                q = sentences[rng.randrange(4000)] + f" ({i}.{t})?"
                if t == 0 and kind:
                    q = "<image>\n" + q
                turns += [{"from": "human", "value": q}, {"from": "gpt", "value": sentences[rng.randrange(4000)] + "."}]
            rec = {"id": rid}
            if kind:
                rec["image"] = f"{FOLDERS[kind]}/{rng.randrange(POOL):06d}.jpg"
            rec["conversations"] = turns
            f.write(("" if i == 0 else ",\n") + json.dumps(rec))
        f.write("\n]\n")
    tmp.replace(path)


def make_images(root: Path) -> None:
    import io

    from PIL import Image

    if (root / ".done").exists():
        return
    for folder in FOLDERS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j in range(POOL):
            buf = io.BytesIO()
            Image.new("RGB", (32, 24), (j % 256, (j * 7) % 256, 90)).save(buf, format="JPEG", quality=85)
            (root / folder / f"{j:06d}.jpg").write_bytes(buf.getvalue())
    (root / ".done").write_text("ok")


def run(script: str, *args: str) -> dict:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=sum(MIX.values()))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build", action="store_true", help="also time `vlmforge build split` on the file")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "split")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.work / f"mix{args.records}.json"
    if not src.exists():
        t = time.perf_counter()
        generate(src, args.records)
        print(f"generated {src} in {time.perf_counter() - t:.0f} s")
    print(f"input: {args.records:,} records, {src.stat().st_size / 1e9:.2f} GB")
    sides = {"json.load + random.sample": (BASELINE, [str(src), str(args.work / "baseline.json"), str(args.seed)]),
             "vlmforge export llava-split": (OURS, [str(src), str(args.work / "ours"), str(args.seed)])}
    if args.build:
        make_images(args.work / "images")
        sides["vlmforge build split (shards)"] = (BUILD, [str(src), str(args.work / "builds"), str(args.seed),
                                                          str(args.work / "images")])
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for rep in range(args.repeats):
        for name, (script, argv) in sides.items():
            if name.startswith("vlmforge build") and rep > 0:
                continue  # one run of the end-to-end build is enough for reference
            res = run(script, *argv)
            results[name].append(res)
            print(f"  run {rep + 1} {name}: {res['seconds']:.1f} s, peak {res['peak_mb']:.0f} MB, kept {res['kept']:,}")
    base = results["json.load + random.sample"]
    base_t = statistics.median(r["seconds"] for r in base)
    base_m = statistics.median(r["peak_mb"] for r in base)
    print(f"\n| side | median s | time vs baseline | peak MB | memory vs baseline | kept |")
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        t = statistics.median(r["seconds"] for r in rs)
        m = statistics.median(r["peak_mb"] for r in rs)
        print(f"| {name} | {t:.1f} | {t / base_t:.2f}x | {m:.0f} | {m / base_m:.2f}x | {rs[0]['kept']:,} |")
    shutil.rmtree(args.work / "builds", ignore_errors=True)


if __name__ == "__main__":
    main()
