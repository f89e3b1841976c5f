"""Per-layer FFN token analysis of a LLaVA-style model ("Prompt the Unseen").

An FFN's down-projection writes `sum_i a_i * W[:, i]` into the residual stream: neuron i, with input
activation a_i, adds its column W[:, i]. Read through the unembedding U, `U @ W[:, i]` says which
tokens that neuron pushes the output towards. For each prompt (image, question, and the answer up to
the class name) one forward pass runs; at the last position of every decoder layer the k neurons with
the largest activations, and k random other neurons as a control, are read this way and their top
tokens kept. The summary counts, per layer, how often the ground-truth class token (the token the
model should produce next) is among the top tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlmforge.errors import UserError

DOWN_PROJ_NAMES = ("mlp.down_proj", "mlp.fc2", "mlp.dense_4h_to_h")
DEFAULT_QUESTION = "What is the object in the image?"


# -- model parts -----------------------------------------------------------------------------------
def load_vlm(model: str, device: str = "cpu", dtype: str = "auto"):
    """The evaluator's local runner holding an image-text-to-text (LLaVA-style) model."""
    from vlmforge.evaluation.runners import LocalRunner

    runner = LocalRunner(model, device=device, dtype=dtype)
    runner.setup()
    if runner.kind != "vlm":
        raise UserError(f"{model} is a CLIP model; `analyze ffn` needs a LLaVA-style model with a language model")
    return runner


def _submodule(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def down_projections(model, name: str | None = None) -> tuple[str, list[Any]]:
    """(name, the FFN down-projection Linear of each decoder layer of the language model, in order)."""
    import torch.nn as nn

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"cannot find the decoder layers of {type(model).__name__}")
    for cand in ([name] if name else DOWN_PROJ_NAMES):
        mods = [_submodule(layer, cand) for layer in layers]
        if all(isinstance(m, nn.Linear) for m in mods):
            return cand, mods
    raise UserError(f"the decoder layers have no Linear {name or ' / '.join(DOWN_PROJ_NAMES)}; "
                    "name the down-projection with --ffn-module")


def unembedding(model):
    """The output embedding matrix [vocab, hidden]."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise UserError(f"{type(model).__name__} has no output embedding (lm_head) to read tokens through")
    return head.weight


def neuron_token_ids(down_weight, unembed, neurons: Sequence[int], n_tokens: int) -> list[list[int]]:
    """Top `n_tokens` token ids of each neuron's output column read through the unembedding."""
    import torch

    with torch.no_grad():
        cols = down_weight[:, list(neurons)].to(unembed.dtype)  # [hidden, k]
        logits = (unembed @ cols).float()  # [vocab, k]
        return logits.topk(n_tokens, dim=0).indices.T.tolist()


def last_position_inputs(model, batch, modules: Sequence[Any]) -> tuple[list[Any], Any]:
    """Input activations of each module at the last position [batch, neurons] (inputs are left-padded,
    so the last position is every row's last real token), and the model's next-token ids there."""
    import torch

    acts: dict[int, Any] = {}

    def grab(i: int):
        def hook(_mod, inputs):
            acts[i] = inputs[0][:, -1, :].detach().float().cpu()
        return hook

    handles = [m.register_forward_pre_hook(grab(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            try:
                logits = model(**batch, logits_to_keep=1).logits
            except TypeError:  # models without logits_to_keep
                logits = model(**batch).logits
    finally:
        for h in handles:
            h.remove()
    return [acts[i] for i in range(len(modules))], logits[:, -1].argmax(-1).cpu()


# -- prompts ---------------------------------------------------------------------------------------
def question_and_prefix(doc: dict[str, Any], label: str) -> tuple[str, str | None]:
    """The sample's first question, and its answer up to the label ('[0.1, 0.2, 0.5, 0.6] Albatross'
    -> '[0.1, 0.2, 0.5, 0.6]'); the label as a word ('cat' in 'these indicate a cat' is not the one in
    'indicate'); None when the answer does not name the label (a multiple-choice letter)."""
    import re

    from vlmforge.evaluation.items import first_turns

    human, gpt = first_turns(doc)
    found = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", gpt, re.IGNORECASE)
    return human or DEFAULT_QUESTION, gpt[: found.start()].rstrip() if found else None


def prompt_texts(processor, question: str, prefix: str, label: str) -> tuple[str, str]:
    """(prompt, prompt continued by the class name), in the model's chat format. The prompt ends just
    before the class name, so its last position is where the model has to produce it."""
    from vlmforge.evaluation.runners import FALLBACK_TEMPLATE

    answer = f"{prefix} {label}" if prefix else label
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        full = processor.apply_chat_template(messages, tokenize=False)
        at = full.rfind(answer)
        if at >= 0:
            return (full[:at] + prefix).rstrip(), full[: at + len(answer)]
    head = FALLBACK_TEMPLATE.format(prompt=question)
    return f"{head} {prefix}".rstrip(), f"{head} {answer}"


def next_token_id(tokenizer, prompt: str, full: str) -> int | None:
    """The first token of `full` past the tokens it shares with `prompt`: the class name's first token."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f = tokenizer(full, add_special_tokens=False)["input_ids"]
    same = 0
    while same < min(len(p), len(f)) and p[same] == f[same]:
        same += 1
    return f[same] if same < len(f) else None


def class_token(tokenizer, prompt: str, full: str) -> tuple[str, int | None]:
    """(prompt to run, the class name's first token id). A first token that is only a space (a small
    BPE splits ' sheep' into ' ' + 's' ..., Llama writes '▁' before a digit) is moved into the prompt
    when the longer prompt tokenizes that way, so the last position is where the model writes the
    name itself; else the prompt has no class token (None): a space names no class."""
    gt = next_token_id(tokenizer, prompt, full)
    if gt is None or tokenizer.decode([gt]).strip():
        return prompt, gt
    longer = prompt + tokenizer.decode([gt])
    ids = tokenizer(longer, add_special_tokens=False)["input_ids"]
    f = tokenizer(full, add_special_tokens=False)["input_ids"]
    if longer != prompt and ids[-1:] == [gt] and f[: len(ids)] == ids and len(f) > len(ids) \
            and tokenizer.decode([f[len(ids)]]).strip():
        return longer, f[len(ids)]
    return prompt, None


def _norm(token: str) -> str:
    return token.strip().lower()


# -- the analysis ----------------------------------------------------------------------------------
@dataclass
class PromptJob:
    key: str
    label: str
    prompt: str
    full: str
    image: bytes


def analyse_prompts(runner, jobs: Sequence[PromptJob], top_k: int = 3, n_tokens: int = 3, seed: int = 0,
                    ffn_module: str | None = None, batch_size: int = 4, advance=lambda n=1: None) -> list[dict[str, Any]]:
    """One record per prompt (see `run_ffn`), in the order given."""
    from vlmforge.evaluation.runners import pil_image

    model, tok = runner.model, runner.processor.tokenizer
    _, downs = down_projections(model, ffn_module)
    unembed = unembedding(model)
    width = downs[0].in_features
    if top_k * 2 > width:
        raise UserError(f"--top-k {top_k} is too large: the FFN has {width} neurons (top + random must fit)")
    if n_tokens > unembed.shape[0]:
        raise UserError(f"--tokens {n_tokens} is too large: the vocabulary has {unembed.shape[0]} tokens")
    cache: dict[tuple[int, int], list[int]] = {}

    def tokens_of(layer: int, neurons: list[int]) -> list[int]:
        todo = [i for i in neurons if (layer, i) not in cache]
        if todo:
            for i, ids in zip(todo, neuron_token_ids(downs[layer].weight, unembed, todo, n_tokens)):
                cache[layer, i] = ids
        return [t for i in neurons for t in cache[layer, i]]

    records = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        prompts, gts = zip(*(class_token(tok, j.prompt, j.full) for j in chunk))
        batch = runner._encode(list(prompts), [pil_image(j.image, f"sample {j.key}") for j in chunk], "left")
        acts, next_ids = last_position_inputs(model, batch, downs)
        for b, job in enumerate(chunk):
            gt = gts[b]
            gt_text = tok.decode([gt]) if gt is not None else None
            rec: dict[str, Any] = {"key": job.key, "gt_label": job.label, "prompt": prompts[b],
                                   "gt_token": gt_text, "gt_token_id": gt,
                                   "next_token": tok.decode([int(next_ids[b])]),
                                   "top_neurons_per_layer": [], "top_activations_per_layer": [],
                                   "top_toks_per_layer": [], "top_tok_ids_per_layer": [],
                                   "random_neurons_per_layer": [], "random_toks_per_layer": [],
                                   "random_tok_ids_per_layer": [], "top_hit_per_layer": [], "random_hit_per_layer": []}
            for layer, a in enumerate(acts):
                vals, idx = a[b].topk(top_k)
                top = idx.tolist()
                # 2k distinct draws hold at least k that are not among the top k
                draws = random.Random(f"{seed}:{job.key}:{layer}").sample(range(a.shape[1]), 2 * top_k)
                rand = [i for i in draws if i not in top][:top_k]
                for kind, neurons in (("top", top), ("random", rand)):
                    ids = tokens_of(layer, neurons)
                    toks = [tok.decode([t]) for t in ids]
                    rec[f"{kind}_neurons_per_layer"].append(neurons)
                    rec[f"{kind}_tok_ids_per_layer"].append(ids)
                    rec[f"{kind}_toks_per_layer"].append(toks)
                    hit = gt_text is not None and bool(_norm(gt_text)) and _norm(gt_text) in {_norm(t) for t in toks}
                    rec[f"{kind}_hit_per_layer"].append(hit)
                rec["top_activations_per_layer"].append([round(float(v), 6) for v in vals])
            records.append(rec)
        advance(len(chunk))
    return records


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer: the share of prompts (with a class token) whose class token is among the top tokens
    of the most active neurons, and of the random neurons."""
    scored = [r for r in records if r["gt_token_id"] is not None]
    n_layers = len(records[0]["top_hit_per_layer"]) if records else 0
    rows = []
    for layer in range(n_layers):
        top = sum(r["top_hit_per_layer"][layer] for r in scored)
        rnd = sum(r["random_hit_per_layer"][layer] for r in scored)
        rows.append({"layer": layer, "top_share": top / len(scored) if scored else None,
                     "random_share": rnd / len(scored) if scored else None, "top_hits": top, "random_hits": rnd})
    return rows


def summary_figure(rows: Sequence[dict[str, Any]], title: str):
    """Line plot of both shares per layer, one tick per layer number (no 0.5 layers)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from vlmforge.report.plots import plain

    fig = Figure(figsize=(6, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    layers = [r["layer"] for r in rows]
    ax.plot(layers, [r["top_share"] for r in rows], marker="o", label="top-k active neurons")
    ax.plot(layers, [r["random_share"] for r in rows], marker="x", linestyle="--", label="random neurons")
    ax.set_xlabel("decoder layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("share of prompts with the class token")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(plain(title), fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_summary(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    summary_figure(rows, title).savefig(path, format="png", metadata={"Software": None})
    return path


def run_ffn(model: str, shards: str | Path, out: Path, where: str | None = None, n: int | None = 100, seed: int = 0,
            top_k: int = 3, n_tokens: int = 3, question: str | None = None, answer_prefix: str | None = None,
            ffn_module: str | None = None, batch_size: int = 4, device: str = "cpu", dtype: str = "auto",
            quiet: bool = False) -> Path:
    """prompts/<key>.json per prompt, summary.json, summary.md and ffn_summary.png in `out`."""
    from vlmforge.analysis.samples import read_test_samples, remove_stale
    from vlmforge.curation.models import check_device
    from vlmforge.evaluation.report import markdown_table
    from vlmforge.export import output_folder
    from vlmforge.progress import console, progress_bar

    out = output_folder(out, "prompts/, summary.json, summary.md, ffn_summary.png", "analysis")
    check_device(device)
    data = read_test_samples(shards, where, n, seed)
    data.warn_if_training(quiet)
    for what, bad in (("label", [s.key for s in data.samples if s.label is None]),
                      ("image", [s.key for s in data.samples if s.image is None])):
        if bad:
            raise UserError(f"{len(bad)} chosen sample(s) have no {what} (e.g. {bad[0]}): the analysis needs an image "
                            "and its ground-truth class (a label column or json 'label'); filter with --where")
    runner = load_vlm(model, device, dtype)
    jobs, unnamed = [], []
    for s in data.samples:
        q, prefix = question_and_prefix(s.doc, s.label)
        if prefix is None and answer_prefix is None:
            unnamed.append(s.key)
        q = question or q
        prefix = (prefix or "") if answer_prefix is None else answer_prefix.strip()
        prompt, full = prompt_texts(runner.processor, q, prefix, s.label)
        jobs.append(PromptJob(s.key, s.label, prompt, full, s.image))
    if unnamed and not quiet:
        console.print(f"[yellow]warning[/] the answers of {len(unnamed)} of {len(jobs)} samples do not name their "
                      f"label (e.g. {unnamed[0]}; a multiple-choice answer is a letter): their prompts end where "
                      "the answer starts, where the model may be asked for something else; --question and "
                      "--answer-prefix set the prompt")
    with progress_bar("ffn analysis", total=len(jobs), disable=quiet) as advance:
        records = analyse_prompts(runner, jobs, top_k, n_tokens, seed, ffn_module, batch_size, advance)

    (out / "prompts").mkdir(parents=True, exist_ok=True)
    for rec in records:
        (out / "prompts" / f"{rec['key']}.json").write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n")
    remove_stale(out / "prompts", {f"{rec['key']}.json" for rec in records}, ".json")
    rows = summarise(records)
    table = markdown_table(["layer", f"top-{top_k} share", "random share", "top hits", "random hits"],
                           [[r["layer"], r["top_share"], r["random_share"], r["top_hits"], r["random_hits"]] for r in rows])
    scored = sum(r["gt_token_id"] is not None for r in records)
    summary = {"model": str(model), "data": data.source, "build_id": data.build_id, "where": where, "seed": seed,
               "splits": data.split_counts(), "answers_without_label": len(unnamed),
               "n_prompts": len(records), "n_scored": scored, "top_k": top_k, "tokens_per_neuron": n_tokens,
               "ffn_module": down_projections(runner.model, ffn_module)[0],
               "layers": rows, "plot": "ffn_summary.png", "table": "summary.md"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(f"### FFN class-token share - {model}\n\n{scored} prompts with a class token\n\n"
                                    f"{table}\n")
    plot_summary(rows, out / "ffn_summary.png", f"{Path(model).name}: class token among top FFN tokens ({scored} prompts)")
    if not quiet:
        console.print(table)
        console.print(f"[green]wrote[/] {len(records)} prompt analyses and the summary to {out}")
    return out
