"""Small fixtures laid out like the real files, for the derived-build tests (subsets, splits, mixes,
MCQA, grading, Visual Genome, LLaVA JSON)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image


def tiny_jpeg(seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    rng = random.Random(seed)
    im = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def class_folder(root: Path, counts: dict[str, int], split: str | None = None) -> Path:
    """ROOT[/split]/<class>/<i>.jpg with `counts[class]` images each."""
    base = root / split if split else root
    for c, (name, n) in enumerate(sorted(counts.items())):
        d = base / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"{i:03d}.jpg").write_bytes(tiny_jpeg(c * 1000 + i))
    return root


def llava_records(n: int, seed: int = 0, duplicate_every: int = 0) -> list[dict]:
    """mix665k-like records: images from coco/gqa/ocr_vqa/textvqa/vg and text-only ones. With
    `duplicate_every`, every such record reuses the previous record's id with new turns."""
    rng = random.Random(seed)
    subs = ["coco/train2017/{:012d}.jpg", "gqa/images/{}.jpg", "ocr_vqa/images/{}.jpg",
            "textvqa/train_images/{:016x}.jpg", "vg/VG_100K/{}.jpg", None]
    out = []
    for i in range(n):
        fmt = subs[i % len(subs)]
        rid = f"{i:06d}"
        if duplicate_every and i % duplicate_every == duplicate_every - 1:
            rid = out[-1]["id"]
        q = f"question {i} {rng.random():.6f}"
        rec = {"id": rid, "conversations": [{"from": "human", "value": ("<image>\n" if fmt else "") + q},
                                            {"from": "gpt", "value": f"answer {i}"}]}
        if fmt:
            rec["image"] = fmt.format(rng.randrange(10**6))
        out.append(rec)
    return out


def long_ids_json(folder: Path) -> Path:
    """FOLDER/llava.json: text-only records with ids too long for a key, two alike in their first 120
    characters."""
    recs = [r for r in llava_records(18) if "image" not in r]
    for r, rid in zip(recs, ["a" * 120 + "0", "a" * 120 + "1", "B" * 200]):
        r["id"] = rid
    return write_json(folder / "llava.json", recs)


def write_json(path: Path, doc, indent: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent, ensure_ascii=False))
    return path


def visual_genome(root: Path) -> Path:
    """objects.json + image_data.json + VG_100K/ and VG_100K_2/ with three images."""
    images, objects = [], []
    specs = {
        1: ("VG_100K_2", [(10, 5, 20, 15, ["clock"], ["clock.n.01"]), (0, 0, 40, 30, ["wall"], ["wall.n.01"]),
                          (30, 20, 5, 5, ["sign"], [])]),
        2: ("VG_100K", [(2, 2, 10, 10, ["man"], ["man.n.01"]), (20, 10, 8, 12, ["traffic light"], ["traffic_light.n.01"]),
                        (5, 5, 6, 6, ["dog"], ["dog.n.01"]), (1, 1, 3, 3, ["cat"], ["cat.n.01"])]),
        3: ("VG_100K", [(4, 4, 8, 8, ["clock"], ["clock.n.01"])]),
    }
    oid = 100
    for image_id, (folder, objs) in specs.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        if image_id != 3:  # image 3 is listed but its file is missing
            (root / folder / f"{image_id}.jpg").write_bytes(tiny_jpeg(image_id, (40, 30)))
        images.append({"width": 40, "height": 30, "url": f"https://cs.stanford.edu/people/rak248/{folder}/{image_id}.jpg",
                       "image_id": image_id, "coco_id": None, "flickr_id": None})
        entry = {"image_id": image_id, "objects": [], "image_url": images[-1]["url"]}
        for x, y, w, h, names, synsets in objs:
            oid += 1
            entry["objects"].append({"object_id": oid, "x": x, "y": y, "w": w, "h": h, "names": names, "synsets": synsets})
        objects.append(entry)
    write_json(root / "image_data.json", images)
    write_json(root / "objects.json", objects)
    return root
