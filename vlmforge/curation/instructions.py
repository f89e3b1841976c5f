"""Instructions that ask a model to infer a hidden object from its context.

The type word (vehicle, animal, food, ...) comes from the COCO supercategory, or from the entity when
no category is known. Templates are picked per sample by a seeded choice, so rebuilds agree.
"""

from __future__ import annotations

import hashlib

# COCO supercategory -> the word a question uses for an object of it.
TYPE_WORDS = {
    "person": "person", "vehicle": "vehicle", "outdoor": "object", "animal": "animal", "accessory": "accessory",
    "sports": "piece of sports equipment", "kitchen": "kitchen item", "food": "food item", "furniture": "piece of furniture",
    "electronic": "electronic device", "appliance": "appliance", "indoor": "object",
}

TEMPLATES = (
    "In the given image, there is {a_type} heavily occluded by {fill}. What might the {type} occluded by the "
    "{fill_short} be? Please provide your reasoning process and confirm a unique answer.",
    "Part of this image is hidden behind {fill}. Judging from the visible context, what {type} is most likely "
    "concealed there? Explain your reasoning and give one answer.",
    "{A_type} in this picture has been covered by {fill}. Use the surrounding scene to work out what the hidden "
    "{type} is. Reason step by step, then state a single answer.",
    "Something in this image, {a_type}, is masked by {fill}. What {type} do you think is behind the "
    "{fill_short}? Describe your reasoning and settle on one answer.",
)
# The same questions when several objects are hidden (a plural phrase grounded to several instances).
PLURAL_TEMPLATES = (
    "In the given image, there are several {types} heavily occluded by {fill}. What might the {types} occluded "
    "by the {fill_short} be? Please provide your reasoning process and confirm a unique answer.",
    "Part of this image is hidden behind {fill}. Judging from the visible context, what {types} are most "
    "likely concealed there? Explain your reasoning and give one answer.",
    "Several {types} in this picture have been covered by {fill}. Use the surrounding scene to work out what "
    "the hidden {types} are. Reason step by step, then state a single answer.",
    "Some things in this image, several {types}, are masked by {fill}. What {types} do you think are behind "
    "the {fill_short}? Describe your reasoning and settle on one answer.",
)
PLURAL_TYPE_WORDS = {"person": "people", "accessory": "accessories", "piece of sports equipment": "pieces of sports equipment",
                     "piece of furniture": "pieces of furniture"}
SHORT_ANSWER_SUFFIX = " Answer with a single word or phrase."


def with_article(word: str) -> str:
    """The word with its indefinite article ("an animal", "a vehicle")."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def type_word(supercategory: str | None) -> str:
    return TYPE_WORDS.get(supercategory or "", "object")


def _sentences(text: str) -> list[str]:
    import re

    return [t for t in re.split(r"(?<=[.?!])\s+", text.strip()) if t]


def question_stem(question: str) -> str:
    """The question without its sentences asking for reasoning ("Explain your reasoning and give one
    answer.")."""
    return " ".join(t for t in _sentences(question) if "reason" not in t.lower())


def with_instruction(question: str, instruction: str) -> str:
    """The question's stem followed by `instruction`, in place of the question's own request for
    reasoning (two such requests in a row read as a doubled prompt)."""
    return f"{question_stem(question)} {instruction.strip()}".strip()


def short_answer_question(question: str) -> str:
    """The question's stem asking for a short answer instead (LLaVA's wording): a one-word reply must
    not follow "reason step by step"."""
    return question_stem(question) + SHORT_ANSWER_SUFFIX


def seeded_index(seed: int, key: str, n: int, salt: str = "") -> int:
    """A choice in range(n) that depends only on (seed, key, salt)."""
    digest = hashlib.sha256(f"{seed}:{key}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def occlusion_question(supercategory: str | None, fill_phrase: str, seed: int, key: str,
                       several: bool = False) -> tuple[str, int]:
    """(question text, template index); `several`: more than one object is hidden (plural wording,
    same template index)."""
    t = type_word(supercategory)
    idx = seeded_index(seed, key, len(TEMPLATES), "template")
    short = fill_phrase.replace("a cluster of ", "").replace("a ", "", 1)
    if several:
        types = PLURAL_TYPE_WORDS.get(t, t + "s")
        return PLURAL_TEMPLATES[idx].format(types=types, fill=fill_phrase, fill_short=short), idx
    text = TEMPLATES[idx].format(a_type=with_article(t), A_type=with_article(t).capitalize(), type=t,
                                 fill=fill_phrase, fill_short=short)
    return text, idx
