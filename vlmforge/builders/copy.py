"""`copy`: a source turned into a build as it is. It proves the machinery and is the starting point
for derived builds (split, subset, mix) over raw data."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from vlmforge.builders.base import BuildConfig, Builder
from vlmforge.builders.derived import lineage, parent_sample
from vlmforge.curation.images import ImageError
from vlmforge.sample import Reject, Sample, make_key
from vlmforge.sources.base import Record
from vlmforge.sources.fgvc import read_record_image

DESCRIBE_PROMPT = "<image>\nDescribe this image briefly."
CLASSIFY_PROMPT = "<image>\nWhat is shown in this image?"


@dataclass
class CopyConfig(BuildConfig):
    check_images: str = "quick"  # quick: header + JPEG end marker; full: decode every pixel
    jpeg_quality: int = 95  # for images converted to JPEG (formats other than JPEG and PNG; for LLaVA JSON all but RGB JPEG)


class CopyBuilder(Builder):
    name = "copy"
    VERSION = "1.5.0"
    Config = CopyConfig
    description = "Copies a source (COCO, LLaVA JSON, class folders) into shards unchanged, with a LLaVA-format conversation."
    columns = [
        ("label", pa.string(), "class label (imagefolder sources); null otherwise"),
        ("subsource", pa.string(), "LLaVA JSON sub-dataset: coco, gqa, ocr_vqa, textvqa, vg, text-only, else the image path's first folder or other"),
        ("n_turns", pa.int32(), "number of conversation turns"),
        ("original_format", pa.string(), "image format as read from the source (JPEG, PNG, GIF, ...)"),
    ]
    batch_size = 64

    def __init__(self, config: CopyConfig, source):
        super().__init__(config, source)
        from vlmforge.sources.build import BuildSource

        if isinstance(source, BuildSource):  # a copy of a build names every build before it, as derived builds do
            source.parent_infos = lineage(source)

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        return [[self._one(rec)] for rec in batch]

    def _one(self, rec: Record) -> Sample | Reject:
        sid = rec["source_id"]
        if "orphan" in rec:
            return Reject(sid, "orphan_annotation", "source", f"annotation {rec['orphan']['id']} points to image "
                          f"{rec['orphan']['image_id']}, which the annotation file does not list")
        if "invalid" in rec:
            return Reject(sid, "invalid_record", "source", rec["invalid"])
        if "unusable" in rec:  # a record the source reads but a sample cannot hold (reason, detail)
            reason, detail = rec["unusable"]
            return Reject(sid, reason, "source", detail)
        if "build_path" in rec:
            return self._from_build(rec)
        doc, columns = self._doc(rec)
        sample = Sample(key=self._key(rec), doc=doc, source_id=sid, columns=columns)
        if rec.get("file"):
            try:
                img = read_record_image(rec, self.config.check_images, self.config.jpeg_quality,
                                        keep=self.keep_formats())  # FGVC's banner cut off
            except ImageError as e:
                return Reject(sid, e.reason, "read_image", e.detail)
            sample.image, sample.image_ext = img.data, img.ext
            if not img.converted:
                sample.image_file = str(rec["file"])
            sample.width, sample.height = img.width, img.height
            columns["original_format"] = img.original_format
        columns["n_turns"] = len(doc.get("conversations", []))
        return sample

    def keep_formats(self) -> tuple[str, ...]:
        """Image formats stored as they are. LLaVA's scripts expect RGB JPEG, so for LLaVA JSON
        every other format (PNG, GIF, CMYK, palette, alpha) is converted."""
        return ("JPEG",) if self.src.name == "llava-json" else ("JPEG", "PNG")

    def _from_build(self, rec: Record) -> Sample:
        """A parent build's sample, carried over with its image and json unchanged."""
        return parent_sample(rec, self.columns)

    def _key(self, rec: Record) -> str:
        src = self.src.name
        if "key" in rec:  # classification readers (cub, fgvc-aircraft, stanford-dogs) make their own
            return rec["key"]
        if src == "coco":
            return f"{int(rec['image_id']):012d}"
        if src == "imagefolder":
            return make_key(rec["stem"])
        return make_key(rec["source_id"])

    def _doc(self, rec: Record) -> tuple[dict, dict]:
        src = self.src.name
        if src == "coco":
            caps = [c["caption"].strip() for c in rec["captions"]]
            doc = {"id": rec["image_id"], "image": rec["image"]["file_name"], "captions": caps,
                   "instances": rec["instances"]}
            if caps:
                doc["conversations"] = [{"from": "human", "value": DESCRIBE_PROMPT}, {"from": "gpt", "value": caps[0]}]
            else:
                doc["conversations"] = []
            return doc, {}
        if "label" in rec:  # any class-labelled source
            doc = {"id": rec["source_id"], "label": rec["label"],
                   "conversations": [{"from": "human", "value": CLASSIFY_PROMPT}, {"from": "gpt", "value": rec["label"]}]}
            return doc, {"label": rec["label"]}
        doc = dict(rec["record"])
        return doc, {"subsource": rec.get("subsource")}
