"""Tiny image-classification datasets laid out exactly like the real ones (CUB-200-2011,
FGVC-Aircraft 2013b, Stanford Dogs), written by code so tests need no download."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_COLORS = [(30, 30, 40), (235, 235, 230), (110, 80, 60)]
CUB_ATTRIBUTES = [
    "has_bill_shape::dagger", "has_bill_shape::hooked_seabird", "has_wing_color::black", "has_wing_color::white",
    "has_upperparts_color::brown", "has_size::large_(16_-_32_in)", "has_primary_color::white",
    "has_primary_color::black",
]
# Per class, the attributes its images show (1-based ids) and with which certainty (1-4).
CUB_PRESENT = {
    1: {2: 4, 3: 4, 6: 3, 8: 4},
    2: {2: 4, 4: 4, 6: 3, 7: 4},
    3: {1: 3, 3: 4, 5: 4, 6: 3, 8: 2},
}
# Class attribute percentages (classes x attributes), as class_attribute_labels_continuous.txt holds.
CUB_RATES = np.array([
    [0.0, 100.0, 100.0, 0.0, 0.0, 75.0, 0.0, 100.0],
    [0.0, 100.0, 0.0, 100.0, 0.0, 75.0, 100.0, 0.0],
    [100.0, 0.0, 100.0, 0.0, 100.0, 75.0, 0.0, 25.0],
])


def _jpeg(color, size=(48, 40), marker: int = 0) -> bytes:
    im = Image.new("RGB", size, color)
    im.putpixel((marker % size[0], 0), (255 - color[0], 0, 0))  # distinct bytes per image
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_cub(root: Path, per_class: int = 4, attributes: bool = True) -> Path:
    """`root/CUB_200_2011/...` plus `root/attributes.txt`, as the official archive unpacks.
    Image ids run class by class; the last image of each class is in the test split."""
    cub = root / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    images, labels, split, boxes, attr_lines = [], [], [], [], []
    image_id = 0
    for c, folder in enumerate(CUB_CLASSES, 1):
        (cub / "images" / folder).mkdir()
        species = folder.split(".", 1)[1]
        for n in range(per_class):
            image_id += 1
            name = f"{species}_{n + 1:04d}_{700 + image_id}.jpg"
            (cub / "images" / folder / name).write_bytes(_jpeg(CUB_COLORS[c - 1], marker=image_id))
            images.append(f"{image_id} {folder}/{name}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {0 if n == per_class - 1 else 1}")
            boxes.append(f"{image_id} 4.0 5.0 30.0 20.0")
            for a in range(1, len(CUB_ATTRIBUTES) + 1):
                cert = CUB_PRESENT[c].get(a)
                # The real file has a few lines with an extra field; keep one such line.
                extra = " 0" if (image_id, a) == (1, 1) else ""
                attr_lines.append(f"{image_id} {a} {1 if cert else 0} {cert or 1} 3.5{extra}")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (cub / "classes.txt").write_text("\n".join(f"{i} {f}" for i, f in enumerate(CUB_CLASSES, 1)) + "\n")
    if attributes:
        (cub / "attributes").mkdir()
        (root / "attributes.txt").write_text("\n".join(f"{i} {a}" for i, a in enumerate(CUB_ATTRIBUTES, 1)) + "\n")
        (cub / "attributes" / "image_attribute_labels.txt").write_text("\n".join(attr_lines) + "\n")
        (cub / "attributes" / "class_attribute_labels_continuous.txt").write_text(
            "\n".join(" ".join(f"{v:.10f}" for v in row) for row in CUB_RATES) + "\n")
        (cub / "attributes" / "certainties.txt").write_text("1 not visible\n2 guessing\n3 probably\n4 definitely\n")
    return cub


FGVC = {  # image id -> (variant, family, manufacturer, split)
    "0034309": ("707-320", "Boeing 707", "Boeing", "train"),
    "0034958": ("707-320", "Boeing 707", "Boeing", "val"),
    "0037511": ("F/A-18", "F/A-18", "Boeing", "train"),
    "0040001": ("A300B4", "A300", "Airbus", "train"),
    "0040002": ("A300B4", "A300", "Airbus", "test"),
}


def make_fgvc(root: Path) -> Path:
    """`root/fgvc-aircraft-2013b/data/...`: images with a 20-pixel banner, per-level split lists."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    lists: dict[str, list[str]] = {}
    for i, (image, (variant, family, maker, split)) in enumerate(sorted(FGVC.items())):
        im = Image.new("RGB", (60, 50), (90 + 30 * i, 120, 200))
        for x in range(60):
            for y in range(30, 50):
                im.putpixel((x, y), (255, 255, 255))  # the banner area (bottom 20 px) is white
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=92)
        (data / "images" / f"{image}.jpg").write_bytes(buf.getvalue())
        for level, value in (("variant", variant), ("family", family), ("manufacturer", maker)):
            lists.setdefault(f"images_{level}_{split}.txt", []).append(f"{image} {value}")
            if split in ("train", "val"):
                lists.setdefault(f"images_{level}_trainval.txt", []).append(f"{image} {value}")
    for name, lines in lists.items():
        (data / name).write_text("\n".join(lines) + "\n")
    (data / "variants.txt").write_text("\n".join(sorted({v[0] for v in FGVC.values()})) + "\n")
    (data / "images_box.txt").write_text("\n".join(f"{k} 3 4 50 28" for k in sorted(FGVC)) + "\n")
    return root / "fgvc-aircraft-2013b"


DOGS = {"n02085620-Chihuahua": ["n02085620_10074", "n02085620_10131", "n02085620_1007"],
        "n02085782-Japanese_spaniel": ["n02085782_1039", "n02085782_1058"]}


def make_dogs(root: Path, lists: str = "mat") -> Path:
    """`root/Images/<wnid>-<breed>/<file>.jpg` and train/test lists (`mat`: lists/*.mat as the
    official lists.tar holds them; `txt`: plain file lists; `none`: no lists)."""
    from scipy.io import savemat

    train, test = [], []
    for c, (folder, stems) in enumerate(DOGS.items(), 1):
        (root / "Images" / folder).mkdir(parents=True)
        for j, stem in enumerate(stems):
            (root / "Images" / folder / f"{stem}.jpg").write_bytes(_jpeg((40 * c, 100, 60), marker=j))
            (test if j == len(stems) - 1 else train).append((f"{folder}/{stem}.jpg", c))
    if lists == "mat":
        (root / "lists").mkdir()
        for name, items in (("train_list.mat", train), ("test_list.mat", test)):
            files = np.empty((len(items), 1), dtype=object)
            annos = np.empty((len(items), 1), dtype=object)
            for i, (rel, _) in enumerate(items):
                files[i, 0] = np.array([rel])
                annos[i, 0] = np.array([rel[:-4]])
            savemat(str(root / "lists" / name), {"file_list": files, "annotation_list": annos,
                                                 "labels": np.array([[float(c)] for _, c in items])})
    elif lists == "txt":
        (root / "train_list.txt").write_text("\n".join(r for r, _ in train) + "\n")
        (root / "test_list.txt").write_text("\n".join(r for r, _ in test) + "\n")
    return root
