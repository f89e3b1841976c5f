"""A researcher's loop across commands: the hand-offs between builds, training runs and evaluations."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vlmforge.cli import app
from vlmforge.errors import UserError


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert isinstance(result.exception, UserError), result.output
    text = str(result.exception)
    assert "\n" not in text
    return text


def test_a_run_folder_given_as_data_and_a_build_given_as_model_are_named(tmp_path, coco_build):
    """A run folder as --data was an IsADirectoryError traceback (mcqa, open); a build as --model was
    transformers' "Unrecognized processing class ..." / "Should have a `model_type` key"."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "vlmforge_export.json").write_text(json.dumps({"kind": "lora", "base": "m", "template": "chat"}))
    (run / "run.json").write_text(json.dumps({"config": {"shards": [str(coco_build.path)], "split": None}}))
    as_data = f"{run} is not a vlmforge build folder (no build.json); it is a training run (a model: give it as --model)"
    for task in ("mcqa", "open"):
        assert one_line_error(invoke("eval", "--task", task, "--data", run, "--model", run,
                                     "--out", tmp_path / "e")) == as_data
    assert one_line_error(invoke("build", "mcqa", "--from", run, "--out", tmp_path / "b")) == as_data
    assert one_line_error(invoke("export", "llava", run, "--out", tmp_path / "x")) == as_data
    as_model = f"{coco_build.path} is a vlmforge build (data), not a model"
    assert one_line_error(invoke("train", "--shards", coco_build.path, "--model", coco_build.path, "--mode", "projector",
                                 "--out", tmp_path / "r")) == as_model
    assert not (tmp_path / "r").exists()
    assert one_line_error(invoke("eval", "--task", "open", "--data", coco_build.path, "--model", coco_build.path,
                                 "--out", tmp_path / "e")) == as_model
