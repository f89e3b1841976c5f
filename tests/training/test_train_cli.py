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
    r = invoke("model", "init-tiny", "--kind", "clip", "--out", tmp_path / "tiny")  # not over another model
    assert isinstance(r.exception, UserError) and "--overwrite" in str(r.exception)
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


def test_a_deepspeed_config_that_cannot_be_used_is_named(tmp_path, coco_build, monkeypatch):
    """A config that is not JSON was a JSONDecodeError traceback; DeepSpeed missing was accelerate's ImportError."""
    import importlib.util

    bad, good = tmp_path / "bad.json", tmp_path / "ds.json"
    bad.write_text("zero: 2")
    good.write_text('{"zero_optimization": {"stage": 2}}')
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "none", "--out", tmp_path / "run",
               "--deepspeed", bad)
    assert isinstance(r.exception, UserError) and f"--deepspeed {bad} is not a JSON config" in str(r.exception)
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find(name, *a))
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "none", "--out", tmp_path / "run",
               "--deepspeed", good)
    assert isinstance(r.exception, UserError) and "needs DeepSpeed, which is not installed" in str(r.exception)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--mode", "dream"], "unknown mode"),
    (["--weights", "1,2"], "one weight per --shards"),
    (["--weights", "a"], "numbers separated by commas"),
    (["--weights", "inf"], "--weights must be numbers of 0 or more (got inf)"),  # were tracebacks after the model
    (["--weights", "nan"], "--weights must be numbers of 0 or more (got nan)"),  # loaded
    (["--lr", "-1"], "--lr must be above 0 (got -1.0)"),  # was a ValueError traceback from AdamW
    (["--lr", "nan"], "--lr must be above 0"),
    (["--projector-lr", "0"], "--projector-lr must be above 0"),
    (["--warmup-ratio", "2"], "--warmup-ratio must be between 0 and 1"),
    (["--weight-decay", "-0.1"], "--weight-decay must be 0 or more"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be 0 (off) or more"),
    (["--lora-dropout", "1"], "--lora-dropout must be at least 0 and below 1"),
    (["--deepspeed", "/nonexistent/ds.json"], "no such file"),
    (["--loss-weighting", "samples"], "unknown --loss-weighting 'samples'; use tokens or batches"),
    (["--loss-weighting", "tokens", "--deepspeed", "ds.json"], "--loss-weighting tokens does not work with --deepspeed"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),  # was accelerate's ValueError traceback
    (["--select-by", "accuracy", "--val-split", "val"], "--select-by accuracy needs --mode clip"),  # best/ by loss
    (["--select-by", "f1", "--mode", "clip"], "unknown --select-by 'f1'"),
    (["--eval-every", "5"], "--eval-every needs validation data (--val-split or --val-shards)"),  # were ignored
    (["--select-by", "loss"], "--select-by needs validation data"),
    # options no other mode reads were silently ignored
    (["--mode", "full", "--freeze-text"], "--freeze-text applies to --mode clip, not --mode full"),
    (["--mode", "lora", "--prompt", "a {label}"], "--prompt applies to --mode clip, not --mode lora"),
    (["--mode", "projector", "--lora-r", "16"], "--lora-r applies to --mode lora, not --mode projector"),
    (["--mode", "clip", "--freeze-projector"], "--freeze-projector applies to --mode lora, not --mode clip"),
    (["--mode", "clip", "--template", "vicuna_v1"], "--template applies to --mode full, lora and projector, not"),
    (["--mode", "clip", "--max-length", "64"], "--max-length applies to --mode full, lora and projector, not"),
    (["--mode", "clip", "--projector-lr", "1e-3"], "--projector-lr applies to --mode full, lora and projector"),
    (["--freeze-projector", "--projector-lr", "1e-3"], "--freeze-projector keeps it from training"),
])
def test_bad_options_are_user_errors(tmp_path, coco_build, args, message):
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "none", "--out", tmp_path / "run", *args)
    assert isinstance(r.exception, UserError) and message in str(r.exception)


def test_out_that_is_a_file_or_holds_no_run_is_refused(tmp_path, coco_build, tiny_llava):
    """--out naming a file was a FileExistsError traceback; naming a build (any folder holding no run)
    wrote run.json, checkpoints and final/ among its shards."""
    before = sorted(p.name for p in coco_build.path.iterdir())
    for out, message in ((coco_build.path / "build.json", "is a file"),
                         (coco_build.path, "is not empty and holds no run"),
                         (coco_build.path / "build.json" / "run", "cannot make the run folder")):
        r = invoke("train", "--shards", coco_build.path, "--model", tiny_llava, "--out", out, "--max-steps", "1",
                   "--batch-size", "2", "--workers", "0", "-q")
        assert isinstance(r.exception, UserError) and message in str(r.exception), r.output
    assert sorted(p.name for p in coco_build.path.iterdir()) == before


def test_help_lists_the_commands():
    r = invoke("model", "--help")
    assert r.exit_code == 0 and "init-tiny" in r.output and "merge" in r.output
    r = invoke("train", "--help")
    assert r.exit_code == 0 and "--shards" in r.output and "--resume" in r.output


def test_scheduler_is_checked_before_the_model_loads(tmp_path, coco_build):
    r = invoke("train", "--shards", coco_build.path, "--model", tmp_path / "none", "--out", tmp_path / "run",
               "--scheduler", "bogus")
    assert isinstance(r.exception, UserError) and "unknown --scheduler 'bogus'" in str(r.exception)


def test_missing_local_model_is_not_sent_to_the_hub(tmp_path, coco_build, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # were it sent, fail fast offline rather than retry
    (tmp_path / "models").mkdir()
    r = invoke("train", "--shards", coco_build.path, "--model", "models/nope", "--out", tmp_path / "run")
    assert isinstance(r.exception, UserError) and "no model at" in str(r.exception)


@pytest.mark.parametrize("files, what", [
    ({"vlmforge_export.json": '{"kind": "lora", "base": "b"}', "adapter_config.json": "{}"}, "a LoRA adapter"),
    ({"adapter_config.json": "{}"}, "a LoRA adapter"),
    ({"vlmforge_export.json": '{"kind": "projector", "base": "b"}'}, "a projector-only export"),
])
def test_training_on_an_adapter_or_projector_export_points_to_merge(tmp_path, coco_build, files, what):
    export = tmp_path / "final"
    export.mkdir()
    for name, text in files.items():
        (export / name).write_text(text)
    r = invoke("train", "--shards", coco_build.path, "--model", export, "--mode", "full", "--out", tmp_path / "run")
    assert isinstance(r.exception, UserError), r.output
    assert what in str(r.exception) and "vlmforge model merge" in str(r.exception)
    assert not (tmp_path / "run").exists()
    if "vlmforge_export.json" in files:  # the run folder stands for its final/ (it was "Unrecognized model")
        r = invoke("train", "--shards", coco_build.path, "--model", tmp_path, "--out", tmp_path / "run")
        assert isinstance(r.exception, UserError) and what in str(r.exception), r.output


@pytest.mark.parametrize("option, value", [("--batch-size", "4"), ("--lr", "1"), ("--epochs", "3"),
                                           ("--max-steps", "9"), ("--grad-accum", "2"), ("--scheduler", "linear"),
                                           ("--loss-weighting", "batches")])
def test_resume_refuses_a_changed_schedule_and_keeps_run_json(tmp_path, coco_build, tiny_llava, option, value):
    from dataclasses import asdict

    from vlmforge.training.trainer import TrainConfig

    out = tmp_path / "run"
    out.mkdir()
    started = TrainConfig(shards=[str(coco_build.path)], model=str(tiny_llava), out=str(out), batch_size=2)
    run_json = out / "run.json"
    run_json.write_text(json.dumps({"config": asdict(started), "total_steps": 6}))
    before = run_json.read_text()
    r = invoke("train", "--shards", coco_build.path, "--model", tiny_llava, "--out", out, "--batch-size", "2",
               option, value, "--workers", "1", "--resume")  # --workers may change; the option may not
    assert isinstance(r.exception, UserError), r.output
    message = str(r.exception)
    assert message.startswith(f"cannot resume {out}: {option[2:].replace('-', '_')} changed"), message
    assert "workers" not in message and "\n" not in message
    assert run_json.read_text() == before


def test_validating_on_the_training_shards_warns(tmp_path, coco_build, tiny_llava):
    r = invoke("train", "--shards", coco_build.path, "--model", tiny_llava, "--mode", "projector", "--out",
               tmp_path / "run", "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--max-length", "96",
               "--val-split", "val")
    assert r.exit_code == 0, r.output
    assert "validation shard(s) are also training shards" in r.output


def test_an_empty_build_is_named(tmp_path, tiny_llava):
    from tests.evaluation.conftest import make_split_build

    empty = make_split_build(tmp_path / "b", {"train": []})
    r = invoke("train", "--shards", empty, "--model", tiny_llava, "--out", tmp_path / "run", "--max-steps", "1")
    assert isinstance(r.exception, UserError) and "is empty (no shards, 0 samples)" in str(r.exception), r.output
    r = invoke("train", "--shards", empty, "--split", "val", "--model", tiny_llava, "--out", tmp_path / "run2")
    assert "is empty" in str(r.exception)  # was: "has no shards of split None"


def test_a_tokenizer_of_another_model_is_refused(tmp_path, tiny_llava):
    """A tokenizer the model's embeddings or image token id do not fit failed inside forward() with a traceback."""
    import shutil

    from transformers import AutoTokenizer

    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.training.llava import load_llava

    token_id = shutil.copytree(tiny_llava, tmp_path / "token-id")
    cfg = json.loads((token_id / "config.json").read_text())
    cfg["image_token_index"] = cfg["image_token_index"] + 3
    (token_id / "config.json").write_text(json.dumps(cfg))
    bigger = shutil.copytree(tiny_llava, tmp_path / "bigger")
    tok = AutoTokenizer.from_pretrained(bigger)
    tok.add_tokens([f"extra{i}" for i in range(40)])
    tok.save_pretrained(bigger)
    for model, message in ((token_id, "expects image_token_id"), (bigger, "but the model's embeddings only")):
        with pytest.raises(UserError, match=message):
            load_llava(str(model))  # what train loads
        with pytest.raises(UserError, match=message):
            LocalRunner(str(model)).setup()  # what eval loads
    load_llava(str(tiny_llava))  # the model's own tokenizer fits


def test_a_clip_tokenizer_bigger_than_the_text_table_is_refused(tmp_path, tiny_clip):
    import shutil

    from transformers import AutoTokenizer

    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.training.clip import load_clip

    load_clip(str(tiny_clip))
    bigger = shutil.copytree(tiny_clip, tmp_path / "bigger")
    tok = AutoTokenizer.from_pretrained(bigger)
    tok.add_tokens([f"extra{i}" for i in range(40)])
    tok.save_pretrained(bigger)
    with pytest.raises(UserError, match="but the model's embeddings only"):
        load_clip(str(bigger))
    with pytest.raises(UserError, match="but the model's embeddings only"):
        LocalRunner(str(bigger)).setup()


def test_model_commands_print_no_transformers_bars(tmp_path):
    r = invoke("model", "init-tiny", "--kind", "causal-lm", "--out", tmp_path / "lm")
    assert r.exit_code == 0, r.output
    assert "wrote tiny causal-lm model" in r.output and "Writing model shards" not in r.output, r.output


@pytest.mark.parametrize("made, note", [
    ((), "run the same command to start again"),
    (("run.json",), "add --resume to the same command to start the run again"),
    (("run.json", "checkpoint-000003/position.json", "checkpoint-000006/position.json"),
     "add --resume to the same command to continue from checkpoint-000006"),
])
def test_ctrl_c_says_how_to_go_on(tmp_path, coco_build, monkeypatch, made, note):
    """Ctrl-C ended the run without a word (exit 130), and the same command again is refused: the run exists."""
    import vlmforge.training.trainer as trainer

    out = tmp_path / "run"

    def interrupted(cfg, on_step=None):
        for name in made:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    r = CliRunner().invoke(app, ["train", "--shards", str(coco_build.path), "--model", "m", "--out", str(out)])
    assert r.exit_code == 130 and note in r.output, r.output


def test_a_model_of_another_kind_is_named(tmp_path, coco_build, tiny_clip):
    """A CLIP model with a LLaVA mode was transformers' 'Unrecognized configuration class <class ...CLIPConfig>
    for this kind of AutoModel: AutoModelForImageTextToText'."""
    r = invoke("train", "--shards", coco_build.path, "--model", tiny_clip, "--mode", "full", "--out", tmp_path / "r")
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception) == f"{tiny_clip} is a clip model, not a vision-language model; train a CLIP model with --mode clip"


def test_a_damaged_run_json_is_one_error(tmp_path, coco_build, tiny_llava):
    """run.json cut short (a kill while it was written, which is no longer possible) was a JSONDecodeError traceback."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"config": {"shards": ["a"')
    r = invoke("train", "--shards", coco_build.path, "--model", tiny_llava, "--out", out, "--resume")
    assert isinstance(r.exception, UserError) and "run.json is damaged (JSONDecodeError" in str(r.exception), r.output


def test_ctrl_c_in_a_terminal_is_one_line(tmp_path, label_build, tiny_clip):
    """A real Ctrl-C (every process of the job, data loader workers too) ends in the one line that says how to
    go on, with no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "vlmforge.cli", "train", "--shards", str(label_build.path), "--model", str(tiny_clip),
           "--mode", "clip", "--out", str(tmp_path / "run"), "--batch-size", "8", "--workers", "2", "--epochs", "1000",
           "--log-every", "1", "--save-every", "2"]
    err = tmp_path / "err.txt"
    with open(err, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})  # lines as they come
        deadline = time.time() + 120
        while "step=5 " not in err.read_text() and p.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert p.poll() is None, err.read_text()[-2000:]  # still training: the Ctrl-C lands mid-run
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the job
        try:
            code = p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            code = "still running 60 s after Ctrl-C"
    text = err.read_text()
    assert code == 130, [line for line in text.splitlines() if not line.startswith("step=")][-40:]
    assert "Traceback" not in text and "interrupted; add --resume to the same command to continue from" in text, text


def test_a_file_that_is_not_a_tar_or_a_source_without_samples_is_named(tmp_path, coco_build, tiny_llava):
    """A text file given as a shard was read as a tar of 0 samples: beside a build it was left out of the mix
    without a word, and as --val-shards nothing was validated. A source whose tars hold no sample likewise."""
    from tests.training.conftest import write_tar

    text = tmp_path / "list.txt"
    text.write_text("shards.tar\n")
    empty = write_tar(tmp_path / "empty.tar", [])
    for args, message in ((["--shards", text], f"{text} is not a tar file"),
                          (["--shards", empty], f"{empty} holds no samples"),
                          (["--val-shards", text], f"{text} is not a tar file"),
                          (["--val-shards", empty], f"{empty} holds no samples")):
        r = invoke("train", "--shards", coco_build.path, "--model", tiny_llava, "--out", tmp_path / "run",
                   "--max-steps", "1", "--batch-size", "2", "--workers", "0", "-q", *args)
        assert isinstance(r.exception, UserError) and message in str(r.exception), r.output
        assert not (tmp_path / "run" / "final").exists()


def test_a_model_folder_missing_files_or_an_evaluation_is_named(tmp_path, coco_build, tiny_llava):
    """A model folder without its tokenizer failed with transformers' 'Couldn't instantiate the backend tokenizer
    from one of:', and an evaluation's folder, as --model or --shards, was 'a training run'; as --out, one to
    resume."""
    import shutil

    no_tokenizer = shutil.copytree(tiny_llava, tmp_path / "no-tokenizer")
    for p in no_tokenizer.glob("tokenizer*"):
        p.unlink()
    no_weights = shutil.copytree(tiny_llava, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "predictions.jsonl").write_text("")
    (ev / "run.json").write_text('{"task": "mcqa"}')
    for args, message in ((["--shards", coco_build.path, "--model", no_tokenizer], "has no tokenizer (tokenizer.json"),
                          (["--shards", coco_build.path, "--model", no_weights], "has no weights (model.safetensors"),
                          (["--shards", coco_build.path, "--model", ev], f"{ev} is an evaluation's output folder"),
                          (["--shards", ev, "--model", tiny_llava], f"{ev} is an evaluation's output folder")):
        r = invoke("train", *args, "--out", tmp_path / "run", "--max-steps", "1")
        assert isinstance(r.exception, UserError) and message in str(r.exception), r.output
    for resume in ((), ("--resume",)):  # its run.json is the evaluation's: 'already holds a run; pass --resume'
        r = invoke("train", "--shards", coco_build.path, "--model", tiny_llava, "--out", ev, *resume)
        assert isinstance(r.exception, UserError), r.output
        assert str(r.exception).startswith(f"--out {ev} is an evaluation's output folder"), r.output


def test_init_tiny_does_not_write_into_a_build_or_a_run(tmp_path, coco_build):
    """--overwrite put a model's config.json and weights among a build's shards (then neither a model, 'is a
    vlmforge build', nor a clean build) or into a run folder, whose final/ the run folder then no longer stood for."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"config": {}}')
    before = sorted(p.name for p in coco_build.path.iterdir())
    for out, what in ((coco_build.path, "a build (build.json)"), (run, "a training run or an evaluation (run.json)")):
        r = invoke("model", "init-tiny", "--kind", "clip", "--out", out, "--overwrite")
        assert isinstance(r.exception, UserError) and str(r.exception).startswith(f"--out {out} is {what}"), r.output
    assert sorted(p.name for p in coco_build.path.iterdir()) == before and not (run / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--init-range", "-1"], "--init-range must be above 0 and at most 1 (got -1.0)"),  # were config tracebacks
    (["--init-range", "nan"], "--init-range must be above 0 and at most 1 (got nan)"),
    (["--kind", "clip", "--init-range", "0.5"], "--init-range applies to --kind llava, not clip"),  # went unused
])
def test_init_tiny_refuses_an_init_range_it_cannot_use(tmp_path, args, message):
    r = invoke("model", "init-tiny", "--out", tmp_path / "m", *args)
    assert isinstance(r.exception, UserError) and str(r.exception) == message, r.output
    assert not (tmp_path / "m").exists()


def test_merge_onto_a_clip_base_does_not_say_to_train_clip(tmp_path, tiny_clip):
    """A CLIP --base for a LoRA export said 'train a CLIP model with --mode clip', a hint for `train`."""
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "vlmforge_export.json").write_text(json.dumps({"kind": "lora", "base": "b", "template": "chat"}))
    (final / "adapter_config.json").write_text("{}")
    r = invoke("model", "merge", tmp_path / "run", "--out", tmp_path / "merged", "--base", tiny_clip)
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception) == (f"{tiny_clip} is a clip model, not a vision-language model; give the vision-language "
                                "model the run trained as --base")


def test_merge_names_a_base_that_moved(tmp_path):
    """The base a run recorded, moved since, was transformers' 'Repo id must be in the form ...'."""
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    gone = tmp_path / "models" / "gone"
    (final / "vlmforge_export.json").write_text(json.dumps({"kind": "lora", "base": str(gone), "template": "chat"}))
    (final / "adapter_config.json").write_text("{}")
    r = invoke("model", "merge", tmp_path / "run", "--out", tmp_path / "merged")
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception).startswith(f"no model at {gone}") and "pass --base" in str(r.exception)


def test_training_shows_its_progress_toward_the_last_step(tmp_path, label_build, tiny_clip, monkeypatch):
    """Training printed a line every --log-every steps with no total and no time left: nothing showed how far
    a run was. It has the progress bar (a line at intervals in a log) that builds and eval show."""
    import vlmforge.progress

    monkeypatch.setattr(vlmforge.progress, "LOG_INTERVAL", 0.0)  # a line at every step
    r = invoke("train", "--shards", label_build.path, "--model", tiny_clip, "--mode", "clip", "--out", tmp_path / "run",
               "--max-steps", "2", "--batch-size", "4", "--workers", "0", "--log-every", "100")
    assert r.exit_code == 0, r.output
    assert "train steps: 1/2 (50%)" in r.output and "train steps: 2/2 (100%)" in r.output, r.output
    r = invoke("train", "--shards", label_build.path, "--model", tiny_clip, "--mode", "clip", "--out", tmp_path / "q",
               "--max-steps", "2", "--batch-size", "4", "--workers", "0", "-q")
    assert r.exit_code == 0 and "train steps" not in r.output, r.output


def test_a_damaged_checkpoint_is_named_with_the_one_to_resume_from(tmp_path, label_build, tiny_clip):
    """A checkpoint's position.json or trainer state that does not read (a damaged disk, a hand edit) was a
    JSONDecodeError or a torch traceback on --resume."""
    args = ["train", "--shards", label_build.path, "--model", tiny_clip, "--mode", "clip", "--out", tmp_path / "run",
            "--max-steps", "2", "--batch-size", "4", "--workers", "0", "--save-every", "1", "-q"]
    assert invoke(*args).exit_code == 0
    newest = tmp_path / "run" / "checkpoint-000002"
    (newest / "position.json").write_text("{")
    r = invoke(*args, "--resume")
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception).startswith(f"{newest} is damaged (JSONDecodeError") and str(r.exception).endswith(
        "delete that folder and run the same command again to resume from checkpoint-000001")
    (newest / "position.json").unlink()  # no longer a checkpoint: the one before is resumed
    (tmp_path / "run" / "checkpoint-000001" / "trainer_state.pt").write_bytes(b"cut")
    r = invoke(*args, "--resume")
    assert isinstance(r.exception, UserError) and "checkpoint-000001 is damaged" in str(r.exception), r.output
    assert str(r.exception).endswith("to start the run again")
