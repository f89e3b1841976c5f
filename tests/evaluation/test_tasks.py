"""Task readers on files laid out like the real ones, and task metrics on hand-made predictions."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from vlmforge.errors import UserError
from vlmforge.evaluation.items import ReadOptions
from vlmforge.evaluation.run import score_predictions
from vlmforge.evaluation.tasks import get_task

from tests.evaluation.conftest import MCQA_CLASSES, make_build, make_split_build, mcqa_doc, tiny_png


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(task, dataset, answers: dict[str, str]):
    items = {it.id: it for it in dataset.items}
    return [task.make_record(items[i], text=t) for i, t in answers.items()]


# -- mcqa --------------------------------------------------------------------------------------
def test_mcqa_build_reader_and_hand_scored_metrics(mcqa_build, tmp_path):
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    assert len(ds) == 6 and ds.build_id and ds.items[0].image.startswith(b"\x89PNG")
    first = ds.items[0]
    assert first.options == ["cat", "dog", "bird", "horse"] and first.answer == 0 and first.meta["class"] == "cat"
    assert "A. cat" in first.prompt and "<image>" not in first.prompt
    # classes: cat, dog, bird, horse, cat, dog; gold letters spread over A-D (see conftest)
    assert ["ABCD"[it.answer] for it in ds.items] == ["A", "D", "D", "C", "D", "B"]
    answers = {
        ds.items[0].id: "A",  # cat right
        ds.items[1].id: "The answer is B.",  # dog wrong (B is horse)
        ds.items[2].id: "(D)",  # bird right
        ds.items[3].id: "I would say horse",  # horse right, by the option's text
        ds.items[4].id: "no idea",  # cat unparsed -> wrong
        ds.items[5].id: "B. dog",  # dog right
    }
    m = task.score(_records(task, ds, answers))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: cat 1/2, dog 1/2, bird 1, horse 1 -> macro 3/4
    assert m["macro_accuracy"] == pytest.approx(0.75)
    assert m["by_class"]["cat"] == {"accuracy": 0.5, "n": 2}
    assert m["by_gold_position"]["D"] == {"accuracy": pytest.approx(1 / 3), "n": 3}
    assert m["predicted_positions"] == {"A": 1, "B": 2, "C": 1, "D": 1, "?": 1}
    assert m["confusion"]["matrix"][3] == [0, 1, 0, 1, 1]  # gold D: once B, once D, once unparsed


def test_tied_option_scores_count_as_wrong_and_are_reported(mcqa_build, tmp_path, capsys):
    """Options sharing the best score (e.g. tokenized the same) are no answer, not the first of them."""
    from vlmforge.evaluation.run import finish

    task = get_task("mcqa")
    items = task.read([mcqa_build], ReadOptions()).items[:3]  # gold A, D, D
    scores = [[0.4, 0.4, 0.1, 0.1],  # A = B: first-wins would count it right
              [0.1, 0.2, 0.3, 0.4],  # D, right
              [0.3, 0.1, 0.3, 0.3]]  # A = C = D: holds the gold D
    recs = [task.make_record(it, scores=s, scoring="clip") for it, s in zip(items, scores)]
    assert [r["status"] for r in recs] == ["tie", "ok", "tie"]
    assert recs[0]["tied"] == [0, 1] and recs[0]["prediction"] is None and "tied" not in recs[1]
    m = task.score(recs)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["predicted_positions"] == {"A": 0, "D": 1, "?": 0, "tie": 2} and m["by_gold_position"]["A"]["accuracy"] == 0.0
    losses = task.make_record(items[1], scores=[2.0, 1.5, 1.5, 3.0], scoring="loss")  # lowest loss ties
    assert losses["status"] == "tie" and losses["tied"] == [1, 2]

    summary = finish(task, recs + [losses], tmp_path / "out", plots=False)
    assert summary["counts"]["ties"] == 3 and summary["counts"]["ties_with_gold"] == 2
    assert summary["ties"]["examples"][0] == {"id": items[0].id, "options": ["cat", "dog"]}
    assert summary["parse_failures"]["count"] == 0  # a tie is not a parse failure
    shown = capsys.readouterr()
    assert "3 of 4 items tie" in shown.err + shown.out and "| count: ties | 3 |" in shown.out
    # Rescoring an old predictions file finds the ties too: they are read from the scores.
    old = {k: v for k, v in recs[0].items() if k not in ("tied", "status", "parsed")}
    assert task.interpret({**old, "prediction": "cat"}).status == "tie"


def test_pope_loss_tie_counts_as_the_wrong_answer(tmp_path):
    task = get_task("pope")
    rows = [{"question_id": i, "image": "x.jpg", "text": "Is there a dog?", "label": lab} for i, lab in enumerate(["yes", "no"])]
    ds = task.read([_write_jsonl(tmp_path / "coco_pope_random.json", rows)], ReadOptions())
    m = task.score([task.make_record(it, scores=[1.0, 1.0], scoring="loss") for it in ds.items])
    assert m["accuracy"] == 0.0 and (m["fn"], m["fp"]) == (1, 1)  # neither "yes" nor "no" is credited


def test_mcqa_prompt_the_unseen_files(tmp_path):
    box = "[0.12, 0.2, 0.55, 0.61]"
    (tmp_path / "VG_100K").mkdir()
    (tmp_path / "VG_100K" / "1.jpg").write_bytes(tiny_png(1))
    recs = [
        {"id": "q1", "image": "VG_100K/1.jpg", "synset": "albatross.n.01",
         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"{box} black footed albatross"}],
         "options": ["gull", "black footed albatross", "tern", "crow"]},
        {"id": "q2", "image": "VG_100K/1.jpg", "mcqa_gt": 2,
         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"{box} tern"}],
         "choices": [{"prompt": f"{box} gull"}, {"prompt": f"{box} crow"}, {"prompt": f"{box} tern"}]},
    ]
    path = tmp_path / "test_unseen_mcqa.json"
    path.write_text(json.dumps(recs))
    task = get_task("mcqa")
    ds = task.read([path], ReadOptions(image_root=tmp_path))
    a, b = ds.items
    assert a.answer == 1 and a.options[1] == "black footed albatross" and a.meta["class"] == "black footed albatross"
    assert b.answer == 2 and b.options == ["gull", "crow", "tern"]
    assert a.loss_prefix == box and a.loss_targets[1] == " black footed albatross"
    assert box in a.prompt and "B. black footed albatross" in a.prompt
    assert a.image_bytes() == tiny_png(1)
    # A question that only contains "A." gets its options; one that lists them as "(A) ..." not twice
    asked = tmp_path / "asked.json"
    asked.write_text(json.dumps([
        {"id": "f", "conversations": [{"from": "human", "value": "Is this a U.S.A. flag?"}], "options": ["yes", "no"],
         "answer_index": 0},
        {"id": "g", "conversations": [{"from": "human", "value": "Which? (A) cat (B) dog"}], "options": ["cat", "dog"],
         "answer_index": 1}]))
    f, g = task.read([asked], ReadOptions()).items
    assert f.prompt == "Is this a U.S.A. flag?\nA. yes\nB. no\nAnswer with the option's letter from the given choices directly."
    assert g.prompt.count("cat") == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1, "image": "x.jpg"}]))
    with pytest.raises(UserError, match="no options"):
        task.read([bad], ReadOptions())


def test_mcqa_scores_prompt_the_unseen_prediction_file(tmp_path):
    def line(gt, pred, names):
        return {"mcqa_gt": gt, "mcqa_pred": pred, "losses": [{"prompt": f"[0, 0, 1, 1] {n}", "loss": 1.0} for n in names]}

    names = ["gull", "tern", "crow"]
    preds = [line(0, 0, names), line(0, 1, names), line(1, 1, names), line(2, 2, names), line(2, 2, names)]
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(preds))
    s = score_predictions(get_task("mcqa"), path, [], ReadOptions(), tmp_path / "scores", quiet=True)
    # gull 1/2, tern 1/1, crow 2/2: accuracy 4/5, macro (0.5 + 1 + 1)/3
    assert s["metrics"]["accuracy"] == pytest.approx(0.8)
    assert s["metrics"]["macro_accuracy"] == pytest.approx(2.5 / 3)
    assert (tmp_path / "scores" / "per_class_accuracy.png").stat().st_size > 1000
    # A gold index that is no number was a ValueError traceback; one past the options was scored as wrong.
    for gt, message in (("x", "mcqa_gt 'x' and mcqa_pred 0 are not option indices"),
                        (3, "mcqa_gt 3 and mcqa_pred 0 are not option indices \\(0 to 2\\)")):
        path.write_text(json.dumps(preds + [line(gt, 0, names)]))
        with pytest.raises(UserError, match=f"record 5 of {path}: {message}"):
            score_predictions(get_task("mcqa"), path, [], ReadOptions(), tmp_path / "scores2", quiet=True)


# -- pope --------------------------------------------------------------------------------------
def _pope_files(root: Path) -> tuple[Path, Path]:
    """Per-category annotation files (labels) and LLaVA's combined question file (no labels)."""
    ann = root / "coco_pope"
    ann.mkdir()
    random_qs = [("dog", "yes"), ("car", "no"), ("cat", "no")]
    adv_qs = [("bus", "yes"), ("sink", "yes"), ("fork", "no")]
    for cat, qs in (("random", random_qs), ("adversarial", adv_qs)):
        _write_jsonl(ann / f"coco_pope_{cat}.json", [
            {"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg", "text": f"Is there a {o} in the image?", "label": lab}
            for i, (o, lab) in enumerate(qs)])
    combined = _write_jsonl(root / "llava_pope_test.jsonl", [
        {"question_id": n + 1, "image": f"COCO_val2014_{i:012d}.jpg",
         "text": f"Is there a {o} in the image?\nAnswer the question using a single word or phrase.", "category": cat}
        for n, (cat, i, o) in enumerate([("random", 0, "dog"), ("random", 1, "car"), ("random", 2, "cat"),
                                         ("adversarial", 0, "bus"), ("adversarial", 1, "sink"), ("adversarial", 2, "fork")])])
    return ann, combined


def test_a_prediction_file_answering_items_twice(tmp_path):
    """Repeated lines (answer files merged from chunks) were each scored: n above the item count, and
    items_without_prediction negative. Repeats are scored once; two different answers are an error."""
    ann, combined = _pope_files(tmp_path)
    lines = [{"question_id": i, "text": t} for i, t in enumerate(["Yes", "No", "No", "No", "Yes", "No"], 1)]
    answers = _write_jsonl(tmp_path / "answers.jsonl", lines + lines[:2])
    s = score_predictions(get_task("pope"), answers, [combined, ann], ReadOptions(), tmp_path / "o", quiet=True)
    once = score_predictions(get_task("pope"), _write_jsonl(tmp_path / "once.jsonl", lines), [combined, ann],
                             ReadOptions(), tmp_path / "o1", quiet=True)
    assert s["metrics"] == once["metrics"] and s["metrics"]["n"] == 6
    assert s["counts"]["repeated_predictions"] == 2 and s["counts"]["items_without_prediction"] == 0
    differing = _write_jsonl(tmp_path / "differing.jsonl", lines + [{"question_id": 2, "text": "Yes"}])
    with pytest.raises(UserError, match="answers item 2 twice, differently \\('No' and 'Yes'\\)"):
        score_predictions(get_task("pope"), differing, [combined, ann], ReadOptions(), tmp_path / "o2", quiet=True)
    # our own predictions.jsonl, appended to itself, scores the same
    task = get_task("pope")
    items = task.read([combined, ann], ReadOptions()).items
    own = [task.make_record(it, text=line["text"]) for it, line in zip(items, lines)]
    twice = _write_jsonl(tmp_path / "predictions.jsonl", own + own)
    s = score_predictions(task, twice, [], ReadOptions(), tmp_path / "o3", quiet=True)
    assert s["metrics"] == once["metrics"] and s["counts"]["repeated_predictions"] == 6


def test_pope_labels_follow_the_question_not_the_line_order(tmp_path):
    """A combined question file in another order than the category files (e.g. merged from chunks) took
    its labels by position, so questions got each other's labels."""
    ann, combined = _pope_files(tmp_path)
    lines = combined.read_text().splitlines()
    combined.write_text("\n".join(lines[::-1]) + "\n")
    ds = get_task("pope").read([combined, ann], ReadOptions())
    want = {("random", "dog"): "yes", ("random", "car"): "no", ("random", "cat"): "no",
            ("adversarial", "bus"): "yes", ("adversarial", "sink"): "yes", ("adversarial", "fork"): "no"}
    got = {(it.meta["category"], it.prompt.split()[3]): it.answer for it in ds.items}
    assert got == want


def test_pope_scores_llava_answer_file_by_hand(tmp_path):
    ann, combined = _pope_files(tmp_path)
    answers = _write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "prompt": "Is there a dog in the image?\nAnswer the question using a single word or phrase.",
         "text": "Yes, there is a dog.", "answer_id": "x", "model_id": "m", "metadata": {}},
        {"question_id": 2, "text": "No, there is not."},
        {"question_id": 3, "text": "There is a cat in the image."},
        {"question_id": 4, "text": "I am not sure."},
        {"question_id": 5, "text": "Yes"},
        {"question_id": 6, "text": "No."},
    ])
    s = score_predictions(get_task("pope"), answers, [combined, ann], ReadOptions(), tmp_path / "out", quiet=True)
    m = s["metrics"]
    # random: TP(dog) TN(car) FP(cat); adversarial: FN(bus, "not") TP(sink) TN(fork)
    r, a = m["by_category"]["random"], m["by_category"]["adversarial"]
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (1, 1, 1, 0)
    assert r["accuracy"] == pytest.approx(2 / 3) and r["precision"] == pytest.approx(0.5) and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(2 / 3) and r["yes_ratio"] == pytest.approx(2 / 3)
    assert a["precision"] == 1.0 and a["recall"] == pytest.approx(0.5) and a["yes_ratio"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == 0.5
    assert list(m["by_category"]) == ["random", "adversarial"]
    assert (tmp_path / "out" / "confusion_matrix.png").exists()


def test_answers_numbered_as_another_question_file_are_refused(tmp_path):
    """LLaVA's POPE answers are numbered as in llava_pope_test.jsonl; scored against one coco_pope file alone,
    answer 1 (there: adversarial "bus") was paired with random question 1 ("dog") by its id."""
    ann, combined = _pope_files(tmp_path)
    questions = [json.loads(x) for x in combined.read_text().splitlines()]
    adversarial_first = questions[3:] + questions[:3]  # numbered 1-6 in a file that lists adversarial first
    answers = _write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": n, "prompt": q["text"], "text": "Yes"} for n, q in enumerate(adversarial_first, 1)])
    with pytest.raises(UserError, match=r"3 answers in .* were asked other questions .* id 1: asked 'Is there a bus "
                                        r"in the image\?.*the item is 'Is there a dog in the image\?'"):
        score_predictions(get_task("pope"), answers, [ann / "coco_pope_random.json"], ReadOptions(), tmp_path / "o",
                          quiet=True)
    answers = _write_jsonl(tmp_path / "answers.jsonl", [  # numbered as the combined file they were made from
        {"question_id": q["question_id"], "prompt": q["text"], "text": "Yes"} for q in questions])
    s = score_predictions(get_task("pope"), answers, [combined, ann], ReadOptions(), tmp_path / "o", quiet=True)
    assert s["counts"]["items"] == 6 and s["metrics"]["yes_ratio"] == 1.0
    # MMBench: LLaVA's model_vqa_mmbench records hint + question + options as the prompt
    tsv = _mmbench_tsv(tmp_path / "mmbench_dev.tsv")
    llava = {0: "What color is the sky?\nA. red\nB. blue\nC. green\nD. black",
             1: "Look closely.\nHow many cats?\nA. one\nB. two\nC. three"}
    answers = _write_jsonl(tmp_path / "mm.jsonl", [{"question_id": q, "round_id": 0, "prompt": t, "text": "A"}
                                                   for q, t in llava.items()])
    m = score_predictions(get_task("mmbench"), answers, [tsv], ReadOptions(rounds=1), tmp_path / "m", quiet=True,
                          plots=False)["metrics"]
    assert m["single_pass_accuracy"] == 0.5
    answers = _write_jsonl(tmp_path / "mm.jsonl", [{"question_id": 1 - q, "round_id": 0, "prompt": t, "text": "A"}
                                                   for q, t in llava.items()])
    with pytest.raises(UserError, match="2 answers in .* were asked other questions"):
        score_predictions(get_task("mmbench"), answers, [tsv], ReadOptions(rounds=1), tmp_path / "m", quiet=True)


def test_pope_reads_category_files_alone(tmp_path):
    ann, _ = _pope_files(tmp_path)
    ds = get_task("pope").read([ann], ReadOptions(image_root=tmp_path / "val2014"))
    assert len(ds) == 6
    # question ids repeat across the category files, so ids carry the category
    assert sorted(it.id for it in ds.items) == [f"{c}-{i}" for c in ("adversarial", "random") for i in (1, 2, 3)]
    assert ds.items[0].prompt.endswith("Answer the question using a single word or phrase.")
    assert ds.items[0].image_path == str(tmp_path / "val2014" / "COCO_val2014_000000000000.jpg")
    with pytest.raises(UserError, match="no label"):
        get_task("pope").read([tmp_path / "llava_pope_test.jsonl"], ReadOptions())


# -- scienceqa ---------------------------------------------------------------------------------
def _scienceqa(root: Path) -> Path:
    sqa = root / "scienceqa"
    sqa.mkdir()
    def prob(subject, hint, image, grade, answer, split="test"):
        return {"question": "Which one?", "choices": ["alpha", "beta", "gamma"], "answer": answer, "hint": hint,
                "image": image, "subject": subject, "grade": grade, "split": split, "task": "closed choice"}
    problems = {"p1": prob("natural science", "", "image.png", "grade7", 0),
                "p2": prob("social science", "some text", None, "grade3", 1),
                "p3": prob("language science", "", None, "grade2", 2),
                "p4": prob("natural science", "ctx", "image.png", "grade10", 0),
                "p5": prob("natural science", "", None, "grade5", 1),
                "p6": prob("natural science", "", None, "grade5", 1, split="train")}
    (sqa / "problems.json").write_text(json.dumps(problems))
    (sqa / "pid_splits.json").write_text(json.dumps({"train": ["p6"], "test": ["p1", "p2", "p3", "p4", "p5"]}))
    for pid in ("p1", "p4"):
        (sqa / "images" / "test" / pid).mkdir(parents=True)
        (sqa / "images" / "test" / pid / "image.png").write_bytes(tiny_png(3))
    return sqa


def test_scienceqa_groups_by_hand(tmp_path):
    sqa = _scienceqa(tmp_path)
    task = get_task("scienceqa")
    ds = task.read([sqa], ReadOptions())
    assert [it.id for it in ds.items] == ["p1", "p2", "p3", "p4", "p5"]
    assert ds.items[1].prompt.startswith("Context: some text\nWhich one?\nA. alpha")
    assert ds.items[0].image_bytes() == tiny_png(3) and ds.items[1].image_path is None
    answers = _write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "text": "A"},
        {"question_id": "p2", "text": "The answer is B."},
        {"question_id": "p3", "text": "C. gamma"},
        {"question_id": "p4", "text": "I think (A)"},  # not a LLaVA form: wrong under the strict rule
        {"question_id": "p5", "text": "The answer is A."},
    ])
    m = score_predictions(task, answers, [sqa], ReadOptions(), tmp_path / "o", quiet=True)["metrics"]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["by_subject"] == {"LAN": {"accuracy": 1.0, "n": 1}, "NAT": {"accuracy": pytest.approx(1 / 3), "n": 3},
                               "SOC": {"accuracy": 1.0, "n": 1}}
    assert m["by_context"] == {"TXT": {"accuracy": 0.5, "n": 2}, "IMG": {"accuracy": 0.5, "n": 2},
                               "NO": {"accuracy": 0.5, "n": 2}}
    assert m["by_grade"] == {"G1-6": {"accuracy": pytest.approx(2 / 3), "n": 3}, "G7-12": {"accuracy": 0.5, "n": 2}}
    lenient = get_task("scienceqa", strict=False)
    assert score_predictions(lenient, answers, [sqa], ReadOptions(), tmp_path / "o2", quiet=True,
                             plots=False)["metrics"]["accuracy"] == pytest.approx(4 / 5)


def test_scienceqa_llava_question_file_with_problems(tmp_path):
    sqa = _scienceqa(tmp_path)
    llava = tmp_path / "llava_test_CQM-A.json"
    llava.write_text(json.dumps([
        {"id": "p2", "conversations": [
            {"from": "human", "value": "Context: some text\nWhich one?\nA. alpha\nB. beta\nC. gamma\nAnswer with the option's letter from the given choices directly."},
            {"from": "gpt", "value": "B"}]},
        {"id": "p1", "image": "p1/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: N/A\nWhich one?\nA. alpha\nB. beta\nC. gamma"},
            {"from": "gpt", "value": "The answer is A."}]},
    ]))
    ds = get_task("scienceqa").read([llava, sqa], ReadOptions(image_root=sqa / "images" / "test"))
    assert [(it.id, it.answer, it.meta["subject"]) for it in ds.items] == [("p2", 1, "SOC"), ("p1", 0, "NAT")]
    assert ds.items[1].options == ["alpha", "beta", "gamma"] and ds.items[1].image_bytes() == tiny_png(3)
    alone = get_task("scienceqa").read([llava], ReadOptions())  # no problems.json: gold from the gpt turn
    assert [it.answer for it in alone.items] == [1, 0] and alone.items[0].meta["has_text"] is True


def test_scienceqa_llava_file_with_options_on_one_line(tmp_path):
    """LLaVA's convert_sqa_to_llava writes "Options: (A) x (B) y" on one line; the reader found no option
    there, so without problems.json every record failed ("no gold answer")."""
    llava = tmp_path / "llava_test_QCM-A.json"
    llava.write_text(json.dumps([
        {"id": "7", "image": "7/image.png", "conversations": [
            {"from": "human", "value": "Question: Which word is a noun?\nContext: N/A\nOptions: (A) run (B) the cat (C) blue\n<image>"},
            {"from": "gpt", "value": "Answer: The answer is B."}]},
        {"id": "8", "conversations": [
            {"from": "human", "value": "Context: The sun is hot.\nQuestion: Is it hot?\nOptions: (A) yes (B) no"},
            {"from": "gpt", "value": "Answer: The answer is A."}]},
    ]))
    ds = get_task("scienceqa").read([llava], ReadOptions(image_root=tmp_path))
    assert [(it.id, it.options, it.answer) for it in ds.items] == [("7", ["run", "the cat", "blue"], 1), ("8", ["yes", "no"], 0)]
    assert [it.meta["has_text"] for it in ds.items] == [False, True]
    assert ds.items[0].image_path == str(tmp_path / "7" / "image.png")
    # the instruction LLaVA's model_vqa_science adds, once
    assert all(it.prompt.endswith("\nAnswer with the option's letter from the given choices directly.")
               and it.prompt.count("option's letter") == 1 and "<image>" not in it.prompt for it in ds.items)


# -- mmbench -----------------------------------------------------------------------------------
def _mmbench_tsv(path: Path) -> Path:
    img = base64.b64encode(tiny_png(5)).decode()
    rows = [
        {"index": 0, "question": "What color is the sky?", "hint": "nan", "A": "red", "B": "blue", "C": "green",
         "D": "black", "answer": "B", "category": "color", "image": img, "source": "x", "l2-category": "perception",
         "split": "dev"},
        {"index": 1, "question": "How many cats?", "hint": "Look closely.", "A": "one", "B": "two", "C": "three",
         "D": "", "answer": "A", "category": "count", "image": img, "source": "x", "l2-category": "perception",
         "split": "dev"},
    ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def test_mmbench_circular_evaluation_and_submission(tmp_path):
    tsv = _mmbench_tsv(tmp_path / "mmbench_dev.tsv")
    task = get_task("mmbench")
    ds = task.read([tsv], ReadOptions())
    ids = [it.id for it in ds.items]
    assert ids == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1", "1-2"]
    by = {it.id: it for it in ds.items}
    assert by["0-1"].options == ["blue", "green", "black", "red"] and by["0-1"].answer == 0
    assert by["0-3"].options == ["black", "red", "blue", "green"] and by["0-3"].answer == 2
    assert by["1-0"].prompt.startswith("Look closely.\nHow many cats?\nA. one\nB. two\nC. three\nAnswer")
    assert by["1-2"].options == ["three", "one", "two"] and by["1-2"].answer == 1
    assert by["0-0"].image == tiny_png(5)
    # LLaVA answer lines (question_id = TSV index, round_id = rotation): q0 right in every round,
    # q1 right in round 0 only.
    lines = [{"question_id": 0, "round_id": r, "text": t} for r, t in enumerate(["B", "A", "The answer is D.", "C"])]
    lines += [{"question_id": 1, "round_id": r, "text": t} for r, t in enumerate(["A", "A", "two"])]
    answers = _write_jsonl(tmp_path / "answers.jsonl", lines)
    s = score_predictions(task, answers, [tsv], ReadOptions(), tmp_path / "o", quiet=True)
    m = s["metrics"]
    assert m["circular_accuracy"] == 0.5 and m["single_pass_accuracy"] == 1.0
    assert m["n_questions"] == 2 and m["n_rounds"] == 7
    assert m["by_category"] == {"color": {"accuracy": 1.0, "n": 1}, "count": {"accuracy": 0.0, "n": 1}}
    assert m["by_l2_category"] == {"perception": {"accuracy": 0.5, "n": 2}}
    with open(tmp_path / "o" / "mmbench_submission.tsv", newline="") as f:
        sub = list(csv.DictReader(f, delimiter="\t"))
    assert [list(r)[:7] for r in sub][0] == ["index", "question", "A", "B", "C", "D", "prediction"]
    assert [(r["index"], r["prediction"], r["answer"]) for r in sub] == [("0", "B", "B"), ("1", "A", "A")]
    one = task.read([tsv], ReadOptions(rounds=1))
    assert [it.id for it in one.items] == ["0-0", "1-0"]


@pytest.mark.parametrize("field, value, message", [
    ("answer", "E", "row 0 has answer 'E', not the letter of one of its 4 options"),
    ("index", "q0", "index 'q0' is not a number"),
    ("image", "not-base64!!", "row 0 has an image that is not base64"),  # was a binascii.Error traceback
])
def test_mmbench_bad_rows_are_named(tmp_path, field, value, message):
    """A gold letter past the options, or an index that is no number, was a ValueError traceback."""
    tsv = _mmbench_tsv(tmp_path / "mm.tsv")
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))

    def read_with(v: str):
        rows[0][field] = v
        with open(tsv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
            w.writeheader()
            w.writerows(rows)
        return get_task("mmbench").read([tsv], ReadOptions())

    with pytest.raises(UserError, match=re.escape(message)):
        read_with(value)
    if field != "image":
        assert read_with({"answer": "b", "index": "0"}[field]).items[0].answer == 1  # a lower-case letter is that letter


def test_mmbench_file_with_circular_copies(tmp_path):
    """Original MMBench TSVs carry rotated copies at index + 1e6; they group, not rotate again."""
    tsv = tmp_path / "mm.tsv"
    img = base64.b64encode(tiny_png(5)).decode()
    rows = [{"index": 7, "question": "Q", "hint": "", "A": "x", "B": "y", "answer": "A", "category": "c", "image": img},
            {"index": 1000007, "question": "Q", "hint": "", "A": "y", "B": "x", "answer": "B", "category": "c", "image": "7"}]
    with open(tsv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    task = get_task("mmbench")
    ds = task.read([tsv], ReadOptions())
    assert [(it.id, it.meta["index"], it.meta["round"], it.answer) for it in ds.items] == [
        ("7-0", 7, 0, 0), ("1000007-0", 7, 1, 1)]
    assert ds.items[1].image == tiny_png(5)  # "7" points at row 7's image
    recs = _records(task, ds, {"7-0": "A", "1000007-0": "A"})
    assert task.score(recs)["circular_accuracy"] == 0.0
    one = task.read([tsv], ReadOptions(rounds=1))  # --rounds was ignored for a file with copies
    assert [it.id for it in one.items] == ["7-0"]
    assert task.score(_records(task, one, {"7-0": "A"}))["circular_accuracy"] == 1.0


def test_mmbench_questions_with_unanswered_rounds_are_not_circular_right(tmp_path):
    """LLaVA answers of round 0 only (model_vqa_mmbench without --all-rounds) gave circular accuracy =
    single-pass accuracy: a question counted as right in every round from the one round it had."""
    tsv = _mmbench_tsv(tmp_path / "mmbench_dev.tsv")
    task = get_task("mmbench")
    first_only = _write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 0, "round_id": 0, "text": "B"},
                                                           {"question_id": 1, "round_id": 0, "text": "A"}])
    m = score_predictions(task, first_only, [tsv], ReadOptions(), tmp_path / "o", quiet=True, plots=False)["metrics"]
    assert m["circular_accuracy"] is None and m["single_pass_accuracy"] == 1.0
    assert m["n_questions"] == 0 and m["n_incomplete_questions"] == 2
    # q0 answered in all 4 rounds (right), q1 in 2 of its 3: only q0 is scored circularly
    lines = [{"question_id": 0, "round_id": r, "text": t} for r, t in enumerate(["B", "A", "D", "C"])]
    lines += [{"question_id": 1, "round_id": r, "text": t} for r, t in enumerate(["A", "A"])]
    part = _write_jsonl(tmp_path / "part.jsonl", lines)
    m = score_predictions(task, part, [tsv], ReadOptions(), tmp_path / "o2", quiet=True, plots=False)["metrics"]
    assert m["circular_accuracy"] == 1.0 and m["n_questions"] == 1 and m["n_incomplete_questions"] == 1
    assert m["by_category"] == {"color": {"accuracy": 1.0, "n": 1}}
    # --rounds 2 asks two rounds: both answered is complete (q1 is wrong in round 1)
    m = score_predictions(task, part, [tsv], ReadOptions(rounds=2), tmp_path / "o3", quiet=True, plots=False)["metrics"]
    assert m["circular_accuracy"] == 0.5 and m["n_questions"] == 2 and m["n_incomplete_questions"] == 0


# -- grading -----------------------------------------------------------------------------------
def test_grading_metrics_by_hand(tmp_path):
    task = get_task("grading")
    root = tmp_path / "knee"
    for split in ("train", "test"):
        for g in range(5):
            (root / split / str(g)).mkdir(parents=True)
    for n, g in enumerate([0, 1, 2, 3, 4, 2]):
        (root / "test" / str(g) / f"img{n}.png").write_bytes(tiny_png(n))
    ds = task.read([root], ReadOptions())  # picks test/ by default
    assert [it.answer for it in ds.items] == [0, 1, 2, 2, 3, 4]
    texts = ["Grade 0", "The most likely Kellgren-Lawrence grade of this knee X-ray image is Grade 1: doubtful.",
             "grade two", "KL 1", "Grade 3 or maybe 4", "I cannot tell"]
    # gold 0 1 2 2 3 4 ; parsed 0, 1, 2, 1, multiple, unparsed
    m = task.score([task.make_record(it, text=t) for it, t in zip(ds.items, texts)])
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["accuracy_parsed"] == pytest.approx(3 / 4)
    assert m["unparsed"] == 1 and m["multiple"] == 1
    assert m["mae"] == pytest.approx(1 / 4)
    # parsed pairs (0,0) (1,1) (2,2) (2,1): O off-diagonal (2,1) w=1/16; r=[1,1,2,0,0], c=[1,2,1,0,0]
    # sum w r c / n = (1*1*2 + 4*1*1 + 1*1*1 + 1*1*1 + 4*2*1 + 1*2*2)/16/4 = 20/64 -> 1 - (1/16)/(20/64) = 0.8
    assert m["qwk"] == pytest.approx(0.8)
    assert m["by_grade"]["2"] == {"accuracy": 0.5, "n": 2} and m["by_grade"]["3"]["accuracy"] == 0.0
    assert m["confusion"]["matrix"][2] == [0, 1, 1, 0, 0]
    (root / "test").rename(root / "holdout")
    with pytest.raises(UserError, match="--split"):
        task.read([root], ReadOptions())


def test_grading_folder_reads_every_image_and_refuses_one_it_cannot(tmp_path):
    task = get_task("grading")
    grade = tmp_path / "knee" / "1"
    grade.mkdir(parents=True)
    (grade / "a.png").write_bytes(tiny_png(1))
    (grade / "b.ppm").write_bytes(b"P6\n1 1\n255\n\x01\x02\x03")  # read by Pillow: an item too
    (grade / "notes.txt").write_text("sidecar")  # not an image: not an item, no error
    (grade / ".DS_Store").write_bytes(b"\0")
    assert [it.id for it in task.read([tmp_path / "knee"], ReadOptions()).items] == ["1/a.png", "1/b.ppm"]
    (grade / "c.heic").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(UserError, match=r"1 image file.*1/c.heic \(HEIC images are not read"):
        task.read([tmp_path / "knee"], ReadOptions())


def test_grading_from_build_with_clip_scores(tmp_path):
    docs = [{"grade": g, "conversations": [{"from": "human", "value": "<image>\nWhat is the KL grade?"},
                                           {"from": "gpt", "value": f"Grade {g}"}]} for g in (0, 1, 2, 3)]
    build = make_build(tmp_path, docs)
    task = get_task("grading")
    ds = task.read([build], ReadOptions())
    assert ds.build_id and [it.answer for it in ds.items] == [0, 1, 2, 3] and ds.items[0].prompt == "What is the KL grade?"
    assert task.class_prompts(ds.items[2], None)[2] == "a knee X-ray with Kellgren-Lawrence grade 2"
    probs = [[0.7, 0.1, 0.1, 0.05, 0.05], [0.2, 0.5, 0.2, 0.05, 0.05],
             [0.1, 0.2, 0.3, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2, 0.1]]
    recs = [task.make_record(it, scores=p, scoring="clip") for it, p in zip(ds.items, probs)]
    assert [r["parsed"] for r in recs] == [0, 1, 2, None] and recs[3]["status"] == "tie"  # 0.3 = 0.3
    m = task.score(recs)
    assert m["accuracy"] == 0.75 and m["auc_binary"] == 1.0 and m["ties"] == 1
    assert m["by_grade_auc"]["3"]["auc"] == pytest.approx(2.5 / 3) and m["by_grade_auc"]["4"]["auc"] is None


# -- open --------------------------------------------------------------------------------------
def test_open_containment_and_soft_match(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [
        {"id": 1, "text": "What bird is this?", "label": "Black footed Albatross", "image": "a.png"},
        {"id": 2, "text": "What animal?", "label": "dog"},
        {"id": 3, "text": "What animal?", "label": "dog"},
        {"id": 4, "text": "What animal?", "label": "dog"},
    ])
    task = get_task("open")
    ds = task.read([path], ReadOptions())
    recs = _records(task, ds, {"1": "It is a black-footed albatross.", "2": "Two dogs on a bench.",
                               "3": "A hotdog stand.", "4": "A cat."})
    m = task.score(recs)
    assert m["containment_accuracy"] == 0.5
    assert m["by_class"]["dog"] == {"accuracy": pytest.approx(1 / 3), "n": 3}
    cos = task.soft_scores(["Black footed Albatross.", "The sky is blue today. It is a dog.", "A red car."],
                           ["Black footed Albatross", "dog", "dog"])
    assert cos[0] > 0.95  # the same words
    assert cos[1] > cos[2]  # the best sentence counts, not the whole answer
    # Only the albatross answer is near its reference in meaning (MiniLM cosine about 0.94; the dog answers
    # 0.6 and below): containment counts "Two dogs" right, the soft match does not.
    assert m["soft_threshold"] == 0.85 and m["soft_match_accuracy"] == 0.25


# -- splits, missing and broken inputs -------------------------------------------------------------


def test_build_is_read_from_its_test_split_by_default(tmp_path):
    docs = lambda n: [mcqa_doc(MCQA_CLASSES[i % 4], MCQA_CLASSES) for i in range(n)]  # noqa: E731
    build = make_split_build(tmp_path / "ab", {"train": docs(3), "test": docs(2)})
    task = get_task("mcqa")
    ds = task.read([build], ReadOptions())
    assert ds.split == "test" and sorted(it.id for it in ds.items) == ["test000", "test001"]
    ds = task.read([build], ReadOptions(split="train"))
    assert ds.split == "train" and len(ds) == 3
    with pytest.raises(UserError, match=r"has no split 'val' \(splits: test, train\)"):
        task.read([build], ReadOptions(split="val"))
    # No test split: the only split unless it is train; several splits need --split.
    only_val = make_split_build(tmp_path / "v", {"val": docs(2)})
    assert task.read([only_val], ReadOptions()).split == "val"
    with pytest.raises(UserError, match=r"has no split 'test' \(splits: val\)"):
        task.read([only_val], ReadOptions(split="test"))
    for name, splits in (("t", {"train": docs(2)}), ("tv", {"train": docs(2), "val": docs(1)})):
        with pytest.raises(UserError, match="has no test split .*choose one with --split"):
            task.read([make_split_build(tmp_path / name, splits)], ReadOptions())


@pytest.mark.parametrize("name", ["mcqa", "grading", "open", "scienceqa", "mmbench"])
def test_missing_data_is_named(tmp_path, name):
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'} does not exist"):
        get_task(name).read([tmp_path / "nope"], ReadOptions())


def test_broken_scienceqa_files_are_named(tmp_path):
    sqa = tmp_path / "sqa"
    sqa.mkdir()
    (sqa / "pid_splits.json").write_text('{"test": ["1"]}')
    (sqa / "problems.json").write_text('{"1": {"question": "Which?", "choi')
    with pytest.raises(UserError, match="problems.json is not valid JSON"):
        get_task("scienceqa").read([sqa], ReadOptions())
    (sqa / "problems.json").write_text("{}")
    with pytest.raises(UserError, match="problems.json holds no problems"):
        get_task("scienceqa").read([sqa], ReadOptions())


def test_scoring_predictions_of_another_task_is_refused(tmp_path, mcqa_build):
    task = get_task("mcqa")
    ds = task.read([mcqa_build], ReadOptions())
    (tmp_path / "run").mkdir()
    preds = _write_jsonl(tmp_path / "run" / "predictions.jsonl", _records(task, ds, {it.id: "A" for it in ds.items}))
    with pytest.raises(UserError, match="does not hold pope predictions"):
        score_predictions(get_task("pope"), preds, [], ReadOptions(), tmp_path / "s1", quiet=True, plots=False)
    (tmp_path / "run" / "run.json").write_text(json.dumps({"task": "mcqa"}))
    with pytest.raises(UserError, match="holds mcqa predictions .*--task mcqa"):
        score_predictions(get_task("pope"), preds, [], ReadOptions(), tmp_path / "s2", quiet=True, plots=False)


def test_scoring_part_of_the_data_warns(tmp_path, capsys):
    ann, combined = _pope_files(tmp_path)
    answers = _write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}, {"question_id": 99, "text": "No"}])
    score_predictions(get_task("pope"), answers, [combined, ann], ReadOptions(), tmp_path / "out", plots=False)
    err = capsys.readouterr().err
    assert "warning: scored 1 of 6 items; 1 predictions match no item" in err


def test_mmbench_without_images_warns(tmp_path, capsys):
    tsv = _mmbench_tsv(tmp_path / "mmbench_dev.tsv")
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        r.pop("image")
    with open(tsv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    assert len(get_task("mmbench").read([tsv], ReadOptions()).items) == 7
    assert "has no 'image' column" in capsys.readouterr().err
    get_task("mmbench").read([_mmbench_tsv(tmp_path / "with.tsv")], ReadOptions())
    assert "image" not in capsys.readouterr().err


def test_pope_refuses_a_build_and_files_without_questions(tmp_path, mcqa_build):
    with pytest.raises(UserError, match="is a vlmforge build; pope reads POPE question files"):
        get_task("pope").read([mcqa_build], ReadOptions())  # it read build.json as POPE: 0 items, exit 0
    with pytest.raises(UserError, match="is a vlmforge build; scienceqa reads ScienceQA's folder"):
        get_task("scienceqa").read([mcqa_build], ReadOptions())  # was "give ScienceQA's folder ...", as if none given
    folder = tmp_path / "notpope"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"name": "something else"}))
    with pytest.raises(UserError, match="no POPE questions"):
        get_task("pope").read([folder], ReadOptions())
    (folder / "q.json").write_text(json.dumps({"question_id": 1, "text": "Is there a dog?", "label": "yes"}))
    with pytest.raises(UserError, match="question 1 names no image"):  # was asked with no image at all
        get_task("pope").read([folder / "q.json"], ReadOptions())


def test_split_that_does_not_apply_is_refused_or_used(tmp_path):
    """--split used to be ignored where the data has no splits: the run scored other data than asked for."""
    ann, _ = _pope_files(tmp_path)
    with pytest.raises(UserError, match="--split test does not apply here: POPE"):
        get_task("pope").read([ann], ReadOptions(split="test"))
    unseen = _write_jsonl(tmp_path / "unseen.json", [{"id": 1, "options": ["cat", "dog"], "answer_index": 0}])
    for name in ("mcqa", "open", "grading"):
        with pytest.raises(UserError, match="does not apply here: .*unseen.json is a file"):
            get_task(name).read([unseen], ReadOptions(split="val"))
    tsv = _mmbench_tsv(tmp_path / "mmbench.tsv")  # every row is split "dev"
    ds = get_task("mmbench").read([tsv], ReadOptions(split="dev"))
    assert len(ds.items) == 7 and ds.split == "dev"
    with pytest.raises(UserError, match="no rows of split 'test' \\(splits: dev\\)"):
        get_task("mmbench").read([tsv], ReadOptions(split="test"))
    knee = tmp_path / "knee"
    for split in ("train", "val"):
        (knee / split / "0").mkdir(parents=True)
        (knee / split / "0" / "a.png").write_bytes(tiny_png(1))
    with pytest.raises(UserError, match="holds train, val; choose one with --split"):
        get_task("grading").read([knee], ReadOptions())
    # a split it does not hold is named as such (it said: choose one with --split, though one was chosen)
    with pytest.raises(UserError, match="has no split 'test' \\(it holds train, val\\)"):
        get_task("grading").read([knee], ReadOptions(split="test"))
    assert get_task("grading").read([knee], ReadOptions(split="val")).split == "val"


@pytest.mark.parametrize("args, message", [
    (["--task", "mcqa", "--prompt", "Which?"], "--prompt applies to grading and open, not mcqa"),
    (["--task", "scienceqa", "--prompt-suffix", ""], "--prompt-suffix applies to pope, not scienceqa"),
    (["--task", "pope", "--rounds", "2"], "--rounds applies to mmbench, not pope"),
    (["score", "--task", "pope", "--rounds", "2", "--predictions", "p.jsonl"], "--rounds applies to mmbench"),
])
def test_task_options_given_to_another_task_are_refused(args, message):
    """They were read by no one: the run went on as if they had not been given."""
    from typer.testing import CliRunner

    from vlmforge.cli import app

    r = CliRunner().invoke(app, ["eval", *args, "--data", "x", "--model", "m"] if args[0] != "score" else ["eval", *args])
    assert isinstance(r.exception, UserError) and message in str(r.exception)


def test_empty_build_and_empty_data_are_named(tmp_path):
    from vlmforge.evaluation.items import Dataset
    from vlmforge.evaluation.run import evaluate, finish

    empty = make_split_build(tmp_path / "b", {"test": []})  # a selection that matched nothing
    with pytest.raises(UserError, match="is empty \\(no shards, 0 samples\\): nothing to evaluate"):
        get_task("open").read([empty], ReadOptions())
    with pytest.raises(UserError, match="no items to evaluate in somewhere"):
        evaluate(get_task("open"), Dataset([], source="somewhere"), None, tmp_path / "out", scoring="generate")
    summary = finish(get_task("open"), [], tmp_path / "s", dataset=Dataset([], source="x", split="test"), quiet=True)
    assert summary["data"] == "x" and summary["split"] == "test"  # an empty Dataset is falsy: this was None


def test_class_templates_take_braces_or_label_and_need_a_place(mcqa_build, tmp_path):
    from vlmforge.evaluation.run import evaluate

    task = get_task("mcqa")
    item = task.read([mcqa_build], ReadOptions()).items[0]
    # `train --prompt` writes {label}: the same template works here (it was a KeyError traceback)
    assert task.class_prompts(item, "a photo of a {label}.") == task.class_prompts(item, "a photo of a {}.")
    assert task.class_prompts(item, "{} {x}")[0] == "cat {x}"  # other braces stay (str.format raised)
    assert get_task("grading").class_prompts(item, "grade {label}")[:2] == ["grade 0", "grade 1"]
    ds = task.read([mcqa_build], ReadOptions())
    with pytest.raises(UserError, match="has no \\{\\} where the class goes"):  # every option one text: all ties
        evaluate(task, ds, None, tmp_path / "o", class_template="a photo", quiet=True)


@pytest.mark.parametrize("task", ["pope", "mcqa", "grading", "open", "scienceqa"])
def test_a_question_file_that_is_not_records_is_named(tmp_path, task):
    """A JSON list of numbers was AttributeError: 'int' object has no attribute 'get'; a JSON list cut short a
    JSONDecodeError; a binary file a UnicodeDecodeError; a dict without ids, for scienceqa, 'record None has no
    gold answer'."""
    numbers, cut, binary = tmp_path / "numbers.json", tmp_path / "cut.json", tmp_path / "binary.json"
    numbers.write_text("[1, 2]")
    cut.write_text('[{"question_id": 1, "text": "Is')
    binary.write_bytes(b'{"a": "\xb8\xff"}')
    t = get_task(task)
    for path, message in ((numbers, "record 1 is int, not a JSON object"),
                          (cut, "is not valid JSON \\(Unterminated string"), (binary, "is not a text file \\(byte 7 ")):
        with pytest.raises(UserError, match=message):
            t.read([path], ReadOptions())
        with pytest.raises(UserError, match=message):  # the same reader takes answer files
            score_predictions(t, path, [], ReadOptions(), tmp_path / "scores", quiet=True, plots=False)
    if task == "scienceqa":
        (tmp_path / "dict.json").write_text('{"a": 1}')
        with pytest.raises(UserError, match="is not a LLaVA-format ScienceQA question file: a record has no id"):
            t.read([tmp_path / "dict.json"], ReadOptions())


def test_an_mmbench_tsv_that_is_not_text_is_named(tmp_path):
    tsv = tmp_path / "mmbench.tsv"
    tsv.write_bytes(b"index\tquestion\n\xb8\xff\n")
    with pytest.raises(UserError, match="is not a text file \\(byte 15 is not UTF-8\\); give the MMBench .tsv"):
        get_task("mmbench").read([tsv], ReadOptions())


def test_a_graded_folder_with_folders_that_are_not_grades_is_refused(tmp_path):
    """A folder among the grades not named by one ('KL2', 'unsure') was skipped: its images left out of every
    metric without a word. With some grades beside it, the tree was taken for splits ('choose one with --split')."""
    task = get_task("grading")
    for name in ("0", "2", "unsure"):
        (tmp_path / "knee" / "test" / name).mkdir(parents=True)
        (tmp_path / "knee" / "test" / name / "a.png").write_bytes(tiny_png(1))
    (tmp_path / "knee" / "test" / ".cache").mkdir()  # hidden: not a grade, not a mistake
    for root in (tmp_path / "knee", tmp_path / "knee" / "test"):
        with pytest.raises(UserError, match=r"knee/test holds folders that are not grades: unsure; a graded folder"):
            task.read([root], ReadOptions())
    shutil.rmtree(tmp_path / "knee" / "test" / "unsure")
    assert [it.id for it in task.read([tmp_path / "knee"], ReadOptions()).items] == ["0/a.png", "2/a.png"]


def test_scores_are_not_written_into_a_training_run_or_a_model(tmp_path):
    """`eval score --out` put summary.json and plots among a training run's or a model's files, which
    `vlmforge eval --out` refuses; a file as --out was a traceback once everything was scored."""
    predictions = _write_jsonl(tmp_path / "predictions.jsonl", [  # our own: they carry their gold answers
        {"id": "q1", "answer": 1, "options": ["cat", "dog"], "meta": {"class": "dog"}, "prediction": "B",
         "scoring": "generate"}])
    run, model = tmp_path / "run", tmp_path / "model"
    run.mkdir()
    (run / "run.json").write_text('{"config": {}}')
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out, what in ((run, "a training run"), (model, "a model folder")):
        with pytest.raises(UserError, match=f"--out {out} is {what}"):
            score_predictions(get_task("mcqa"), predictions, [], ReadOptions(), out, quiet=True, plots=False)
        assert not (out / "summary.json").exists()
    for out in (predictions, predictions / "scores"):  # were FileExistsError / NotADirectoryError tracebacks
        with pytest.raises(UserError, match=f"--out {out}: {predictions} is a file; give a folder for the scores"):
            score_predictions(get_task("mcqa"), predictions, [], ReadOptions(), out, quiet=True, plots=False)
    assert score_predictions(get_task("mcqa"), predictions, [], ReadOptions(), tmp_path / "scores", quiet=True,
                             plots=False)["metrics"]["accuracy"] == 1.0


def test_a_pope_file_with_a_question_left_unlabelled_is_refused(tmp_path):
    """One line of a coco_pope file without its label made the file pass for LLaVA's combined question file: its
    labelled questions were left out of the evaluation, and that line scored against another question's label.
    A line without its text was left out."""
    f = _write_jsonl(tmp_path / "coco_pope_random.json", [
        {"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "text": "Is there a dog in the image?"},
        {"question_id": 3, "image": "b.jpg", "text": "Is there a cat in the image?", "label": "no"}])
    with pytest.raises(UserError, match="coco_pope_random.json: question 2 has no label, though other questions of"):
        get_task("pope").read([f], ReadOptions(image_root=tmp_path))
    f = _write_jsonl(tmp_path / "coco_pope_popular.json", [  # a question without its text was left out
        {"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.jpg", "question": "Is there a dog in the image?", "label": "no"}])
    with pytest.raises(UserError, match="coco_pope_popular.json: question 2 has no 'text' \\(the question\\), though"):
        get_task("pope").read([f], ReadOptions(image_root=tmp_path))


@pytest.mark.parametrize("index", [4, -1])
def test_an_mcqa_sample_whose_answer_is_no_option_is_refused(tmp_path, index):
    """answer_index 4 of four options was an IndexError traceback; -1 took the last option for the gold one."""
    doc = {**mcqa_doc("cat", MCQA_CLASSES), "answer_index": index}
    build = make_build(tmp_path / "b", [doc])
    with pytest.raises(UserError, match=f"sample test000 has answer_index {index} for 4 options"):
        get_task("mcqa").read([build], ReadOptions())
