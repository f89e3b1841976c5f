"""Sources by kind. `open_source(kind, **options)` is what the CLI and the Python API call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.sources.base import Record, Source

SOURCE_KINDS = ("coco", "llava-json", "imagefolder", "build", "cub", "fgvc-aircraft", "stanford-dogs")


def open_source(kind: str, **opts: Any) -> Source:
    """coco: coco_root, split, captions, instances, images (none: the embedded sample);
    llava-json: json (the file), image_root; imagefolder: root; build: path, where (SQL), splits;
    cub: root, splits, attributes; fgvc-aircraft: root, splits, level, crop_banner; stanford-dogs: root, splits."""
    opts = {k: v for k, v in opts.items() if v is not None}
    if kind == "coco":
        from vlmforge.sources.coco import CocoSource

        allowed = {"coco_root", "split", "captions", "instances", "images", "unit"}
        _check(kind, opts, allowed)
        return CocoSource.from_paths(**opts)
    if kind == "llava-json":
        from vlmforge.sources.llava_json import LlavaJsonSource

        _check(kind, opts, {"json", "image_root", "split"})
        if "json" not in opts:
            raise UserError("--source llava-json needs --json FILE")
        return LlavaJsonSource(opts.pop("json"), **opts)
    if kind == "imagefolder":
        from vlmforge.sources.imagefolder import ImageFolderSource

        _check(kind, opts, {"root"})
        if "root" not in opts:
            raise UserError("--source imagefolder needs --root DIR")
        return ImageFolderSource(Path(opts["root"]))
    if kind == "build":
        from vlmforge.sources.build import BuildSource

        _check(kind, opts, {"path", "where", "splits"})
        if "path" not in opts:
            raise UserError("--source build needs --from BUILD_FOLDER")
        return BuildSource(opts.pop("path"), **opts)
    if kind in CLASSIFICATION_SOURCES:
        import importlib
        import inspect

        module, _, cls = CLASSIFICATION_SOURCES[kind].partition(":")
        source_cls = getattr(importlib.import_module(module), cls)
        _check(kind, opts, set(inspect.signature(source_cls).parameters))
        if "root" not in opts:
            raise UserError(f"--source {kind} needs --root DIR (the dataset in its native layout)")
        return source_cls(Path(opts.pop("root")), **opts)
    raise UserError(f"unknown source {kind!r}; known: {', '.join(SOURCE_KINDS)}")


# Image-classification datasets in their native layouts (label per image).
CLASSIFICATION_SOURCES = {
    "cub": "vlmforge.sources.cub:CubSource",
    "fgvc-aircraft": "vlmforge.sources.fgvc:FgvcAircraftSource",
    "stanford-dogs": "vlmforge.sources.dogs:StanfordDogsSource",
}


def _check(kind: str, opts: dict, allowed: set[str]) -> None:
    extra = sorted(set(opts) - allowed)
    if extra:
        flags = ", ".join("--" + e.replace("_", "-") for e in extra)
        raise UserError(f"{flags} do not apply to --source {kind}")


__all__ = ["Record", "Source", "open_source", "SOURCE_KINDS"]
