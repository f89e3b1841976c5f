"""Fixtures for the trainer tests: small builds and tiny models, made once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlmforge


def write_tar(path: Path, keys: list[str], extra: bool = False) -> Path:
    """A tar of json-only samples (plus a mask member when `extra`), written by webdataset itself."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for k in keys:
            sample = {"__key__": k, "json": {"id": k, "conversations": []}}
            if extra:
                sample["mask.png"] = b"\x89PNG fake"
            sink.write(sample)
    return path


@pytest.fixture(scope="session")
def loose_shards(tmp_path_factory) -> list[Path]:
    """Three tars outside any build (offsets found by scanning), 17 + 23 + 9 samples."""
    d = tmp_path_factory.mktemp("loose")
    sizes, out, n = [17, 23, 9], [], 0
    for i, size in enumerate(sizes):
        out.append(write_tar(d / f"part-{i:02d}.tar", [f"s{n + j:04d}" for j in range(size)], extra=(i == 1)))
        n += size
    return out


@pytest.fixture(scope="session")
def label_build(tmp_path_factory):
    """An image-label build (imagefolder copy): three colour classes, train and val splits."""
    root = tmp_path_factory.mktemp("folder") / "shapes"
    colours = {"red": (220, 30, 30), "yellow": (230, 200, 40), "black": (30, 30, 35)}
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype("uint8")
                Image.fromarray(arr).save(root / split / name / f"{i}.png")
    return vlmforge.build("copy", "imagefolder", out=tmp_path_factory.mktemp("labelbuild"),
                          source_options={"root": str(root)})


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """The tiny LLaVA that `vlmforge model init-tiny --kind llava` writes."""
    from vlmforge.commands.train import TINY_TRAINABLE_INIT
    from vlmforge.training.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", init_range=TINY_TRAINABLE_INIT)
