"""FGVC-Aircraft 2013b in its native layout.

`ROOT` is `fgvc-aircraft-2013b` (or its `data/` folder): `data/images/<id>.jpg` and, per label level
(variant, family, manufacturer) and split (train, val, test, trainval), `data/images_<level>_<split>.txt`
with lines `<image id> <label>` (labels may hold spaces: `Boeing 707`). `images_box.txt` gives boxes.
Every image carries a 20-pixel copyright banner at the bottom; records say so (`crop_bottom`) and
builders that read images through `vlmforge.sources.fgvc.read_record_image` cut it off.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, fingerprint_files, repeated_keys

LEVELS = ("variant", "family", "manufacturer")
BANNER_PX = 20


def find_fgvc_data(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root, root / "data", root / "fgvc-aircraft-2013b" / "data"):
        if (cand / "images").is_dir() and list(cand.glob("images_variant_*.txt")):
            return cand
    raise SourceError(f"{root} is not an FGVC-Aircraft folder (need data/images/ and data/images_variant_*.txt)")


def read_label_file(path: Path) -> list[tuple[str, str]]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise SourceError(f"{path}:{lineno}: expected '<image id> <label>', got {line!r}")
        out.append((parts[0], " ".join(parts[1].split())))
    return out


class FgvcAircraftSource(Source):
    """Records per image in file order of the split list. `level` picks the label; the other levels
    ride along when their files exist. `splits` default: train, val, test (those present)."""

    name = "fgvc-aircraft"
    subject = "aircraft"

    def __init__(self, root: str | Path, splits: list[str] | None = None, level: str = "variant",
                 crop_banner: bool = True):
        if level not in LEVELS:
            raise SourceError(f"FGVC-Aircraft label level must be one of {', '.join(LEVELS)}, not {level!r}")
        self.data = find_fgvc_data(root)
        self.level = level
        self.crop_banner = crop_banner
        wanted = splits or [s for s in ("train", "val", "test") if (self.data / f"images_{level}_{s}.txt").exists()]
        self._files: list[Path] = []
        self._records: dict[str, list[Record]] = {}
        for split in wanted:
            main = self.data / f"images_{level}_{split}.txt"
            if not main.exists():
                raise SourceError(f"FGVC-Aircraft split file not found: {main}")
            self._files.append(main)
            others = {}
            for lv in LEVELS:
                f = self.data / f"images_{lv}_{split}.txt"
                if lv != level and f.exists():
                    others[lv] = dict(read_label_file(f))
                    self._files.append(f)
            recs = []
            for image, label in read_label_file(main):
                rec: Record = {"source_id": f"{image}.jpg", "key": f"fgvc_{image}".lower(),
                               "file": str(self.data / "images" / f"{image}.jpg"), "label": label, level: label}
                for lv, table in others.items():
                    if image in table:
                        rec[lv] = table[image]
                if crop_banner:
                    rec["crop_bottom"] = BANNER_PX
                recs.append(rec)
            self._records[split] = recs
        lists = ", ".join(f"images_{level}_{s}.txt" for s in self._records)
        for (split, i), why in repeated_keys({s: [r["key"] for r in v] for s, v in self._records.items()}, lists).items():
            rec = self._records[split][i]
            rec["invalid"] = f"image {rec['source_id'][:-4]} is {why}"
        box_file = self.data / "images_box.txt"
        if box_file.exists():
            boxes = {}
            for line in box_file.read_text().splitlines():
                p = line.split()
                if len(p) == 5:
                    boxes[p[0]] = [float(v) for v in p[1:]]  # xmin, ymin, xmax, ymax (1-based pixels)
            for recs in self._records.values():
                for rec in recs:
                    b = boxes.get(rec["source_id"][:-4])
                    if b:
                        rec["bbox_xyxy"] = b
            self._files.append(box_file)

    def splits(self) -> list[str]:
        return list(self._records)

    def count(self, split: str) -> int:
        return len(self._records[split])

    def records(self, split: str) -> Iterator[Record]:
        yield from (dict(r) for r in self._records[split])

    def fingerprint(self) -> str:
        images = [Path(r["file"]) for recs in self._records.values() for r in recs]
        return fingerprint_files(self._files, images, root=self.data) + f":{self.crop_banner}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "crop_banner": self.crop_banner,
                "splits": {s: len(v) for s, v in self._records.items()}}


def read_record_image(rec: Record, check: str = "quick", jpeg_quality: int = 95,
                      keep: tuple[str, ...] = ("JPEG", "PNG")):
    """A classification record's image ready for a shard (`EncodedImage`, formats in `keep` as they
    are), with the FGVC banner (`crop_bottom` pixels) cut off when the record asks for it, as JPEG.
    Raises curation.images.ImageError."""
    from PIL import Image

    from vlmforge.curation.images import EncodedImage, ImageError, load_for_storage

    img = load_for_storage(rec["file"], check, jpeg_quality, keep=keep)
    crop = int(rec.get("crop_bottom") or 0)
    if not crop:
        return img
    if img.height <= crop:
        raise ImageError("image_too_small", f"{rec['file']} is {img.height} px tall; the banner alone is {crop} px")
    with Image.open(io.BytesIO(img.data)) as im:
        cut = im.convert("RGB").crop((0, 0, img.width, img.height - crop))
    buf = io.BytesIO()
    cut.save(buf, format="JPEG", quality=jpeg_quality)
    return EncodedImage(buf.getvalue(), "jpg", cut.width, cut.height, img.original_format, converted=True)
