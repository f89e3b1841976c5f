"""`vlmforge build occlusion`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlmforge.commands._common import (
    BuildRun, Captions, CocoRoot, CocoSplit, GenOptions, Images, Instances, Out, Overwrite, Seed, build_command,
    generator_options,
)


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    @build_command(build_app, "occlusion")
    def build_occlusion(
        source: Annotated[str, typer.Option("--source", help="coco: COCO-format data (the only source this builder reads)")] = "coco",
        coco_root: CocoRoot = None,
        split: CocoSplit = "val2017",
        captions: Captions = None,
        instances: Instances = None,
        images: Images = None,
        entity_extractor: Annotated[str, typer.Option(help="spacy (noun chunks, offline), or a generation model prompted few-shot: transformers, vllm or openai")] = "spacy",
        entity_model: Annotated[Optional[str], typer.Option(help="that model: checkpoint folder or Hub id (transformers, vllm), or the endpoint's model name (openai)")] = None,
        generator_option: GenOptions = None,
        causality: Annotated[str, typer.Option(help="cooccurrence (offline), mlm (masked-LM pseudo-perplexity, the paper's) or none")] = "cooccurrence",
        min_causality: Annotated[float, typer.Option(help="cooccurrence: keep entities scoring at least this (0-1)")] = 0.25,
        mlm_model: Annotated[str, typer.Option(help="mlm: any AutoModelForMaskedLM path or Hub id")] = "FacebookAI/roberta-large",
        min_ppl: Annotated[float, typer.Option(help="mlm: keep pseudo-perplexity above this")] = 1.0,
        max_ppl: Annotated[float, typer.Option(help="mlm: keep pseudo-perplexity below this")] = 3.33,
        grounder: Annotated[str, typer.Option(help="annotations (COCO instances, offline) or grounding-dino")] = "annotations",
        dino_model: Annotated[str, typer.Option(help="grounding-dino: checkpoint path or Hub id")] = "IDEA-Research/grounding-dino-tiny",
        box_threshold: Annotated[float, typer.Option(help="grounding-dino: box score threshold")] = 0.35,
        text_threshold: Annotated[float, typer.Option(help="grounding-dino: text score threshold")] = 0.25,
        embed_threshold: Annotated[float, typer.Option(help="annotations: MiniLM similarity needed to match an unknown word to a category")] = 0.65,
        embedder: Annotated[Optional[str], typer.Option(help="sentence-transformers model for that fallback (default: offline MiniLM)")] = None,
        segmenter: Annotated[str, typer.Option(help="annotations (instance polygons), sam, or box")] = "annotations",
        sam_model: Annotated[str, typer.Option(help="sam: checkpoint path or Hub id")] = "facebook/sam-vit-base",
        fill: Annotated[str, typer.Option(help="blocks (the paper's), solid, blur, noise or inpaint")] = "blocks",
        dilate: Annotated[int, typer.Option(min=0, help="dilate masks by this many pixels before filling")] = 0,
        min_area: Annotated[float, typer.Option(help="drop objects whose occlusion covers less than this fraction of the image's pixels")] = 0.005,
        max_area: Annotated[float, typer.Option(help="drop objects whose occlusion covers more than this fraction of the image's pixels")] = 0.5,
        max_entities: Annotated[int, typer.Option(min=1, help="at most this many occluded samples per image")] = 3,
        keep_original: Annotated[bool, typer.Option("--keep-original", help="also store the original image as <key>.orig.jpg (sources other than JPEG converted to RGB JPEG)")] = False,
        occluded_jpeg: Annotated[str, typer.Option(help="coefficients: JPEG sources are occluded in their DCT coefficients (only the 8x8 blocks under the fill change; every other pixel stays the source's own, nothing else is decoded or encoded again; fills blocks, solid and noise); reencode: decoded, painted and encoded at --jpeg-quality, as blur, inpaint and sources other than colour JPEG always are")] = "coefficients",
        jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of occluded images that are encoded again (see --occluded-jpeg)")] = 95,
        device: Annotated[Optional[str], typer.Option(help="torch device for model stages (default: cuda if present, else cpu)")] = None,
        export_llava: Annotated[Optional[Path], typer.Option("--export-llava", help="also write DIR/llava.json and DIR/images/ for the official LLaVA training scripts (--data_path DIR/llava.json --image_folder DIR); the export of another build in DIR is replaced only with --overwrite")] = None,
        seed: Seed = 0,
        out: Out = Path("builds"),
        overwrite: Overwrite = False,
    ) -> BuildRun:
        """Causal-entity occlusion (CVC): hide objects that captions name and their context predicts, and
        ask the model to infer them. With no COCO paths, builds from the embedded sample."""
        from vlmforge.builders.occlusion import OcclusionBuilder, OcclusionConfig
        from vlmforge.errors import UserError

        cfg = OcclusionConfig(
            seed=seed, entity_extractor=entity_extractor, entity_model=entity_model, causality=causality,
            min_causality=min_causality, mlm_model=mlm_model, min_ppl=min_ppl, max_ppl=max_ppl, grounder=grounder, embed_threshold=embed_threshold, embedder=embedder,
            dino_model=dino_model, box_threshold=box_threshold, text_threshold=text_threshold, segmenter=segmenter,
            sam_model=sam_model, fill=fill, dilate=dilate, min_area=min_area, max_area=max_area,
            max_entities=max_entities, keep_original=keep_original, occluded_jpeg=occluded_jpeg, jpeg_quality=jpeg_quality,
        )
        cfg.validate()
        if export_llava is not None:  # said now, not after a build of hours
            from vlmforge.export import check_llava_export_folder

            if export_llava.exists() and not export_llava.is_dir():
                raise UserError(f"--export-llava {export_llava} is a file; it needs a folder (for llava.json and images/)")
            check_llava_export_folder(export_llava, out / OcclusionBuilder.name / OcclusionBuilder.VERSION, overwrite)
        if device is not None:
            from vlmforge.curation.models import check_device

            check_device(device)
        if generator_option and entity_extractor == "spacy":
            raise UserError("-G options go to the entity extractor's generation backend; "
                            "with --entity-extractor spacy there is none")
        src = OcclusionBuilder.open_source(source, coco_root=coco_root, split=split, captions=captions,
                                           instances=instances, images=images)
        attrs = {"device": device, "generator_options": generator_options(None, None, None, generator_option)}
        return BuildRun(OcclusionBuilder, cfg, src, attrs=attrs,
                        after=None if export_llava is None else lambda path, quiet: _export(path, export_llava, quiet, overwrite))


def _export(path: Path, out: Path, quiet: bool, overwrite: bool) -> None:
    from vlmforge.export import export_llava
    from vlmforge.progress import console

    written = export_llava(path, out, quiet=quiet, overwrite=overwrite)
    if not quiet:
        console.print(f"[green]wrote[/] {written}")
