"""`occlusion`: causal-entity occlusion data (CVC, IJCAI 2025) from COCO-format captions and images.

Recipe, per image and its captions:
  entities (spaCy noun chunks) -> causality (co-occurrence or masked LM) -> grounding (annotations or
  Grounding DINO) -> masks (annotations, SAM or boxes) -> occlusion (blocks, solid, blur, noise,
  inpaint) -> area filters and at most K objects per image -> an instruction asking for the hidden object.
One object is occluded once per image (from the first caption, in id order, that names it); every
entity that does not become a sample lands in `rejects` with the stage and reason.
"""

from __future__ import annotations


import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from vlmforge.builders.base import BuildConfig, Builder
from vlmforge.curation.causality import CausalityItem, CooccurrenceScorer, MaskedLMScorer
from vlmforge.curation.entities import SPACY_MODEL, Entity, GenerativeEntityExtractor, extract_entities
from vlmforge.curation.generation import REFUSED
from vlmforge.curation.grounding import (
    COCO_SUPERCATEGORIES, AnnotationGrounder, Grounding, GroundingDinoGrounder, box_iou, detections_for_caption,
    is_not_object,
)
from vlmforge.curation.images import (
    EncodedImage, ImageError, bilevel_png, check_image_bytes, encode_for_storage, read_bytes, whole_jpeg,
)
from vlmforge.curation.instructions import occlusion_question, type_word
from vlmforge.curation.models import check_model_name
from vlmforge.curation.occlude import (
    BOX_LOCAL_FILLS, COEFFICIENT_FILLS, FILL_PHRASES, FILL_RGB, FILLS, coefficient_writer, occlude_coefficients,
    occlusion_region, read_coefficients, render_occlusion,
)
from vlmforge.curation.segmentation import MaskCrop, SamSegmenter, SegmentationError, annotation_crop, box_mask
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record, Source


@dataclass
class OcclusionConfig(BuildConfig):
    spacy_model: str = SPACY_MODEL
    entity_extractor: str = "spacy"  # spacy | a generation backend prompted few-shot: transformers, vllm, openai
    entity_model: str | None = None  # that backend's checkpoint, Hub id or endpoint model name
    causality: str = "cooccurrence"  # cooccurrence | mlm | none
    min_causality: float = 0.25  # cooccurrence: keep score >= this
    mlm_model: str = "FacebookAI/roberta-large"
    min_ppl: float = 1.0  # mlm: keep min_ppl < ppl < max_ppl
    max_ppl: float = 3.33
    grounder: str = "annotations"  # annotations | grounding-dino
    embed_threshold: float = 0.65  # annotations: MiniLM similarity fallback for unknown words
    embedder: str | None = None  # sentence-transformers model; None = offline MiniLM
    dino_model: str = "IDEA-Research/grounding-dino-tiny"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    segmenter: str = "annotations"  # annotations | sam | box
    sam_model: str = "facebook/sam-vit-base"
    fill: str = "blocks"  # blocks | solid | blur | noise | inpaint
    dilate: int = 0  # mask dilation in pixels
    min_area: float = 0.005  # occluded fraction of the image
    max_area: float = 0.5
    max_entities: int = 3  # per image
    keep_original: bool = False
    # coefficients: JPEG sources are occluded in the DCT domain (only the blocks under the fill change);
    # reencode: decoded, painted and encoded again at jpeg_quality, as the blur and inpaint fills always are.
    occluded_jpeg: str = "coefficients"
    jpeg_quality: int = 95

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["entity_extractor"] == "spacy" and d["entity_model"] is None:
            del d["entity_extractor"], d["entity_model"]  # builds from before these options keep their id
        return d

    def validate(self) -> None:
        choices = {"entity_extractor": ("spacy",) + ENTITY_GENERATORS,
                   "causality": ("cooccurrence", "mlm", "none"), "grounder": ("annotations", "grounding-dino"),
                   "segmenter": ("annotations", "sam", "box"), "fill": FILLS,
                   "occluded_jpeg": ("coefficients", "reencode")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        if self.entity_extractor != "spacy" and not self.entity_model:
            raise UserError(f"--entity-extractor {self.entity_extractor} needs --entity-model (a checkpoint folder, "
                            "a Hub id, or the endpoint's model name)")
        if self.segmenter == "annotations" and self.grounder != "annotations":
            raise UserError("--segmenter annotations needs --grounder annotations; with grounding-dino use sam or box")
        if self.occluded_jpeg == "coefficients" and self.fill in COEFFICIENT_FILLS and coefficient_writer() is None:
            raise UserError("--occluded-jpeg coefficients needs vlmforge's libjpeg extension, which was not built here "
                            "(no C compiler or libjpeg headers when vlmforge was installed: install them, e.g. "
                            "`apt-get install gcc libjpeg-dev`, and reinstall vlmforge), or pass --occluded-jpeg reencode")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise UserError("need 0 <= --min-area < --max-area <= 1")
        if self.max_entities < 1:
            raise UserError("--max-entities must be at least 1")
        ranges = [("min_causality", 0, 1), ("embed_threshold", -1, 1), ("box_threshold", 0, 1), ("text_threshold", 0, 1)]
        for name, low, high in ranges:
            if not low <= getattr(self, name) <= high:
                raise UserError(f"--{name.replace('_', '-')} must be between {low} and {high} (got {getattr(self, name)})")
        if not 0 <= self.min_ppl < self.max_ppl:
            raise UserError(f"need 0 <= --min-ppl < --max-ppl (got {self.min_ppl} and {self.max_ppl})")
        used = [("masked LM (--mlm-model)", self.mlm_model, self.causality == "mlm"),
                ("Grounding DINO (--dino-model)", self.dino_model, self.grounder == "grounding-dino"),
                ("SAM (--sam-model)", self.sam_model, self.segmenter == "sam"),
                ("sentence embedder (--embedder)", self.embedder, self.grounder == "annotations"),
                ("entity model (--entity-model)", self.entity_model, self.entity_extractor in ("transformers", "vllm"))]
        for what, name, needed in used:
            if needed:
                check_model_name(name, what)


# Generation backends that can name a caption's entities (vlmforge.curation.generation).
ENTITY_GENERATORS = ("transformers", "vllm", "openai")


@dataclass
class _Candidate:
    caption: dict
    index: int  # entity index within its caption
    entity: Entity
    causality: float | None = None
    grounding: Grounding | None = None


class OcclusionBuilder(Builder):
    name = "occlusion"
    VERSION = "2.6.0"  # 2.6.0: EXTRACTOR_VERSION 15 (round 5: list items hung on verbs, misread items). 2.5.0: EXTRACTOR_VERSION 14 (comma-only lists, owners, "Coffee and end tables"; 13, "close-up
    # of" and "side by side", came in under 2.4.0); 2.4.0: EXTRACTOR_VERSION 12 (a sweep of caption shapes: lists, misread
    # openings, "a X sitting"): any caption may change; 2.3.0: EXTRACTOR_VERSION 11 (more lists, two verbs after a subject)
    Config = OcclusionConfig
    description = ("Causal-entity occlusion (CVC): an object named in a caption and predictable from its context "
                   "is hidden in the image, and the instruction asks the model to infer it.")
    columns = [
        ("label", pa.string(), "the hidden object's label as the caption names it (the answer)"),
        ("entity", pa.string(), "the caption's full noun phrase for the object"),
        ("category", pa.string(), "COCO category the object was grounded to (null when unknown)"),
        ("supercategory", pa.string(), "COCO supercategory (person, vehicle, animal, ...)"),
        ("causality", pa.float64(), "causality value: co-occurrence score in [0,1] (higher = more predictable) or MLM pseudo-perplexity (lower = more predictable)"),
        ("occluded_fraction", pa.float64(), "fraction of the image's pixels the occlusion changed"),
        ("box", pa.list_(pa.float64()), "object box [x, y, w, h] in pixels"),
        ("image_id", pa.int64(), "COCO image id"),
        ("caption_id", pa.int64(), "COCO caption annotation id"),
        ("caption", pa.string(), "the caption the entity came from"),
        ("fill", pa.string(), "occlusion style"),
        ("question", pa.string(), "the instruction's text"),
        ("grounding", pa.string(), "how the object was grounded (name, embedding, grounding-dino)"),
        ("objects", pa.int64(), "how many objects are hidden (instances or detections of a plural phrase)"),
    ]
    batch_size = 8

    def __init__(self, config: OcclusionConfig, source: Source):
        config.validate()
        ds = getattr(source, "ds", None)
        uses = [f"--{n} annotations" for n in ("grounder", "segmenter") if getattr(config, n) == "annotations"]
        if uses and getattr(ds, "has_instances", True) is False:
            raise UserError(f"{' and '.join(uses)} need the COCO instances file (annotations/instances_<split>.json, "
                            "or --instances); without it use --grounder grounding-dino --segmenter sam")
        super().__init__(config, source)
        self.device: str | None = None  # where model stages run; not part of the build's identity
        # Options of the entity extractor's generation backend (base_url, batch_size, ...): not identity.
        self.generator_options: dict[str, Any] = {}
        # Caption entities are cached on disk (None: under $VLMFORGE_CACHE; False: off); the cache
        # only skips work, it never changes what is built.
        self.entity_cache: str | bool | None = None
        # The label vectors of prepare() likewise (None: $VLMFORGE_CACHE/embeddings; False: off): a
        # repeated or resumed build then never loads the sentence-embedding model.
        self.vector_cache: str | bool | None = None
        self.entities: dict[int, list[Entity]] = {}
        self.refused: dict[int, str] = {}  # caption id -> the endpoint's words, for a caption it refused
        self.scorer = None
        self.label_vectors: dict[str, np.ndarray] = {}  # made by prepare() for the annotation grounder
        # Seconds spent per stage in this process (bench/occlusion.py reads them).
        self.stage_seconds: dict[str, float] = defaultdict(float)

    @property
    def resources(self) -> dict[str, float]:
        """What one worker needs (the ray executor places workers by it): a GPU when a model stage
        (Grounding DINO, SAM, masked LM) is configured and --device is not cpu, else one CPU."""
        cfg = self.config
        models = [cfg.grounder == "grounding-dino", cfg.segmenter == "sam", cfg.causality == "mlm"]
        return {"cpu": 1, "gpu": 1} if any(models) and self.device != "cpu" else {"cpu": 1}

    @classmethod
    def open_source(cls, kind: str | None, **options: Any) -> Source:
        if kind not in (None, "coco"):
            raise UserError(f"the occlusion builder reads COCO-format data (--source coco), not {kind!r}")
        from vlmforge.sources.coco import CocoSource

        source = CocoSource.from_paths(unit="image", **{k: v for k, v in options.items() if v is not None})
        if not source.ds.captions:
            files = ", ".join(str(p) for p in source.ds.files)
            raise UserError(f"the occlusion builder needs captions, and {files} holds none: give a COCO captions "
                            "file with at least one caption")
        return source

    # -- driver: corpus-wide work --------------------------------------------------------------
    def prepare(self) -> None:
        """Extract every caption's entities once (they feed both co-occurrence statistics and the
        per-image work) and fit the co-occurrence scorer over all images."""
        self._check_models()
        helpers: list = []
        try:
            self._prepare(helpers)
        finally:
            for helper in helpers:
                helper.close(wait=False)

    def _check_models(self) -> None:
        """Each model stage's checkpoint exists and is of its kind (its config is read, not the model)
        before the captions are parsed: on COCO train that takes minutes, and the models load after."""
        from vlmforge.curation.models import check_model_kind

        cfg = self.config
        if cfg.causality == "mlm":
            from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

            check_model_kind("masked LM", cfg.mlm_model, MODEL_FOR_MASKED_LM_MAPPING_NAMES)
        if cfg.grounder == "grounding-dino":
            check_model_kind("Grounding DINO", cfg.dino_model, GroundingDinoGrounder.model_types)
        if cfg.segmenter == "sam":
            check_model_kind("SAM", cfg.sam_model, SamSegmenter.model_types)

    def _start_embedder_helper(self, helpers: list) -> None:
        """Captions are about to be parsed here: the sentence-embedding model loads meanwhile in a
        second process (embedding.EmbedderHelper), for annotation grounding, with a second core, when
        this process has not loaded it already. A build whose captions were all cached parses nothing,
        and most likely finds its label vectors cached too: no helper then."""
        import os

        from vlmforge.curation.embedding import EmbedderHelper, shared_embedder

        if (self.config.grounder != "annotations" or (os.cpu_count() or 1) < 2
                or shared_embedder(self.config.embedder)._model is not None):
            return
        try:
            helpers.append(EmbedderHelper(self.config.embedder))
        except OSError:  # cannot start a process here: this one loads the model when it needs it
            pass

    def _prepare(self, helpers: list) -> None:
        from vlmforge.progress import progress_bar

        t0 = time.perf_counter()
        ds = self.src.ds
        caps = [c for image_id in sorted(ds.captions) for c in ds.captions[image_id]]
        refused: dict[str, str] = {}
        if self.config.entity_extractor == "spacy":
            # The parse uses a second core even with one worker (--workers is the image work's): a first build
            # waits on it; from 5,000 captions up (entities.FORK_MIN), where a fork pays for itself.
            with progress_bar("entities", total=len(caps), disable=getattr(self, "quiet", False)) as advance:
                found = extract_entities([c["caption"] for c in caps], self.config.spacy_model, max(2, self.processes),
                                         self.entity_cache, advance, lambda: self._start_embedder_helper(helpers))
        else:
            found, refused = self._generate_entities([c["caption"] for c in caps], helpers)
        self.entities = {int(cap["id"]): ents for cap, ents in zip(caps, found)}
        self.refused = {int(cap["id"]): refused[cap["caption"]] for cap in caps if cap["caption"] in refused}
        if self.config.causality == "cooccurrence":
            self.scorer = CooccurrenceScorer(self.config.min_causality).fit(
                self._labels_of_image(image_id) for image_id in sorted(ds.captions))
        self.stage_seconds["entities"] += time.perf_counter() - t0
        if self.config.grounder == "annotations":
            # Every label is known now: embed the ones the synonym table lacks here, once, so that
            # workers get the vectors with the builder and never load the sentence-embedding model.
            t0 = time.perf_counter()
            grounder = AnnotationGrounder(ds.categories, self.config.embed_threshold, self.config.embedder)
            grounder.prefetch(self._all_labels(), cache=self.vector_cache, helper=helpers[0] if helpers else None)
            self.label_vectors = dict(grounder.vectors)
            self.stage_seconds["grounding"] += time.perf_counter() - t0

    def _generate_entities(self, captions: list[str], helpers: list) -> tuple[list[list[Entity]], dict[str, str]]:
        """Entities from a generation model prompted few-shot, each distinct caption asked once; its
        answers are cached with the generator's response cache (off with the entity cache). Also the
        captions the endpoint refused for their content, with its words (generation.ask): rejects."""
        from vlmforge.curation.entities import entities_from_lines
        from vlmforge.curation.generation import ask, make_generator, refused_by_owner
        from vlmforge.progress import progress_bar

        cfg = self.config
        options = dict(self.generator_options)
        if self.device and cfg.entity_extractor == "transformers":
            options.setdefault("device", self.device)
        gen = make_generator(cfg.entity_extractor, cfg.entity_model, cache_dir=False if self.entity_cache is False else None,
                             **options)
        extractor = GenerativeEntityExtractor(gen)
        todo = list(dict.fromkeys(captions))
        self._start_embedder_helper(helpers)
        got: dict[str, list[Entity]] = {}
        refused: dict[int, str] = {}  # index in todo -> the endpoint's words
        with progress_bar("entities", total=len(todo), disable=getattr(self, "quiet", False)) as advance:
            for k in range(0, len(todo), 64):
                chunk = todo[k : k + 64]
                texts, no = ask(gen, extractor.requests(chunk))
                got.update((c, entities_from_lines(c, t[0] if t else "")) for c, t in zip(chunk, texts) if t is not None)
                refused.update((k + j, words) for j, words in no.items())
                advance(len(chunk))
        refused_captions = refused_by_owner(refused, todo, "caption")
        if got and not any(got.values()):
            raise UserError(f"the {cfg.entity_extractor} model {cfg.entity_model!r} named no entity in any of "
                            f"{len(got)} captions: its answers gave no 'phrase | label' line whose phrase is in "
                            "the caption; check the model or the endpoint")
        return [got.get(c, []) for c in captions], refused_captions

    def _all_labels(self) -> list[str]:
        return sorted({e.label for ents in self.entities.values() for e in ents})

    def _labels_of_image(self, image_id: int) -> list[str]:
        return self._labels_of_captions(self.src.ds.captions.get(image_id, []))

    def _labels_of_captions(self, captions: list[dict]) -> list[str]:
        return [e.label for c in captions for e in self.entities.get(int(c["id"]), [])]

    def with_prepared(self, records):
        """Each record takes its captions' entities along: a worker never holds the whole table
        (COCO train's 590k captions would be ~60 MB pickled into every worker at start)."""
        for rec in records:
            caps = rec.get("captions") or ()
            rec["entities"] = {int(c["id"]): self.entities.get(int(c["id"]), []) for c in caps}
            rec["refused"] = {int(c["id"]): self.refused[int(c["id"])] for c in caps if int(c["id"]) in self.refused}
            yield rec

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["entities"] = state["refused"] = {}  # workers read them from the records (with_prepared)
        state.pop("_reader", None)
        state.pop("_ahead", None)
        return state

    # -- worker: models --------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        if self._coefficients and coefficient_writer() is None:  # a worker on a machine the driver is not
            import platform

            raise UserError(f"--occluded-jpeg coefficients: vlmforge's libjpeg extension was not built on "
                            f"{platform.node()}, where a worker runs; build it there or pass --occluded-jpeg reencode")
        cats = self.src.ds.categories
        self.grounder = (AnnotationGrounder(cats, cfg.embed_threshold, cfg.embedder) if cfg.grounder == "annotations"
                         else GroundingDinoGrounder(cfg.dino_model, cfg.box_threshold, cfg.text_threshold, device=self.device))
        self.segmenter = SamSegmenter(cfg.sam_model, device=self.device) if cfg.segmenter == "sam" else None
        if cfg.causality == "mlm":
            self.scorer = MaskedLMScorer(cfg.mlm_model, cfg.min_ppl, cfg.max_ppl, device=self.device)
        for stage in (self.grounder, self.segmenter, self.scorer):
            if stage is not None:
                stage.setup()
        if isinstance(self.grounder, AnnotationGrounder):
            self.grounder.vectors.update(self.label_vectors)
            self.grounder.prefetch(self._all_labels())  # a no-op when prepare() ran

    # -- worker: a batch of images ---------------------------------------------------------------
    def prefetch(self, batch: list[Record]) -> None:
        """The next batch's files read, and their JPEGs' coefficients decoded, in a thread while this one
        works on the current batch (the decoder releases the GIL): a first 640x480 build of the bench's
        sample took 1.08-1.25 s where reading in turn took 1.26-1.42 s. `process` takes what is ready or
        waits for it. Writing the samples' JPEGs in a second thread gained nothing (0.78 s against 0.73 s
        for a repeated build reading ahead alone), and in this one it held the next batch's reads back."""
        from concurrent.futures import ThreadPoolExecutor

        if getattr(self, "_reader", None) is None:
            self._reader, self._ahead = ThreadPoolExecutor(1, thread_name_prefix="vlmforge-read"), {}
        for rec in batch:
            if "file" in rec and rec.get("captions") and "orphan" not in rec and "invalid" not in rec:
                self._ahead[str(rec["file"])] = self._reader.submit(self._read, rec["file"])

    def _read(self, file) -> tuple[bytes, Any]:
        """A file's bytes, and for a JPEG occluded in the DCT domain its coefficients (None where it cannot be
        edited so: read_coefficients). Raises ImageError. A file whose Huffman tables lack codes (tables made
        for the image) is also coded with the standard tables as its blocks are decoded, the switch its first
        occluder needing one would make (the same bytes): made so, it cost a bench build of such files 1.17 s
        against 1.28 s for the switch made when needed, in one thread (most such files need it)."""
        data, coefs = read_bytes(file), None
        whole = whole_jpeg(data) if self._coefficients else None
        if whole is not None:
            data, coefs = whole, read_coefficients(whole, standard=True)
        return data, coefs

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        t0 = time.perf_counter()
        results: list[list[Sample | Reject]] = [[] for _ in batch]
        work = []  # (index in batch, record, decoded image, candidates)
        for i, rec in enumerate(batch):
            if "orphan" in rec:
                ann = rec["orphan"]
                results[i].append(Reject(rec["source_id"], "orphan_annotation", "source",
                                         f"annotation {ann['id']} points to image {ann['image_id']}, which is not listed"))
                continue
            if "invalid" in rec:
                results[i].append(Reject(rec["source_id"], "invalid_record", "source", rec["invalid"]))
                continue
            if not rec["captions"]:
                results[i].append(Reject(rec["source_id"], "no_captions", "source", "the image has no captions"))
                continue
            try:
                # A JPEG to be occluded in the DCT domain is read as coefficients, and decoded only if a stage
                # asks for pixels (a model, or a colour word choosing among instances). One that reads cleanly
                # so needs no other check: its headers are read, it holds its end-of-image marker (and what
                # follows that marker is left out, as check_image_bytes leaves it out).
                ahead = getattr(self, "_ahead", {}).pop(str(rec["file"]), None)
                data, coefs = ahead.result() if ahead is not None else self._read(rec["file"])
                img = (EncodedImage(data, "jpg", coefs.width, coefs.height, "JPEG", "RGB") if coefs is not None
                       else check_image_bytes(data, str(rec["file"]), "quick"))
                if self.config.keep_original:  # JPEG kept as it is; anything else as RGB JPEG: every
                    # sample of a build has the same fields, so the field is always orig.jpg
                    img = encode_for_storage(img, str(rec["file"]), self.config.jpeg_quality, keep=("JPEG",))
            except ImageError as e:
                results[i].append(Reject(rec["source_id"], e.reason, "read_image", e.detail))
                continue
            px = _Pixels(img.data, coefs)
            if coefs is None and px.bgr is None:
                results[i].append(Reject(rec["source_id"], "corrupt_image", "read_image", f"{rec['file']}: cannot be decoded"))
                continue
            # COCO files give each image's size; one that is left out is taken from the pixels.
            size = (rec["image"].setdefault("height", px.height), rec["image"].setdefault("width", px.width))
            if (px.height, px.width) != size:
                results[i].append(Reject(rec["source_id"], "size_mismatch", "read_image",
                                         f"{rec['file']} is {px.width}x{px.height}, the annotations say "
                                         f"{size[1]}x{size[0]}"))
                continue
            entities, refused = rec.get("entities", self.entities), rec.get("refused", self.refused)
            refused = {int(cap["id"]): refused[int(cap["id"])] for cap in rec["captions"] if int(cap["id"]) in refused}
            for cap_id, words in refused.items():
                results[i].append(Reject(f"{rec['image_id']}:{cap_id}", REFUSED, "entities", words))
            cands = [_Candidate(cap, k, ent) for cap in rec["captions"]
                     for k, ent in enumerate(entities.get(int(cap["id"]), []))]
            if not cands and len(refused) < len(rec["captions"]):  # refusals say why for the captions they hit
                results[i].append(Reject(rec["source_id"], "no_entities", "entities",
                                         "no caption names an object" if not refused else
                                         "no caption the endpoint answered names an object"))
            work.append((i, rec, img, px, cands))
        t1 = time.perf_counter()
        self._score_causality(work, results)
        t2 = time.perf_counter()
        self._ground(work, results)
        t3 = time.perf_counter()
        for i, rec, img, px, cands in work:
            results[i].extend(self._occlude_image(rec, img, px, cands))
        t4 = time.perf_counter()
        encode = self.stage_seconds.pop("_encode_in_batch", 0.0)
        for stage, dt in (("decode", t1 - t0), ("causality", t2 - t1), ("grounding", t3 - t2),
                          ("mask+occlude", t4 - t3 - encode), ("encode", encode)):
            self.stage_seconds[stage] += dt
        return results

    def _reject(self, rec: Record, c: _Candidate, reason: str, stage: str, detail: str = "") -> Reject:
        return Reject(f"{rec['image_id']}:{c.caption['id']}:{c.index}", reason, stage,
                      detail or f"{c.entity.phrase!r} in {c.caption['caption']!r}")

    def _score_causality(self, work, results) -> None:
        if self.config.causality == "none":
            return
        items, owners = [], []
        for i, rec, _img, _px, cands in work:
            context = tuple(c.entity.label for c in cands)  # every caption's entities, in caption order
            for c in cands:
                items.append(CausalityItem(c.caption["caption"], c.entity.start, c.entity.end, c.entity.label, context))
                owners.append((i, rec, c))
        values = self.scorer(items) if items else []
        for (i, rec, c), v in zip(owners, values):
            c.causality = float(v)
            if not self.scorer.keep(v):
                why = (f"{v:.3f}" if v != float("inf") else
                       f"not scored: it lies past the masked LM's first {self.scorer.max_length} tokens")
                results[i].append(self._reject(rec, c, "low_causality", "causality", f"{c.entity.label}: {why}"))
        for entry in work:
            entry[4][:] = [c for c in entry[4] if c.causality is None or self.scorer.keep(c.causality)]

    def _ground(self, work, results) -> None:
        broken: set[int] = set()  # candidates rejected with a reason of their own (id of the candidate)
        detections = None
        if self.config.grounder != "annotations":
            # Places and substances ("kitchen", "grass") are not asked for: as with annotations, never grounded.
            labels = [sorted({c.entity.label for c in w[4] if not is_not_object(c.entity.label)}) for w in work]
            detections = self.grounder([w[3].pil for w in work], labels)
        for n, (i, rec, _img, px, cands) in enumerate(work):
            named: dict = {}  # a caption's word -> the object it named: later captions name it again
            for _, group in groupby(cands, key=lambda c: c.caption["id"]):
                group = list(group)
                ents = [(c.entity.phrase, c.entity.label, c.entity.plural) for c in group]
                if detections is None:
                    found = self.grounder.ground_caption(ents, rec["instances"], lambda: px.rgb,
                                                         self._instance_masks(rec), named)
                else:
                    found = detections_for_caption(ents, detections[n], named, self.grounder.nms_iou)
                for c, g in zip(group, found):
                    if isinstance(g, Exception):  # picking one of several instances by colour reads their masks
                        reason = "bad_segmentation" if isinstance(g, SegmentationError) else "not_grounded"
                        results[i].append(self._reject(rec, c, reason, "grounding", str(g)))
                        broken.add(id(c))
                    else:
                        c.grounding = g
        for i, rec, _img, px, cands in work:
            for c in cands:
                if c.grounding is None and id(c) not in broken:
                    results[i].append(self._reject(rec, c, "not_grounded", "grounding",
                                                   f"{c.entity.phrase!r} in {c.caption['caption']!r}: "
                                                   + self._why_not_grounded(c.entity.label)))
            cands[:] = [c for c in cands if c.grounding is not None]
            h, w = px.height, px.width
            for c in cands:  # a box reaching past the image would size the blocks for pixels that do not exist
                c.grounding.box = _clip_box(c.grounding.box, w, h)
                c.grounding.boxes = [_clip_box(b, w, h) for b in c.grounding.boxes]

    def _why_not_grounded(self, label: str) -> str:
        cfg = self.config
        if is_not_object(label):
            return "a place, a substance or a thing with no COCO category, never grounded"
        if cfg.grounder == "grounding-dino":
            return (f"Grounding DINO found no box for {label!r} over --box-threshold {cfg.box_threshold} "
                    f"and --text-threshold {cfg.text_threshold}")
        return f"none of the image's annotated instances is what {label!r} names"

    def _instance_masks(self, rec: Record) -> "_LazyMasks":
        if "_masks" not in rec:
            rec["_masks"] = _LazyMasks(rec["instances"], rec["image"]["height"], rec["image"]["width"])
        return rec["_masks"]

    def _occlude_image(self, rec: Record, img, px: "_Pixels", cands: list[_Candidate]) -> list[Sample | Reject]:
        cfg = self.config
        out: list[Sample | Reject] = []
        h, w = px.height, px.width
        # One object is hidden once per image: the first caption (by id) that names it wins.
        iou = getattr(self.grounder, "nms_iou", 0.5)
        unique: list[_Candidate] = []
        for c in cands:
            if any(_same_object(c, u, iou) for u in unique):
                out.append(self._reject(rec, c, "duplicate_object", "dedupe", f"{c.entity.label}: the object an earlier caption names (one sample per object)"))
                continue
            unique.append(c)
        masks = self._masks(rec, px, unique, h, w)
        for c, mask in zip(unique, masks):
            if isinstance(mask, SegmentationError):
                out.append(self._reject(rec, c, "bad_segmentation", "segmentation", str(mask)))
        kept = [(c, m) for c, m in zip(unique, masks) if isinstance(m, MaskCrop)]
        unique, masks = [c for c, _ in kept], [m for _, m in kept]
        made: list[tuple[_Candidate, MaskCrop, float, np.random.Generator]] = []
        for c, mask in zip(unique, masks):
            key = f"{int(rec['image_id']):012d}-{int(c.caption['id'])}-{c.index}"
            rng = np.random.default_rng(_seed_words(cfg.seed, key))
            # Which pixels change is known before any is painted: the area filter needs no image.
            changed = occlusion_region(mask, c.grounding.box, cfg.fill, rng, cfg.dilate)
            frac = float(changed.area()) / float(h * w)
            if frac <= 0 or frac < cfg.min_area or frac > cfg.max_area:  # nothing hidden is never a sample
                reason = "area_too_large" if frac > cfg.max_area else "area_too_small"
                out.append(self._reject(rec, c, reason, "occlusion", f"{c.entity.label}: {frac:.4f} of the image"
                                        + (" (no pixel would change)" if frac <= 0 else "")))
                continue
            made.append((c, changed, frac, rng))
        # At most K objects per image: the most predictable first (ties: caption order).
        order = sorted(range(len(made)), key=lambda j: (_rank(made[j][0], cfg.causality), j))
        keep = set(order[: cfg.max_entities])
        for j, (c, changed, frac, rng) in enumerate(made):
            if j not in keep:
                out.append(self._reject(rec, c, "over_entity_limit", "filter", f"more than {cfg.max_entities} objects in the image"))
                continue
            out.append(self._sample(rec, img, c, px, changed, frac, rng))
        return out

    def _masks(self, rec: Record, px: "_Pixels", cands: list[_Candidate], h: int,
               w: int) -> list[MaskCrop | SegmentationError]:
        if not cands:
            return []
        seg = self.config.segmenter
        if seg == "annotations":
            inst = self._instance_masks(rec)
            out = []
            for c in cands:
                try:
                    out.append(_union([inst[i] for i in c.grounding.instance_ids]))
                except SegmentationError as e:  # kept in place of the mask: the caller rejects the candidate
                    out.append(e)
            return out
        # A plural phrase ("two dogs") hides every detection of its label; a singular one the best one free
        # (detections_for_caption).
        per_cand = [c.grounding.boxes or [c.grounding.box] for c in cands]
        if seg == "box":
            return [MaskCrop.from_full(box_mask(boxes, h, w)) for boxes in per_cand]
        flat = [b for boxes in per_cand for b in boxes]
        masks = [MaskCrop.from_full(m) for m in self.segmenter(px.pil, flat)]
        out, k = [], 0
        for boxes in per_cand:
            out.append(_union(masks[k : k + len(boxes)]))
            k += len(boxes)
        return out

    def _sample(self, rec: Record, img, c: _Candidate, px: "_Pixels", changed: MaskCrop, frac: float,
                rng: np.random.Generator) -> Sample | Reject:
        cfg = self.config
        key = f"{int(rec['image_id']):012d}-{int(c.caption['id'])}-{c.index}"
        g = c.grounding
        sup = (self._supercategory(g.category) if g.category else None)
        objects = max(len(g.instance_ids), len(g.boxes), 1)
        question, template = occlusion_question(sup, FILL_PHRASES[cfg.fill], cfg.seed, key, objects > 1)
        box = [round(float(v), 2) for v in g.box]
        doc = {
            "id": key, "image_id": int(rec["image_id"]), "caption_id": int(c.caption["id"]),
            "caption": c.caption["caption"], "entity": c.entity.phrase, "label": c.entity.label,
            "category": g.category, "supercategory": sup, "type_word": type_word(sup),
            "causality": None if c.causality is None else round(c.causality, 6), "causality_method": cfg.causality,
            "box": box, "occluded_fraction": round(frac, 6), "fill": cfg.fill, "question": question,
            "template": template, "grounding": g.method, "objects": objects,
            "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": c.entity.label}],
        }
        t = time.perf_counter()
        jpg = None
        if px.coefs is not None:
            try:
                jpg = occlude_coefficients(px.coefs, changed, cfg.fill, rng, FILL_RGB)
            except coefficient_writer().JpegError:  # a file libjpeg reads but cannot write back: re-encoded
                px.coefs = None
        if jpg is None:
            if px.bgr is None:
                return self._reject(rec, c, "corrupt_image", "read_image", f"{rec['file']}: cannot be decoded")
            jpg = self._reencode(px.bgr, changed, g.box, rng, key)
        doc["jpeg"] = "coefficients" if px.coefs is not None else "reencoded"
        mask_png = bilevel_png(changed)  # 1-bit: a tenth of the bytes of an 8-bit mask, read back as bool
        self.stage_seconds["_encode_in_batch"] += time.perf_counter() - t
        extras = {"mask.png": mask_png}
        if cfg.keep_original:
            extras["orig." + img.ext] = img.data
        h, w = px.height, px.width
        columns = {"label": c.entity.label, "entity": c.entity.phrase, "category": g.category, "supercategory": sup,
                   "causality": doc["causality"], "occluded_fraction": doc["occluded_fraction"], "box": box,
                   "image_id": doc["image_id"], "caption_id": doc["caption_id"], "caption": doc["caption"],
                   "fill": cfg.fill, "question": question, "grounding": g.method, "objects": objects}
        return Sample(key=key, doc=doc, image=jpg, image_ext="jpg", width=w, height=h,
                      source_id=f"{rec['image_id']}:{c.caption['id']}:{c.index}", extras=extras, columns=columns)

    def _reencode(self, image: np.ndarray, changed: MaskCrop, box: list[float], rng: np.random.Generator,
                  key: str) -> bytes:
        """The fill painted into the decoded image itself (in OpenCV's BGR order, which its JPEG encoder
        takes as it is), encoded, then put back: no copy of the frame per sample."""
        local = self.config.fill in BOX_LOCAL_FILLS
        saved = changed.of(image).copy() if local else image.copy()
        render_occlusion(image, changed, self.config.fill, box, rng, color=FILL_RGB[::-1])
        ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if local:
            changed.of(image)[...] = saved
        else:
            image[...] = saved
        if not ok:  # pragma: no cover - OpenCV fails only on an empty or malformed array
            raise RuntimeError(f"JPEG encoding failed for {key}")
        return jpg.tobytes()

    @property
    def _coefficients(self) -> bool:
        """Whether JPEG sources are occluded in the DCT domain (the fill paints what it paints whatever
        the pixels under it)."""
        return self.config.occluded_jpeg == "coefficients" and self.config.fill in COEFFICIENT_FILLS

    def _supercategory(self, category: str) -> str | None:
        for cat in self.src.ds.categories.values():
            if cat["name"] == category:
                return cat.get("supercategory")
        return COCO_SUPERCATEGORIES.get(category)


class _Pixels:
    """An image: OpenCV's BGR array (None when the data does not decode), an RGB view and a PIL image
    (for model backends). With a JPEG's coefficients (read_coefficients) the pixels are decoded only
    when a stage asks for them."""

    __slots__ = ("data", "coefs", "_bgr", "_pil", "height", "width")

    def __init__(self, data: bytes, coefs=None):
        self.data, self.coefs = data, coefs
        self._bgr = self._pil = None
        if coefs is not None:
            self.height, self.width = coefs.height, coefs.width
        else:
            self.height, self.width = self.bgr.shape[:2] if self.bgr is not None else (0, 0)

    @property
    def bgr(self) -> np.ndarray | None:
        if self._bgr is None:
            # OpenCV decodes straight into an array (PIL's decode + RGB copy + array copy cost twice
            # as much); EXIF orientation is ignored, as COCO's annotations are on the stored pixels.
            self._bgr = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        return self._bgr

    @property
    def rgb(self) -> np.ndarray:
        return self.bgr[:, :, ::-1]  # a view: no copy

    @property
    def pil(self) -> Image.Image:
        if self._pil is None:
            self._pil = Image.fromarray(np.ascontiguousarray(self.rgb))
        return self._pil


def _union(masks: list[MaskCrop]) -> MaskCrop:
    return masks[0] if len(masks) == 1 else MaskCrop.union(masks)


class _LazyMasks(dict):
    """Instance id -> bool mask, decoded from the annotation on first use only."""

    def __init__(self, instances: list[dict], height: int, width: int):
        super().__init__()
        self._anns = {int(a["id"]): a for a in instances}
        self._size = (height, width)

    def __missing__(self, ann_id: int) -> np.ndarray:
        mask = annotation_crop(self._anns[ann_id], *self._size)
        self[ann_id] = mask
        return mask


def _same_object(a: _Candidate, b: _Candidate, iou: float) -> bool:
    """Whether two candidates hide the same object(s): the same instances, or for a detector the same
    number of boxes of one category (or label, without one), each overlapping one of the other's by
    IoU >= `iou`. Each word is its own detector query, so "a man" and a later caption's "a person" find
    nearly, not exactly, the same box."""
    ga, gb = a.grounding, b.grounding
    if ga.instance_ids or gb.instance_ids:
        return ga.instance_ids == gb.instance_ids
    if (ga.category or a.entity.label) != (gb.category or b.entity.label):
        return False
    boxes_a, boxes_b = ga.boxes or [ga.box], gb.boxes or [gb.box]
    return len(boxes_a) == len(boxes_b) and all(any(x == y or box_iou(x, y) >= iou for y in boxes_b) for x in boxes_a)


def _rank(c: _Candidate, method: str) -> float:
    if c.causality is None or method == "none":
        return 0.0
    return c.causality if method == "mlm" else -c.causality  # ppl: lower first; score: higher first


def _clip_box(box: list[float], width: int, height: int) -> list[float]:
    """[x, y, w, h] cut to the image; a box inside it is returned as it is (same floats)."""
    x, y, bw, bh = box
    if x >= 0 and y >= 0 and x + bw <= width and y + bh <= height:
        return box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    return [x0, y0, max(min(x + bw, width) - x0, 0.0), max(min(y + bh, height) - y0, 0.0)]


def _seed_words(seed: int, key: str) -> list[int]:
    import hashlib

    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "big") for i in range(0, 16, 4)]
