"""FFN token analysis: hand-set weights give hand-worked neurons, tokens and shares; files and fields."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.analysis.conftest import CAT_NEURON, TOP, expected_tokens
from vlmforge.analysis import ffn as F


def test_neuron_tokens_by_hand():
    import torch

    down = torch.zeros(4, 3)  # hidden 4, three neurons
    down[1, 0], down[2, 1], down[3, 2] = 1.0, 1.0, -1.0
    unembed = torch.zeros(6, 4)  # vocab 6
    unembed[4, 1], unembed[2, 1], unembed[5, 2] = 3.0, 2.0, 1.0
    unembed[0, 3], unembed[1, 3], unembed[3, 3] = 1.0, -4.0, -2.0
    # neuron 0 writes +channel 1: logits (0, 0, 2, 0, 3, 0) -> tokens 4, 2
    # neuron 2 writes -channel 3: logits (-1, 4, 0, 2, 0, 0) -> tokens 1, 3
    assert F.neuron_token_ids(down, unembed, [0, 2], 2) == [[4, 2], [1, 3]]
    assert F.neuron_token_ids(down, unembed, [1], 1) == [[5]]  # +channel 2


def test_question_and_answer_prefix():
    doc = {"conversations": [{"from": "human", "value": "<image>\nWhat is the object in the region?"},
                             {"from": "gpt", "value": "[0.1, 0.2, 0.5, 0.6] Black footed Albatross"}]}
    assert F.question_and_prefix(doc, "Black footed Albatross") == ("What is the object in the region?",
                                                                    "[0.1, 0.2, 0.5, 0.6]")
    assert F.question_and_prefix({"conversations": []}, "cat") == (F.DEFAULT_QUESTION, None)
    # the label as a word: before, the 'cat' of 'indicate' cut the prefix to 'These features indi'
    doc = {"conversations": [{"from": "human", "value": "What is it?"},
                             {"from": "gpt", "value": "These features indicate a Cat, not a dog."}]}
    assert F.question_and_prefix(doc, "cat") == ("What is it?", "These features indicate a")
    assert F.question_and_prefix(doc, "do") == ("What is it?", None)


def test_handset_model_tokens_by_hand(handset_llava, label_build, tmp_path):
    out = F.run_ffn(str(handset_llava), label_build, tmp_path / "ffn", n=7, top_k=3, n_tokens=3, quiet=True,
                    dtype="float32")
    recs = {p.stem: json.loads(p.read_text()) for p in (out / "prompts").glob("*.json")}
    assert len(recs) == 7
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(handset_llava)
    cat_id = tok.convert_tokens_to_ids("Ġcat")
    for key, rec in recs.items():
        assert rec["prompt"] == "USER: <image>\nWhat is shown in this image? ASSISTANT:"
        assert rec["gt_label"] == key.split("-")[0]
        assert rec["gt_token"] == f" {rec['gt_label']}"
        for layer in (0, 1):
            assert rec["top_neurons_per_layer"][layer] == TOP[layer]
            acts = rec["top_activations_per_layer"][layer]
            assert acts == sorted(acts, reverse=True) and acts[-1] > 0
            want = [t for n in TOP[layer] for t in expected_tokens(layer, n, cat_id)]
            assert rec["top_tok_ids_per_layer"][layer] == want
            assert rec["top_toks_per_layer"][layer] == [tok.decode([t]) for t in want]
            rand = rec["random_neurons_per_layer"][layer]
            assert len(set(rand)) == 3 and not set(rand) & set(TOP[layer]) and all(0 <= i < 64 for i in rand)
            assert rec["random_tok_ids_per_layer"][layer] == [t for n in rand for t in expected_tokens(layer, n, cat_id)]
        # only the cat neuron of layer 1 promotes " cat"
        assert rec["top_hit_per_layer"] == [False, rec["gt_label"] == "cat"]
        assert rec["random_hit_per_layer"] == [False, False]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == summary["n_scored"] == 7 and summary["ffn_module"] == "mlp.down_proj"
    assert [(r["top_share"], r["random_share"]) for r in summary["layers"]] == [(0.0, 0.0), (4 / 7, 0.0)]
    table = (out / "summary.md").read_text()
    assert "| 1 | 0.5714 | 0.0000 | 4 | 0 |" in table
    assert (out / "ffn_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the random control is seeded by (seed, key, layer): a rerun picks the same neurons, another seed others
    again = F.run_ffn(str(handset_llava), label_build, tmp_path / "again", n=7, quiet=True, dtype="float32")
    other = F.run_ffn(str(handset_llava), label_build, tmp_path / "other", n=7, seed=1, quiet=True, dtype="float32")
    rand = {k: r["random_neurons_per_layer"] for k, r in recs.items()}
    assert {p.stem: json.loads(p.read_text())["random_neurons_per_layer"] for p in (again / "prompts").glob("*.json")} == rand
    assert {p.stem: json.loads(p.read_text())["random_neurons_per_layer"] for p in (other / "prompts").glob("*.json")} != rand
    assert CAT_NEURON[1] in TOP[CAT_NEURON[0]]


def test_cli_on_a_random_tiny_llava(tiny_llava, label_build, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "analyze", "ffn", "--model", str(tiny_llava),
                        "--shards", str(label_build), "--where", "label = 'cat'", "--n", "2", "--top-k", "2",
                        "--tokens", "4", "--answer-prefix", "It is a", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| layer | top-2 share |" in r.stderr
    files = sorted((out / "prompts").glob("*.json"))
    assert len(files) == 2
    rec = json.loads(files[0].read_text())
    assert rec["prompt"].endswith("ASSISTANT: It is a") and rec["gt_label"] == "cat"
    for field in ("top_toks_per_layer", "random_toks_per_layer", "top_neurons_per_layer", "random_neurons_per_layer"):
        assert len(rec[field]) == 2  # decoder layers
    assert all(len(x) == 2 for x in rec["top_neurons_per_layer"])
    assert all(len(x) == 8 for x in rec["top_toks_per_layer"] + rec["random_toks_per_layer"])
    summary = json.loads((out / "summary.json").read_text())
    assert [r["layer"] for r in summary["layers"]] == [0, 1]
    # each layer's shares are the fractions of the two prompts whose neurons' tokens hit the class token
    recs = [json.loads(f.read_text()) for f in files]
    for r in summary["layers"]:
        assert r["top_share"] == sum(x["top_hit_per_layer"][r["layer"]] for x in recs) / 2
        assert r["random_share"] == sum(x["random_hit_per_layer"][r["layer"]] for x in recs) / 2


def test_a_rerun_into_the_same_folder_leaves_only_its_own_prompts(tiny_llava, label_build, tmp_path):
    """Before: prompts/<key>.json of an earlier run with another --n or --where stayed beside the new ones."""
    out = tmp_path / "ffn"
    F.run_ffn(str(tiny_llava), label_build, out, n=4, quiet=True, dtype="float32")
    assert len(list((out / "prompts").glob("*.json"))) == 4
    F.run_ffn(str(tiny_llava), label_build, out, n=2, seed=5, quiet=True, dtype="float32")
    summary = json.loads((out / "summary.json").read_text())
    files = list((out / "prompts").glob("*.json"))
    assert len(files) == summary["n_prompts"] == 2


def test_out_and_device_are_checked_before_the_model_loads(tiny_llava, label_build, tmp_path):
    """Before: --out naming a file failed with a traceback after every prompt was analysed."""
    from vlmforge.errors import UserError

    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(UserError, match="is a file; the analysis needs a folder"):
        F.run_ffn(str(tiny_llava), label_build, taken, n=1, quiet=True)
    with pytest.raises(UserError, match="unknown --device"):
        F.run_ffn(str(tiny_llava), label_build, tmp_path / "x", n=1, quiet=True, device="gpu")
    # before: torch's 'selected index k out of range' traceback
    with pytest.raises(UserError, match=r"--tokens 100000 is too large: the vocabulary has \d+ tokens"):
        F.run_ffn(str(tiny_llava), label_build, tmp_path / "y", n=1, n_tokens=100000, quiet=True, dtype="float32")


def test_clip_model_is_refused(tiny_clip, label_build, tmp_path):
    from vlmforge.errors import UserError

    with pytest.raises(UserError, match="CLIP"):
        F.run_ffn(str(tiny_clip), label_build, tmp_path, n=1, quiet=True)


def test_the_summary_plot_has_one_tick_per_layer_number():
    """Before: a 2-layer model's plot had ticks at layers 0.2, 0.4 ..."""
    from vlmforge.analysis.ffn import summary_figure

    rows = [{"layer": i, "top_share": 0.5, "random_share": 0.0} for i in range(2)]
    ax = summary_figure(rows, "t").axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_class_name_whose_first_token_is_a_space_is_read_at_the_name(tiny_llava):
    """Before: the tiny tokenizer splits ' sheep' into ' ' + 's' ...; the class token was ' ', which no
    neuron's tokens can match once stripped, so every such prompt counted as a miss at every layer."""
    import numpy as np

    from transformers import AutoTokenizer

    from tests.analysis.conftest import png

    tok = AutoTokenizer.from_pretrained(tiny_llava)
    prompt = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    assert tok.decode([F.next_token_id(tok, prompt, prompt + " sheep")]) == " "  # the case in question
    longer, gt = F.class_token(tok, prompt, prompt + " sheep")
    assert longer == prompt + " " and tok.decode([gt]).strip() and "sheep".startswith(tok.decode([gt]).strip())
    assert F.class_token(tok, prompt, prompt + " cat") == (prompt, F.next_token_id(tok, prompt, prompt + " cat"))
    runner = F.load_vlm(str(tiny_llava), dtype="float32")
    image = png(np.zeros((32, 32, 3), dtype="uint8"))
    [rec] = F.analyse_prompts(runner, [F.PromptJob("k", "sheep", prompt, prompt + " sheep", image)])
    assert rec["prompt"] == prompt + " " and rec["gt_token_id"] == gt and rec["gt_token"].strip()


def test_answers_that_do_not_name_the_label_are_counted_and_warned_about(tiny_llava, label_build, tmp_path, capsys):
    """Before: on a multiple-choice build (answer 'B') the prompts silently ended where the letter goes,
    and the share of the class name there was reported like any other."""
    import vlmforge

    mcqa = vlmforge.build("mcqa", "build", out=tmp_path / "m", source_options={"path": str(label_build)}, options=2)
    out = F.run_ffn(str(tiny_llava), mcqa.path, tmp_path / "ffn", n=3, dtype="float32")
    assert json.loads((out / "summary.json").read_text())["answers_without_label"] == 3
    assert "the answers of 3 of 3 samples do not name their label" in capsys.readouterr().err
    out = F.run_ffn(str(tiny_llava), label_build, tmp_path / "ffn2", n=3, dtype="float32")
    assert json.loads((out / "summary.json").read_text())["answers_without_label"] == 0
    assert "do not name their label" not in capsys.readouterr().err
    out = F.run_ffn(str(tiny_llava), mcqa.path, tmp_path / "ffn3", n=3, answer_prefix="It is a", dtype="float32")
    assert json.loads((out / "summary.json").read_text())["answers_without_label"] == 0
