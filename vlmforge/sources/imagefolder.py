"""Class-per-folder image datasets: `ROOT/<class>/<image>` or `ROOT/<split>/<class>/<image>`.

Covers HAM10000-style, chest X-ray, plant disease and graded trees (`split/grade/image`). The split
level is recognised when every top folder is a known split name (train, val, test, ...).

Every file in a class folder is an input: an image (by extension) is a record to read; any other file
is a record the builder turns into a reject with its reason (`unsupported_image`: HEIC, JPEG XL, raw,
SVG, or image bytes under another extension; `not_an_image`: text, JSON, CSV sidecars and the rest),
so nothing is lost without a word. An image beside the class folders is a `no_class` reject. Skipped
without a record: system files (hidden names such as .DS_Store, Thumbs.db, desktop.ini) that are not
images, and non-image files beside the class folders (README, LICENSE, label lists)."""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from vlmforge.errors import SourceError
from vlmforge.sources.base import Record, Source, _parts, fingerprint_files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                  ".jp2", ".j2k", ".jpx", ".avif", ".pbm", ".pgm", ".ppm"}  # what the pinned Pillow reads
SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "dev", "auto_test"}
# Image formats Pillow does not read here, by extension.
UNREAD_IMAGES = {".heic": "HEIC", ".heif": "HEIF", ".hif": "HEIF", ".jxl": "JPEG XL", ".svg": "SVG", ".svgz": "SVG",
                 ".dng": "raw", ".cr2": "raw", ".cr3": "raw", ".nef": "raw", ".arw": "raw", ".orf": "raw",
                 ".rw2": "raw", ".raf": "raw", ".exr": "OpenEXR", ".hdr": "Radiance HDR", ".psd": "Photoshop"}
# Leading bytes of the formats read, for image files under another extension.
SIGNATURES = ((b"\xff\xd8\xff", "JPEG", ".jpg"), (b"\x89PNG\r\n\x1a\n", "PNG", ".png"), (b"GIF8", "GIF", ".gif"),
              (b"BM", "BMP", ".bmp"), (b"II*\0", "TIFF", ".tif"), (b"MM\0*", "TIFF", ".tif"),
              (b"RIFF", "WebP", ".webp"), (b"\0\0\0\x0cjP  ", "JPEG 2000", ".jp2"))
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
# Extensions of files that are never images: not opened to look for image bytes.
OTHER_SUFFIXES = {".txt", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".md", ".yaml", ".yml", ".html", ".pdf",
                  ".npy", ".npz", ".pt", ".pkl", ".mat", ".zip", ".tar", ".gz", ".mp4", ".avi", ".mov", ".wav"}


def clean_class_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'; 'Apple___Black_rot' -> 'Apple Black rot'."""
    name = re.sub(r"^\d+[._-]", "", folder)
    name = re.sub(r"[_\s]+", " ", name).strip()
    return name or folder


class ImageFolderSource(Source):
    name = "imagefolder"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.is_file():
            raise SourceError(f"{self.root} is a file; --root takes the folder that holds the class folders")
        if not self.root.is_dir():
            raise SourceError(f"image folder not found: {self.root}")
        tops = sorted(p for p in self.root.iterdir() if p.is_dir() and not _system_folder(p.name))
        if not tops:
            raise SourceError(f"{self.root} has no class folders (expected ROOT/<class>/<image>)")
        split_tops = [p.name for p in tops if p.name.lower() in SPLIT_NAMES]
        _refuse_builds_inside(self.root, tops, split_tops)
        if split_tops and len(split_tops) < len(tops):  # else the split folders would become classes
            others = [p.name for p in tops if p.name.lower() not in SPLIT_NAMES]
            raise SourceError(f"{self.root} mixes split folders ({', '.join(split_tops)}) with other folders "
                              f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}); use ROOT/<split>/<class>/<image> "
                              "for all of them or ROOT/<class>/<image> with no split folder")
        if split_tops:
            self._splits = {p.name: p for p in tops}
        else:
            self._splits = {"train": self.root}
        self._files: dict[str, list[tuple[str, Path]]] = {}
        self._unread: dict[str, list[tuple[Path, tuple[str, str]]]] = {}  # files that become rejects
        for split, folder in self._splits.items():
            items, unread = [], []
            # Images beside the class folders (those beside the split folders go with the first split).
            beside = [folder] if folder == self.root or split != tops[0].name else [self.root, folder]
            for f in sorted((f for d in beside for f in d.iterdir() if f.is_file()), key=_parts):
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    unread.append((f, ("no_class", "an image outside the class folders has no class; move it into one")))
            class_folders = sorted(p for p in folder.iterdir() if p.is_dir() and not _system_folder(p.name))
            _refuse_label_clashes(folder, class_folders)
            for cls in class_folders:
                for f in sorted(cls.rglob("*"), key=_parts):  # Path order, by parts: quicker
                    if not f.is_file():
                        continue
                    if f.suffix.lower() in IMAGE_SUFFIXES:
                        items.append((cls.name, f))
                    elif not _system_file(f, cls):
                        unread.append((f, _not_read(f)))
            self._files[split] = items
            self._unread[split] = unread
        if not any(self._files.values()):
            found = sum(len(u) for u in self._unread.values())
            raise SourceError(f"no images found under {self.root}" + (f" ({found} other files: {_example(self._unread)})"
                                                                      if found else ""))

    @property
    def listed_root(self) -> Path:
        """The folder whose files are the records: a build must not land under it (see run_build)."""
        return self.root

    def splits(self) -> list[str]:
        return list(self._splits)

    def count(self, split: str) -> int:
        return len(self._files[split]) + len(self._unread[split])

    def records(self, split: str) -> Iterator[Record]:
        # Every listed path lies under root (rglob below it), so its relative path is the rest of its
        # string: what relative_to() gives, without building Path objects 10,000s of times.
        root = str(self.root)
        cut = 0 if root in ("", ".") else len(root) if root.endswith("/") else len(root) + 1
        for path, (reason, detail) in self._unread[split]:
            yield {"source_id": str(path)[cut:], "file": str(path), "unusable": (reason, detail)}
        labels: dict[str, str] = {}
        items = self._files[split]
        # Files that differ only by extension ("001.jpg", "001.png"): their names keep the extension
        # where the rest drop it (`stem`), so that each still gets a sample of its own.
        stems = Counter(str(path).rsplit(".", 1)[0] for _, path in items)
        for folder, path in items:
            name = str(path)
            label = labels.get(folder)
            if label is None:
                label = labels[folder] = clean_class_name(folder)
            stem = name.rsplit(".", 1)[0]
            yield {"source_id": name[cut:], "file": name, "class_folder": folder, "label": label,
                   "stem": (stem if stems[stem] == 1 else name)[cut:]}

    def fingerprint(self) -> str:
        listed = [p for items in self._files.values() for _, p in items]
        return fingerprint_files([], listed + [p for unread in self._unread.values() for p, _ in unread], root=self.root)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "splits": {s: len(v) for s, v in self._files.items()}}

    def for_workers(self) -> "ImageFolderSource":
        """Records carry their path and label: workers get the source without its file lists (at 160k
        images those were ~140 MB in every worker)."""
        light = copy.copy(self)
        light._files, light._unread = {}, {}
        return light


def _system_file(path: Path, cls: Path) -> bool:
    """A file the system or a viewer left (.DS_Store, Thumbs.db, anything hidden), not data."""
    return path.name.lower() in SYSTEM_FILES or any(map(_system_folder, path.relative_to(cls).parts))


def _refuse_label_clashes(folder: Path, class_folders: list[Path]) -> None:
    """Two class folders of one split whose cleaned names are one label ('1_cat' and 'cat') would be merged
    into one class without a word."""
    seen: dict[str, str] = {}
    for cls in class_folders:
        label = clean_class_name(cls.name)
        if label in seen:
            raise SourceError(f"{folder}: class folders {seen[label]!r} and {cls.name!r} are both read as class "
                              f"{label!r} (a leading number is dropped, _ read as a space); rename one of them")
        seen[label] = cls.name


def _refuse_builds_inside(root: Path, tops: list[Path], split_tops: list[str]) -> None:
    """Builds made with --out inside --root (OUT/<builder>/<version>/) would be read as a class (or a
    split) of their own, their shards and manifest as non-image rejects: say so instead."""
    candidates = [t for t in tops if t.name not in split_tops]
    candidates += [c for t in tops if t.name in split_tops for c in t.iterdir() if c.is_dir()]
    for folder in candidates:
        for version in folder.iterdir():
            if _VERSION.fullmatch(version.name) and version.is_dir() and any(
                    (version / name).is_file() for name in ("build.json", "build.pending.json")):
                raise SourceError(f"{folder} holds vlmforge builds ({version}), not images: an --out inside "
                                  f"--root {root} puts them there; move them out of {root} and build with an "
                                  "--out outside it")


_VERSION = re.compile(r"\d+\.\d+\.\d+")


def _system_folder(name: str) -> bool:
    """A hidden folder, or the resource forks macOS puts in a zip it makes (__MACOSX): never a class."""
    return name.startswith(".") or name == "__MACOSX"


def unread_file(path: Path, folder: Path) -> tuple[str, str] | None:
    """Why a file under a class (or grade) `folder` is not read as an image: (reason, detail), or
    None for an image that is read and for a file the system left (not data)."""
    if path.suffix.lower() in IMAGE_SUFFIXES or _system_file(path, folder):
        return None
    return _not_read(path)


def _not_read(path: Path) -> tuple[str, str]:
    """(reason, detail) for a file in a class folder that is not read as an image."""
    suffix = path.suffix.lower()
    if suffix in UNREAD_IMAGES:
        return "unsupported_image", f"{UNREAD_IMAGES[suffix]} images are not read; convert it to JPEG or PNG"
    not_image = "not_an_image", f"not an image file ({suffix or 'no extension'}); only image files are read"
    if suffix in OTHER_SUFFIXES:
        return not_image
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return "not_an_image", f"not read: {e.strerror or e}"
    named = f"under the extension {suffix!r}" if suffix else "without an extension"
    for magic, fmt, ext in SIGNATURES:
        if head.startswith(magic) and {"WebP": head[8:12] == b"WEBP", "BMP": head[6:10] == bytes(4)}.get(fmt, True):
            return "unsupported_image", f"a {fmt} image {named}; rename it to {ext} to read it"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1"):
        return "unsupported_image", f"a HEIF image {named}; HEIF images are not read: convert it to JPEG or PNG"
    return not_image


def _example(unread: dict[str, list[tuple[Path, tuple[str, str]]]]) -> str:
    path, (_, detail) = next(item for items in unread.values() for item in items)
    return f"{path.name}: {detail}"
