"""Grad-CAM: a model that looks at one region gets its heatmap there; files, fields and shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.analysis.conftest import CLASSES, GRID, REGION
from vlmforge.analysis import gradcam as G
from vlmforge.analysis.samples import read_test_samples
from vlmforge.errors import UserError


def test_to_grid_drops_the_class_token_and_keeps_patch_order():
    import torch

    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = G.to_grid(tokens)
    assert grid.shape == (2, 3, 4, 4)
    # patch (row 1, col 2) is token 1 + 1 * 4 + 2 (token 0 is the class token)
    assert torch.equal(grid[1, :, 1, 2], tokens[1, 7])
    assert G.to_grid(tokens[:, 1:]).shape == (2, 3, 4, 4)  # no class token
    with pytest.raises(UserError):
        G.to_grid(tokens[:, :15])


def test_region_model_depends_only_on_its_region(region_clip, label_build):
    """The construction itself: noise outside the region leaves the probabilities alone; inside, not."""
    import torch

    runner = G.load_clip(str(region_clip))
    feats = G.text_features(runner, G.class_prompts(CLASSES, None))
    _, module = G.resolve_layer(runner.model, None)
    rng = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, 32, 32, generator=rng)
    base = G.gradcam(runner.model, module, px, feats).probs
    outside, inside = px.clone(), px.clone()
    outside[:, :, :16] = torch.randn(2, 3, 16, 32, generator=rng)
    outside[:, :, 16:, :16] = torch.randn(2, 3, 16, 16, generator=rng)
    inside[:, :, 16:, 16:] = torch.randn(2, 3, 16, 16, generator=rng)
    assert torch.allclose(G.gradcam(runner.model, module, outside, feats).probs, base, atol=1e-6)
    assert (G.gradcam(runner.model, module, inside, feats).probs - base).abs().max() > 1e-3


def test_heatmap_peaks_in_the_region_the_model_reads(region_clip, label_build, tmp_path):
    out = G.run_gradcam(str(region_clip), label_build, tmp_path / "gc", n=7, quiet=True)
    index = json.loads((out / "index.json").read_text())
    assert index["layer"] == "vision_model.encoder.layers.1.layer_norm1"
    assert index["grid"] == [GRID, GRID] and index["n"] == 7
    heat = np.load(out / "heatmaps.npz")
    assert heat["pred"].shape == (7, GRID, GRID)
    in_region = np.zeros(GRID * GRID, bool)
    in_region[REGION] = True
    for key, cam in zip(heat["keys"], heat["pred"]):
        flat = cam.reshape(-1)
        assert in_region[flat.argmax()], (key, cam)
        # every region patch outweighs every other patch, also on the image whose bright corner is elsewhere
        assert flat[in_region].min() > flat[~in_region].max(), (key, cam)
    # the overlay's hottest pixels (red in the jet map) lie in the bottom-right quadrant too
    item = next(it for it in index["items"] if it["key"].startswith("cat-corner"))
    rgb = np.asarray(Image.open(out / item["image"])).astype(int)
    redness = rgb[..., 0] - rgb[..., 2]
    y, x = np.unravel_index(redness.argmax(), redness.shape)
    assert y >= 112 and x >= 112


def test_last_block_output_has_no_gradient_for_clip(region_clip):
    """Why the default is the last block's input: CLIP reads only the class token of its output."""
    import torch

    runner = G.load_clip(str(region_clip))
    feats = G.text_features(runner, G.class_prompts(CLASSES, None))
    _, module = G.resolve_layer(runner.model, "vision_model.encoder.layers.1")
    res = G.gradcam(runner.model, module, torch.randn(1, 3, 32, 32), feats)
    assert res.zero_gradient and not res.cams[0].any()
    with pytest.raises(UserError, match="no module 'vision_model.nope'; vision blocks are named like"):
        G.resolve_layer(runner.model, "vision_model.nope")


def test_cli_writes_overlays_sheet_and_index(tiny_clip, label_build, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "vlmforge.cli", "analyze", "gradcam", "--model", str(tiny_clip),
           "--shards", f"{label_build}/*.tar", "--where", "label = 'horse'", "--n", "2", "--classes", "cat,horse",
           "--class-template", "a photo of a {label}.", "--true-class", "--size", "64", "--out", str(out), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["classes"] == CLASSES and index["class_prompts"] == ["a photo of a cat.", "a photo of a horse."]
    assert len(index["items"]) == 2
    split = read_test_samples(label_build, n=1).samples[0].split
    assert index["splits"] == {split: 2}  # which data the images came from
    for it in index["items"]:
        probs = it["probabilities"]
        assert it["true"] == "horse" and it["predicted"] == CLASSES[probs.index(max(probs))]
        assert it["correct"] == (it["predicted"] == "horse")
        assert set(it) >= {"key", "image", "true", "predicted", "confidence", "correct", "true_image"}
        assert it["confidence"] == max(it["probabilities"]) and abs(sum(it["probabilities"]) - 1) < 1e-4
        for f in (it["image"], it["true_image"]):
            assert Image.open(out / f).size == (64, 64)
    heat = np.load(out / "heatmaps.npz")
    assert heat["pred"].shape == heat["true"].shape == (2, GRID, GRID)
    assert 0 <= heat["pred"].min() and heat["pred"].max() <= 1
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 2 * 160 and sheet.height > 160



def test_a_rerun_into_the_same_folder_leaves_only_its_own_overlays(tiny_clip, label_build, tmp_path):
    """Before: overlays of an earlier run with another --n or --where stayed beside the new ones."""
    out = tmp_path / "gc"
    G.run_gradcam(str(tiny_clip), label_build, out, n=4, classes=CLASSES, true_class=True, size=32, quiet=True)
    assert len(list((out / "overlays").glob("*.png"))) == 8
    (out / "overlays" / "notes.txt").write_text("mine")
    G.run_gradcam(str(tiny_clip), label_build, out, n=2, seed=5, classes=CLASSES, size=32, quiet=True)
    index = json.loads((out / "index.json").read_text())
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == sorted(Path(it["image"]).name for it in index["items"])
    assert (out / "overlays" / "notes.txt").exists()  # only what an analysis writes is removed


def test_user_mistakes_are_one_error_line_before_the_model_loads(tiny_clip, label_build, tmp_path):
    """Before: --out naming a file was a NotADirectoryError traceback after the whole analysis,
    --device cuda without a GPU an AssertionError, and a class named twice went through."""
    taken = tmp_path / "taken"
    taken.write_text("")
    base = [sys.executable, "-m", "vlmforge.cli", "analyze", "gradcam", "--model", str(tiny_clip),
            "--shards", str(label_build), "--n", "1", "-q"]
    cases = [(["--out", str(taken)], "is a file; the analysis needs a folder"),
             # before: accepted, each overlay then took gigabytes (a float RGBA heatmap of 20000 x 20000)
             (["--out", str(taken), "--size", "20000"], "--size"),
             (["--out", str(tmp_path / "a"), "--device", "gpu"], "unknown --device"),
             (["--out", str(tmp_path / "b"), "--classes", "cat,horse,cat"], "names 'cat' more than once")]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--out", str(tmp_path / "c"), "--device", "cuda"], "no CUDA GPU is available here"))
    for args, words in cases:
        r = subprocess.run(base + args, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_accuracy_counts_only_images_of_the_classes(tiny_clip, label_build, tmp_path):
    """Before: with --classes naming some of the labels, an image of another label counted as wrong,
    so the accuracy of a perfect classifier could read 0.33."""
    out = G.run_gradcam(str(tiny_clip), label_build, tmp_path / "gc", n=7, classes=["cat", "dog"], size=32, quiet=True)
    index = json.loads((out / "index.json").read_text())
    items = index["items"]
    assert {it["true"] for it in items} - {"cat", "dog"}, "the test needs images of another class"
    for it in items:
        assert it["correct"] == (it["true"] == it["predicted"] if it["true"] in ("cat", "dog") else None)
    scored = [it for it in items if it["correct"] is not None]
    assert index["scored"] == len(scored) and index["accuracy"] == sum(it["correct"] for it in scored) / len(scored)


def test_classes_come_from_the_trainer_export(tiny_clip, tmp_path):
    (tmp_path / "vlmforge_export.json").write_text(json.dumps({"kind": "clip", "classes": ["b", "a"]}))
    assert G.default_classes(str(tmp_path), ["x", "y"]) == ["b", "a"]
    assert G.default_classes(str(tiny_clip), ["x", "y"]) == ["x", "y"]
    with pytest.raises(UserError):
        G.class_prompts(["a"], "no placeholder")


def test_a_run_folder_gives_the_classes_its_final_model_was_trained_on(tiny_clip, label_build, tmp_path):
    """Before: --model runs/clip loaded runs/clip/final but read the classes from runs/clip (none there),
    so the prompts were the test data's labels, not the classes the model was trained on."""
    import shutil

    final = tmp_path / "run" / "final"
    shutil.copytree(tiny_clip, final)
    (final / "vlmforge_export.json").write_text(json.dumps({"kind": "clip", "classes": ["horse", "cat", "cow"]}))
    out = G.run_gradcam(str(tmp_path / "run"), label_build, tmp_path / "gc", n=2, size=32, quiet=True)
    assert json.loads((out / "index.json").read_text())["classes"] == ["horse", "cat", "cow"]
