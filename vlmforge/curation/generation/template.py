"""`template` backend: no model, deterministic rule-based texts for the offline path.

Builders that support it put what a rule needs under `request.extra["template"]`:
`{"task": "concepts", "label", "subject"}` -> a bullet list of visual features;
`{"task": "describe", "subject", "facts"}` -> a description built from the image's own pixels
(dominant colours, brightness, shape) and the given facts; `{"task": "answer", "label", "concepts",
"qtype"}` -> an answer of the question type (simple, explain, cot); `{"task": "reason",
"candidates", "context"}` -> a reasoning trial ending in "Final answer: X" with X drawn from the
candidates; `{"task": "extract"}` -> the final answer of the reasoning text in the prompt.
The i-th of n texts is drawn from Random(seed, i, prompt), so outputs never depend on batching.
Other backends ignore `extra["template"]`.
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

import numpy as np

from vlmforge.curation.generation import GenerationRequest, Generator
from vlmforge.curation.instructions import with_article
from vlmforge.errors import UserError

# A small palette for naming an image's dominant colours.
PALETTE = {
    "black": (20, 20, 20), "white": (235, 235, 235), "gray": (128, 128, 128), "red": (200, 30, 30),
    "orange": (230, 130, 30), "yellow": (230, 210, 40), "green": (40, 150, 50), "blue": (40, 80, 200),
    "brown": (120, 80, 40), "pink": (230, 150, 180), "purple": (120, 50, 150),
}
COLOR_WORDS = set(PALETTE) | {"grey", "rufous", "olive", "chestnut", "tan", "golden", "crimson", "scarlet"}


def _rng(req: GenerationRequest, i: int) -> random.Random:
    digest = hashlib.sha256(f"{req.seed}\0{i}\0{req.prompt}".encode()).hexdigest()
    return random.Random(digest)


def _join(items: list[str]) -> str:
    items = [s for s in items if s]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def image_facts(data: bytes) -> list[str]:
    """What simple pixel statistics say about an image: dominant colours, brightness, shape."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        small = rgb.resize((8, 8))
    pixels = np.asarray(small, np.float64).reshape(-1, 3)
    names = list(PALETTE)
    dist = ((pixels[:, None, :] - np.array([PALETTE[c] for c in names], np.float64)[None]) ** 2).sum(axis=2)
    counts: dict[str, int] = {}
    for i in dist.argmin(axis=1):
        counts[names[i]] = counts.get(names[i], 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))[:2]
    lum = float((pixels @ np.array([0.299, 0.587, 0.114])).mean())
    tone = "dark" if lum < 85 else "bright" if lum > 170 else "evenly lit"
    shape = "wide" if w > 1.2 * h else "tall" if h > 1.2 * w else "nearly square"
    return [f"mostly {_join(ranked)} colours", f"{with_article(tone)} scene", f"{with_article(shape)} frame"]


def _concepts(hint: dict[str, Any]) -> str:
    label = hint.get("label", "object")
    subject = hint.get("subject", "object")
    words = [w.lower() for w in str(label).replace("-", " ").split()]
    lines = [f"{w} colouring on the {subject}" for w in words if w in COLOR_WORDS]
    lines += [f"a distinctive overall {subject} shape", f"a characteristic {subject} size",
              f"distinctive markings on the {subject}", f"a recognisable head and outline",
              f"a typical surface texture and pattern"]
    return "\n".join(f"- {line}" for line in lines)


def _describe(req: GenerationRequest, hint: dict[str, Any], i: int) -> str:
    subject = hint.get("subject", "object")
    facts = list(hint.get("facts") or [])
    if req.image is not None:
        facts += image_facts(req.image)
    rng = _rng(req, i)
    rng.shuffle(facts)
    if not facts:
        return f"The image shows {with_article(subject)}."
    return f"The image shows {with_article(subject)} with {_join(facts[:4])}."


SIMPLE = ["This is {a_label}.", "The {subject} in the image is {a_label}.", "It is {a_label}."]
EXPLAIN = ["This is {a_label}. It can be recognised by {feats}.",
           "The {subject} is {a_label}: {feats} are characteristic of this kind.",
           "I identify it as {a_label} because of {feats}."]
COT = ["Let me look at the {subject} step by step. First, {first}. Next, {rest}. These features together point "
       "to one answer. Therefore, this is {a_label}.",
       "Step 1: the {subject} shows {first}. Step 2: it also has {rest}. Step 3: this combination matches "
       "{a_label}. So the answer is {label}."]



def _answer(req: GenerationRequest, hint: dict[str, Any], i: int) -> str:
    rng = _rng(req, i)
    label = hint.get("label", "object")
    subject = hint.get("subject", "object")
    feats = list(hint.get("concepts") or [])
    qtype = hint.get("qtype", "simple")
    if qtype == "simple" or not feats:
        return rng.choice(SIMPLE).format(label=label, a_label=with_article(label), subject=subject)
    picked = feats[: max(1, min(len(feats), 3))]
    if qtype == "cot":
        return rng.choice(COT).format(label=label, a_label=with_article(label), subject=subject, first=picked[0],
                                      rest=_join(picked[1:]) or "no other clear feature")
    return rng.choice(EXPLAIN).format(label=label, a_label=with_article(label), subject=subject, feats=_join(picked))


def _reason(req: GenerationRequest, hint: dict[str, Any], i: int) -> str:
    rng = _rng(req, i)
    cands = list(hint.get("candidates") or [])
    if not cands:
        raise UserError("the template generator's reasoning trials need candidate answers (extra.template.candidates)")
    context = hint.get("context") or "object"
    guess = rng.choice(cands)
    clue = rng.choice(["the visible outline", "the surrounding scene", "the size of the covered region",
                       "the parts that stick out from the blocks"])
    return (f"The gray blocks hide most of the {context}. Looking at {clue}, the hidden thing is most likely "
            f"{with_article(guess)}. Final answer: {guess}.")


class TemplateGenerator(Generator):
    """Deterministic rule-based texts (see the module docstring). `model` is ignored."""

    backend = "template"
    cacheable = False  # recomputing is cheaper than reading a cache file

    def __call__(self, requests: list[GenerationRequest]) -> list[list[str]]:
        return [[self._one(r, i) for i in range(r.n)] for r in requests]

    def _one(self, req: GenerationRequest, i: int) -> str:
        hint = req.extra.get("template") or {}
        task = hint.get("task")
        if task == "concepts":
            return _concepts(hint)
        if task == "describe":
            return _describe(req, hint, i)
        if task == "answer":
            return _answer(req, hint, i)
        if task == "reason":
            return _reason(req, hint, i)
        if task == "extract":
            from vlmforge.curation.softmatch import extract_answer

            return extract_answer(hint.get("text", req.prompt))
        raise UserError("the template generator only serves vlmforge's own builders (requests with "
                        "extra['template']); pick a model backend for free-form prompts")
