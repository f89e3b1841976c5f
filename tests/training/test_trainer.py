"""Each mode trains (its loss falls within a few dozen CPU steps) and saves; resume; merge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlmforge.errors import UserError
from vlmforge.training.trainer import TrainConfig, checkpoints, train

LLAVA_LR = {"full": 3e-3, "lora": 1e-2, "projector": 3e-2}


class Killed(Exception):
    """Stands in for a run killed between two steps."""


def run(out: Path, shards: list[str], model: Path, mode: str, steps: int, kill_at: int | None = None,
        **kw) -> tuple[Path, list[float]]:
    losses: list[float] = []
    # fp32 everywhere (auto is bf16 on a GPU): these tests compare exact figures
    opts = dict(lr=LLAVA_LR.get(mode, 3e-3), batch_size=4, max_steps=steps, workers=0, save_every=steps,
                log_every=4, warmup_ratio=0.0, scheduler="constant", quiet=True, precision="no")
    if mode != "clip":
        opts["max_length"] = 128
    if mode == "lora":
        opts["lora_dropout"] = 0.0
    opts.update(kw)
    cfg = TrainConfig(shards=shards, model=str(model), out=str(out), mode=mode, **opts)

    def on_step(step: int, rec: dict) -> None:
        if step == kill_at:
            raise Killed
        losses.append(rec["loss"])

    return train(cfg, on_step=on_step), losses


@pytest.fixture(scope="module")
def llava_runs(tmp_path_factory, coco_build, tiny_llava):
    """One 24-step run per LLaVA mode on the embedded COCO sample (12 samples, batches of 4)."""
    root = tmp_path_factory.mktemp("runs")
    return {mode: run(root / mode, [str(coco_build.path)], tiny_llava, mode, 24, save_every=12,
                      gradient_checkpointing=(mode == "full")) for mode in ("full", "lora", "projector")}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@pytest.mark.parametrize("mode", ["full", "lora", "projector"])
def test_llava_mode_loss_falls_and_run_is_saved(llava_runs, mode):
    out, losses = llava_runs[mode]
    assert len(losses) == 24
    assert mean(losses[-4:]) < 0.92 * mean(losses[:4]), losses  # falls clearly
    if mode != "projector":
        assert mean(losses[-4:]) < 0.75 * mean(losses[:4]), losses
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["epoch_size"] == 12 and run_info["total_steps"] == 24 and run_info["builds"][0]["builder"] == "copy"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # samples_seen counts over the run: 24 steps of 4 (it used to start again each epoch, ending at 12)
    assert [m["step"] for m in metrics] == [4, 8, 12, 16, 20, 24] and metrics[-1]["samples_seen"] == 96
    assert [c.name for c in checkpoints(out)] == ["checkpoint-000012", "checkpoint-000024"]
    ckpt = checkpoints(out)[-1]
    assert json.loads((ckpt / "position.json").read_text()) == {"step": 24, "epoch": 7, "samples_seen": 12, "seed": 0}
    export = json.loads((out / "final" / "vlmforge_export.json").read_text())
    assert export["kind"] == mode
    files = {p.name for p in (out / "final").iterdir()}
    expect = {"full": "model.safetensors", "lora": "adapter_model.safetensors", "projector": "projector.safetensors"}
    assert expect[mode] in files and "tokenizer.json" in files and "processor_config.json" in files


@pytest.mark.parametrize("mode", ["full", "lora", "projector"])
def test_llava_mode_trains_its_weights_and_no_others(llava_runs, tiny_llava, mode):
    """The last checkpoint holds exactly the weights the mode trains, each moved from the base; what it
    exports is those weights; the weights it freezes stay bit-identical."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from vlmforge.training.llava import projector_names

    out, _ = llava_runs[mode]
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    base = dict(model.named_parameters())
    trained = torch.load(checkpoints(out)[-1] / "trainer_state.pt", weights_only=False)["params"]
    projector = set(projector_names(model))
    if mode == "lora":  # LoRA pairs on the language model, and the projector's trainable copy
        lora = {n for n in trained if ".lora_A.default." in n or ".lora_B.default." in n}
        copies = {n.replace("base_model.model.", "").replace("modules_to_save.default.", ""): n
                  for n in set(trained) - lora}
        assert lora and all("language_model" in n for n in lora) and set(copies) == projector
        assert all(not torch.equal(trained[copies[n]], base[n]) for n in projector)
        assert all(trained[n].abs().sum() > 0 for n in lora if ".lora_B." in n)  # lora_B starts at zero
        adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
        written = {n.replace("modules_to_save.", "").replace(".default", ""): w for n, w in trained.items()}
        assert adapter.keys() == written.keys() and all(torch.equal(adapter[n], w) for n, w in written.items())
        return
    frozen_names = {"full": {n for n in base if "vision_tower" in n}, "projector": set(base) - projector}[mode]
    assert set(trained) == set(base) - frozen_names
    assert all(not torch.equal(trained[n], base[n]) for n in trained), [n for n in trained if torch.equal(trained[n], base[n])]
    final = (AutoModelForImageTextToText.from_pretrained(out / "final").state_dict() if mode == "full"
             else load_file(str(out / "final" / "projector.safetensors")))
    assert all(torch.equal(final[n], trained[n]) for n in trained)
    if mode == "full":
        assert all(torch.equal(final[n], base[n]) for n in frozen_names)


def _logits(model, batch):
    import torch

    with torch.no_grad():
        return model(**batch).logits


def _probe_batch(tiny_llava, coco_build):
    from transformers import AutoProcessor

    from vlmforge.training.collate import LlavaCollator, model_inputs

    samples = [s for _, s in zip(range(2), coco_build.samples())]
    return model_inputs(LlavaCollator(AutoProcessor.from_pretrained(tiny_llava), "chat", 128)(samples))


def test_merge_lora_matches_base_plus_adapter(llava_runs, tiny_llava, coco_build, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmforge.training.merge import merge

    out, _ = llava_runs["lora"]
    merged_dir = merge(out, tmp_path / "merged")
    batch = _probe_batch(tiny_llava, coco_build)
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    base_logits = _logits(base, batch)
    with_adapter = PeftModel.from_pretrained(base, str(out / "final")).eval()
    expected = _logits(with_adapter, batch)
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    got = _logits(merged, batch)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(got, base_logits, atol=1e-2)
    with pytest.raises(UserError, match="not empty"):
        merge(out, merged_dir)


def test_merge_projector_writes_a_full_checkpoint(llava_runs, tiny_llava, coco_build, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from vlmforge.training.merge import merge

    out, _ = llava_runs["projector"]
    merged = AutoModelForImageTextToText.from_pretrained(merge(out, tmp_path / "merged")).eval()
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    trained = load_file(str(out / "final" / "projector.safetensors"))
    base_state, merged_state = base.state_dict(), merged.state_dict()
    for name, value in merged_state.items():
        ref = trained[name] if name in trained else base_state[name]
        assert torch.equal(value, ref), name
    assert any(not torch.equal(trained[n], base_state[n]) for n in trained)
    batch = _probe_batch(tiny_llava, coco_build)
    assert not torch.allclose(_logits(merged, batch), _logits(base, batch), atol=1e-3)


def test_resume_continues_with_the_next_unseen_sample(tmp_path, coco_build, tiny_llava):
    shards = [str(coco_build.path)]
    common = dict(batch_size=3, shuffle_buffer=4, seed=5, log_keys=True, lora_dropout=0.1, log_every=1)
    straight, straight_losses = run(tmp_path / "a", shards, tiny_llava, "lora", 6, save_every=3, **common)
    first = tmp_path / "b"
    with pytest.raises(Killed):  # after checkpoint-000003 and step 4's log line, during step 5
        run(first, shards, tiny_llava, "lora", 6, save_every=3, kill_at=5, **common)
    with pytest.raises(UserError, match="--resume"):
        run(first, shards, tiny_llava, "lora", 6, save_every=3, **common)
    with pytest.raises(UserError, match="seed changed"):
        run(first, shards, tiny_llava, "lora", 6, save_every=3, resume=True, **{**common, "seed": 6})
    with pytest.raises(UserError, match="max_steps changed"):  # another schedule: not the same run
        run(first, shards, tiny_llava, "lora", 9, save_every=3, resume=True, **common)
    _, resumed_losses = run(first, shards, tiny_llava, "lora", 6, save_every=3, resume=True, **common)

    def keys(out):
        """The keys of each step's batch."""
        return [json.loads(line)["keys"] for line in (out / "keys.jsonl").read_text().splitlines()]

    # The logs read as one run: the lines of steps 4-5 from before the kill are gone, not there twice.
    logged = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in logged] == pytest.approx(straight_losses, rel=1e-4)
    assert [json.loads(line)["step"] for line in (first / "keys.jsonl").read_text().splitlines()] == list(range(6))

    # Steps 4-6 of the resumed run saw the same samples as steps 4-6 of the uninterrupted one, and none twice.
    assert keys(first) == keys(straight)
    assert keys(straight)[3:] != keys(straight)[:3]
    both = [k for batch in keys(first)[:3] + keys(first)[3:] for k in batch]
    assert sorted(k for batch in keys(straight) for k in batch) == sorted(both)
    assert resumed_losses == pytest.approx(straight_losses[3:], rel=1e-4)


def test_clip_modes_train_and_keep_the_best(tmp_path, label_build, tiny_clip):
    import torch
    from transformers import AutoModel

    out, losses = run(tmp_path / "classes", [str(label_build.path)], tiny_clip, "clip", 12, val_split="val",
                      batch_size=8, save_every=6, pad_to_square=False, lr=3e-3)
    assert mean(losses[-3:]) < 0.5 * mean(losses[:3]), losses
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "accuracy" and best["accuracy"] == 1.0 and best["samples"] == 9
    evals = [json.loads(line)["eval"] for line in (out / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    assert len(evals) == 2 and max(e["accuracy"] for e in evals) == best["accuracy"]
    export = json.loads((out / "final" / "vlmforge_export.json").read_text())
    assert export["classes"] == ["black", "red", "yellow"]
    # best/ reloaded scores the val split as recorded: it is the model that was evaluated
    from transformers import AutoProcessor

    from vlmforge.training.clip import ClipCollator, ClipObjective

    proc, model = AutoProcessor.from_pretrained(out / "best"), AutoModel.from_pretrained(out / "best").eval()
    val = ClipCollator(proc, export["classes"])(list(label_build.samples("val")))
    again = ClipObjective(proc, export["classes"]).evaluate(model, [val], "cpu")
    assert again == {"loss": pytest.approx(best["loss"], rel=1e-5), "accuracy": 1.0, "samples": 9}

    out2, losses2 = run(tmp_path / "contrastive", [str(label_build.path)], tiny_clip, "clip", 12, batch_size=8,
                        clip_objective="contrastive", freeze_text=True, pad_to_square=False, lr=3e-3)
    assert mean(losses2[-3:]) < 0.8 * mean(losses2[:3]), losses2
    before, after = AutoModel.from_pretrained(tiny_clip), AutoModel.from_pretrained(out2 / "final")
    text_same = all(torch.equal(a, b) for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters())
                    if n.startswith("text_"))
    vision_moved = any(not torch.equal(a, b) for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters())
                       if n.startswith("vision_"))
    assert text_same and vision_moved


def test_more_ranks_than_gpus_is_one_error_line(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: NCCL's 'Duplicate GPU detected' traceback in each rank."""
    import torch

    from vlmforge.training.trainer import _accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match=re.escape("2 processes on this machine and 1 GPU(s): start at most one process "
                                                  "per GPU (--nproc_per_node 1)")):
        _accelerator(TrainConfig(shards=["x"], model="m", out="o"))


def test_two_ranks_split_an_epoch_exactly(tmp_path, coco_build, tiny_llava):
    """A real 2-process run (torchrun, CPU ranks over gloo): one epoch, every sample on exactly one rank."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlmforge.cli",
           "train", "--shards", str(coco_build.path), "--model", str(tiny_llava), "--mode", "projector", "--out",
           str(out), "--max-steps", "3", "--batch-size", "2", "--workers", "0", "--max-length", "96", "--log-keys",
           "--val-shards", str(coco_build.path), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks on a GPU machine too
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    per_rank = [[k for line in (out / name).read_text().splitlines() for k in json.loads(line)["keys"]]
                for name in ("keys.jsonl", "keys-rank1.jsonl")]
    assert len(per_rank[0]) == len(per_rank[1]) == 6 and not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(s["__key__"] for s in coco_build.samples())
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["total_steps"] == 3
    evals = [json.loads(line)["eval"] for line in (out / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    # validation summed over both ranks: the answer tokens of all 12 samples, each once
    from transformers import AutoProcessor

    from vlmforge.training.collate import LlavaCollator

    labels = LlavaCollator(AutoProcessor.from_pretrained(tiny_llava), "chat", 96)(list(coco_build.samples()))["labels"]
    assert evals and evals[-1]["tokens"] == int((labels[:, 1:] != -100).sum())


def test_shards_with_nothing_to_train_are_an_error(tmp_path, loose_shards, tiny_llava):
    with pytest.raises(UserError, match="nothing to train"):  # the loose shards' conversations are empty
        run(tmp_path / "empty", [str(loose_shards[0])], tiny_llava, "full", 5)


def test_logged_lr_is_the_rate_each_step_used(tmp_path, coco_build, tiny_llava):
    """metrics.jsonl's lr is the rate the optimizer stepped with (not the next step's, after the scheduler)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    used: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    try:
        out, _ = run(tmp_path / "lr", [str(coco_build.path)], tiny_llava, "projector", 4, lr=0.01, scheduler="linear",
                     batch_size=2, grad_accum=2, log_every=1, max_length=96)
    finally:
        handle.remove()
    logged = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert used == pytest.approx([0.01, 0.0075, 0.005, 0.0025])  # one optimizer step per 2 micro-batches
    assert logged == pytest.approx(used)


def test_no_optimizer_step_spans_two_epochs(tmp_path, label_build, tiny_clip):
    """3 batches an epoch, --grad-accum 2: each epoch ends with a step of its last batch alone. Steps used
    to run on across the boundary, so --epochs 1 with more accumulation than batches trained two epochs."""
    out, _ = run(tmp_path / "ga", [str(label_build.path)], tiny_clip, "clip", None, epochs=2, batch_size=8,
                 grad_accum=2, log_keys=True, log_every=1, save_every=10, pad_to_square=False)
    lines = [json.loads(line) for line in (out / "keys.jsonl").read_text().splitlines()]
    per_step = [sum(1 for line in lines if line["step"] == s) for s in range(4)]
    assert per_step == [2, 1, 2, 1]  # micro-batches of steps 1-4 (before: 2, 2, 2 and a fourth from epoch 3)
    first_epoch = [k for line in lines if line["step"] < 2 for k in line["keys"]]
    assert len(first_epoch) == len(set(first_epoch)) == 24  # steps 1-2: the whole train split, once
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["epoch"], m["samples_seen"]) for m in metrics] == [(1, 0, 16), (2, 0, 24), (3, 1, 40), (4, 1, 48)]


def _ending_in_an_empty_batch(tmp_path: Path, label_build) -> tuple[list[str], int]:
    """Shards (the label build's 24 train images, then 8 samples with no image and no label) and a seed
    whose first epoch, in batches of 8 with no shuffle buffer, ends with the 8 label-less samples (and
    whose second epoch does not)."""
    import numpy as np

    from tests.training.conftest import write_tar

    from vlmforge.training.data import ShardStream, resolve_shards

    loose = write_tar(tmp_path / "nolabel.tar", [f"n{i}" for i in range(8)])
    shards = [str(label_build.path), str(loose)]
    refs = resolve_shards(shards)
    loose_ids = set(range(sum(r.samples for r in refs) - 8, sum(r.samples for r in refs)))

    def last_batch(seed: int, epoch: int) -> set[int]:
        return set(ShardStream(refs, 8, seed=seed, shuffle_buffer=1).epoch_order(epoch)[np.arange(24, 32)].tolist())

    return shards, next(s for s in range(100) if last_batch(s, 0) == loose_ids and last_batch(s, 1) != loose_ids)


def test_an_epoch_ending_in_batches_without_samples_still_ends_its_step(tmp_path, label_build, tiny_clip):
    """3 image batches then one whose samples all drop (no image, no label), --grad-accum 2: the third batch
    is a step of its own. The empty last batch used to carry its accumulation into the next epoch's first step."""
    shards, seed = _ending_in_an_empty_batch(tmp_path, label_build)
    out, _ = run(tmp_path / "ga", shards, tiny_clip, "clip", None, epochs=2, batch_size=8, grad_accum=2, seed=seed,
                 shuffle_buffer=1, log_keys=True, log_every=1, save_every=10, pad_to_square=False)
    lines = [json.loads(line) for line in (out / "keys.jsonl").read_text().splitlines()]
    assert [sum(1 for line in lines if line["step"] == s) for s in range(2)] == [2, 1]
    first_epoch = [k for line in lines if line["step"] < 2 for k in line["keys"]]
    assert len(first_epoch) == len(set(first_epoch)) == 24  # steps 1-2: the image samples of epoch 0, once
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["samples_seen"], m["dropped"]) for m in metrics[:2]] == [(0, 16, 0), (0, 24, 0)]
    assert metrics[-1]["dropped"] == 16 and metrics[-1]["samples_seen"] == 64  # two epochs of 32


def test_resume_before_an_epochs_empty_last_batch(tmp_path, label_build, tiny_clip):
    """A checkpoint after the epoch's last batch with samples, then only batches without: the resumed run
    read nothing to train in what was left of the epoch and stopped ("a whole epoch had nothing to train")."""
    shards, seed = _ending_in_an_empty_batch(tmp_path, label_build)
    opts = dict(epochs=2, batch_size=8, seed=seed, shuffle_buffer=1, save_every=3, pad_to_square=False)
    with pytest.raises(Killed):  # after checkpoint-000003, the last step of epoch 0
        run(tmp_path / "r", shards, tiny_clip, "clip", None, kill_at=4, **opts)
    out, losses = run(tmp_path / "r", shards, tiny_clip, "clip", None, resume=True, **opts)
    assert len(losses) == 3 and [c.name for c in checkpoints(out)][-1] == "checkpoint-000006"


def test_clip_training_leaves_out_images_that_do_not_decode(tmp_path, label_build, tiny_clip, capsys):
    """A sample whose image is not an image stopped the run with PIL's traceback."""
    import webdataset as wds

    first = next(iter(label_build.samples()))
    with wds.TarWriter(str(tmp_path / "mixed.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"k{i}", "png": b"not an image" if i == 3 else first["png"],
                        "json": {"label": first["json"]["label"]}})
    out, _ = run(tmp_path / "run", [str(tmp_path / "mixed.tar")], tiny_clip, "clip", 3, batch_size=2, shuffle_buffer=1,
                 log_keys=True, log_every=1, pad_to_square=False, quiet=False)
    trained = [k for line in (out / "keys.jsonl").read_text().splitlines() for k in json.loads(line)["keys"]]
    assert sorted(trained) == ["k0", "k1", "k2", "k4", "k5"]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["dropped"] == 1
    assert "left out 1 sample(s) whose image does not decode: k3" in capsys.readouterr().err


def test_images_made_for_another_size_are_reported_once(tmp_path, label_build, tiny_clip, capsys):
    """A model-ready build for another processor: each data loader worker printed a raw UserWarning."""
    import vlmforge

    other = vlmforge.build("model-ready", "build", out=tmp_path / "ready", size=48, quiet=True,
                           source_options={"path": str(label_build.path)})
    run(tmp_path / "run", [str(other.path)], tiny_clip, "clip", 4, batch_size=2, workers=2, pad_to_square=False, quiet=False)
    err = capsys.readouterr().err
    assert "UserWarning" not in err
    assert " ".join(err.split()).count("images were made model-ready with 'pad=") == 1, err
    assert "resize=48" in err


def test_lora_load_prints_no_library_deprecation_warning(tiny_llava, tmp_path):
    """peft's own question to transformers printed a FutureWarning on every LoRA train, merge and eval."""
    import warnings

    from vlmforge.training.llava import configure, export, load_llava
    from vlmforge.training.merge import merge_lora

    model, processor = load_llava(str(tiny_llava))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lora = configure(model, "lora")
        export(lora, processor, "lora", str(tiny_llava), tmp_path / "final")
        merge_lora(load_llava(str(tiny_llava))[0], tmp_path / "final")
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_clip_prompts_longer_than_the_text_encoder_are_cut(tmp_path, label_build, tiny_clip):
    """The tiny CLIP reads 64 text positions; a longer prompt failed inside the model (train and eval)."""
    from tests.evaluation.conftest import make_build, mcqa_doc

    from vlmforge.evaluation.items import ReadOptions
    from vlmforge.evaluation.run import evaluate
    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.evaluation.tasks import get_task

    tail = " with a man riding horse next to red car on street" * 7  # 70 tokens and more
    run(tmp_path / "run", [str(label_build.path)], tiny_clip, "clip", 1, batch_size=4, prompt="a {label}" + tail,
        pad_to_square=False)
    with pytest.raises(UserError, match="tokenize identically .*cut at 64 tokens"):  # the labels fall past the cut
        run(tmp_path / "late", [str(label_build.path)], tiny_clip, "clip", 1, prompt=tail + " {label}",
            pad_to_square=False)
    build = make_build(tmp_path / "b", [mcqa_doc("cat", ["cat", "dog", "bird", "horse"])])
    task = get_task("mcqa")
    s = evaluate(task, task.read([build], ReadOptions()), LocalRunner(str(tiny_clip)), tmp_path / "ev",
                 class_template="{}" + tail, quiet=True, plots=False)
    assert s["counts"]["items"] == 1 and s["counts"]["ties"] == 0  # the options come before the cut: told apart
    s = evaluate(task, task.read([build], ReadOptions()), LocalRunner(str(tiny_clip)), tmp_path / "ev2",
                 class_template=tail + " {}", quiet=True, plots=False)
    assert s["counts"]["ties"] == 1  # every option cut away: one text, a tie


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path, coco_build, tiny_llava, capsys):
    run(tmp_path / "fresh", [str(coco_build.path)], tiny_llava, "projector", 1, resume=True, quiet=False, max_length=96)
    assert "holds no checkpoint yet: --resume starts the run from its first step" in capsys.readouterr().err
    run(tmp_path / "fresh", [str(coco_build.path)], tiny_llava, "projector", 1, resume=True, quiet=False, max_length=96)
    assert "no checkpoint" not in capsys.readouterr().err  # it has one now


def test_clip_prompt_with_other_braces(tiny_clip):
    """str.format made any other brace in --prompt a KeyError traceback."""
    from transformers import AutoProcessor

    from vlmforge.training.clip import ClipObjective

    proc = AutoProcessor.from_pretrained(tiny_clip)
    obj = ClipObjective(proc, ["cat", "dog"], prompt="a {label} {x}")
    ids = obj.texts["input_ids"][0][obj.texts["attention_mask"][0].bool()]
    assert proc.tokenizer.convert_ids_to_tokens(ids.tolist())[1:3] == ["a", "cat"] and len(ids) == 7  # + "{ x }"
    with pytest.raises(UserError, match="must contain \\{label\\}"):
        ClipObjective(proc, ["cat", "dog"], prompt="a photo")


def _renamed_images(path: Path, samples: list[dict], renamed: int) -> Path:
    """A tar of `samples` whose first `renamed` hold their image as 'image.jpg', a member no image field reads."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for i, s in enumerate(samples):
            image = s.get("jpg", s.get("png"))
            sink.write({"__key__": f"k{i}", "image.jpg" if i < renamed else "jpg": image, "json": s["json"]})
    return path


def test_samples_showing_an_image_they_do_not_hold_are_left_out(tmp_path, coco_build, tiny_llava, capsys):
    """Shards whose images sit under another member name trained the model on the text alone, <image>
    removed, without a word."""
    samples = list(coco_build.samples())[:6]
    tar = _renamed_images(tmp_path / "some.tar", samples, 2)
    out, _ = run(tmp_path / "some", [str(tar)], tiny_llava, "lora", 2, batch_size=3, shuffle_buffer=1, log_keys=True,
                 log_every=1, max_length=256, quiet=False)
    trained = [k for line in (out / "keys.jsonl").read_text().splitlines() for k in json.loads(line)["keys"]]
    assert sorted(trained) == ["k2", "k3", "k4", "k5"]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["dropped"] == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("left out k0 (members: image.jpg, json): it has no image member") == 1, err
    with pytest.raises(UserError, match=r"nothing to train.*6 sample\(s\) have no image member .* e\.g\. k0"):
        run(tmp_path / "none", [str(_renamed_images(tmp_path / "all.tar", samples, 6))], tiny_llava, "lora", 2,
            batch_size=3, shuffle_buffer=1, max_length=256)


def test_clip_on_shards_without_an_image_field_names_the_cause(tmp_path, label_build, tiny_clip):
    """It said no sample had an assistant turn left after truncation, a LLaVA reason, in CLIP mode."""
    tar = _renamed_images(tmp_path / "all.tar", list(label_build.samples("train"))[:4], 4)
    with pytest.raises(UserError, match=r"nothing to train: no sample has both an image .*\(4 sample\(s\) have no image"):
        run(tmp_path / "clip", [str(tar)], tiny_clip, "clip", 2, batch_size=2, pad_to_square=False)


@pytest.mark.parametrize("weights", [{0: [1, 1], 1: [1, 1, 1]}, {0: [6, 220], 1: [40, 3, 90]}])
def test_a_short_step_on_several_processes_is_the_mean_over_all_their_micro_batches(weights):
    """With two processes, one of which held a micro-batch fewer (a batch that kept no sample), each
    scaled by its own count: the processes' weights then drift apart. The count (or, by tokens, the
    tokens) is summed over them, so every process scales the averaged gradient alike, to the weighted
    mean over every micro-batch of the step."""
    import torch

    from vlmforge.training.trainer import _step_factor

    grad_accum = 4
    grads = {0: [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])],  # rank 0 held 2 micro-batches
             1: [torch.tensor([0.5, 0.5]), torch.tensor([2.0, 2.0]), torch.tensor([-1.0, 4.0])]}  # rank 1 held 3
    held = {r: sum(weights[r]) for r in grads}

    class TwoRanks:  # accelerate's reduce(..., "sum") over both processes
        device = "cpu"

        def __init__(self, rank):
            self.rank = rank

        def reduce(self, t, reduction):
            assert reduction == "sum"
            return t + held[1 - self.rank]

    # what DDP leaves on every process: the mean over processes of each one's sum of weight * grad / grad_accum
    summed = {r: sum(w * g for w, g in zip(weights[r], grads[r])) for r in grads}
    averaged = sum(summed[r] / grad_accum for r in grads) / 2
    want = (summed[0] + summed[1]) / (held[0] + held[1])
    factors = {r: _step_factor(TwoRanks(r), grad_accum, held[r], 2) for r in grads}
    assert factors[0] == factors[1]
    assert torch.allclose(averaged * factors[0], want)
    assert _step_factor(None, grad_accum, 3, 1) == pytest.approx(4 / 3)  # one process: its own count


def test_a_short_last_step_has_the_gradient_of_its_micro_batches(tmp_path, label_build, tiny_clip):
    """24 samples in batches of 8 with --grad-accum 2 make steps of 2 micro-batches and 1: the second
    step's gradient was half that of the same 8 samples as one batch (every loss divided by 2)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def grad_norms(name: str, batch_size: int, grad_accum: int) -> list[float]:
        norms: list[float] = []

        def hook(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        handle = register_optimizer_step_pre_hook(hook)
        try:
            run(tmp_path / name, [str(label_build.path)], tiny_clip, "clip", None, epochs=1, batch_size=batch_size,
                grad_accum=grad_accum, lr=1e-9, max_grad_norm=0.0, shuffle_buffer=1, pad_to_square=False, save_every=10)
        finally:
            handle.remove()
        return norms

    accumulated, whole = grad_norms("ga", 8, 2), grad_norms("one", 16, 1)
    assert len(accumulated) == len(whole) == 2
    assert accumulated == pytest.approx(whole, rel=1e-3)


def test_resume_on_changed_data_is_refused(tmp_path, label_build, tiny_clip, monkeypatch):
    """Shards rewritten under the same path after a kill: the checkpoint's position counted samples of the
    old data, and the resumed run went on at another sample of the new order."""
    import webdataset as wds

    def write(n: int) -> Path:
        with wds.TarWriter(str(tmp_path / "data.tar")) as sink:
            for i, s in zip(range(n), label_build.samples("train")):
                sink.write({"__key__": f"k{i}", "png": s["png"], "json": s["json"]})
        return tmp_path / "data.tar"

    opts = dict(batch_size=2, save_every=1, pad_to_square=False)
    with pytest.raises(Killed):
        run(tmp_path / "r", [str(write(8))], tiny_clip, "clip", 4, kill_at=2, **opts)
    write(10)
    from vlmforge.training import trainer

    with monkeypatch.context() as m:  # refused before the model loads (minutes, for a 7B model)
        m.setattr(trainer, "ClipTask", lambda *a, **k: pytest.fail("the model loaded before the data was checked"))
        with pytest.raises(UserError, match=r"training data changed since the run started \(8 samples, now 10\)"):
            run(tmp_path / "r", [str(tmp_path / "data.tar")], tiny_clip, "clip", 4, resume=True, **opts)
    write(8)
    _, losses = run(tmp_path / "r", [str(tmp_path / "data.tar")], tiny_clip, "clip", 4, resume=True, **opts)
    assert len(losses) == 3  # steps 2-4, after checkpoint-000001


def _short_and_long(path: Path, coco_build) -> list[dict]:
    """A tar of two samples whose answers differ many-fold in tokens, a short one then a long one; returns them."""
    import webdataset as wds

    a, b = list(coco_build.samples())[:2]
    long_answer = " ".join(["a person is riding a horse along the beach near the water"] * 12)
    samples = [{"__key__": key, "jpg": s["jpg"],
                "json": {**s["json"], "conversations": [s["json"]["conversations"][0], {"from": "gpt", "value": answer}]}}
               for key, s, answer in (("short", a, "a dog."), ("long", b, long_answer))]
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return samples


def _step_grads(tmp_path: Path, name: str, shards: list[str], model: Path, steps: int, **kw):
    """The gradient each optimizer step applied (after clipping) and each step's logged loss."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    grads: list = []

    def hook(opt, args, kwargs):
        grads.append(torch.cat([p.grad.flatten().clone() for g in opt.param_groups for p in g["params"]
                                if p.grad is not None]))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        out, _ = run(tmp_path / name, shards, model, "lora", steps, shuffle_buffer=1, lr=1e-9, log_every=1,
                     max_length=256, **kw)
    finally:
        handle.remove()
    logged = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return grads, logged


def test_grad_accum_weighs_micro_batches_by_their_tokens(tmp_path, coco_build, tiny_llava):
    """--grad-accum 2 over a 6-token and a 180-token micro-batch made each weigh half: not the step that
    one batch of both makes. By tokens (the default) it is that step, its loss the token-weighted mean."""
    import torch
    from transformers import AutoProcessor

    from vlmforge.training.collate import LlavaCollator

    samples = _short_and_long(tmp_path / "two.tar", coco_build)
    shards = [str(tmp_path / "two.tar")]
    collate = LlavaCollator(AutoProcessor.from_pretrained(tiny_llava), "chat", 256)
    tokens = [int((collate([s])["labels"][:, 1:] != -100).sum()) for s in samples]
    assert tokens[1] > 20 * tokens[0], tokens
    # each sample alone, at the same (initial) weights: lr 1e-9 leaves them as they were
    (g_short, g_long), (l_short, l_long) = _step_grads(tmp_path, "alone", shards, tiny_llava, 2, batch_size=1,
                                                       max_grad_norm=0.0)
    (whole,), (whole_loss,) = _step_grads(tmp_path, "whole", shards, tiny_llava, 1, batch_size=2, max_grad_norm=0.0)
    weighted = (tokens[0] * g_short + tokens[1] * g_long) / sum(tokens)
    assert torch.allclose(whole, weighted, rtol=1e-3, atol=1e-7)
    assert whole_loss == pytest.approx((tokens[0] * l_short + tokens[1] * l_long) / sum(tokens), rel=1e-4)

    (acc,), (acc_loss,) = _step_grads(tmp_path, "tokens", shards, tiny_llava, 1, batch_size=1, grad_accum=2,
                                      max_grad_norm=0.0)
    assert torch.allclose(acc, whole, rtol=1e-3, atol=1e-7), float((acc - whole).norm() / whole.norm())
    assert acc_loss == pytest.approx(whole_loss, rel=1e-4)

    # batches: the old step, the plain mean of the two
    (old,), (old_loss,) = _step_grads(tmp_path, "batches", shards, tiny_llava, 1, batch_size=1, grad_accum=2,
                                      max_grad_norm=0.0, loss_weighting="batches")
    assert torch.allclose(old, (g_short + g_long) / 2, rtol=1e-3, atol=1e-7)
    assert not torch.allclose(old, whole, rtol=0.05)
    assert old_loss == pytest.approx((l_short + l_long) / 2, rel=1e-4)
    assert json.loads((tmp_path / "batches" / "run.json").read_text())["config"]["loss_weighting"] == "batches"
    assert json.loads((tmp_path / "tokens" / "run.json").read_text())["config"]["loss_weighting"] == "tokens"

    # clipping comes after the rescale: it clips the step's gradient, as it does one batch's
    norm = float(whole.norm())
    (clipped_whole,), _ = _step_grads(tmp_path, "clip-whole", shards, tiny_llava, 1, batch_size=2,
                                      max_grad_norm=norm / 4)
    (clipped_acc,), _ = _step_grads(tmp_path, "clip-acc", shards, tiny_llava, 1, batch_size=1, grad_accum=2,
                                    max_grad_norm=norm / 4)
    assert float(clipped_whole.norm()) == pytest.approx(norm / 4, rel=1e-3)
    assert torch.allclose(clipped_acc, clipped_whole, rtol=1e-3, atol=1e-7)


def test_weighted_losses_keep_about_their_own_size(tmp_path, coco_build, tiny_llava, monkeypatch):
    """Backward took each loss times its tokens (220 here): gradients hundreds of times their size, which
    fp16's loss scaler meets with skipped steps. From the second step the weights are in the unit of the
    step before (its mean tokens a micro-batch), so a loss goes in at about its size, its step still exact."""
    from accelerate import Accelerator

    losses, backward = [], Accelerator.backward
    monkeypatch.setattr(Accelerator, "backward", lambda self, loss, **kw: (losses.append(float(loss)),
                                                                          backward(self, loss, **kw))[1])
    _short_and_long(tmp_path / "two.tar", coco_build)
    _, logged = run(tmp_path / "run", [str(tmp_path / "two.tar")], tiny_llava, "lora", 3, batch_size=1, grad_accum=2,
                    shuffle_buffer=1, max_length=256, log_every=1)
    assert len(losses) == 6
    assert max(losses[2:]) < 3 * max(logged) and max(losses[:2]) > 20 * max(logged), (losses, logged)


def test_resume_keeps_or_refuses_the_loss_weighting(tmp_path):
    """A resumed run weighs micro-batches as it started: not given, its own way (batches for a run from
    before --loss-weighting); given otherwise, refused like any other schedule setting."""
    from dataclasses import asdict, replace

    from vlmforge.training.trainer import _open_run

    out = tmp_path / "run"

    def opened(before: str | None, given: str | None, deepspeed: str | None = None) -> str:
        out.mkdir(exist_ok=True)
        (out / "run.json").unlink(missing_ok=True)
        cfg = TrainConfig(shards=["x.tar"], model="m", out=str(out), loss_weighting=given, deepspeed=deepspeed)
        if before != "none":
            config = asdict(replace(cfg, loss_weighting=before, resume=False))
            if before is None:
                del config["loss_weighting"]  # a run.json from before the option
            (out / "run.json").write_text(json.dumps({"config": config}))
        return _open_run(replace(cfg, resume=True))[0].loss_weighting

    assert opened("none", None) == "tokens"
    assert opened("none", None, deepspeed="ds.json") == "batches"
    assert opened(None, None) == "batches"
    assert opened("tokens", None) == "tokens"
    assert opened("batches", "batches") == "batches"
    for before, given in ((None, "tokens"), ("tokens", "batches"), ("batches", "tokens")):
        with pytest.raises(UserError, match=f"loss_weighting changed since the run started .*'{given}'"):
            opened(before, given)
