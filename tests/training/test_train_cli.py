"""`vlmforge train`, `vlmforge model init-tiny` and `vlmforge model merge` from the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlmforge.cli import app
from vlmforge.errors import UserError


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_init_tiny_train_merge(tmp_path, coco_build):
    r = invoke("model", "init-tiny", "--kind", "llava", "--out", tmp_path / "tiny")
    assert r.exit_code == 0, r.output
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "tiny", "--mode", "lora", "--out",
               tmp_path / "run", "--max-steps", "2", "--batch-size", "4", "--workers", "0", "--max-length", "96",
               "--save-every", "1", "--keep-checkpoints", "1", "-q")
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-000002"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["pad_to_square"] is True
    r = invoke("model", "merge", tmp_path / "run", "--out", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "merged" / "vlmforge_export.json").read_text())["merged_kind"] == "lora"
    # Running into the same folder again is refused with a hint.
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "tiny", "--out", tmp_path / "run")
    assert isinstance(r.exception, UserError) and "--resume" in str(r.exception)


@pytest.mark.parametrize("args, message", [
    (["--mode", "dream"], "unknown mode"),
    (["--weights", "1,2"], "one weight per --shards"),
    (["--weights", "a"], "numbers separated by commas"),
])
def test_bad_options_are_user_errors(tmp_path, coco_build, args, message):
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "none", "--out", tmp_path / "run", *args)
    assert isinstance(r.exception, UserError) and message in str(r.exception)


def test_help_lists_the_commands():
    r = invoke("model", "--help")
    assert r.exit_code == 0 and "init-tiny" in r.output and "merge" in r.output
    r = invoke("train", "--help")
    assert r.exit_code == 0 and "--shards" in r.output and "--resume" in r.output
