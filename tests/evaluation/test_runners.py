"""The local runner with tiny random models: generation, loss scoring, CLIP zero-shot, resume, CLI."""

from __future__ import annotations

import json

import pytest

from vlmforge.errors import UserError
from vlmforge.evaluation.items import EvalItem, ReadOptions
from vlmforge.evaluation.predictions import PREDICTIONS
from vlmforge.evaluation.run import evaluate
from vlmforge.evaluation.tasks import get_task

from tests.evaluation.conftest import tiny_png


def test_generate_on_mcqa_build_writes_report(mcqa_build, llava_runner, tmp_path):
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    s = evaluate(task, ds, llava_runner, tmp_path, quiet=True)
    lines = [json.loads(x) for x in (tmp_path / PREDICTIONS).read_text().splitlines()]
    assert [r["id"] for r in lines] == [it.id for it in ds.items]
    # Independent check for the first item: transformers' own greedy generate on the chat prompt, unbatched.
    import io

    import torch
    from PIL import Image

    from vlmforge.evaluation.parsers import parse_letter

    proc, item = llava_runner.processor, ds.items[0]
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.prompt}]}],
                                      add_generation_prompt=True, tokenize=False)
    alone = proc(text=[prompt], images=[Image.open(io.BytesIO(item.image)).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        ids = llava_runner.model.generate(**alone, max_new_tokens=4, do_sample=False)[0, alone["input_ids"].shape[1]:]
    assert lines[0]["prediction"] == proc.decode(ids, skip_special_tokens=True).strip()
    # Each answer is parsed as the parser reads it, and the counts and accuracy follow from those.
    parsed = [parse_letter(r["prediction"], 4, r["options"]) for r in lines]
    assert [r["parsed"] for r in lines] == [p.value for p in parsed]
    statuses = [p.status for p in parsed]
    assert s["model"] == llava_runner.name and s["scoring"] == "generate" and s["data_build_id"] == ds.build_id
    assert s["counts"]["items"] == 6 and s["counts"]["parsed"] == statuses.count("ok")
    assert (s["counts"]["unparsed"], s["counts"]["multiple"]) == (statuses.count("unparsed"), statuses.count("multiple"))
    assert s["parse_failures"]["count"] == 6 - statuses.count("ok")
    assert s["metrics"]["accuracy"] == pytest.approx(sum(p.value == it.answer for p, it in zip(parsed, ds.items)) / 6)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["metrics"]["accuracy"] == s["metrics"]["accuracy"]
    assert {"per_class_accuracy.png", "confusion_matrix.png"} <= set(saved["plots"])
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # The same folder with another scoring is refused rather than mixed into one file.
    with pytest.raises(UserError, match="another run"):
        evaluate(task, ds, llava_runner, tmp_path, scoring="loss", quiet=True)


def _own_loss(runner, prompt: str, target: str, image: bytes) -> float:
    """transformers' own mean cross-entropy of `target` after `prompt`, the prompt's tokens masked (up to the
    first token where prompt and prompt + target tokenize differently: a merge across the boundary)."""
    import io

    import torch
    from PIL import Image

    pil = Image.open(io.BytesIO(image)).convert("RGB")
    short = runner.processor(text=[prompt], images=[pil], return_tensors="pt")["input_ids"][0].tolist()
    full = runner.processor(text=[prompt + target], images=[pil], return_tensors="pt")
    same = next((i for i, (a, b) in enumerate(zip(short, full["input_ids"][0].tolist())) if a != b), len(short))
    labels = full["input_ids"].clone()
    labels[:, :same] = -100
    with torch.no_grad():
        return runner.model(**full, labels=labels).loss.item()


def test_loss_scoring_matches_the_models_own_loss(mcqa_build, llava_runner):
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    items = ds.items[:2]
    losses = llava_runner.option_losses(items)
    assert [len(x) for x in losses] == [4, 4]
    # Independent check: transformers' own mean cross-entropy with the prompt masked out.
    item = items[1]
    prompt = llava_runner.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.prompt}]}],
        add_generation_prompt=True, tokenize=False)
    for j, option in enumerate(item.options):
        assert losses[1][j] == pytest.approx(_own_loss(llava_runner, prompt, option, item.image), rel=1e-4, abs=1e-5)
    # Batch composition does not change the numbers (padding is masked).
    llava_runner.batch_size = 1
    try:
        assert llava_runner.option_losses(items[1:2])[0] == pytest.approx(losses[1], rel=1e-4)
    finally:
        llava_runner.batch_size = 3
    recs = [task.make_record(it, scores=s, scoring="loss") for it, s in zip(items, losses)]
    for rec, s in zip(recs, losses):
        assert rec["parsed"] == min(range(4), key=lambda i: s[i])
        assert rec["prediction"] == rec["options"][rec["parsed"]]


def test_clip_zero_shot_on_graded_folder(tiny_clip, tmp_path):
    import torch
    from PIL import Image
    import io

    from vlmforge.evaluation.runners import LocalRunner

    root = tmp_path / "knee"
    for n, g in enumerate([0, 1, 2, 3, 4, 1, 3]):
        (root / str(g)).mkdir(parents=True, exist_ok=True)
        (root / str(g) / f"{n}.png").write_bytes(tiny_png(n, size=40))
    task = get_task("grading")
    ds = task.read([root], ReadOptions())
    runner = LocalRunner(str(tiny_clip), batch_size=4)
    s = evaluate(task, ds, runner, tmp_path / "out", quiet=True)
    assert s["scoring"] == "clip"
    recs = [json.loads(x) for x in (tmp_path / "out" / PREDICTIONS).read_text().splitlines()]
    for r in recs:
        assert len(r["scores"]) == 5 and sum(r["scores"]) == pytest.approx(1.0, abs=1e-4)
    # Independent check for one item: CLIPModel's own logits_per_image over the five grade prompts.
    prompts = task.class_prompts(ds.items[0], None)
    image = Image.open(io.BytesIO(ds.items[0].image_bytes())).convert("RGB")
    with torch.no_grad():
        out = runner.model(**runner.processor(text=prompts, images=[image], return_tensors="pt", padding=True))
    assert recs[0]["scores"] == pytest.approx(torch.softmax(out.logits_per_image[0], -1).tolist(), abs=1e-5)
    # The AUCs are those of the recorded probabilities (scikit-learn as the second opinion): KL 2-4 against
    # 0-1 on p(grade >= 2), and each grade against the rest.
    from sklearn.metrics import roc_auc_score

    m, gold = s["metrics"], [r["answer"] for r in recs]
    assert gold == [0, 1, 1, 2, 3, 3, 4]
    assert m["auc_binary"] == pytest.approx(roc_auc_score([g >= 2 for g in gold], [sum(r["scores"][2:]) for r in recs]))
    assert m["by_grade_auc"] == {str(g): {"auc": pytest.approx(roc_auc_score([x == g for x in gold],
                                                                             [r["scores"][g] for r in recs]))}
                                 for g in range(5)}
    with pytest.raises(UserError, match="cannot do --scoring generate"):
        evaluate(task, ds, runner, tmp_path / "other", scoring="generate", quiet=True)
    # a task CLIP cannot score, with no --scoring given: said so about the model, not about an option not given
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text(json.dumps({"question_id": 1, "image": "1.png", "text": "Is there a dog?", "label": "yes"}) + "\n")
    (tmp_path / "1.png").write_bytes(tiny_png(1))
    with pytest.raises(UserError, match=r"model .* can only do --scoring clip, which task pope does not support "
                                        r"\(it supports generate, loss\): give a vision-language model"):
        evaluate(get_task("pope"), get_task("pope").read([pope], ReadOptions()), runner, tmp_path / "p", quiet=True)


class _Interrupting:
    """Wraps a runner: counts items asked, and raises KeyboardInterrupt after `stop_after` batches."""

    def __init__(self, runner, stop_after: int | None = None):
        self.runner, self.stop_after, self.batches, self.asked = runner, stop_after, 0, []
        self.name, self.backend, self.batch_size = runner.name, runner.backend, runner.batch_size
        self.scorings, self.default_scoring = runner.scorings, runner.default_scoring

    def generate(self, items):
        if self.stop_after is not None and self.batches == self.stop_after:
            raise KeyboardInterrupt
        self.batches += 1
        self.asked += [it.id for it in items]
        return self.runner.generate(items)


def test_interrupted_run_resumes_without_repeating_items(mcqa_build, llava_runner, tmp_path):
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    ids = [it.id for it in ds.items]
    full = evaluate(task, ds, llava_runner, tmp_path / "whole", quiet=True, plots=False)

    first = _Interrupting(llava_runner, stop_after=1)  # batch size 3: one batch, then the "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        evaluate(task, ds, first, tmp_path / "run", quiet=True, plots=False)
    pred = tmp_path / "run" / PREDICTIONS
    assert [json.loads(x)["id"] for x in pred.read_text().splitlines()] == ids[:3]
    with open(pred, "a") as f:
        f.write('{"id": "' + ids[3] + '", "predic')  # a write torn by the crash

    second = _Interrupting(llava_runner)
    resumed = evaluate(task, ds, second, tmp_path / "run", quiet=True, plots=False)
    assert second.asked == ids[3:]  # finished items are not asked again; the torn one is
    assert [json.loads(x)["id"] for x in pred.read_text().splitlines()] == ids
    whole = (tmp_path / "whole" / PREDICTIONS).read_text()
    assert pred.read_text() == whole  # greedy decoding: the same predictions as an uninterrupted run
    assert resumed["metrics"] == full["metrics"]


def test_overwrite_removes_the_old_report(mcqa_build, llava_runner, tmp_path):
    """--overwrite stopped before its report left the old run's summary.json and plots beside its predictions."""
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    old = evaluate(task, ds, llava_runner, tmp_path / "o", quiet=True)
    assert (tmp_path / "o" / "summary.json").exists() and old["plots"]
    with pytest.raises(KeyboardInterrupt):
        evaluate(task, ds, _Interrupting(llava_runner, stop_after=1), tmp_path / "o", quiet=True, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [PREDICTIONS, "run.json"]


def test_scoring_a_stopped_runs_predictions_says_so(mcqa_build, llava_runner, tmp_path, capsys):
    """`eval score` of an interrupted run's predictions.jsonl scored the answered part as the whole run."""
    from vlmforge.evaluation.run import score_predictions

    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    with pytest.raises(KeyboardInterrupt):
        evaluate(task, ds, _Interrupting(llava_runner, stop_after=1), tmp_path / "o", quiet=True)
    capsys.readouterr()
    s = score_predictions(task, tmp_path / "o" / PREDICTIONS, [], ReadOptions(), tmp_path / "s", plots=False)
    assert s["counts"]["items"] == 3 and s["counts"]["items_without_prediction"] == 3
    assert "answers 3 of the 6 items its run asks: the run stopped" in " ".join(capsys.readouterr().err.split())
    evaluate(task, ds, llava_runner, tmp_path / "o", quiet=True, plots=False)  # finished: no warning
    s = score_predictions(task, tmp_path / "o" / PREDICTIONS, [], ReadOptions(), tmp_path / "s", plots=False)
    assert "items_without_prediction" not in s["counts"] and "run stopped" not in capsys.readouterr().err


def test_resume_on_changed_data_is_refused(llava_runner, tmp_path):
    """A label corrected between a run and its resume: the kept prediction was scored against the old label."""
    pope = tmp_path / "coco_pope_random.json"
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(tiny_png(i))

    def write(labels):
        pope.write_text("".join(json.dumps({"question_id": i, "image": f"img{i}.png", "text": "Is there a dog?",
                                            "label": lab}) + "\n" for i, lab in enumerate(labels)))
        return task.read([pope], ReadOptions())

    task = get_task("pope")
    evaluate(task, write(["yes", "no", "yes"]), llava_runner, tmp_path / "o", quiet=True, plots=False)
    ds = write(["yes", "yes", "yes"])
    with pytest.raises(UserError, match=r"data changed since .* item 1 has answer 'yes'.*made for answer 'no'"):
        evaluate(task, ds, llava_runner, tmp_path / "o", quiet=True, plots=False)
    s = evaluate(task, ds, llava_runner, tmp_path / "o", quiet=True, plots=False, overwrite=True)
    assert s["metrics"]["tp"] + s["metrics"]["fn"] == 3  # every gold answer is the new one


def test_a_damaged_line_before_the_end_is_not_cut_off(tmp_path):
    """Only a torn last line is trimmed: a bad line in the middle cut the file there, dropping the predictions after it.
    A damaged run.json is one error line."""
    from vlmforge.evaluation.predictions import PredictionLog

    path = tmp_path / PREDICTIONS
    good = '{"id": "a", "prediction": "A"}\n'
    path.write_text(good + "<<<<<<< merged\n" + '{"id": "b", "prediction": "B"}\n')
    with pytest.raises(UserError, match=r"line 2 is not a prediction record; remove that line to resume"):
        PredictionLog(path).load()
    assert path.read_text().endswith('"B"}\n')  # nothing was cut
    path.write_text(good + '{"no_id": 1}\n' + good)  # was KeyError: 'id'
    with pytest.raises(UserError, match="line 2 is not a prediction record"):
        PredictionLog(path).load()
    path.write_text(good + '{"id": "b", "pred')
    assert list(PredictionLog(path).load()) == ["a"] and path.read_text() == good
    from vlmforge.evaluation.predictions import RUN_FILE, check_run

    (tmp_path / RUN_FILE).write_text('{"task": "mc')  # was a JSONDecodeError traceback
    with pytest.raises(UserError, match="run.json is damaged.*pass --overwrite"):
        check_run(tmp_path, {"task": "mcqa"}, overwrite=False)
    check_run(tmp_path, {"task": "mcqa"}, overwrite=True, items=2)
    assert json.loads((tmp_path / RUN_FILE).read_text()) == {"task": "mcqa", "items": 2}


def test_cli_eval_and_score(mcqa_build, tiny_llava, tmp_path):
    from typer.testing import CliRunner

    from vlmforge.cli import app

    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(mcqa_build), "--model", str(tiny_llava),
                                   "--scoring", "loss", "--limit", "4", "--batch-size", "8", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    again = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(mcqa_build), "--model", str(tiny_llava),
                                     "--scoring", "loss", "--limit", "4", "--out", str(out), "--system", "Be brief.", "-q"])
    assert isinstance(again.exception, UserError) and "differs in system" in str(again.exception)
    assert summary["scoring"] == "loss" and summary["counts"]["items"] == 4 and summary["counts"]["unparsed"] == 0
    assert summary["split"] == "test"  # the split read is on record
    res = CliRunner().invoke(app, ["eval", "score", "--task", "mcqa", "--predictions", str(out / PREDICTIONS),
                                   "--out", str(tmp_path / "rescored"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "macro_accuracy" in res.output  # the Markdown table
    rescored = json.loads((tmp_path / "rescored" / "summary.json").read_text())
    assert rescored["metrics"] == summary["metrics"]


def test_refuses_before_any_model_call(llava_runner, tmp_path):
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text(json.dumps({"question_id": 1, "image": "missing.jpg", "text": "Is there a dog?", "label": "yes"}) + "\n")
    task = get_task("pope")
    ds = task.read([pope], ReadOptions(image_root=tmp_path))
    with pytest.raises(UserError, match="1 of 1 images are missing"):
        evaluate(task, ds, llava_runner, tmp_path / "out", quiet=True)
    with pytest.raises(UserError, match="does not support --scoring clip"):
        evaluate(task, ds, llava_runner, tmp_path / "out", scoring="clip", quiet=True)
    assert not (tmp_path / "out" / PREDICTIONS).exists()


def test_out_that_is_a_file_or_a_build_is_refused(mcqa_build, llava_runner, tmp_path):
    """--out naming a file was a FileExistsError traceback; naming a build put predictions among its shards."""
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    before = sorted(p.name for p in mcqa_build.iterdir())
    for out, message in ((mcqa_build / "build.json", "is a file"), (mcqa_build, "is a build folder"),
                         (mcqa_build / "build.json" / "ev", "cannot make the output folder")):
        with pytest.raises(UserError, match=message):
            evaluate(task, ds, llava_runner, out, quiet=True, plots=False)
    assert sorted(p.name for p in mcqa_build.iterdir()) == before


@pytest.mark.parametrize("scoring", ["generate", "loss"])
def test_an_image_that_does_not_decode_is_named(llava_runner, tmp_path, scoring):
    """A corrupt or cut-off image file was PIL's traceback in the middle of the run."""
    (tmp_path / "good.png").write_bytes(tiny_png(1))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "cut.png").write_bytes(tiny_png(2)[:40])
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text("".join(json.dumps({"question_id": i, "image": name, "text": "Is there a dog?", "label": "yes"}) + "\n"
                            for i, name in enumerate(["good.png", "bad.jpg", "cut.png"])))
    task = get_task("pope")
    ds = task.read([pope], ReadOptions(image_root=tmp_path))
    with pytest.raises(UserError, match=f"item 1 \\({tmp_path / 'bad.jpg'}\\) cannot be decoded: it is not an image"):
        evaluate(task, ds, llava_runner, tmp_path / "out", scoring=scoring, quiet=True, plots=False)
    ds.items = [ds.items[0], ds.items[2]]
    with pytest.raises(UserError, match="item 2 .* cannot be decoded"):
        evaluate(task, ds, llava_runner, tmp_path / "out2", scoring=scoring, quiet=True, plots=False)


def test_projector_only_export_loads_onto_its_base(tiny_llava, tmp_path):
    """`train --mode projector` writes final/ with projector.safetensors only: eval puts it into the base."""
    import torch

    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.training.llava import export, load_llava, projector_names

    model, processor = load_llava(str(tiny_llava))
    names = set(projector_names(model))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name in names:
                weight.add_(0.5)  # stands in for training
    trained = {n: w.detach().clone() for n, w in model.named_parameters() if n in names}
    base = {n: w.detach().clone() for n, w in model.named_parameters() if n not in names}
    export(model, processor, "projector", str(tiny_llava), tmp_path / "final")
    runner = LocalRunner(str(tmp_path))  # the run folder stands for its final/ (it was "Unrecognized model")
    assert runner.name == str(tmp_path / "final")
    assert runner.scorings == ("generate", "loss")
    loaded = dict(runner.model.named_parameters())
    assert loaded.keys() == trained.keys() | base.keys()
    assert all(torch.equal(loaded[n], w) for n, w in (trained | base).items())  # the rest is the base's own


def test_options_that_tokenize_the_same_tie_exactly(tiny_clip, llava_runner, tmp_path):
    """The tiny CLIP's tokenizer lower-cases: 'cat' and 'Cat' are one text to it. Such options get one score
    (a tie, counted as wrong), not two near-equal ones where the first would win."""
    from tests.evaluation.conftest import make_build, mcqa_doc

    from vlmforge.evaluation.runners import LocalRunner

    same = ["cat", "Cat", "CAT", "cAt"]
    build = make_build(tmp_path / "b", [mcqa_doc("Cat", same), mcqa_doc("cat", same), mcqa_doc("CAT", ["dog"] + same[:3])])
    task = get_task("mcqa")
    ds = task.read([build], ReadOptions())
    s = evaluate(task, ds, LocalRunner(str(tiny_clip)), tmp_path / "clip", quiet=True, plots=False)
    recs = [json.loads(x) for x in (tmp_path / "clip" / PREDICTIONS).read_text().splitlines()]
    assert len(set(recs[0]["scores"])) == 1 and len(set(recs[2]["scores"][1:])) == 1
    assert recs[0]["status"] == recs[1]["status"] == "tie"
    # The third item's gold is one of its three like options: a tie holding it if they beat "dog", else "dog" (wrong).
    cats_win = recs[2]["scores"][1] > recs[2]["scores"][0]
    assert (recs[2]["status"] == "tie") if cats_win else ((recs[2]["status"], recs[2]["parsed"]) == ("ok", 0))
    assert s["counts"]["ties"] == s["counts"]["ties_with_gold"] == 2 + cats_win and s["metrics"]["accuracy"] == 0.0

    # Loss scoring: options whose whole sequences tokenize the same (here the very same text) share one loss.
    items = task.read([make_build(tmp_path / "l", [mcqa_doc("cat", ["cat", "dog", "cat", "bird"])])], ReadOptions()).items
    losses = llava_runner.option_losses(items)[0]
    assert losses[0] == losses[2] and losses[1] != losses[0]


@pytest.mark.parametrize("kind", ["causal-lm", "mlm"])
def test_a_model_that_is_not_a_vlm_is_named(kind, mcqa_build, tmp_path):
    """A text-only LM as --model was transformers' ValueError traceback listing every VLM config class."""
    from typer.testing import CliRunner

    from vlmforge.cli import app
    from vlmforge.training.tiny import make_tiny

    model = make_tiny(kind, tmp_path / kind)
    res = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(mcqa_build), "--model", str(model),
                                   "--out", str(tmp_path / "o"), "-q"])
    assert isinstance(res.exception, UserError), res.exception
    assert f"is a {'llama' if kind == 'causal-lm' else 'bert'!r} checkpoint, neither a vision-language" in str(res.exception)


def test_device_and_threshold_are_checked_before_the_model_loads(mcqa_build, tiny_llava, tmp_path):
    import torch
    from typer.testing import CliRunner

    from vlmforge.cli import app

    def run(*extra):
        return CliRunner().invoke(app, ["eval", "--task", "open", "--data", str(mcqa_build), "--model", str(tiny_llava),
                                        "--out", str(tmp_path / "o"), "-q", *extra])

    res = run("--device", "gpu")  # was torch's RuntimeError traceback
    assert isinstance(res.exception, UserError) and "unknown --device 'gpu'" in str(res.exception)
    if not torch.cuda.is_available():  # was "AssertionError: Torch not compiled with CUDA enabled"
        res = run("--device", "cuda")
        assert isinstance(res.exception, UserError) and "no CUDA GPU is available here" in str(res.exception)
    res = run("--soft-threshold", "5")  # a cosine never reaches 5: every answer silently wrong
    assert isinstance(res.exception, UserError) and "from -1 to 1" in str(res.exception)
    (tmp_path / "urls.csv").write_text("id,url\ntest000,http://example.com/a.jpg\n")
    res = run("--image-urls", str(tmp_path / "urls.csv"))  # a local model read the files: the URLs went unused
    assert isinstance(res.exception, UserError) and "--image-urls is for the openai backend" in str(res.exception)
    # --device and --dtype reached the local backend only: the transformers backend ran on a GPU when there was one
    res = run("--backend", "transformers", "--device", "gpu")
    assert isinstance(res.exception, UserError) and "unknown --device 'gpu'" in str(res.exception)
    res = run("--backend", "transformers", "--dtype", "float17")
    assert isinstance(res.exception, UserError) and "unknown --dtype 'float17'" in str(res.exception)
    for backend, option, message in (("vllm", "--device", "--device does not apply to the vllm backend (vLLM places"),
                                     ("openai", "--dtype", "--dtype does not apply to the openai backend"),
                                     ("local", "--api-base", "--api-base is for the openai backend, not local")):
        res = run("--backend", backend, option, "http://127.0.0.1:1/v1" if option == "--api-base" else "float16")
        assert isinstance(res.exception, UserError) and message in str(res.exception), res.exception


def test_api_model_on_pope_through_a_local_server(tmp_path, monkeypatch):
    """`--backend openai` against a small OpenAI-compatible server on 127.0.0.1 (it answers by rule)."""
    import base64

    from typer.testing import CliRunner

    from tests.curation.test_openai_backend import KEY, KEY_ENV, ChatServer
    from vlmforge.cli import app

    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(tiny_png(i))
    rows = [("dog", "yes"), ("car", "no"), ("cat", "yes")]  # the server says yes to dogs only: 2 of 3 right
    (tmp_path / "coco_pope_random.json").write_text("".join(json.dumps(
        {"question_id": i, "image": f"img{i}.png", "text": f"Is there a {o} in the image?", "label": lab}) + "\n"
        for i, (o, lab) in enumerate(rows)))
    monkeypatch.setenv(KEY_ENV, KEY)
    server = ChatServer()
    try:
        def run(out, *extra):
            res = CliRunner().invoke(app, ["eval", "--task", "pope", "--data", str(tmp_path / "coco_pope_random.json"),
                                           "--backend", "openai", "--api-base", server.url, "--api-key-env", KEY_ENV,
                                           "--model", "test-model", "--out", str(tmp_path / out), "-q", "--no-plots",
                                           *extra])
            assert res.exit_code == 0, res.output
            return json.loads((tmp_path / out / "summary.json").read_text())

        s = run("a")
        assert s["metrics"]["accuracy"] == pytest.approx(2 / 3) and s["backend"] == "openai"
        sent = next(r["body"]["messages"][-1]["content"] for r in server.requests  # requests arrive in any order
                    if "dog" in json.dumps(r["body"]["messages"][-1]["content"]))
        image = next(c["image_url"]["url"] for c in sent if c["type"] == "image_url")
        assert base64.b64decode(image.split(",", 1)[1]) == tiny_png(0)
        server.fixed_reply = ""  # a content filter: no answer is neither yes nor no
        s = run("b")
        assert s["counts"]["unparsed"] == 3 and s["metrics"]["accuracy"] == 0.0 and s["metrics"]["yes_ratio"] is not None
        (tmp_path / "urls.csv").write_text("img1.png,https://example.com/1.png\n")
        server.fixed_reply = None
        run("c", "--image-urls", str(tmp_path / "urls.csv"))
        urls = [c["image_url"]["url"] for r in server.requests[-3:] for c in r["body"]["messages"][-1]["content"]
                if c["type"] == "image_url"]
        assert "https://example.com/1.png" in urls and sum(u.startswith("data:") for u in urls) == 2
    finally:
        server.close()


def test_transformers_backend_generates_without_progress_bars(mcqa_build, tiny_llava, tmp_path):
    from typer.testing import CliRunner

    from vlmforge.cli import app

    res = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(mcqa_build), "--backend", "transformers",
                                   "--model", str(tiny_llava), "--out", str(tmp_path / "o"), "-q", "--no-plots",
                                   "--limit", "2", "--max-new-tokens", "2"])
    assert res.exit_code == 0, res.output
    assert "Loading weights" not in res.output, res.output  # -q printed the backend's load bar
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["counts"]["items"] == 2


def test_a_vicuna_trained_run_is_asked_in_vicuna_v1(tiny_llava, tmp_path):
    """A run trained with --template vicuna_v1 was evaluated through the processor's chat template: another
    prompt format than the one it learned. The export records the template and eval writes prompts in it."""
    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.training.formatting import render_vicuna
    from vlmforge.training.llava import export, load_llava

    model, processor = load_llava(str(tiny_llava))
    export(model, processor, "full", str(tiny_llava), tmp_path / "vicuna", template="vicuna_v1")
    export(model, processor, "full", str(tiny_llava), tmp_path / "chat")
    runner = LocalRunner(str(tmp_path / "vicuna"))
    runner.setup()
    trained = render_vicuna([("user", "<image>\nWhat is it?"), ("assistant", "A cat.")], eos="</s>")
    asked = trained.text[: trained.spans[0][0]]  # all before the answer
    assert runner._chat("What is it?", True) == asked
    item = EvalItem(id="1", prompt="What is it?", options=["cat", "dog"], image=tiny_png(1))
    losses = runner.option_losses([item])[0]  # " cat" merges with the prompt's last space: scored from there
    assert losses == pytest.approx([_own_loss(runner, asked, o, item.image) for o in item.options], rel=1e-4)
    chat = LocalRunner(str(tmp_path / "chat"))
    chat.setup()
    assert chat.option_losses([item])[0] != pytest.approx(losses, rel=1e-3)  # another prompt, other losses
    assert chat._chat("What is it?", True) == processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True, tokenize=False)
    # vLLM asks in the model's chat template: it would ask this run in another format
    from vlmforge.curation.generation import GenerationRequest, local_model_identity
    from vlmforge.evaluation.runners import GeneratorRunner

    with pytest.raises(UserError, match="trained on LLaVA-1.5's vicuna_v1 text .* the vllm backend does "
                                        "not write: use the transformers backend"):
        GeneratorRunner("vllm", str(tmp_path / "vicuna"))
    from vlmforge.curation.generation import make_generator

    with pytest.raises(UserError, match="vicuna_v1 text .* the vllm backend does not write"):
        make_generator("vllm", str(tmp_path / "vicuna"))  # the builders' way in (selfsynth, cvc-trials)
    # the transformers backend (eval and every generation builder) asks it in vicuna_v1, as the local runner
    gen = GeneratorRunner("transformers", str(tmp_path / "vicuna"), device="cpu").generator
    gen.setup()
    assert gen._prompt_text(GenerationRequest("<image>\nWhat is it?", image=tiny_png(1))) == asked
    chat_gen = GeneratorRunner("transformers", str(tmp_path / "chat"), device="cpu").generator
    # answers cached from the chat-template prompt it was asked in before are not reused
    assert gen.cache_identity().endswith("asked in vicuna_v1") and chat_gen.cache_identity() == local_model_identity(str(tmp_path / "chat"))
    assert chat_gen.model == str(tmp_path / "chat")
    chat_gen.setup()
    assert chat_gen._prompt_text(GenerationRequest("What is it?", image=tiny_png(1))) == chat._chat("What is it?", True)


def test_items_whose_image_the_run_trained_on_are_counted(tiny_llava, llava_runner, tmp_path, capsys):
    """Evaluating a run on images it was trained on gave held-out looking scores without a word."""
    from tests.evaluation.conftest import MCQA_CLASSES as MCQA, make_split_build, mcqa_doc

    from vlmforge.evaluation.run import seen_in_training
    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.training.llava import export, load_llava
    from vlmforge.training.merge import merge

    # Images come from each sample's index: train's two are the first two of test's four.
    build = make_split_build(tmp_path / "b", {"train": [mcqa_doc(c, MCQA) for c in MCQA[:2]],
                                              "test": [mcqa_doc(c, MCQA) for c in MCQA]})
    run = tmp_path / "run"
    model, processor = load_llava(str(tiny_llava))
    export(model, processor, "projector", str(tiny_llava), run / "final")
    (run / "run.json").write_text(json.dumps({"config": {"shards": [str(build)], "split": None}}))  # as train writes
    task = get_task("mcqa")
    ds = task.read([build], ReadOptions())
    s = evaluate(task, ds, LocalRunner(str(run)), tmp_path / "e1", scoring="loss", plots=False)
    assert ds.split == "test" and s["counts"]["seen_in_training"] == 2
    shown = capsys.readouterr()
    out = shown.err + shown.out
    assert "2 of 4 items show an image the model was trained on" in " ".join(out.split())
    assert f"(run{run}):" in "".join(out.split())  # the console wraps the path
    # A model merged from the run is the run's model.
    assert seen_in_training(ds, str(merge(run, tmp_path / "merged"))) == (2, run)
    # A model with no run behind it has nothing to compare.
    s = evaluate(task, ds, llava_runner, tmp_path / "e2", scoring="loss", quiet=True, plots=False)
    assert "seen_in_training" not in s["counts"]


def test_scoring_our_own_predictions_again_keeps_what_they_are_of(mcqa_build, llava_runner, tmp_path):
    """`eval score` of an eval's predictions.jsonl wrote a summary with model, data and split all null."""
    from vlmforge.evaluation.run import score_predictions

    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    first = evaluate(task, ds, llava_runner, tmp_path / "e", scoring="loss", quiet=True, plots=False,
                     settings={"split": ds.split})  # as `vlmforge eval` records it
    again = score_predictions(task, tmp_path / "e" / PREDICTIONS, [], ReadOptions(), tmp_path / "s", quiet=True,
                              plots=False)
    keys = ("model", "backend", "data", "data_build_id", "split", "metrics")
    assert first["split"] == "test" and first["data_build_id"]
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}


def test_out_that_is_a_training_run_or_a_model_is_refused(mcqa_build, llava_runner, tmp_path):
    """A training run's run.json was taken for another evaluation's, and --overwrite, which the refusal
    suggested, replaced it: the run could no longer be resumed or merged. A model folder took the report."""
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    run = tmp_path / "run"
    (run / "checkpoint-000002").mkdir(parents=True)
    (run / "run.json").write_text('{"config": {"mode": "lora"}, "total_steps": 2}')
    just_started = tmp_path / "started"  # run.json written, no checkpoint yet
    just_started.mkdir()
    (just_started / "run.json").write_text('{"config": {"mode": "lora"}, "total_steps": 2}')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out, message in ((run, "is a training run"), (just_started, "is a training run"), (model, "is a model folder")):
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        with pytest.raises(UserError, match=f"--out {out} {message}"):
            evaluate(task, ds, llava_runner, out, overwrite=True, quiet=True, plots=False)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_model_folder_missing_files_is_named(tiny_llava, tmp_path):
    """A model folder without weights or without a tokenizer was a transformers traceback, and an
    evaluation's output folder given as --model 'Unrecognized model ... model_type'."""
    import shutil

    from vlmforge.evaluation.runners import LocalRunner

    no_weights = shutil.copytree(tiny_llava, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    no_tokenizer = shutil.copytree(tiny_llava, tmp_path / "no-tokenizer")
    for p in no_tokenizer.glob("tokenizer*"):
        p.unlink()
    evaluation = tmp_path / "ev"
    evaluation.mkdir()
    (evaluation / PREDICTIONS).write_text("")
    (evaluation / "run.json").write_text('{"task": "mcqa"}')
    for model, message in ((no_weights, "has no weights"), (no_tokenizer, "has no tokenizer"),
                           (evaluation, "is an evaluation's output folder")):
        with pytest.raises(UserError, match=message):
            LocalRunner(str(model)).setup()


def test_a_lora_export_finds_its_base_from_any_folder(tmp_path, monkeypatch):
    """peft's adapter_config.json keeps --model as typed (models/llava, relative to where train ran); the
    export's own record is absolute. Read from another folder, the relative one named no model."""
    from vlmforge.evaluation.runners import LocalRunner

    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    base = tmp_path / "models" / "llava"
    (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "models/llava"}))
    (final / "vlmforge_export.json").write_text(json.dumps({"kind": "lora", "base": str(base), "template": "chat"}))
    monkeypatch.chdir(tmp_path / "run")
    assert LocalRunner._base_and_addition(str(final)) == (str(base), str(final), None)


def test_an_image_urls_file_that_cannot_be_read_is_named(tmp_path):
    """A mistyped --image-urls path (or a folder) was a FileNotFoundError traceback."""
    from vlmforge.evaluation.runners import load_image_urls

    with pytest.raises(UserError, match=r"--image-urls .*nope.csv cannot be read as a CSV of id,url \(No such file"):
        load_image_urls(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="cannot be read as a CSV"):
        load_image_urls(tmp_path)


def test_an_evaluation_folder_given_as_data_is_named(tmp_path):
    """An evaluation's folder given as --data or --predictions was called 'a training run (a model: give it
    as --model)', for its run.json."""
    from typer.testing import CliRunner

    from vlmforge.cli import app

    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / PREDICTIONS).write_text("")
    (ev / "run.json").write_text(json.dumps({"task": "mcqa", "data": "/data/mcqa-build"}))
    r = CliRunner().invoke(app, ["eval", "--task", "mcqa", "--data", str(ev), "--model", "m", "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception) == (f"--data {ev} is an evaluation's output folder, not data; give the data it evaluated "
                                "(it evaluated /data/mcqa-build)")
    r = CliRunner().invoke(app, ["eval", "score", "--task", "mcqa", "--predictions", str(ev)])
    assert isinstance(r.exception, UserError) and f"--predictions {ev / PREDICTIONS}" in str(r.exception), r.output
    assert not (tmp_path / "o").exists()
