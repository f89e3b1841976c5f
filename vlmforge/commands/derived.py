"""`vlmforge build split|subset|mix|mcqa|grading|vg|model-ready` and `vlmforge export llava|llava-split`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlmforge.commands._common import BuildRun, ImageRoot, JsonFile, Quiet, Seed, build_command

export_app = typer.Typer(help="Write builds (or LLaVA JSON) out in the formats other tools read.", no_args_is_help=True)

From = Annotated[Optional[Path], typer.Option("--from", help="parent build folder, e.g. builds/copy/1.5.0")]
Where = Annotated[Optional[str], typer.Option("--where", help="SQL condition over the parent manifest, e.g. \"label IN ('cat', 'dog')\"")]
ParentSplits = Annotated[Optional[list[str]], typer.Option("--parent-split", help="use only this parent split (repeatable; default: all)")]
LabelColumn = Annotated[str, typer.Option("--label-column", help="manifest column holding the class")]
ClassesFrom = Annotated[Optional[Path], typer.Option("--classes-from", help="text file, one class per line")]
ExportOverwrite = Annotated[bool, typer.Option("--overwrite", help="replace another export in the --out folder (its files are removed)")]


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")

    @build_command(build_app, "split")
    def build_split(
        parent: From = None,
        source: Annotated[str, typer.Option("--source", help="build (a parent build, --from) or llava-json (--json)")] = "build",
        json_file: JsonFile = None,
        image_root: ImageRoot = None,
        fraction: Annotated[Optional[float], typer.Option("--fraction", help="keep this fraction of every parent split (exact to one record)")] = None,
        splits: Annotated[Optional[str], typer.Option("--splits", help="partition into named splits instead, e.g. train=0.9,val=0.1: all the parent's records, its splits merged (a parent test record may land in train; --parent-split train re-splits train alone); fractions summing below 1 leave the rest out")] = None,
        stratify_by: Annotated[Optional[str], typer.Option("--stratify-by", help="apply the fraction within each value of this column; 'source' = LLaVA sub-dataset")] = None,
        group_by: Annotated[Optional[str], typer.Option("--group-by", help="keep records sharing a value of this column in one split, e.g. image_id (an occlusion build's samples of one image); the fractions then count the column's values")] = None,
        where: Where = None,
        parent_split: ParentSplits = None,
        jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", min=1, max=100, help="quality of images converted to JPEG (llava-json)")] = 95,
        seed: Seed = 0,
    ) -> BuildRun:
        """Keep a hashed fraction of a build or LLaVA JSON, or partition it into splits.

        --fraction 0.5 keeps round(n/2) records of every parent split (the LLaVA-1.5 half);
        --splits train=0.9,val=0.1 partitions. The same record is kept whatever the input order."""
        from vlmforge.builders.split import SplitBuilder, SplitConfig
        from vlmforge.errors import UserError

        if source not in ("build", "llava-json"):
            raise UserError(f"--source must be build (with --from) or llava-json (with --json), got {source!r}")
        src = SplitBuilder.open_source(source, path=parent, where=where, splits=parent_split, json=json_file,
                                       image_root=image_root)
        cfg = SplitConfig(seed=seed, fraction=fraction, splits=splits, stratify_by=stratify_by, group_by=group_by,
                          jpeg_quality=jpeg_quality)
        return SplitBuilder, cfg, src

    @build_command(build_app, "subset")
    def build_subset(
        parent: From = None,
        mode: Annotated[Optional[str], typer.Option("--mode", help="class-preserving, class-exclusive or seen-unseen (none: --where only)")] = None,
        fraction: Annotated[Optional[float], typer.Option("--fraction", help="of each class's samples (class-preserving) or of the classes (class-exclusive)")] = None,
        seen_unseen: Annotated[bool, typer.Option("--seen-unseen", help="same as --mode seen-unseen")] = False,
        unseen_fraction: Annotated[Optional[float], typer.Option("--unseen-fraction", help="seen-unseen: fraction of classes held out")] = None,
        classes_from: Annotated[Optional[Path], typer.Option("--classes-from", help="seen-unseen: file listing the seen classes, one per line")] = None,
        train_splits: Annotated[Optional[list[str]], typer.Option("--train-split", help="split(s) that keep seen classes only (default: train)")] = None,
        label_column: LabelColumn = "label",
        where: Where = None,
        parent_split: ParentSplits = None,
        seed: Seed = 0,
    ) -> BuildRun:
        """Class-preserving, class-exclusive or seen/unseen subsets of a labelled build.

        class-preserving keeps every class with a fraction of its samples; class-exclusive a fraction of
        the classes with all their samples; seen-unseen keeps unseen classes out of training. Or any --where."""
        from vlmforge.builders.derived import read_lines
        from vlmforge.builders.subset import SubsetBuilder, SubsetConfig
        from vlmforge.errors import UserError

        if seen_unseen or classes_from is not None:
            if mode not in (None, "seen-unseen"):
                raise UserError("--seen-unseen and --classes-from go with --mode seen-unseen only")
            mode = "seen-unseen"
        seen = read_lines(classes_from, "--classes-from file") if classes_from else None
        src = SubsetBuilder.open_source("build", path=parent, where=where, splits=parent_split)
        cfg = SubsetConfig(seed=seed, mode=mode, fraction=fraction, label_column=label_column,
                           unseen_fraction=unseen_fraction, seen_classes=seen, train_splits=train_splits)
        return SubsetBuilder, cfg, src

    @build_command(build_app, "mcqa")
    def build_mcqa(
        parent: From = None,
        options: Annotated[int, typer.Option("--options", "-k", help="options per question")] = 4,
        distractors: Annotated[str, typer.Option("--distractors", help="random, or hard: the nearest classes by embedding similarity")] = "random",
        question: Annotated[Optional[str], typer.Option("--question", help="the question before the options (default: the parent's own question without its request for reasoning, as occlusion builds have; else 'What is the main object in this image?')")] = None,
        classes_from: Annotated[Optional[Path], typer.Option("--classes-from", help="answer vocabulary, one class per line (default: the classes of each split)")] = None,
        embedder: Annotated[Optional[str], typer.Option("--embedder", help="sentence-transformers model path or Hub id for --distractors hard (default: offline MiniLM)")] = None,
        label_column: LabelColumn = "label",
        where: Where = None,
        parent_split: ParentSplits = None,
        seed: Seed = 0,
    ) -> BuildRun:
        """Multiple-choice test sets from a labelled build, gold letters balanced.

        k options (the class and k-1 distractors, random or --distractors hard), prompt
        '... A. x B. y ... Answer with the option's letter from the given choices directly.'"""
        from vlmforge.builders.derived import read_lines
        from vlmforge.builders.mcqa import McqaBuilder, McqaConfig

        classes = read_lines(classes_from, "--classes-from file") if classes_from else None
        src = McqaBuilder.open_source("build", path=parent, where=where, splits=parent_split)
        cfg = McqaConfig(seed=seed, options=options, distractors=distractors, question=question,
                         label_column=label_column, classes=classes, embedder=embedder)
        return McqaBuilder, cfg, src

    @build_command(build_app, "mix")
    def build_mix(
        parents: Annotated[list[Path], typer.Option("--from", help="a parent build (give two or more)")],
        take: Annotated[Optional[list[str]], typer.Option("--take", help="per parent, in order: all, a count (5000 or 5e3) or a fraction in (0, 1] (0.5; 1.0 is all)")] = None,
        weights: Annotated[Optional[str], typer.Option("--weights", help="proportions per parent, e.g. 1,3 (with --size)")] = None,
        size: Annotated[Optional[int], typer.Option("--size", help="records in the mix (with --weights)")] = None,
        into: Annotated[Optional[str], typer.Option("--into", help="put every record in this split (default: keep the parents' splits)")] = None,
        parent_split: ParentSplits = None,
        seed: Seed = 0,
    ) -> BuildRun:
        """Combine builds by counts, fractions or weights; lineage keeps every parent.

        E.g. CVC trials + the LLaVA mix: --from trials --from llava --take all --take 0.5."""
        from vlmforge.builders.mix import MixBuilder, MixConfig
        from vlmforge.errors import UserError

        try:
            w = [float(x) for x in weights.split(",")] if weights else None
        except ValueError:
            raise UserError(f"--weights takes numbers separated by commas, got {weights!r}") from None
        src = MixBuilder.open_source("builds", paths=parents, splits=parent_split)
        cfg = MixConfig(seed=seed, take=take, weights=w, size=size, into=into)
        return MixBuilder, cfg, src

    @build_command(build_app, "grading")
    def build_grading(
        root: Annotated[Optional[Path], typer.Option("--root", help="graded folder tree ROOT/<split>/<grade>/<image>")] = None,
        parent: From = None,
        prompt: Annotated[Optional[str], typer.Option("--prompt", help="the human turn ('<image>' is put in front when missing); default: 'What is the Kellgren-Lawrence grade of this knee X-ray image?'")] = None,
        answer_template: Annotated[Optional[str], typer.Option("--answer-template", help="the answer, with {grade} and {description}; default: 'The most likely Kellgren-Lawrence grade of this knee X-ray image is Grade {grade}: {description}.'")] = None,
        descriptions: Annotated[Optional[Path], typer.Option("--descriptions", help="JSON file: grade -> description (default: Kellgren-Lawrence)")] = None,
        per_grade: Annotated[Optional[int], typer.Option("--per-grade", help="draw this many images per grade and split (default: every image)")] = None,
        size: Annotated[Optional[int], typer.Option("--size", help="draw this many per split, evenly over the grades (500 = 100 per grade for 5)")] = None,
        label_column: LabelColumn = "label",
        where: Where = None,
        parent_split: ParentSplits = None,
        jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", min=1, max=100, help="quality of images converted to JPEG")] = 95,
        seed: Seed = 0,
    ) -> BuildRun:
        """Ordinal grade data (knee X-ray KL grades, split/grade/image trees) as LLaVA records.

        The answer comes from a template with {grade} and {description}; --per-grade or --size draw
        balanced sets."""
        from vlmforge.builders.grading import GradingBuilder, GradingConfig, KL_ANSWER, KL_PROMPT, load_descriptions
        from vlmforge.errors import UserError

        if (root is None) == (parent is None):
            raise UserError("give --root (a graded folder tree) or --from (a labelled build)")
        if root is not None:  # else ignored: the build made of other records than the user meant
            stray = [o for o, v in (("--where", where), ("--parent-split", parent_split),
                                    ("--label-column", label_column != "label" or None)) if v]
            if stray:
                raise UserError(f"{stray[0]} applies to a parent build (--from), not to --root: the folder tree's "
                                "grades are its folder names, and every split folder is read")
        src = (GradingBuilder.open_source("imagefolder", root=root) if root is not None
               else GradingBuilder.open_source("build", path=parent, where=where, splits=parent_split))
        cfg = GradingConfig(seed=seed, prompt=prompt or KL_PROMPT, answer_template=answer_template or KL_ANSWER,
                            descriptions=load_descriptions(descriptions) if descriptions else None,
                            per_grade=per_grade, size=size, label_column=label_column, jpeg_quality=jpeg_quality)
        return GradingBuilder, cfg, src

    @build_command(build_app, "vg")
    def build_vg(
        root: Annotated[Optional[Path], typer.Option("--root", help="Visual Genome folder: objects.json, image_data.json, VG_100K/, VG_100K_2/")] = None,
        objects: Annotated[Optional[Path], typer.Option("--objects", help="objects.json (instead of --root)")] = None,
        image_data: Annotated[Optional[Path], typer.Option("--image-data", help="image_data.json (instead of --root)")] = None,
        images: Annotated[Optional[Path], typer.Option("--images", help="folder holding VG_100K/ and VG_100K_2/ (default: --root)")] = None,
        synsets_from: Annotated[Optional[Path], typer.Option("--synsets-from", help="keep only the synsets listed in this file, one per line")] = None,
        max_objects_per_image: Annotated[Optional[int], typer.Option("--max-objects-per-image", help="keep at most N objects per image (hashed choice; default: all)")] = None,
        min_box_side: Annotated[int, typer.Option("--min-box-side", help="reject boxes narrower or lower than this many pixels (box_too_small)")] = 1,
        crop: Annotated[bool, typer.Option("--crop", help="store the object's crop instead of the whole image")] = False,
        prompt: Annotated[Optional[str], typer.Option("--prompt", help="the human turn; default: 'What is the main object in this image? Give its bounding box and its name.'")] = None,
        answer_template: Annotated[Optional[str], typer.Option("--answer-template", help="the answer, with {box} (normalised), {box_pixels}, {name}, {synset}; default: '{box} {name}'")] = None,
        jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", min=1, max=100, help="quality of converted or cropped images")] = 95,
        seed: Seed = 0,
    ) -> BuildRun:
        """Visual Genome objects with synsets as object-centric LLaVA records.

        One record per object; the answer holds its box and class name. Feeds subset and mcqa
        (class = synset lemma)."""
        from vlmforge.builders.derived import read_lines
        from vlmforge.builders.vg import VG_ANSWER, VG_PROMPT, VgBuilder, VgConfig

        src = VgBuilder.open_source("vg", root=root, objects=objects, image_data=image_data, images=images)
        cfg = VgConfig(seed=seed, prompt=prompt or VG_PROMPT, answer_template=answer_template or VG_ANSWER,
                       synsets=read_lines(synsets_from, "--synsets-from file") if synsets_from else None,
                       max_objects_per_image=max_objects_per_image, min_box_side=min_box_side, crop=crop,
                       jpeg_quality=jpeg_quality)
        return VgBuilder, cfg, src

    @build_command(build_app, "model-ready")
    def build_model_ready(
        parent: From = None,
        processor: Annotated[Optional[str], typer.Option("--processor", help="image processor (path or Hub id, e.g. a LLaVA checkpoint) whose resize and crop to apply")] = None,
        size: Annotated[Optional[int], typer.Option("--size", help="or CLIP's processor at this size: bicubic shortest edge, centre crop (e.g. 336)")] = None,
        pad: Annotated[str, typer.Option("--pad", help="square: pad with the processor's mean colour first, as LLaVA-1.5 does; none")] = "square",
        quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality of the stored images")] = 95,
        where: Where = None,
        parent_split: ParentSplits = None,
        seed: Seed = 0,
    ) -> BuildRun:
        """Store a build's images padded, resized and cropped as the model's processor does.

        Every epoch then decodes a small image and only normalises it. The original size and the
        transform are recorded (orig_width, orig_height, image_transform); all else is the parent's."""
        from vlmforge.builders.model_ready import ModelReadyBuilder, ModelReadyConfig

        src = ModelReadyBuilder.open_source("build", path=parent, where=where, splits=parent_split)
        cfg = ModelReadyConfig(seed=seed, processor=processor, size=size, pad=pad, quality=quality)
        return ModelReadyBuilder, cfg, src

    @export_app.command("llava")
    def export_llava_cmd(
        build: Annotated[Path, typer.Argument(help="build folder, e.g. builds/split/1.3.0")],
        out: Annotated[Path, typer.Option("--out", help="folder for llava.json and images/")],
        split: Annotated[Optional[str], typer.Option("--split", help="export this split only (file llava_<split>.json)")] = None,
        overwrite: ExportOverwrite = False,
        quiet: Quiet = False,
    ) -> None:
        """Write a build as LLaVA instruction JSON + image folder.

        For the official LLaVA scripts: --data_path OUT/llava.json --image_folder OUT. Splits of one
        build may share a folder; the export of another build there is refused unless --overwrite."""
        from vlmforge.export import export_llava
        from vlmforge.progress import console

        path = export_llava(build, out, split=split, quiet=quiet, overwrite=overwrite)
        if not quiet:
            console.print(f"[green]wrote[/] {path}")

    @export_app.command("llava-split")
    def export_llava_split(
        json_file: Annotated[Path, typer.Argument(help="LLaVA instruction JSON, e.g. llava_v1_5_mix665k.json")],
        out: Annotated[Path, typer.Option("--out", help="folder for <split>.json files")],
        fraction: Annotated[Optional[float], typer.Option("--fraction", help="keep this fraction (written to train.json)")] = None,
        splits: Annotated[Optional[str], typer.Option("--splits", help="or partition: train=0.9,val=0.1")] = None,
        stratify_by: Annotated[Optional[str], typer.Option("--stratify-by", help="'source': the fraction within each sub-dataset")] = None,
        seed: Seed = 0,
        overwrite: ExportOverwrite = False,
        quiet: Quiet = False,
    ) -> None:
        """Split a LLaVA JSON file straight into LLaVA JSON files, streaming.

        Records are copied byte for byte; the kept ones are exactly those `build split --source
        llava-json` keeps (same keys, same hashing). The split of another file or with other settings
        in the --out folder is refused unless --overwrite."""
        from vlmforge.export import split_llava_json
        from vlmforge.progress import console

        for name, path in split_llava_json(json_file, out, fraction=fraction, splits=splits, stratify_by=stratify_by,
                                           seed=seed, overwrite=overwrite, quiet=quiet).items():
            if not quiet:
                console.print(f"[green]wrote[/] {name}: {path}")
