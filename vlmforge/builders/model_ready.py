"""`model-ready`: a parent build whose images are stored the way the model will see them.

Each image is decoded, padded to a square with the processor's mean colour (LLaVA-1.5's `pad`; or
left as it is with `pad="none"`), resized and centre-cropped exactly as the model's image processor
does, and stored as JPEG (4:4:4, fixed encoder settings). Training then decodes a small image and
only normalises it: data work done once at build time instead of every epoch. The steps are those the trainer's fast image path uses
(`vlmforge.training.images`), checked against the processor itself before the build starts.

Every other member, json field and manifest column of the parent is kept; the original size
(`orig_width`, `orig_height`) and the transform (`pad=square:122,116,104;resize=336;crop=336;
resample=bicubic`) are added to the json and the manifest, and the transform is part of the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from PIL import Image

from vlmforge.builders.base import BuildConfig
from vlmforge.builders.derived import DerivedBuilder, KeepAllPlan, parent_sample
from vlmforge.curation.images import encode_jpeg
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record, Source
from vlmforge.sources.build import BuildSource

PADS = ("square", "none")
# Full-resolution chroma: these pixels go to the model as they are, and at the model's size the
# originals' 4:2:0 chroma is no coarser than a pixel. Halving it again costs sharp colour edges
# tens of levels for a decode only ~10% quicker.
CHROMA = "4:4:4"
# Largest --size: above any vision encoder's input, and a typo beyond it (100000) would allocate tens
# of GB per image before failing.
MAX_SIZE = 4096


@dataclass
class ModelReadyConfig(BuildConfig):
    processor: str | None = None  # image processor (path or Hub id) whose resize and crop to apply
    size: int | None = None  # or CLIP's processor at this size (bicubic shortest edge, centre crop)
    pad: str = "square"  # square: pad with the processor's mean colour first (LLaVA-1.5); none
    quality: int = 95  # JPEG quality of the stored images
    transform: str = ""  # filled in from the processor: what was done to every image


def load_image_processor(config: ModelReadyConfig) -> Any:
    """The image processor `config` names (its PIL backend, the one the trainer's fast path follows),
    or CLIP's at `config.size`."""
    from vlmforge.training.images import clip_image_processor

    if config.processor is None and config.size is None:
        raise UserError("model-ready needs the image processor (--processor PATH_OR_ID) or a CLIP size (--size 336)")
    if config.processor is not None and config.size is not None:
        raise UserError("give --processor or --size, not both")
    if config.processor is None:
        if not 1 <= config.size <= MAX_SIZE:
            raise UserError(f"--size must be between 1 and {MAX_SIZE} pixels, got {config.size}")
        return clip_image_processor(config.size)
    from transformers import AutoImageProcessor

    from vlmforge.curation.models import load_checkpoint

    name = config.processor
    return load_checkpoint("image processor", name, lambda: AutoImageProcessor.from_pretrained(name, backend="pil"))


def refuse_model_ready_parent(src: Source) -> None:
    """A UserError when the parent records are already model-ready (a model-ready build, or one
    derived from it): a second resize and JPEG pass would only lose detail and record a transform
    the trainer does not know."""
    for s in getattr(src, "build_sources", [src]):
        if not isinstance(s, BuildSource) or "image_transform" not in s.build.info.get("columns", {}):
            continue
        where = f" AND (\n{s.where}\n)" if s.where else ""
        row = s.build.sql(f"SELECT image_transform FROM samples WHERE image_transform IS NOT NULL{where} LIMIT 1").fetchall()
        if row:
            raise UserError(f"the parent {s.build.path} already holds model-ready images ({row[0][0]}); build "
                            "model-ready from the build they were made from, or leave them out with --where \"image_transform IS NULL\"")


class ModelReadyBuilder(DerivedBuilder):
    name = "model-ready"
    VERSION = "1.1.0"
    Config = ModelReadyConfig
    description = "A parent build with its images padded, resized and cropped as the model's image processor does."
    plan_class = KeepAllPlan
    own_columns = [
        ("orig_width", pa.int32(), "image width before the model-ready transform (null for text-only samples)"),
        ("orig_height", pa.int32(), "image height before the model-ready transform (null for text-only samples)"),
        ("image_transform", pa.string(), "what was done to the image, e.g. pad=square:122,116,104;resize=336;crop=336;resample=bicubic"),
    ]
    batch_size = 32

    def __init__(self, config: ModelReadyConfig, source: Source):
        if config.pad not in PADS:
            raise UserError(f"--pad must be one of {', '.join(PADS)}, got {config.pad!r}")
        if not 1 <= config.quality <= 100:
            raise UserError(f"--quality must be between 1 and 100, got {config.quality}")
        super().__init__(config, source)
        refuse_model_ready_parent(self.src.base)
        self.image_processor = load_image_processor(config)
        prep = self._preparer()
        if prep.transform is None:
            raise UserError(f"{type(self.image_processor).__name__} is not a resize + centre-crop image processor "
                            "(CLIP, SigLIP style) whose steps vlmforge reproduces; model-ready images need one")
        self.config = dataclasses.replace(config, transform=prep.transform)
        self._prep = None  # made per worker in setup()

    def _preparer(self):
        from vlmforge.training.images import ImagePreparer

        return ImagePreparer(self.image_processor, pad_to_square=self.config.pad == "square")

    def setup(self) -> None:
        self._prep = self._preparer()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_prep"] = None  # holds closures; rebuilt by setup()
        return state

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        return [[self._one(rec)] for rec in batch]

    def _one(self, rec: Record) -> Sample | Reject:
        sample = parent_sample(rec, self.columns)
        if sample.image is None:  # text-only: nothing to prepare
            sample.doc.update(orig_width=None, orig_height=None, image_transform=None)
            return sample
        try:
            img = self._prep.load(sample.image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return Reject(rec["source_id"], "corrupt_image", "model_ready", f"image of {rec['key']}: {e}")
        ready = self._prep.model_ready(img)
        sample.image, sample.image_ext = encode_jpeg(ready, self.config.quality, CHROMA), "jpg"
        sample.image_sha256 = None  # the parent's; the new image's is made from its bytes
        sample.width, sample.height = ready.size
        own = {"orig_width": rec["width"], "orig_height": rec["height"], "image_transform": self.config.transform}
        sample.columns.update(own)
        sample.doc.update(own)
        return sample
