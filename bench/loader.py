"""Training-loader throughput and start-up: vlmforge's shard loader vs a LLaVA-style JSON + image folder loader.

Both loaders produce the same thing for a LLaVA-1.5 model: vicuna_v1 text with only the answers
trained, the image token expanded to 576 tokens, images padded to square and run through CLIP's
336 px image processor, batches padded. The tokenizer is the tiny offline BPE (no download).

- `shards`: `vlmforge.training.data.ShardStream` over a copy build + `LlavaCollator` (one tokenizer call
  per batch, masks from offsets, image transform checked against the processor).
- `json+folder`: what LLaVA's `LazySupervisedDataset` does, in our own words: `json.load` of the whole
  list, per item open the image file, pad, `image_processor(image)`, build the vicuna prompt and find
  the answer tokens by tokenising each round again; a collate function pads and stacks.
- `shards model-ready`: the same shard loader over a `model-ready` build made from the same copy build
  with the same CLIP 336 px settings: images stored padded to square and resized (JPEG q95, 4:4:4), so
  the loader decodes 336x336 images and only normalises them. Building it is a one-off cost, printed.
- `json+folder model-ready`: the JSON + folder loader over the same JSON, its image folder holding those
  model-ready images: the like-for-like comparison. Ratios are against `json+folder` over the originals,
  as for the first two rows, and the model-ready rows' ratio to each other is printed below them.

Throughput (samples/s through a DataLoader with the same number of workers and batch size, from the
first batch to the last, page cache warm) is measured on `--samples` records pointing at 480x360
JPEGs; each loader runs `--repeats` times, interleaved, and the median counts. Start-up (constructing
the loader until its first batch arrives) is measured on a `--records` set (default 665,000, the size
of llava_v1_5_mix665k.json), whose records point at a small set of thumbnails so that its build stays
a few GB; start-up reads only the first batch's images.

  python bench/loader.py [--records 665000] [--samples 4000] [--workers 2] [--batch-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE_SIZE, PATCH = 336, 14
QUESTIONS = ["What is in the image?", "How many {o}s are there?", "What color is the {o}?", "Where is the {o}?",
             "Is there a {o} in the picture? Answer yes or no.", "What is the {o} next to?",
             "Describe the scene in detail.", "What might the {o} be used for?"]
OBJECTS = ["car", "dog", "cat", "horse", "person", "bench", "bus", "cup", "pizza", "bottle", "table", "kite"]
ANSWERS = ["Yes.", "No.", "Two.", "It is red.", "On the left side of the street.", "A man riding a horse next to a "
           "red car on the street, with two dogs sitting on a bench near a woman holding an umbrella.",
           "The {o} is next to a table with a pizza, a cup and a bottle in a small kitchen near an oven."]
# GPT-written detailed answers make up much of LLaVA-665k's bytes (~1.5 KB per record on average).
LONG = ("In the image, a {o} stands near the centre of a busy street scene. To its left, a man riding a horse "
        "passes a red car parked by the pavement, while two dogs sit on a wooden bench next to a woman holding "
        "an umbrella. Behind them, a bus waits at a traffic light and several people cross the road. The scene "
        "suggests a calm afternoon in a city: the light is soft, the shops are open, and nobody seems to be in "
        "a hurry. The {o} appears to belong to one of the people nearby, since it is close to them and they "
        "glance at it from time to time. Overall, the picture shows everyday life with vehicles, animals and "
        "people sharing the same space.")


def make_records(n: int, images: list[str], seed: int = 0) -> list[dict]:
    """LLaVA-665k-like records: 1-8 rounds (VQA-style multi-turn or a long description), ~4% text-only."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rounds = int(rng.choice([1, 1, 1, 2, 3, 4, 5, 6, 8]))
        conv = []
        for r in range(rounds):
            o = OBJECTS[int(rng.integers(len(OBJECTS)))]
            q = QUESTIONS[int(rng.integers(len(QUESTIONS)))].format(o=o)
            a = (LONG if rng.random() < 0.45 else ANSWERS[int(rng.integers(len(ANSWERS)))]).format(o=o)
            conv += [{"from": "human", "value": ("<image>\n" if r == 0 else "") + q}, {"from": "gpt", "value": a}]
        rec = {"id": f"{i:09d}", "conversations": conv}
        if rng.random() >= 0.04:
            rec["image"] = images[i % len(images)]
        else:
            conv[0]["value"] = conv[0]["value"].replace("<image>\n", "")
        out.append(rec)
    return out


def prepare(work: Path, records: int, samples: int) -> dict[str, Path]:
    """Images, JSON files and builds, made once and kept in `work`."""
    import vlmforge
    from vlmforge.builders.copy import CopyBuilder
    from PIL import Image
    from vlmforge.sources.sample_coco import make_sample

    work.mkdir(parents=True, exist_ok=True)
    coco = work / "coco_sample"
    if not (coco / "val2017").exists():
        make_sample(coco, images=64, seed=0)
    names = sorted(p.name for p in (coco / "val2017").glob("*.jpg"))
    full, thumb = work / "images_full", work / "images_thumb"
    for root, size in ((full, None), (thumb, (64, 48))):
        dst = root / "coco" / "train2017"
        if not dst.exists():
            dst.mkdir(parents=True)
            for n in names:
                if size is None:
                    (dst / n).write_bytes((coco / "val2017" / n).read_bytes())
                else:
                    buf = io.BytesIO()
                    Image.open(coco / "val2017" / n).resize(size).save(buf, format="JPEG", quality=90)
                    (dst / n).write_bytes(buf.getvalue())
    rel = [f"coco/train2017/{n}" for n in names]
    paths = {"small_json": work / f"small-{samples}.json", "big_json": work / f"big-{records}.json",
             "images_full": full, "images_thumb": thumb}
    if not paths["small_json"].exists():
        paths["small_json"].write_text(json.dumps(make_records(samples, rel, seed=1)))
    if not paths["big_json"].exists():
        t = time.time()
        tmp = paths["big_json"].with_suffix(".tmp")
        tmp.write_text(json.dumps(make_records(records, rel, seed=2)))
        os.replace(tmp, paths["big_json"])
        print(f"wrote {records:,} records ({paths['big_json'].stat().st_size / 1e6:.0f} MB) in {time.time() - t:.0f} s")
    for name, src, images in (("small", paths["small_json"], full), ("big", paths["big_json"], thumb)):
        out = work / f"build-{name}-{src.stem}"
        if not (out / "copy" / CopyBuilder.VERSION / "build.json").exists():
            t = time.time()
            vlmforge.build("copy", "llava-json", out=out, workers=2, quiet=False,
                           source_options={"json": str(src), "image_root": str(images)})
            print(f"built {name} set in {time.time() - t:.0f} s")
        paths[f"{name}_build"] = out / "copy" / CopyBuilder.VERSION
    prepare_model_ready(work, paths)
    return paths


def prepare_model_ready(work: Path, paths: dict) -> None:
    """The small build made model-ready (CLIP 336 px, padded to square; its build time kept beside
    it) and its images written where the small JSON's records point, in a folder of their own."""
    import vlmforge

    out = work / f"build-ready-{paths['small_json'].stem}"
    seconds = out / "build-seconds.txt"
    if not (out / "model-ready" / "1.1.0" / "build.json").exists():
        t = time.perf_counter()
        vlmforge.build("model-ready", "build", out=out, workers=2, quiet=False,
                       source_options={"path": str(paths["small_build"])}, size=IMAGE_SIZE)
        seconds.write_text(f"{time.perf_counter() - t:.3f}\n")
    paths["ready_build"] = out / "model-ready" / "1.1.0"
    paths["ready_seconds"] = float(seconds.read_text()) if seconds.exists() else None
    folder = work / f"images_ready-{paths['small_json'].stem}"
    done = folder / ".complete"
    if not done.exists():
        for sample in vlmforge.open_build(paths["ready_build"]).samples():
            rel = sample["json"].get("image")
            if rel:  # records sharing an original share its model-ready bytes (same pixels, same encoder)
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(sample["jpg"])
        done.write_text("")
    paths["images_ready"] = folder


def make_processor(work: Path):
    """LLaVA-1.5's image processor (CLIP, 336 px) and 576 image tokens, with the tiny offline tokenizer."""
    from transformers import LlavaProcessor

    from vlmforge.training.images import clip_image_processor
    from vlmforge.training.tiny import CHAT_TEMPLATE, causal_lm_tokenizer

    ip = clip_image_processor(IMAGE_SIZE)  # CLIP's mean and std, bicubic, shortest edge + centre crop
    return LlavaProcessor(image_processor=ip, tokenizer=causal_lm_tokenizer(), patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------------------------------------
# The LLaVA-style baseline


class JsonFolderDataset:
    """A JSON list + image folder, read the way LLaVA's training script reads it."""

    SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the human's questions.")

    def __init__(self, json_path: Path, image_root: Path, processor, max_length: int = 2048):
        with open(json_path) as f:
            self.records = json.load(f)
        self.root = image_root
        self.ip = processor.image_processor
        self.tok = processor.tokenizer
        self.n_image = (IMAGE_SIZE // PATCH) ** 2
        self.image_id = self.tok.convert_tokens_to_ids("<image>")
        self.max_length = max_length
        self.background = tuple(int(x * 255) for x in self.ip.image_mean)

    def __len__(self) -> int:
        return len(self.records)

    def _tokens(self, text: str) -> list[int]:
        # LLaVA's tokenizer_image_token: the text around <image> tokenised piece by piece, one image id
        # between the pieces (the model expands it into the image's features).
        ids: list[int] = []
        for k, piece in enumerate(text.split("<image>")):
            if k:
                ids.append(self.image_id)
            ids.extend(self.tok(piece).input_ids)
        return ids

    def __getitem__(self, i: int) -> dict:
        import torch
        from PIL import Image

        rec = self.records[i]
        pixel = None
        if "image" in rec:
            img = Image.open(self.root / rec["image"]).convert("RGB")
            w, h = img.size
            if w != h:
                side = max(w, h)
                sq = Image.new(img.mode, (side, side), self.background)
                sq.paste(img, ((side - w) // 2, (side - h) // 2))
                img = sq
            pixel = self.ip(img, return_tensors="pt")["pixel_values"][0]
        # vicuna_v1 prompt, then the answer tokens found by tokenising each round and its instruction.
        rounds_text, turns = [], rec["conversations"]
        for q, a in zip(turns[0::2], turns[1::2]):
            rounds_text.append(f"USER: {q['value']} ASSISTANT: {a['value']}</s>")
        prompt = self.SYSTEM + " " + "".join(rounds_text)
        ids = self._tokens(prompt)  # LLaVA tokenises the whole prompt, then each round again below
        labels = list(ids)
        cur = len(self._tokens(self.SYSTEM + " "))
        labels[:cur] = [-100] * cur
        for rnd in rounds_text:
            instruction = rnd.split("ASSISTANT: ")[0] + "ASSISTANT: "
            round_len, instr_len = len(self._tokens(rnd)), len(self._tokens(instruction))
            labels[cur : cur + instr_len] = [-100] * instr_len
            cur += round_len
        # Expanded to the image's 576 positions, as a HF LLaVA model takes them.
        reps = np.where(np.asarray(ids) == self.image_id, self.n_image, 1)
        ids, labels = np.repeat(ids, reps)[: self.max_length], np.repeat(labels, reps)[: self.max_length]
        out = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}
        if pixel is not None:
            out["pixel_values"] = pixel
        return out


def collate_padded(pad_id: int):
    def collate(items: list[dict]) -> dict:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        ids = pad_sequence([x["input_ids"] for x in items], batch_first=True, padding_value=pad_id)
        labels = pad_sequence([x["labels"] for x in items], batch_first=True, padding_value=-100)
        batch = {"input_ids": ids, "labels": labels, "attention_mask": ids.ne(pad_id)}
        pixels = [x["pixel_values"] for x in items if "pixel_values" in x]
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
        return batch

    return collate


# ---------------------------------------------------------------------------------------------
# The two loaders, measured


def shard_loader(build: Path, processor, workers: int, batch_size: int):
    from torch.utils.data import DataLoader

    from vlmforge.training.collate import LlavaCollator
    from vlmforge.training.data import ShardStream, resolve_shards

    stream = ShardStream(resolve_shards([str(build)]), batch_size, LlavaCollator(processor, "vicuna_v1", 2048),
                         seed=0, shuffle_buffer=1000, rank=0, world_size=1)
    return DataLoader(stream, batch_size=None, num_workers=workers)


def json_loader(json_path: Path, image_root: Path, processor, workers: int, batch_size: int):
    import torch
    from torch.utils.data import DataLoader

    ds = JsonFolderDataset(json_path, image_root, processor)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                      collate_fn=collate_padded(processor.tokenizer.pad_token_id),
                      generator=torch.Generator().manual_seed(0))


def count(batch: dict) -> int:
    return int(batch["input_ids"].shape[0])


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the dataloader workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_loader(make) -> tuple[float, float, int, float]:
    """(start-up seconds, samples/s after the first batch, samples, samples per CPU second)."""
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    it = iter(make())
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    for b in it:
        n += count(b)
    t2 = time.perf_counter()
    del it  # workers exit, so their CPU time is counted
    total = n + count(first)
    return t1 - t0, n / (t2 - t1), total, total / (cpu_seconds() - c0)


def startup_only(make) -> float:
    t0 = time.perf_counter()
    it = iter(make())
    next(it)
    dt = time.perf_counter() - t0
    del it
    return dt


def check_same_output(paths, processor) -> tuple[int, int]:
    """Both loaders turn the same records into the same token ids, labels and pixels; returns
    (tokens trained by ours, answer-start tokens the baseline leaves untrained)."""
    import torch

    from vlmforge.manifests.read import open_build
    from vlmforge.training.collate import LlavaCollator

    build = open_build(paths["small_build"])
    ds = JsonFolderDataset(paths["small_json"], paths["images_full"], processor)
    col = LlavaCollator(processor, "vicuna_v1", 2048)
    trained = missed = 0
    for sample, i in zip(build.samples(), range(20)):
        rec = ds[int(sample["json"]["id"])]
        ours = col([sample])
        n = int(ours["attention_mask"].sum())
        assert ours["input_ids"][0, :n].tolist() == rec["input_ids"].tolist(), "token ids differ"
        a, b = ours["labels"][0, :n], rec["labels"]
        # Labels agree except where LLaVA's per-round length arithmetic, made for Llama's SentencePiece,
        # masks the first token of an answer under another tokenizer (here a byte-level BPE).
        for j in torch.nonzero(a != b).flatten().tolist():
            assert b[j] == -100 and a[j] != -100 and a[j + 1] != -100 and a[j - 1] == -100, "labels differ"
            missed += 1
        trained += int((a != -100).sum())
        if "pixel_values" in rec:
            assert torch.allclose(ours["pixel_values"][0], rec["pixel_values"], atol=1e-4), "pixels differ"
    return trained, missed


def check_model_ready(paths, processor) -> tuple[float, float]:
    """The model-ready build has the bench processor's transform, and on 20 records our loader over it
    gives the pixels the JSON + folder loader gives over its images; returns the mean and max
    |difference| to the pixels made from the originals (normalised units: JPEG error only)."""
    import torch

    from vlmforge.manifests.read import open_build
    from vlmforge.training.collate import LlavaCollator
    from vlmforge.training.images import ImagePreparer

    ready = open_build(paths["ready_build"])
    assert ready.info["config"]["transform"] == ImagePreparer(processor.image_processor).transform, \
        "the model-ready build was made with other settings than the bench's processor"
    col = LlavaCollator(processor, "vicuna_v1", 2048)
    on_ready = JsonFolderDataset(paths["small_json"], paths["images_ready"], processor)
    on_orig = JsonFolderDataset(paths["small_json"], paths["images_full"], processor)
    diffs = []
    for sample, _ in zip(ready.samples(), range(20)):
        i = int(sample["json"]["id"])
        rec = on_ready[i]
        if "pixel_values" not in rec:
            continue
        ours = col([sample])["pixel_values"][0]
        assert torch.allclose(ours, rec["pixel_values"], atol=1e-4), "model-ready pixels differ between loaders"
        diffs.append((ours - on_orig[i]["pixel_values"]).abs())
    d = torch.stack(diffs)
    return float(d.mean()), float(d.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=665_000, help="records of the start-up set")
    ap.add_argument("--samples", type=int, default=4000, help="records of the throughput set")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "loader")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    paths = prepare(args.work, args.records, args.samples)
    processor = make_processor(args.work)
    trained, missed = check_same_output(paths, processor)
    print("check: on 20 records both loaders give identical token ids and pixel values; labels agree except "
          f"{missed} answer-start tokens (of {trained} trained) that the LLaVA-style round arithmetic masks")
    mean_d, max_d = check_model_ready(paths, processor)
    built = (f"built once in {paths['ready_seconds']:.1f} s with 2 workers" if paths["ready_seconds"] is not None
             else "build time not recorded")
    print(f"model-ready build ({paths['ready_build'].parent.parent.name}, "
          f"{json.loads((paths['ready_build'] / 'build.json').read_text())['config']['transform']}): {built}; "
          f"both loaders give it identical pixels, which differ from the originals' by {mean_d:.4f} on average "
          f"(max {max_d:.3f}) in normalised units")

    W, B = args.workers, args.batch_size
    loaders = {
        "shards": lambda: shard_loader(paths["small_build"], processor, W, B),
        "json+folder": lambda: json_loader(paths["small_json"], paths["images_full"], processor, W, B),
        "shards model-ready": lambda: shard_loader(paths["ready_build"], processor, W, B),
        "json+folder model-ready": lambda: json_loader(paths["small_json"], paths["images_ready"], processor, W, B),
    }
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            results[name].append(time_loader(make))
    print(f"\nthroughput: {args.samples:,} records (480x360 JPEG, 336 px CLIP processor, vicuna_v1), "
          f"{W} workers, batch {B}, median of {args.repeats}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    base = statistics.median(r[1] for r in results["json+folder"])
    base_cpu = statistics.median(r[3] for r in results["json+folder"])
    for name, rs in results.items():
        sps, cps = statistics.median(r[1] for r in rs), statistics.median(r[3] for r in rs)
        print(f"  {name:24s} {sps:8.1f} samples/s  {sps / base:5.2f}x   |  {cps:6.1f} samples per CPU-second "
              f"{cps / base_cpu:5.2f}x   runs: " + ", ".join(f"{r[1]:.1f}" for r in rs) + f"  ({rs[0][2]} samples)")
    ours, theirs = (statistics.median(r[1] for r in results[k]) for k in ("shards model-ready", "json+folder model-ready"))
    print(f"  like for like on model-ready images: shards {ours / theirs:.2f}x json+folder")

    big = {
        "shards": lambda: shard_loader(paths["big_build"], processor, W, B),
        "json+folder": lambda: json_loader(paths["big_json"], paths["images_thumb"], processor, W, B),
    }
    print(f"\nstart-up to first batch: {args.records:,} records "
          f"(JSON {paths['big_json'].stat().st_size / 1e6:.0f} MB; build of "
          f"{sum(s['samples'] for s in json.loads((paths['big_build'] / 'build.json').read_text())['shards']):,} "
          "samples), median of " + str(args.repeats))
    startup: dict[str, list[float]] = {k: [] for k in big}
    for _ in range(args.repeats):
        for name, make in big.items():
            startup[name].append(startup_only(make))
    for name, ts in startup.items():
        print(f"  {name:12s} {statistics.median(ts):7.2f} s   runs: " + ", ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
