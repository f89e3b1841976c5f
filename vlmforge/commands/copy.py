"""`vlmforge build copy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlmforge.commands._common import (
    BuildRun, Captions, CocoRoot, ImageRoot, Images, Instances, JsonFile, Root, Seed, SourceKind,
    build_command,
)


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    @build_command(build_app, "copy")
    def build_copy(
        source: SourceKind = "coco",
        coco_root: CocoRoot = None,
        split: Annotated[Optional[str], typer.Option("--split", help="COCO split folder name, e.g. val2017 or train2017 (default: val2017)")] = None,  # None: no --split given
        captions: Captions = None,
        instances: Instances = None,
        images: Images = None,
        json_file: JsonFile = None,
        image_root: ImageRoot = None,
        root: Root = None,
        check_images: Annotated[str, typer.Option("--check-images", help="quick (header + JPEG end marker) or full (decode)")] = "quick",
        jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", min=1, max=100, help="quality of images converted to JPEG")] = 95,
        seed: Seed = 0,
    ) -> BuildRun:
        """Copy a source into shards unchanged (COCO with no path: the embedded sample)."""
        from vlmforge.builders.copy import CopyBuilder, CopyConfig
        from vlmforge.errors import UserError

        if check_images not in ("quick", "full"):
            raise UserError("--check-images must be quick or full")
        opts = {
            "coco": dict(coco_root=coco_root, split=split or "val2017", captions=captions, instances=instances, images=images),
            "llava-json": dict(json=json_file, image_root=image_root),
            "imagefolder": dict(root=root),
            "cub": dict(root=root),
            "fgvc-aircraft": dict(root=root),
            "stanford-dogs": dict(root=root),
        }.get(source)
        if opts is None:
            raise UserError(f"unknown source {source!r}; use coco, llava-json, imagefolder, cub, fgvc-aircraft or stanford-dogs")
        own = {"coco": ("--coco-root", "--split", "--captions", "--instances", "--images"),
               "llava-json": ("--json", "--image-root")}.get(source, ("--root",))
        given = {"--coco-root": coco_root, "--split": split, "--captions": captions, "--instances": instances,
                 "--images": images, "--json": json_file, "--image-root": image_root, "--root": root}
        stray = [o for o, v in given.items() if v is not None and o not in own]
        if stray:  # else it would be ignored, and the build made of something else than the user meant
            raise UserError(f"{stray[0]} does not apply to --source {source} (its options: {', '.join(own)})")
        src = CopyBuilder.open_source(source, **opts)
        cfg = CopyConfig(seed=seed, check_images=check_images, jpeg_quality=jpeg_quality)
        return BuildRun(CopyBuilder, cfg, src)
