"""Visual Genome objects: `objects.json` (per image: `image_id`, `objects` with `object_id`, `x`, `y`,
`w`, `h`, `names`, `synsets`) and `image_data.json` (per image: `image_id`, `width`, `height`, `url`),
images under `VG_100K/` and `VG_100K_2/` (the folder is taken from the image's url).

One record per image, carrying all its objects, so a builder reads each image once. objects.json
(hundreds of MB) is streamed; image_data.json is small and read whole. Older releases name the id
`id` and an object's name `name`; both spellings are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, fingerprint_files
from vlmforge.sources.coco import load_json_file
from vlmforge.sources.jsonstream import iter_json_array

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2", "images", ".")


def synset_name(synset: str) -> str:
    """'traffic_light.n.01' -> 'traffic light'."""
    return synset.split(".", 1)[0].replace("_", " ")


def object_names(obj: dict) -> list[str]:
    names = obj.get("names")
    if names is None and obj.get("name"):
        names = [obj["name"]]
    return [str(n).strip() for n in names or [] if str(n).strip()]


class VisualGenomeSource(Source):
    name = "vg"

    def __init__(self, root: str | Path | None = None, objects: str | Path | None = None,
                 image_data: str | Path | None = None, images: str | Path | None = None, split: str = "train"):
        root_path = Path(root) if root else None
        if root_path is not None and root_path.is_file():  # e.g. objects.json itself
            raise SourceError(f"--root {root_path} is a file; give the folder holding objects.json and "
                              "image_data.json (or name the files with --objects and --image-data)")
        if root_path is not None and not root_path.is_dir():
            raise SourceError(f"Visual Genome root not found: {root_path}")
        self.objects = Path(objects) if objects else (root_path / "objects.json" if root_path else None)
        self.image_data = Path(image_data) if image_data else (root_path / "image_data.json" if root_path else None)
        if self.objects is None or self.image_data is None:
            raise SourceError("Visual Genome needs --root (with objects.json and image_data.json) or --objects and --image-data")
        for p, what in ((self.objects, "objects.json"), (self.image_data, "image_data.json")):
            if not p.is_file():
                raise SourceError(f"Visual Genome {what} not found: {p}")
        self.images = Path(images) if images else (root_path or self.objects.parent)
        if not self.images.is_dir():
            raise SourceError(f"Visual Genome image folder not found: {self.images}")
        self.split = split
        doc = load_json_file(self.image_data, "Visual Genome image_data.json")
        if not isinstance(doc, list):
            raise SourceError(f"{self.image_data} must be a list of images")
        self.image_info: dict[int, dict] = {}
        for im in doc:
            iid = im.get("image_id", im.get("id")) if isinstance(im, dict) else None
            try:
                self.image_info[int(iid)] = im
            except (TypeError, ValueError):  # no usable id: objects.json entries for it are rejects
                continue

    def image_path(self, image_id: int) -> Path:
        """Where the image is: the url's folder first, then the usual folders."""
        url = str(self.image_info.get(image_id, {}).get("url") or "")
        name = f"{image_id}.jpg"
        tried = []
        parts = url.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-1]:
            tried.append(self.images / parts[-2] / parts[-1])
        tried += [self.images / f / name for f in IMAGE_FOLDERS]
        for p in tried:
            if p.is_file():
                return p
        return tried[0]

    def splits(self) -> list[str]:
        return [self.split]

    def count(self, split: str) -> int:
        return len(self.image_info)

    def records(self, split: str) -> Iterator[Record]:
        seen: set[int] = set()
        for i, (item, _, _) in enumerate(iter_json_array(self.objects, what="Visual Genome objects.json (a JSON list)")):
            if not isinstance(item, dict) or item.get("image_id", item.get("id")) is None:
                yield {"source_id": f"#{i}", "invalid": "objects.json entry without an image_id"}
                continue
            try:
                image_id = int(item.get("image_id", item.get("id")))
            except (TypeError, ValueError):
                yield {"source_id": f"#{i}", "invalid": "objects.json entry whose image_id is not an integer"}
                continue
            info = self.image_info.get(image_id)
            if info is None:
                yield {"source_id": str(image_id), "invalid": f"image {image_id} is not in image_data.json"}
                continue
            if image_id in seen:  # its objects would make samples of the same keys again
                yield {"source_id": str(image_id), "invalid": f"image {image_id} is listed twice in objects.json"}
                continue
            seen.add(image_id)
            yield {"source_id": str(image_id), "image_id": image_id, "file": str(self.image_path(image_id)),
                   "width": info.get("width"), "height": info.get("height"), "objects": item.get("objects") or []}

    def fingerprint(self) -> str:
        listed = [self.image_path(i) for i in sorted(self.image_info)]
        return fingerprint_files([self.objects, self.image_data], listed, root=self.images)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "images": len(self.image_info), "files": [self.objects.name, self.image_data.name]}
