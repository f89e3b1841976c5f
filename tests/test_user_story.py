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
    (tmp_path / "m").mkdir()  # the data is checked before a model loads
    assert one_line_error(invoke("train", "--shards", run, "--model", tmp_path / "m", "--out", tmp_path / "r")) == (
        f"{run} is a training run (a model: give it as --model); give a finished build or shard paths")
    as_model = f"{coco_build.path} is a vlmforge build (data), not a model"
    assert one_line_error(invoke("train", "--shards", coco_build.path, "--model", coco_build.path, "--mode", "projector",
                                 "--out", tmp_path / "r")) == as_model
    assert not (tmp_path / "r").exists()
    assert one_line_error(invoke("eval", "--task", "open", "--data", coco_build.path, "--model", coco_build.path,
                                 "--out", tmp_path / "e")) == as_model


def test_occlusion_split_mcqa_mix_train_eval_export_publish(tmp_path, sample_coco, coco_build):
    """The researcher's loop, checking what each step hands to the next, not only exit codes."""
    import duckdb

    from tests.report.tiny_occlusion import build_tiny_occlusion
    from vlmforge.training.tiny import make_tiny_llava

    def ok(*args):
        r = invoke(*args)
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r

    def rows(build, sql):
        with duckdb.connect(str(build / "manifest.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()

    occ = build_tiny_occlusion(sample_coco, tmp_path / "occ")
    out = tmp_path / "builds"
    ok("build", "split", "--from", occ.path, "--splits", "train=0.5,test=0.5", "--out", out, "-q")
    split = out / "split" / "1.3.0"
    test_labels = dict(rows(split, "SELECT key, label FROM samples WHERE split = 'test'"))
    train_keys = {k for (k,) in rows(split, "SELECT key FROM samples WHERE split = 'train'")}
    assert test_labels and train_keys and not train_keys & set(test_labels)
    # mcqa of the test split: one question per test sample, its answer that sample's label.
    ok("build", "mcqa", "--from", split, "--parent-split", "test", "-k", "3", "--out", out, "-q")
    mcqa = out / "mcqa" / "1.1.0"
    answers = {k: opts[i] for k, opts, i in rows(mcqa, "SELECT key, options, answer_index FROM samples")}
    assert answers == test_labels
    # The mix: all of the split's train split and 3 records of the COCO copy, lineage in build.json.
    ok("build", "mix", "--from", split, "--from", coco_build.path, "--parent-split", "train", "--parent-split", "val",
       "--take", "all", "--take", "3", "--into", "train", "--out", out, "-q")
    mix = out / "mix" / "1.1.0"
    info = json.loads((mix / "build.json").read_text())
    assert info["splits"]["train"]["samples"] == len(train_keys) + 3
    assert info["source"]["selection"]["taken"] == {info["parents"][0]: len(train_keys), coco_build.build_id: 3}
    assert [p["builder"] for p in info["parent_builds"]] == ["split", "copy", "occlusion"]
    split_id = json.loads((split / "build.json").read_text())["build_id"]
    taken = rows(mix, f"SELECT parent_key FROM samples WHERE parent_build = '{split_id}'")
    assert {k for (k,) in taken} == train_keys  # keys both parents have are prefixed in the mix: parent_key
    mix_keys = {k for (k,) in rows(mix, "SELECT key FROM samples")}
    # Training reads the mix, every sample once an epoch; an mcqa build (test only) is refused.
    model = make_tiny_llava(tmp_path / "tiny")
    run = tmp_path / "run"
    n = len(mix_keys)
    ok("train", "--shards", mix, "--model", model, "--mode", "projector", "--out", run, "--epochs", "1",
       "--batch-size", n, "--workers", "0", "--max-length", "96", "--log-keys", "-q")
    seen = [k for line in (run / "keys.jsonl").read_text().splitlines() for k in json.loads(line)["keys"]]
    assert sorted(seen) == sorted(mix_keys)
    assert "has no train split" in one_line_error(invoke("train", "--shards", mcqa, "--model", model, "--mode",
                                                         "projector", "--out", tmp_path / "r2"))
    # Evaluation reads the mcqa build's test split: none of its images were trained on.
    ok("eval", "--task", "mcqa", "--data", mcqa, "--model", run, "--scoring", "loss", "--out", tmp_path / "ev",
       "--no-plots", "-q")
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["counts"]["items"] == len(test_labels)
    assert summary["counts"]["seen_in_training"] == 0
    # The same questions over the train split were all trained on.
    ok("build", "mcqa", "--from", split, "--parent-split", "train", "-k", "3", "--out", tmp_path / "m2", "-q")
    ok("eval", "--task", "mcqa", "--data", tmp_path / "m2" / "mcqa" / "1.1.0", "--split", "train", "--model", run,
       "--scoring", "loss", "--out", tmp_path / "ev2", "--no-plots", "-q")
    summary = json.loads((tmp_path / "ev2" / "summary.json").read_text())
    assert summary["counts"]["seen_in_training"] == summary["counts"]["items"] == len(train_keys)
    # export llava: what LLaVA's train script takes.
    ok("export", "llava", mix, "--out", tmp_path / "llava", "-q")
    records = json.loads((tmp_path / "llava" / "llava.json").read_text())
    assert {r["id"] for r in records} == mix_keys
    for r in records:
        assert (tmp_path / "llava" / r["image"]).is_file()
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n") and sum(t["value"].count("<image>") for t in turns) == 1
    # publish --dry-run: the card names the counts and what was read of each parent.
    ok("publish", mix, "--repo", "lab/mix", "--dry-run", "--license", "cc-by-4.0", "--stage", tmp_path / "st", "-q")
    card = (tmp_path / "st" / "repo" / "README.md").read_text()
    assert "license: cc-by-4.0" in card
    assert f"| train | {n} | 0 | 1 |" in card
    assert "\n3 samples have no label.\n" in card  # the COCO copy's
    assert f"| split | 1.3.0 | {occ.build_id} | train | {len(train_keys)} |" in card
    assert f"| {coco_build.build_id} | copy | 1.5.0 |  | all | 3 |" in card  # its only split, val
