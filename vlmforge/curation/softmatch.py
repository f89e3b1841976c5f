"""Answer extraction and soft matching against a label.

`extract_answer` pulls the final answer out of a reasoning text by rules ("Final answer: X",
"\\boxed{X}", "the answer is X", ...), then out of a sentence saying it ("it is a bus" -> bus).
`SoftMatcher` compares answers with labels by the cosine of their sentence embeddings (offline default
MiniLM; any sentence-transformers model, e.g. BAAI/bge-m3) and calls an answer correct when the cosine
is above a threshold (0.85, as CVC does) or the answer is the label but for number. `names_label` is the
strict test used where an answer must spell the label out.
"""

from __future__ import annotations

import re

import numpy as np

from vlmforge.curation.embedding import SentenceEmbedder, shared_embedder
from vlmforge.curation.entities import IRREGULAR

DEFAULT_THRESHOLD = 0.85

# Tried in order; within one the last occurrence in the text wins (models restate, then conclude).
_BOXED = re.compile(r"\\boxed\{([^{}]+)\}")
_TRIGGERS = [
    re.compile(r"final answer\s*(?:is|:|-)?\s*:?", re.I),
    re.compile(r"\banswer\s*(?:is|:)\s*:?", re.I),
    re.compile(r"\b(?:it|this|that)\s+(?:is|must be|should be|would be)\s+(?:most likely\s+|likely\s+|probably\s+)?", re.I),
]
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.I)
# A sentence ends at ". " unless the word before the dot is short (St. Bernard, Mt. Fuji).
_SENTENCE_END = re.compile(r"(?<=[A-Za-z0-9]{3})\.(?:\s|$)|[!?;](?:\s|$)")


# A phrase that is a sentence about the answer ("it is a bus", "the hidden object is most likely a dog"):
# a short subject, a copula and the answer after it.
_CONTRACTION = re.compile(r"\b(it|this|that|there|what)['\u2019]s\b", re.I)
_COPULA = re.compile(r"^(?:(?:so|therefore|thus|hence|overall|finally|in conclusion)\s*,?\s+)?"
                     r"(?P<subject>(?:[\w'-]+\s+){0,5}?)(?:is|are|must be|should be|would be|could be|might be|"
                     r"may be|seems to be|appears to be)\s+(?:most\s+)?(?:likely\s+|probably\s+|possibly\s+|"
                     r"definitely\s+|clearly\s+)?(?=\S)", re.I)
# Words after a copula that say where or how the answer is, not what: "a teddy bear is hidden there".
_STATE_WORDS = frozenset("hidden occluded covered concealed masked obscured blocked behind under underneath beneath "
                         "there here visible partially partly".split())
# A trailing aside: "bus (a double-decker)".
_ASIDE = re.compile(r"(?<=\S)\s*\([^()]*\)$")


def clean_answer(phrase: str) -> str:
    """An answer phrase without emphasis, what follows its first line or sentence, a leading article, the
    sentence around it ("it is a bus" -> bus) and a trailing aside."""
    phrase = phrase.replace("**", "").replace("__", "").strip()
    phrase = phrase.splitlines()[0] if phrase else ""
    m = _SENTENCE_END.search(phrase)
    if m:
        phrase = phrase[: m.start()]
    phrase = _CONTRACTION.sub(r"\1 is", _ARTICLE.sub("", phrase.strip(" \t\"'`*:.,")))
    m = _COPULA.match(phrase)
    if m:
        # "Dog is my final answer", "a teddy bear is hidden": the subject is the answer; else what follows
        # the copula is.
        rest = phrase[m.end():]
        about = "answer" in rest.lower() or rest.split()[0].lower().strip(",.") in _STATE_WORDS
        phrase = m.group("subject") if about and m.group("subject").strip() else rest
        phrase = _ARTICLE.sub("", phrase.strip(" \t\"'`*:.,"))
    return _ASIDE.sub("", phrase).strip(" \t\"'`*:.,")


def extract_answer(text: str) -> str:
    """The final answer phrase of a reasoning text; the last sentence when no rule matches."""
    boxed = [clean_answer(m.group(1)) for m in _BOXED.finditer(text)]
    if any(boxed):
        return [b for b in boxed if b][-1]
    for trigger in _TRIGGERS:
        found = [clean_answer(text[m.end():]) for m in trigger.finditer(text)]
        found = [f for f in found if f]
        if found:
            return found[-1]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    sentences = [s for s in re.split(r"(?<=[a-z0-9]{3})[.!?]\s+", lines[-1]) if s.strip()]
    return clean_answer(sentences[-1] if sentences else lines[-1])


def normalise(text: str) -> str:
    """Lower-case, separators (_ - /) to spaces, other punctuation dropped, spaces collapsed."""
    text = re.sub(r"[_\-/]+", " ", text.lower())
    text = re.sub(r"[^\w\s]", "", text)
    return re.sub(r"\s+", " ", text).strip()


# The entity extractor's irregular plurals, and a few more that answers use.
IRREGULAR_PLURALS = {**IRREGULAR, "leaves": "leaf", "wolves": "wolf", "shelves": "shelf", "calves": "calf",
                     "halves": "half", "oxen": "ox"}
# Words before a noun that say how many, not what: "two dogs", "a couple of cows", "the kites".
QUANTITY_WORDS = frozenset("a an the some several many few multiple couple of one two three four five six seven "
                           "eight nine ten".split())


def _word_forms(word: str) -> set[str]:
    """The word and what it may be the plural of ("buses" -> bus, "berries" -> berry, "men" -> man)."""
    forms = {word, IRREGULAR_PLURALS.get(word, word)}
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    if len(word) > 3 and word.endswith("es"):
        forms.add(word[:-2])
    if len(word) > 4 and word.endswith("ies"):
        forms.add(word[:-3] + "y")
    return forms


def same_in_number(answer: str, label: str) -> bool:
    """Whether `answer` says `label` but for number and a leading article or count ("two dogs" for "dog",
    "men" for "man"): the embedding cosine of such pairs can fall below the threshold (MiniLM: "dogs" 0.82)."""
    words = [w.split() for w in (normalise(answer), normalise(label))]
    for i, ws in enumerate(words):
        while len(ws) > 1 and ws[0] in QUANTITY_WORDS:
            ws = ws[1:]
        words[i] = ws
    a, b = words
    return bool(a) and len(a) == len(b) and all(_word_forms(x) & _word_forms(y) for x, y in zip(a, b))


# Words that deny what follows them in their clause ("doesn't look like a gull", "unlikely to be a gull").
NEGATIONS = frozenset("not no never nor neither none isnt arent wasnt werent cannot cant doesnt dont didnt wont "
                      "wouldnt couldnt shouldnt hasnt havent hadnt aint hardly unlikely doubt doubtful unlike".split())
NEGATION_WINDOW = 6  # words before a mention a negation reaches ("I do not think that this is a gull")
# ... unless they assert it after all: "not only a gull", "not hard to see it is a gull", "no doubt a gull",
# "without a doubt".
_NOT_ONLY = frozenset("only just merely simply solely surprisingly difficult hard unusual uncommon".split())
_NOT_DENYING = {**dict.fromkeys("not isnt doesnt arent wasnt".split(), _NOT_ONLY),
                "no": frozenset("doubt question mistaking wonder hesitation difficulty trouble".split())}
_ASSERTING_BEFORE_DOUBT = frozenset("no without beyond little".split())
# A clause ends at punctuation (a dot or comma before a space: not "F/A-18" or "3.5"), a bracket or a dash...
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|[()\[\]\u2014\u2013]|\s--?\s")
# ... or at a word that starts another ("not a gull but a tern", "anything other than a tern").
_CLAUSE_WORDS = frozenset("but however although though whereas so therefore thus hence because which except".split())
_SUBJECT_AFTER_AND = frozenset("it its this so therefore thus hence".split())  # "not a gull and it is a tern"


# "anything but a gull", "anything other than a gull", "anything except a gull": what follows is excluded,
# unless the clause before denies that ("it can't be anything but a gull" names the gull).
_ANY = frozenset("anything everything".split())


def _excluding(words: list[str], start: int, w: str) -> bool:
    """Whether `w`, a word starting a clause after `words`, makes it exclude what it names ("anything but",
    "anything other than", "anything except"), the words from `start` on being the clause before."""
    back = 2 if w == "than" else 1  # "anything other than"
    if w not in ("but", "except", "than") or len(words) < back or words[-back] not in _ANY:
        return False
    return not any(_denies(words, j) for j in range(start, len(words)))


def _clause_words(text: str) -> tuple[list[str], list[int], list[bool]]:
    """The normalised words of `text` and, for each, where its clause starts and whether it is not asserted:
    its sentence is a question, or its clause is what "anything but" excludes."""
    words: list[str] = []
    starts: list[int] = []
    asked: list[bool] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        question = sentence.rstrip(" \t\"')*").endswith("?")
        for part in _CLAUSE_END.split(sentence):
            start, excluded = len(words), False
            for w in normalise(part).split():
                if w in _CLAUSE_WORDS or (w == "than" and words[-1:] == ["other"]):
                    excluded = _excluding(words, start, w)
                    start = len(words) + 1
                elif words[-1:] == ["and"] and w in _SUBJECT_AFTER_AND:
                    start, excluded = len(words), False
                words.append(w)
                starts.append(start)
                asked.append(question or excluded)
    return words, starts, asked


def _denies(words: list[str], j: int) -> bool:
    """Whether words[j] is a negation there: not in "not only", "no doubt", "without a doubt"."""
    w = words[j]
    if w not in NEGATIONS and (j == 0 or (words[j - 1], w) not in (("rather", "than"), ("instead", "of"))):
        return False
    if j + 1 < len(words) and words[j + 1] in _NOT_DENYING.get(w, ()):
        return False
    return not (w.startswith("doubt") and _ASSERTING_BEFORE_DOUBT & set(words[max(0, j - 2) : j]))


def names_label(text: str, label: str) -> bool:
    """Whether `text` asserts `label`: names it as whole words (after normalising both; a word may differ in
    number or by a possessive: "two Laysan Albatrosses", "Brewer's Blackbird" for CUB's Brewer Blackbird,
    "Forster's Tern" for Forsters Tern) in a mention that no negation before it in its clause, within six
    words, denies ("This is not a Black footed Albatross", "It doesn't look like a Black footed Albatross",
    "It is a gull rather than a Black footed Albatross"; but "not only a Black footed Albatross" and "not a
    gull, but a Black footed Albatross" assert it), that is not in a question ("Is it a Black footed
    Albatross? No.") and that "anything but" does not exclude ("It could be anything but a Black footed
    Albatross"; but "It can't be anything but a Black footed Albatross" asserts it)."""
    lab = [_word_forms(w) for w in normalise(label).split()]
    if not lab:
        return False
    words, starts, asked = _clause_words(text)
    for i in range(len(words) - len(lab) + 1):
        if (not asked[i] and all(_word_forms(w) & forms for w, forms in zip(words[i : i + len(lab)], lab))
                and not any(_denies(words, j) for j in range(max(starts[i], i - NEGATION_WINDOW), i))):
            return True
    return False


class SoftMatcher:
    """`similarity(answers, label)` -> cosines; `matches(...)` -> whether each answer counts (`is_match`)."""

    def __init__(self, embedder: SentenceEmbedder | str | None = None, threshold: float = DEFAULT_THRESHOLD):
        self.embedder = embedder if isinstance(embedder, SentenceEmbedder) else shared_embedder(embedder)
        self.threshold = threshold

    def similarity(self, answers: list[str], label: str) -> np.ndarray:
        return self.similarity_many([(answers, label)])[0]

    def similarity_many(self, groups: list[tuple[list[str], str]]) -> list[np.ndarray]:
        """Cosines for several (answers, label) groups with a single embedding call."""
        normed = [([normalise(a) for a in answers], normalise(label)) for answers, label in groups]
        unique = sorted({t for answers, label in normed for t in [*answers, label]})
        vecs = self.embedder.encode(unique).astype(np.float64)
        index = {t: i for i, t in enumerate(unique)}
        out = []
        for answers, target in normed:
            if not answers:
                out.append(np.zeros(0, np.float64))
                continue
            sims = vecs[[index[a] for a in answers]] @ vecs[index[target]]
            # The label itself (but for number, an article or a count) is a match whatever the embedding
            # says; empty answers match nothing.
            sims = np.where([a == target or same_in_number(a, target) for a in answers], 1.0, sims)
            out.append(np.where([not a for a in answers], 0.0, sims))
        return out

    def matches(self, answers: list[str], label: str) -> list[bool]:
        return [self.is_match(a, label, s) for a, s in zip(answers, self.similarity(answers, label))]

    def is_match(self, answer: str, label: str, similarity: float) -> bool:
        """A non-empty answer whose cosine is above the threshold, or that is the label but for number, an
        article or a count, whatever the threshold (--threshold 1 keeps the label itself)."""
        return bool(normalise(answer)) and (similarity > self.threshold or same_in_number(answer, label))
