"""`vlmforge eval` mistakes found by an audit of the trainer and evaluator commands, refused before any model
loads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vlmforge.cli import app
from vlmforge.errors import UserError


@pytest.mark.parametrize("model, folder", [
    ("runs/a/final", "a-final"), ("runs/b/final/", "b-final"), ("/abs/runs/a/best", "a-best"),
    ("runs/a/checkpoint-000500/model", "a-checkpoint-000500-model"), ("runs/a", "a"),
    ("llava-hf/llava-1.5-7b-hf", "llava-1.5-7b-hf"), ("final", "final"),
])
def test_the_default_out_tells_runs_apart(model, folder):
    """Every run's final/ was evals/<task>/final: a second run's evaluation was refused as another run's, and
    --overwrite, which the refusal offers, discarded the first's predictions."""
    from vlmforge.commands.eval import _slug

    assert _slug(model) == folder


@pytest.mark.parametrize("backend", ["template", "bogus"])
def test_a_backend_that_answers_no_questions_is_refused_up_front(tmp_path, backend):
    """--backend template was offered by the unknown-backend message, then failed at the first batch with
    "requests with extra['template']", its output folder made."""
    r = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(tmp_path), "--backend", backend,
                                 "--out", str(tmp_path / "ev")])
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception) == f"unknown --backend {backend!r}; use local, openai, vllm, transformers"
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_a_model_folder_without_weights_is_named_for_the_generation_backends(tmp_path, backend):
    """These backends load the model at the first batch: a folder without weights was transformers' OSError
    traceback, after the output folder was made."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    r = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(tmp_path), "--backend", backend,
                                 "--model", str(model), "--out", str(tmp_path / "ev")])
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception).startswith(f"the model folder {model} has no weights (model.safetensors")
    assert not (tmp_path / "ev").exists()
