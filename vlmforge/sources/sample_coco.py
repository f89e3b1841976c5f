"""The embedded sample: a small, deterministic COCO-format dataset of simple synthetic scenes.

Each image is a scene (street, kitchen, farm, living room, dining table, park) with 2-5 objects drawn
as filled polygons in their own colours; the polygons are the instance segmentations. Five captions
per image name the objects in plain English, with colours, counts and everyday synonyms ("a man",
"a sofa", "two sheep"), so that entity extraction, co-occurrence statistics and grounding meet the
same kinds of text they meet in COCO. Same (images, seed) -> byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from vlmforge.curation.instructions import with_article

T = TypeVar("T")

SAMPLE_VERSION = 1
W, H = 480, 360

# name: (coco id, supercategory, shape, aspect w/h, size as fraction of image width, colours, words)
CATEGORIES: dict[str, tuple[int, str, str, float, float, list[str], list[str]]] = {
    "person": (1, "person", "person", 0.42, 0.12, ["red", "blue", "green", "yellow", "white", "black"], ["person", "man", "woman"]),
    "bicycle": (2, "vehicle", "ellipse", 1.6, 0.22, ["red", "blue", "black"], ["bicycle", "bike"]),
    "car": (3, "vehicle", "car", 1.9, 0.3, ["red", "blue", "white", "black", "gray", "yellow"], ["car"]),
    "motorcycle": (4, "vehicle", "car", 1.5, 0.22, ["red", "black", "blue"], ["motorcycle", "motorbike"]),
    "bus": (6, "vehicle", "box", 2.2, 0.42, ["red", "yellow", "white", "blue"], ["bus"]),
    "truck": (8, "vehicle", "car", 2.0, 0.38, ["white", "gray", "blue", "red"], ["truck"]),
    "traffic light": (10, "outdoor", "box", 0.35, 0.06, ["black", "yellow"], ["traffic light"]),
    "bench": (15, "outdoor", "box", 2.4, 0.26, ["brown", "green", "gray"], ["bench"]),
    "bird": (16, "animal", "ellipse", 1.4, 0.08, ["black", "white", "blue", "yellow"], ["bird"]),
    "cat": (17, "animal", "ellipse", 1.5, 0.15, ["black", "white", "orange", "gray"], ["cat", "kitten"]),
    "dog": (18, "animal", "ellipse", 1.5, 0.18, ["brown", "black", "white", "yellow"], ["dog", "puppy"]),
    "horse": (19, "animal", "ellipse", 1.5, 0.3, ["brown", "black", "white"], ["horse"]),
    "sheep": (20, "animal", "ellipse", 1.4, 0.2, ["white", "gray"], ["sheep"]),
    "cow": (21, "animal", "ellipse", 1.6, 0.3, ["black", "brown", "white"], ["cow"]),
    "backpack": (27, "accessory", "box", 0.8, 0.08, ["red", "blue", "black", "green"], ["backpack"]),
    "umbrella": (28, "accessory", "umbrella", 1.6, 0.22, ["red", "blue", "yellow", "green"], ["umbrella"]),
    "frisbee": (34, "sports", "ellipse", 1.8, 0.08, ["red", "yellow", "white", "orange"], ["frisbee"]),
    "sports ball": (37, "sports", "ellipse", 1.0, 0.07, ["white", "orange", "red"], ["ball"]),
    "kite": (38, "sports", "kite", 0.8, 0.14, ["red", "blue", "yellow", "green"], ["kite"]),
    "bottle": (44, "kitchen", "bottle", 0.35, 0.06, ["green", "brown", "blue"], ["bottle"]),
    "cup": (47, "kitchen", "box", 0.8, 0.07, ["white", "red", "blue"], ["cup", "mug"]),
    "bowl": (51, "kitchen", "ellipse", 2.0, 0.14, ["white", "blue", "red"], ["bowl"]),
    "banana": (52, "food", "ellipse", 2.6, 0.12, ["yellow"], ["banana"]),
    "apple": (53, "food", "ellipse", 1.0, 0.07, ["red", "green"], ["apple"]),
    "sandwich": (54, "food", "box", 1.6, 0.14, ["brown", "yellow"], ["sandwich"]),
    "pizza": (59, "food", "ellipse", 1.2, 0.22, ["orange", "yellow"], ["pizza"]),
    "cake": (61, "food", "box", 1.3, 0.16, ["white", "brown", "pink"], ["cake"]),
    "chair": (62, "furniture", "box", 0.8, 0.16, ["brown", "black", "white"], ["chair"]),
    "couch": (63, "furniture", "box", 2.3, 0.42, ["gray", "blue", "brown", "red"], ["couch", "sofa"]),
    "dining table": (67, "furniture", "box", 2.0, 0.5, ["brown", "white"], ["table", "dining table"]),
    "tv": (72, "electronic", "box", 1.6, 0.24, ["black", "gray"], ["tv", "television"]),
    "laptop": (73, "electronic", "box", 1.4, 0.16, ["gray", "black", "white"], ["laptop"]),
    "microwave": (78, "appliance", "box", 1.6, 0.18, ["white", "black", "gray"], ["microwave"]),
    "oven": (79, "appliance", "box", 1.1, 0.26, ["white", "black", "gray"], ["oven", "stove"]),
    "refrigerator": (82, "appliance", "box", 0.55, 0.22, ["white", "gray", "black"], ["refrigerator", "fridge"]),
}

COLORS = {
    "red": (200, 40, 40), "blue": (40, 70, 200), "green": (50, 160, 60), "yellow": (230, 200, 40),
    "white": (235, 235, 230), "black": (30, 30, 35), "brown": (120, 75, 40), "orange": (235, 130, 30),
    "gray": (128, 128, 128), "pink": (240, 150, 180),
}

# scene: (indoor?, backdrop colours (top, bottom), categories with weights, place phrases, scene nouns)
SCENES: dict[str, tuple[bool, tuple, dict[str, int], list[str], list[str]]] = {
    "street": (False, ((150, 190, 235), (110, 110, 115)),
               {"car": 5, "bus": 3, "person": 4, "bicycle": 2, "truck": 2, "traffic light": 2, "motorcycle": 2, "dog": 1, "bench": 1},
               ["on a city street", "on a busy road", "in front of a tall building", "at an intersection"], ["street", "road"]),
    "kitchen": (True, ((225, 215, 190), (170, 150, 120)),
                {"oven": 4, "refrigerator": 4, "microwave": 3, "bowl": 3, "cup": 3, "bottle": 2, "person": 2, "cat": 1},
                ["in a kitchen", "in a small kitchen", "in a clean kitchen"], ["kitchen"]),
    "farm": (False, ((160, 200, 240), (90, 150, 60)),
             {"cow": 5, "sheep": 5, "horse": 4, "dog": 2, "person": 2, "bird": 2},
             ["in a grassy field", "on a farm", "in a green pasture"], ["field", "pasture"]),
    "living room": (True, ((210, 200, 180), (140, 110, 80)),
                    {"couch": 4, "tv": 4, "cat": 3, "dog": 2, "chair": 3, "laptop": 2, "person": 2},
                    ["in a living room", "in a cozy living room"], ["living room"]),
    "dining": (True, ((230, 220, 200), (150, 100, 60)),
               {"pizza": 4, "cake": 3, "cup": 3, "bottle": 3, "dining table": 3, "sandwich": 3, "bowl": 2, "banana": 2, "apple": 2, "person": 2},
               ["on a wooden table", "at a restaurant", "on a dinner table"], ["meal", "table"]),
    "park": (False, ((140, 190, 240), (110, 170, 80)),
             {"kite": 4, "frisbee": 3, "dog": 4, "person": 5, "bench": 3, "bird": 2, "umbrella": 2, "sports ball": 2, "backpack": 1},
             ["in a park", "on a sunny day in the park", "on the grass"], ["park"]),
}

VERBS = {
    "person": "standing", "car": "parked", "bus": "driving", "truck": "parked", "bicycle": "leaning",
    "motorcycle": "parked", "dog": "sitting", "cat": "lying", "cow": "grazing", "sheep": "grazing",
    "horse": "standing", "bird": "perched", "kite": "flying", "frisbee": "flying", "couch": "placed",
}
PLURALS = {"person": "people", "man": "men", "woman": "women", "sheep": "sheep", "bus": "buses",
           "couch": "couches", "sandwich": "sandwiches", "puppy": "puppies", "knife": "knives"}
NUMBERS = {2: "two", 3: "three"}


def _plural(word: str) -> str:
    head, _, last = word.rpartition(" ")
    p = PLURALS.get(last, last + "s")
    return f"{head} {p}".strip()


def _shape_polygon(shape: str, x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    if shape == "ellipse":
        return [(x + w / 2 + w / 2 * math.cos(t), y + h / 2 + h / 2 * math.sin(t))
                for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    if shape == "car":
        return [(x, y + h), (x, y + 0.45 * h), (x + 0.2 * w, y + 0.4 * h), (x + 0.3 * w, y),
                (x + 0.72 * w, y), (x + 0.82 * w, y + 0.4 * h), (x + w, y + 0.5 * h), (x + w, y + h)]
    if shape == "person":
        return [(x + 0.35 * w, y), (x + 0.65 * w, y), (x + 0.65 * w, y + 0.2 * h), (x + w, y + 0.25 * h),
                (x + w, y + 0.6 * h), (x + 0.75 * w, y + 0.6 * h), (x + 0.75 * w, y + h), (x + 0.25 * w, y + h),
                (x + 0.25 * w, y + 0.6 * h), (x, y + 0.6 * h), (x, y + 0.25 * h), (x + 0.35 * w, y + 0.2 * h)]
    if shape == "kite":
        return [(x + w / 2, y), (x + w, y + 0.4 * h), (x + w / 2, y + h), (x, y + 0.4 * h)]
    if shape == "umbrella":
        top = [(x + w / 2 + w / 2 * math.cos(t), y + 0.5 * h - 0.5 * h * math.sin(t)) for t in np.linspace(0, math.pi, 13)]
        return top + [(x + 0.46 * w, y + 0.5 * h), (x + 0.46 * w, y + h), (x + 0.54 * w, y + h), (x + 0.54 * w, y + 0.5 * h)]
    if shape == "bottle":
        return [(x + 0.3 * w, y), (x + 0.7 * w, y), (x + 0.7 * w, y + 0.3 * h), (x + w, y + 0.45 * h),
                (x + w, y + h), (x, y + h), (x, y + 0.45 * h), (x + 0.3 * w, y + 0.3 * h)]
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def _overlaps(box, boxes, margin=4) -> bool:
    x, y, w, h = box
    return any(x < bx + bw + margin and bx < x + w + margin and y < by + bh + margin and by < y + h + margin
               for bx, by, bw, bh in boxes)


def _render_image(rng: np.random.Generator, image_id: int):
    scene = list(SCENES)[int(rng.integers(len(SCENES)))]
    indoor, (top, bottom), weights, places, scene_nouns = SCENES[scene]
    names = list(weights)
    p = np.array([weights[n] for n in names], float)
    n_objects = int(rng.integers(2, 6))
    canvas = np.zeros((H, W, 3), np.float32)
    horizon = int(H * (0.45 if not indoor else 0.55))
    canvas[:horizon] = top
    canvas[horizon:] = bottom
    canvas[:horizon] *= np.linspace(0.9, 1.05, horizon)[:, None, None]
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    objects, boxes = [], []
    for _ in range(n_objects):
        name = names[int(rng.choice(len(names), p=p / p.sum()))]
        cid, sup, shape, aspect, size, colours, words = CATEGORIES[name]
        for _attempt in range(30):
            w = size * W * float(rng.uniform(0.8, 1.25))
            h = w / aspect
            if w > W * 0.9 or h > H * 0.9:
                continue
            x = float(rng.uniform(4, W - w - 4))
            ground = name not in ("kite", "bird", "frisbee", "traffic light", "tv") or indoor
            y_lo = max(4.0, horizon - h * 0.7) if ground else 4.0
            y_hi = H - h - 4 if ground else max(5.0, horizon - h)
            if y_hi <= y_lo:
                continue
            y = float(rng.uniform(y_lo, y_hi))
            if not _overlaps((x, y, w, h), boxes):
                break
        else:
            continue
        colour = colours[int(rng.integers(len(colours)))]
        poly = _shape_polygon(shape, x, y, w, h)
        rgb = COLORS[colour]
        draw.polygon(poly, fill=rgb, outline=tuple(max(0, c - 60) for c in rgb))
        # A few inner details (windows, eyes, stripes) so objects are not flat colour.
        detail = tuple(min(255, c + 50) if sum(rgb) < 400 else max(0, c - 70) for c in rgb)
        draw.rectangle([x + 0.3 * w, y + 0.3 * h, x + 0.45 * w, y + 0.45 * h], fill=detail)
        draw.line([(x + 0.2 * w, y + 0.7 * h), (x + 0.8 * w, y + 0.7 * h)], fill=detail, width=2)
        boxes.append((x, y, w, h))
        objects.append({"name": name, "colour": colour, "poly": poly, "word": words[int(rng.integers(len(words)))]})
    arr = np.asarray(img).astype(np.int16)
    arr = arr + rng.normal(0, 6, arr.shape).astype(np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return scene, img, objects, places, scene_nouns


def _captions(rng: np.random.Generator, scene: str, objects: list[dict], places: list[str], scene_nouns: list[str]) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for o in objects:
        groups.setdefault(o["name"], []).append(o)
    names = list(groups)

    def phrase(name: str, with_colour: bool) -> str:
        objs = groups[name]
        word = objs[0]["word"]
        if len(objs) > 1:
            return f"{NUMBERS.get(len(objs), 'several')} {_plural(word)}"
        return with_article(f"{objs[0]['colour']} {word}" if with_colour else word)

    def pick(k: int) -> list[str]:
        k = min(k, len(names))
        return [names[i] for i in sorted(rng.choice(len(names), size=k, replace=False))]

    out = []
    templates = [
        lambda a: f"{phrase(a[0], True)} {VERBS.get(a[0], 'sitting')} next to {phrase(a[1], False)} {places[int(rng.integers(len(places)))]}.",
        lambda a: f"{phrase(a[0], False)} and {phrase(a[1], True)} {places[int(rng.integers(len(places)))]}.",
        lambda a: f"There is {phrase(a[0], True)} {places[int(rng.integers(len(places)))]}.",
        lambda a: f"A {scene_nouns[int(rng.integers(len(scene_nouns)))]} with {', '.join(phrase(n, bool(rng.integers(2))) for n in a[:-1])} and {phrase(a[-1], False)}." if len(a) > 1 else f"A {scene_nouns[0]} with {phrase(a[0], True)}.",
        lambda a: f"{phrase(a[0], True)} near {phrase(a[-1], True)}." if len(a) > 1 else f"A photo of {phrase(a[0], True)}.",
    ]
    for t_index, template in enumerate(templates):
        k = 1 if t_index == 2 else 2 if t_index in (0, 1, 4) else 3
        chosen = pick(k)
        if len(chosen) < 2 and t_index in (0, 1):  # one kind of object only
            text = f"{phrase(chosen[0], True)} {places[int(rng.integers(len(places)))]}."
        else:
            text = template(chosen)
        out.append(text[0].upper() + text[1:])
    return out


def make_sample(out: str | os.PathLike[str], images: int = 32, seed: int = 0, split: str = "val2017",
                progress: bool = False) -> Path:
    """Write the sample dataset under `out` in the official COCO layout and return `out`; with `progress`, a
    progress bar (the CLI's: thousands of images take minutes)."""
    from pycocotools import mask as mask_utils

    from vlmforge.progress import progress_bar

    root = Path(out)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": sup}
                  for name, (cid, sup, *_rest) in sorted(CATEGORIES.items(), key=lambda kv: kv[1][0])]
    img_entries, instances, captions = [], [], []
    ann_id, cap_id = 1, 1
    with progress_bar("sample images", total=images, disable=not progress) as advance:
        for i in range(images):
            rng = np.random.default_rng([seed, i, SAMPLE_VERSION])
            image_id = 100_000 + i * 37 + seed % 37
            scene, img, objects, places, scene_nouns = _render_image(rng, image_id)
            file_name = f"{image_id:012d}.jpg"
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            (root / split / file_name).write_bytes(buf.getvalue())
            img_entries.append({"id": image_id, "file_name": file_name, "width": W, "height": H, "license": 1,
                                "date_captured": "2026-01-01 00:00:00", "coco_url": "", "flickr_url": ""})
            for o in objects:
                flat = [round(float(v), 2) for pt in o["poly"] for v in pt]
                rle = mask_utils.frPyObjects([flat], H, W)
                area = float(mask_utils.area(mask_utils.merge(rle)))
                xs, ys = flat[0::2], flat[1::2]
                bbox = [round(min(xs), 2), round(min(ys), 2),
                        round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
                instances.append({"id": ann_id, "image_id": image_id, "category_id": CATEGORIES[o["name"]][0],
                                  "segmentation": [flat], "area": area, "bbox": bbox, "iscrowd": 0})
                ann_id += 1
            for text in _captions(rng, scene, objects, places, scene_nouns):
                captions.append({"id": cap_id, "image_id": image_id, "caption": text})
                cap_id += 1
            advance(1)
    info = {"description": "vlmforge embedded COCO-format sample (synthetic scenes)", "version": str(SAMPLE_VERSION),
            "year": 2026, "contributor": "vlmforge", "url": "", "date_created": "2026-01-01"}
    licenses = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    for name, doc in ((f"instances_{split}.json", {"info": info, "licenses": licenses, "images": img_entries,
                                                   "annotations": instances, "categories": categories}),
                      (f"captions_{split}.json", {"info": info, "licenses": licenses, "images": img_entries,
                                                  "annotations": captions})):
        (root / "annotations" / name).write_text(json.dumps(doc, indent=None, separators=(",", ":")))
    return root


def write_fresh(out: str | os.PathLike[str], make: Callable[[Path], T]) -> T:
    """`make(root)` into `out`, which must be new or an empty folder (files of an earlier sample with other
    settings, or of another dataset, would otherwise stay mixed in). What a failed or interrupted `make`
    wrote is removed again; a path that cannot be written is one error line."""
    import shutil

    from vlmforge.errors import UserError

    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        what = "is a file" if not root.is_dir() else "exists and is not an empty folder"
        raise UserError(f"{root} {what}; choose a new --out")
    existed = root.exists()

    def undo() -> None:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
            return
        for p in list(root.iterdir()):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    try:
        return make(root)
    except OSError as e:  # a file in the path, a folder this user cannot write, a full disk
        undo()
        in_the_way = next((a for a in (root, *root.parents) if a.exists() and not a.is_dir()), None)
        why = f"{in_the_way} is a file, not a folder" if in_the_way else e.strerror or str(e)
        raise UserError(f"cannot write the sample to {root}: {why}; choose another --out") from None
    except BaseException:
        undo()
        raise


def default_cache() -> Path:
    return Path(os.environ.get("VLMFORGE_CACHE", Path.home() / ".cache" / "vlmforge"))


def ensure_sample(images: int = 32, seed: int = 0) -> Path:
    """The embedded sample's folder, made on first use (about a second) in the cache folder."""
    root = default_cache() / f"sample-coco-v{SAMPLE_VERSION}-{images}-{seed}"
    marker = root / ".complete"
    if not marker.exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        make_sample(tmp, images=images, seed=seed)
        (tmp / ".complete").write_text("ok\n")
        if root.exists():
            import shutil
            shutil.rmtree(root)
        os.replace(tmp, root)
    return root
