"""`model-ready`: images stored padded and resized as the processor does, the original size and the
transform recorded, byte-identical rebuilds, and a trainer path that gives the processor's tensors
without resizing again."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vlmforge
from vlmforge.errors import UserError
from vlmforge.training.images import ImagePreparer, clip_image_processor, decode_rgb, expand_to_square

from tests.helpers import build_files


@pytest.fixture(scope="module")
def parent(coco_build):
    """The parent: the embedded COCO sample's 480x360 JPEGs in a copy build."""
    return coco_build


@pytest.fixture(scope="module")
def processor(tiny_clip):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_clip)


@pytest.fixture(scope="module")
def ready(tmp_path_factory, parent, tiny_clip):
    return vlmforge.build("model-ready", "build", out=tmp_path_factory.mktemp("ready"), max_samples_per_shard=5,
                          source_options={"path": str(parent.path)}, processor=str(tiny_clip))


def _by_key(build) -> dict[str, dict]:
    return {s["__key__"]: s for s in build.samples()}


def _processor_pixels(ip, img: Image.Image) -> np.ndarray:
    """The processor's own resize and crop of `img` as 8-bit pixels: its output, un-normalised."""
    x = ip(images=[img], return_tensors="np")["pixel_values"][0]
    mean, std = np.array(ip.image_mean).reshape(3, 1, 1), np.array(ip.image_std).reshape(3, 1, 1)
    return ((x * std + mean) / ip.rescale_factor).transpose(1, 2, 0)


def test_square_images_at_the_size_with_the_original_recorded(parent, ready):
    rows = ready.sql("SELECT key, width, height, orig_width, orig_height, image_transform, image_format, n_turns "
                     "FROM samples ORDER BY key").fetchall()
    before = dict((k, (w, h, n)) for k, w, h, n in
                  parent.sql("SELECT key, width, height, n_turns FROM samples").fetchall())
    assert len(rows) == len(before) == 12
    transform = "pad=square:122,116,104;resize=32;crop=32;resample=bicubic"
    for key, w, h, ow, oh, t, fmt, n_turns in rows:
        assert (w, h, fmt, t) == (32, 32, "jpg", transform)
        assert (ow, oh, n_turns) == before[key]
    assert ready.info["config"]["transform"] == transform
    assert ready.info["parents"] == [parent.build_id]
    old, new = _by_key(parent), _by_key(ready)
    for key, s in new.items():
        assert Image.open(io.BytesIO(s["jpg"])).size == (32, 32)
        doc = dict(s["json"])
        assert (doc.pop("orig_width"), doc.pop("orig_height"), doc.pop("image_transform")) == (480, 360, transform)
        assert doc == old[key]["json"]  # everything else is the parent's


@pytest.mark.parametrize("how", ["processor", "size-no-pad"])
def test_pixels_are_the_processors_pad_and_resize(tmp_path, parent, ready, processor, how):
    if how == "processor":
        build, ip, pad = ready, processor, True
    else:
        build = vlmforge.build("model-ready", "build", out=tmp_path, source_options={"path": str(parent.path)},
                               size=48, pad="none")
        ip, pad = clip_image_processor(48), False
        assert build.info["config"]["transform"] == "pad=none;resize=48;crop=48;resample=bicubic"
    background = tuple(int(x * 255) for x in ip.image_mean)
    old = _by_key(parent)
    for key, s in _by_key(build).items():
        img = decode_rgb(old[key]["jpg"])
        ref = _processor_pixels(ip, expand_to_square(img, background) if pad else img)
        ours = np.asarray(decode_rgb(s["jpg"]), dtype=np.float64)
        diff = np.abs(ours - ref)  # JPEG error only: quality 95, full-resolution chroma
        assert ours.shape == ref.shape and diff.mean() < 3 and diff.max() < 40


def test_rebuild_is_byte_identical(tmp_path, parent, ready, tiny_clip):
    again = vlmforge.build("model-ready", "build", out=tmp_path, max_samples_per_shard=5, workers=2,
                           source_options={"path": str(parent.path)}, processor=str(tiny_clip))
    assert build_files(again.path) == build_files(ready.path)
    assert again.build_id == ready.build_id


def test_preparer_skips_the_work_and_gives_the_processors_tensor(ready, processor, monkeypatch):
    prep = ImagePreparer(processor, pad_to_square=True)
    assert prep.uses_fast_path and prep.transform == ready.info["config"]["transform"]
    samples = list(ready.samples())
    images = [prep.load(s["jpg"], s["json"]["image_transform"]) for s in samples]
    assert prep.take_mismatched() == []  # the recorded transform is this preparer's: nothing to report
    calls = []
    for name in ("resize", "crop"):
        real = getattr(Image.Image, name)
        monkeypatch.setattr(Image.Image, name, lambda self, *a, _n=name, _f=real, **k: calls.append(_n) or _f(self, *a, **k))
    ours = prep(images)
    assert calls == []  # already square and at the size: no padding, resizing or cropping
    monkeypatch.undo()
    ref = processor(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (12, 3, 32, 32) and float((ours - ref).abs().max()) < 1e-4


def test_other_size_is_resized_and_found_once(tmp_path, parent, processor):
    other = vlmforge.build("model-ready", "build", out=tmp_path, source_options={"path": str(parent.path)}, size=48)
    prep = ImagePreparer(processor, pad_to_square=True)
    samples = list(other.samples())
    images = [prep.load(s["jpg"], s["json"]["image_transform"]) for s in samples]
    assert prep.take_mismatched() == [other.info["config"]["transform"]] and "resize=48" in other.info["config"]["transform"]
    assert prep.take_mismatched() == []  # each transform is found once
    ours, ref = prep(images), processor(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == (12, 3, 32, 32) and float((ours - ref).abs().max()) < 1e-4


def test_undecodable_image_is_a_reject(tmp_path):
    root = tmp_path / "folder" / "train" / "cat"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    data = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(data[: len(data) // 2])  # header intact: the copy's quick check lets it in
    parent = vlmforge.build("copy", "imagefolder", out=tmp_path / "p", source_options={"root": str(tmp_path / "folder")})
    assert len(parent) == 3
    b = vlmforge.build("model-ready", "build", out=tmp_path / "r", source_options={"path": str(parent.path)}, size=16)
    assert len(b) == 2
    assert b.sql("SELECT reason, stage FROM rejects").fetchall() == [("corrupt_image", "model_ready")]


def test_bad_arguments_are_one_error_line(tmp_path, parent, processor):
    with pytest.raises(UserError, match="--processor PATH_OR_ID"):
        vlmforge.build("model-ready", "build", out=tmp_path, source_options={"path": str(parent.path)})
    with pytest.raises(UserError, match="--pad"):
        vlmforge.build("model-ready", "build", out=tmp_path, source_options={"path": str(parent.path)}, size=8, pad="x")
    for size in (0, 100_000):  # a typo must not allocate tens of GB per image
        with pytest.raises(UserError, match="--size must be between 1 and 4096"):
            vlmforge.build("model-ready", "build", out=tmp_path, source_options={"path": str(parent.path)}, size=size)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "model-ready", *args, "--out",
                               str(tmp_path), "-q"], capture_output=True, text=True)

    r = cli("--from", str(tmp_path / "nope"), "--size", "8")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    r = cli("--from", str(parent.path), "--size", "24")
    assert r.returncode == 0, r.stderr
    built = vlmforge.open_build(tmp_path / "model-ready" / "1.1.0")
    assert built.sql("SELECT DISTINCT width, height FROM samples").fetchall() == [(24, 24)]


def test_a_model_ready_parent_is_refused(tmp_path, parent, ready, tiny_clip):
    """Applied twice (directly, or through a build derived from a model-ready one), images would be
    resized and JPEG-encoded again: one error line instead."""
    sub = vlmforge.build("subset", "build", out=tmp_path / "sub", source_options={"path": str(ready.path), "where": "key > ''"})
    for p in (ready.path, sub.path):
        with pytest.raises(UserError, match=rf"the parent {p} already holds model-ready images \(pad=square:.*;resize=32;.*\); "
                                            "build model-ready from the build they were made from"):
            vlmforge.build("model-ready", "build", out=tmp_path / "again", source_options={"path": str(p)}, size=16)
    assert not (tmp_path / "again").exists()
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "model-ready", "--from", str(ready.path),
                        "--processor", str(tiny_clip), "--out", str(tmp_path / "again"), "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "already holds model-ready images" in r.stderr
