"""`vg`: Visual Genome objects as object-centric LLaVA records (one per object with a synset).

The human turn asks for the object, the answer holds its box and its class name, as in "Prompt the
Unseen": by default `[x1, y1, x2, y2] name`, the box normalised to the stored image (0-1, two
decimals, LLaVA-1.5's referring format); a box that reaches outside the image is clipped to it (in
pixels too: `box_clipped` says so). The class (`label`) is the synset's lemma
(`traffic_light.n.01` -> `traffic light`), so subset and mcqa builds work on synsets. `--synsets-from
FILE` keeps listed synsets only; `--max-objects-per-image N` keeps N objects per image chosen by hash
of (seed, key) among those with a usable box; `--crop` stores the object's crop (with a margin)
instead of the whole image. An image file of another size than image_data.json lists is a
`size_mismatch` reject (its boxes are in the listed size's pixels).
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vlmforge.builders.base import BuildConfig, Builder, check_template
from vlmforge.curation.images import EncodedImage, ImageError, load_for_storage
from vlmforge.curation.selection import rank_value
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample, make_key
from vlmforge.sources.base import Record, Source
from vlmforge.sources.vg import object_names, synset_name

VG_PROMPT = "<image>\nWhat is the main object in this image? Give its bounding box and its name."
VG_ANSWER = "{box} {name}"
ANSWER_FIELDS = ["box", "box_pixels", "name", "synset"]  # what _image() fills in
SYNSET = re.compile(r"^\S+\.[nvasr]\.\d+$")  # lemma.pos.nn, e.g. traffic_light.n.01


@dataclass
class VgConfig(BuildConfig):
    prompt: str = VG_PROMPT
    answer_template: str = VG_ANSWER  # fields: {box} (normalised), {box_pixels}, {name}, {synset}
    synsets: list[str] | None = None  # keep only these synsets (from --synsets-from)
    max_objects_per_image: int | None = None
    min_box_side: int = 1  # smaller boxes (either side, in pixels) are rejected: box_too_small
    crop: bool = False
    crop_margin: float = 0.1  # crop: margin around the box, as a fraction of its size
    jpeg_quality: int = 95


def normalised_box(x: float, y: float, w: float, h: float, width: int, height: int) -> list[float]:
    """[x1, y1, x2, y2] as fractions of the image size, two decimals."""
    return [round(min(max(v, 0.0), 1.0), 2) for v in (x / width, y / height, (x + w) / width, (y + h) / height)]


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """(x, y, w, h) cut to the part inside a width x height image."""
    x, y, w, h = box
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return (x1, y1, x2 - x1, y2 - y1)


def _object_id(obj: Any) -> int | None:
    """An object's id (`object_id`, or `id` in older releases) as an int; None when it has none."""
    if not isinstance(obj, dict):
        return None
    oid = obj.get("object_id", obj.get("id"))
    if isinstance(oid, bool) or not isinstance(oid, (int, str)):
        return None
    try:
        return int(oid)
    except ValueError:
        return None


def format_box(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


class VgBuilder(Builder):
    name = "vg"
    VERSION = "1.2.0"
    Config = VgConfig
    description = "Visual Genome objects with synsets as object-centric LLaVA records (box and class in the answer)."
    batch_size = 8
    columns = [
        ("label", pa.string(), "class: the synset's lemma (traffic_light.n.01 -> traffic light)"),
        ("synset", pa.string(), "WordNet synset of the object"),
        ("name", pa.string(), "the object's own name in Visual Genome"),
        ("image_id", pa.int64(), "Visual Genome image id"),
        ("object_id", pa.int64(), "Visual Genome object id"),
        ("box", pa.list_(pa.int32()), "object box [x, y, w, h] in pixels of the stored image, clipped to it"),
        ("box_clipped", pa.bool_(), "the annotated box reached outside the image and was clipped to it"),
    ]

    def __init__(self, config: VgConfig, source: Source):
        super().__init__(config, source)
        check_template(config.answer_template, ANSWER_FIELDS, "--answer-template")
        if config.max_objects_per_image is not None and config.max_objects_per_image < 1:
            raise UserError("--max-objects-per-image must be at least 1")
        if config.min_box_side < 1:  # below 1, boxes of no (or negative) width or height would pass
            raise UserError(f"--min-box-side must be at least 1 pixel, got {config.min_box_side}")
        if config.synsets is not None:
            if not config.synsets:
                raise UserError("--synsets-from lists no synset: every object would be left out")
            wrong = [x for x in config.synsets if not SYNSET.match(x)]
            if wrong:  # plain names ("dog") match no object's synset: an empty build otherwise
                raise UserError(f"--synsets-from lists WordNet synsets, one per line, like dog.n.01; {wrong[0]!r} is not one")
        self._synsets = set(config.synsets) if config.synsets is not None else None

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        from vlmforge.sources.vg import VisualGenomeSource

        if (kind or "vg") != "vg":
            raise UserError("the vg builder reads Visual Genome: --root or --objects/--image-data")
        return VisualGenomeSource(**{k: v for k, v in options.items() if v is not None})

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        return [self._image(rec) for rec in batch]

    def _image(self, rec: Record) -> list[Sample | Reject]:
        sid = rec["source_id"]
        if "invalid" in rec:
            return [Reject(sid, "invalid_record", "source", rec["invalid"])]
        out: list[Sample | Reject] = []
        objects = []
        for n, obj in enumerate(rec["objects"]):
            oid = _object_id(obj)
            if oid is None:
                out.append(Reject(f"{rec['image_id']}:#{n}", "invalid_record", "vg",
                                  f"object #{n} of the image is not an object with an integer object_id"))
            else:
                objects.append((oid, json.dumps(obj, sort_keys=True), obj))
        chosen = []
        seen: set[int] = set()
        for oid, _, obj in sorted(objects, key=lambda o: o[:2]):  # by id: the file's order does not matter
            osid = f"{rec['image_id']}:{oid}"
            if oid in seen:
                out.append(Reject(osid, "duplicate_object", "vg", f"object id {oid} is listed twice for the image"))
                continue
            seen.add(oid)
            synsets = obj.get("synsets") or []
            synsets = [synsets] if isinstance(synsets, str) else synsets
            if not synsets:
                out.append(Reject(osid, "no_synset", "vg", "the object has no synset"))
                continue
            if not isinstance(synsets, list) or not isinstance(synsets[0], str):
                out.append(Reject(osid, "invalid_record", "vg", f"synsets must be a list of names, got {synsets!r}"[:200]))
                continue
            if self._synsets is not None and synsets[0] not in self._synsets:
                continue
            try:
                x, y, w, h = (float(obj[k]) for k in ("x", "y", "w", "h"))
            except (KeyError, TypeError, ValueError):
                x = y = w = h = math.nan
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                out.append(Reject(osid, "bad_box", "vg", "the object has no numeric x, y, w, h"))
                continue
            if w < self.config.min_box_side or h < self.config.min_box_side:
                out.append(Reject(osid, "box_too_small", "vg", f"box {w:g}x{h:g} pixels is below "
                                  f"--min-box-side {self.config.min_box_side}"))
                continue
            chosen.append((make_key("vg", rec["image_id"], oid), oid, osid, obj, synsets[0], (x, y, w, h)))
        if not chosen:
            return out
        try:
            img = load_for_storage(rec["file"], "quick", self.config.jpeg_quality)
        except ImageError as e:
            return out + [Reject(sid, e.reason, "read_image", e.detail)]
        listed = (rec.get("width"), rec.get("height"))
        if None not in listed and listed != (img.width, img.height):  # boxes are in the listed size's pixels
            return out + [Reject(sid, "size_mismatch", "read_image", f"{rec['file']} is {img.width}x{img.height}, "
                                 f"image_data.json says {listed[0]}x{listed[1]}")]
        usable = []
        for key, oid, osid, obj, synset, box in chosen:
            fitted = self._fit_box(osid, box, img.width, img.height)
            if isinstance(fitted, Reject):
                out.append(fitted)
            else:
                usable.append((key, oid, osid, obj, synset, fitted))
        cap = self.config.max_objects_per_image  # counts usable objects: a bad box leaves its place to another
        if cap is not None and len(usable) > cap:
            keep = {c[0] for c in sorted(usable, key=lambda c: (rank_value(self.config.seed, c[0]), c[0]))[:cap]}
            usable = [c for c in usable if c[0] in keep]
        for key, oid, osid, obj, synset, (box, was_clipped) in usable:
            out.append(self._sample(rec, img, key, oid, osid, obj, synset, box, was_clipped))
        return out

    def _fit_box(self, osid: str, box, width: int, height: int) -> tuple[tuple, bool] | Reject:
        """The box clipped to the image and whether it had to be, or a reject."""
        if box[0] >= width or box[1] >= height or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
            return Reject(osid, "bad_box", "vg", f"box {list(box)} lies outside the {width}x{height} image")
        clipped = clip_box(box, width, height)
        if clipped[2] < self.config.min_box_side or clipped[3] < self.config.min_box_side:
            return Reject(osid, "box_too_small", "vg", f"box {clipped[2]:g}x{clipped[3]:g} pixels inside the "
                          f"{width}x{height} image is below --min-box-side {self.config.min_box_side}")
        return clipped, clipped != tuple(box)

    def _sample(self, rec, img: EncodedImage, key, oid, osid, obj, synset, box, was_clipped: bool) -> Sample:
        data, ext, width, height = img.data, img.ext, img.width, img.height
        x, y, w, h = box
        if self.config.crop:
            data, (x, y, w, h), width, height = self._crop(img, box)
            ext = "jpg"
        label = synset_name(synset)
        names = object_names(obj)
        norm = normalised_box(x, y, w, h, width, height)
        x1, y1, x2, y2 = (int(round(v)) for v in (x, y, x + w, y + h))  # corners: the box stays inside
        pixels = [x1, y1, x2 - x1, y2 - y1]
        answer = self.config.answer_template.format(box=format_box(norm), box_pixels=pixels, name=label, synset=synset)
        doc = {"id": key, "image_id": rec["image_id"], "object_id": oid, "synset": synset, "label": label,
               "name": names[0] if names else label, "box": pixels, "box_normalised": norm, "box_clipped": was_clipped,
               "conversations": [{"from": "human", "value": self.config.prompt}, {"from": "gpt", "value": answer}]}
        columns = {"label": label, "synset": synset, "name": doc["name"], "image_id": rec["image_id"],
                   "object_id": oid, "box": pixels, "box_clipped": was_clipped}
        return Sample(key=key, doc=doc, image=data, image_ext=ext, width=width, height=height, source_id=osid,
                      columns=columns)

    def _crop(self, img: EncodedImage, box) -> tuple[bytes, tuple[float, float, float, float], int, int]:
        """The box with a margin, cut out and encoded as JPEG; the box in the crop's coordinates."""
        from PIL import Image

        x, y, w, h = box
        m = self.config.crop_margin
        left, top = max(0, int(x - m * w)), max(0, int(y - m * h))
        right, bottom = min(img.width, int(x + w + m * w + 0.999)), min(img.height, int(y + h + m * h + 0.999))
        with Image.open(io.BytesIO(img.data)) as im:
            crop = im.convert("RGB").crop((left, top, right, bottom))
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=self.config.jpeg_quality)
        return buf.getvalue(), (x - left, y - top, w, h), crop.width, crop.height
