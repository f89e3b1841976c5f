"""Answer parsers: free model text -> the value a task scores (a letter index, yes/no, a grade).

Each parser returns a `Parsed(value, status)`: status is "ok", "unparsed" (nothing usable found) or
"multiple" (several different answers given, e.g. "Grade 3 or maybe 4"). Tasks count the last two
apart instead of guessing, so a parse failure is visible in the summary rather than hidden in accuracy.
Option scores (loss, CLIP) have a fourth status, "tie": several options share the best score.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Parsed:
    value: Any
    status: str = "ok"  # ok | unparsed | multiple | tie

    @property
    def ok(self) -> bool:
        return self.status == "ok"


UNPARSED = Parsed(None, "unparsed")


# -- yes / no (POPE) -------------------------------------------------------------------------------
def parse_yes_no(text: str) -> Parsed:
    """POPE's rule from the LLaVA evaluation script: keep the first sentence, drop commas, and answer
    "no" when one of its words is exactly "No", "no" or "not"; anything else is "yes".

    Kept literal on purpose (so numbers compare with published ones): "Not at all." counts as yes,
    because the script looks for the lower-case "not" only. An empty answer (an API's refusal or
    content filter) says neither: unparsed, not "yes"."""
    if not text.strip():
        return UNPARSED
    first = text.split(".", 1)[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return Parsed("no" if {"No", "no", "not"} & set(words) else "yes")


# -- option letters (ScienceQA, MMBench, MCQA) -----------------------------------------------------
_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.")
_ANSWER_IS_LLAVA = re.compile(r"The answer is ([A-Z]).")  # eval_science_qa.py's: any character after the letter
# The letter itself stays case-sensitive: "the answer is a cat" names no option.
_ANSWER_IS_LOOSE = re.compile(r"(?:[Aa]nswer(?: is|:)|\b[Oo]ption(?: is|:)?|\b[Cc]hoice(?: is|:)?)\s*:?\s*\(?([A-Z])\b(?![-'])")
_MARKED_LETTER = re.compile(r"(?:^|[\s(\[])\(?([A-Z])(?:\)|\.(?=\s|$)|:(?=\s|$))")
_LISTED_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s", re.M)  # "B. dog" on a line of its own
_LONE_LETTER = re.compile(r"\(?([A-Za-z])[.):]?")  # the whole answer: "b", "(b)", "B)"
_LETTER_LIST = re.compile(r"\(?([A-Z])\)?(?:\s*(?:,|/|&|\band\b|\bor\b)\s*\(?[A-Z]\)?)+\.?")  # "A, C", "A and C"
_NORM = re.compile(r"[^a-z0-9 ]+")


def _norm(text: str) -> str:
    return " ".join(_NORM.sub(" ", text.lower()).split())


def parse_letter(text: str, n_options: int, options: list[str] | None = None, strict: bool = False) -> Parsed:
    """The option a free answer picks, as an index into the options (A=0).

    Strict (ScienceQA as LLaVA scores it): the whole answer is a letter ("B"), or starts with a
    letter and ". " ("B. a cat"), or contains "The answer is X" and one character once, and only once
    (the pattern of LLaVA's eval_science_qa.py). Otherwise unparsed.
    Lenient (the default for MCQA and MMBench) ignores Markdown emphasis ("**B**") and adds: a lone
    lower-case letter ("b", "(b)"), "answer: (B)", "Option B", a single marked letter such as "(B)",
    "B)" or "B." anywhere, and, when `options` are given, the one option whose text the answer contains.
    A bare capital "A" inside a sentence is not read as a letter (it is usually the article). Two
    different letters found at the same step ("A and C", the options echoed one a line) -> "multiple"."""
    valid = LETTERS[:n_options]
    t = text.strip() if strict else text.replace("*", "").strip()
    if len(t) == 1 and t in valid:
        return Parsed(valid.index(t))
    if len(t) >= 3 and t[0] in valid and t[1:3] == ". ":
        if not strict and len(set(_LISTED_OPTION.findall(t)) & set(valid)) > 1:
            return Parsed(None, "multiple")  # "A. cat\nB. dog\n...": the options echoed, not one chosen
        return Parsed(valid.index(t[0]))
    # Strict counts every match, as LLaVA does: "The answer is B. ... The answer is B." is no answer there.
    found = _ANSWER_IS_LLAVA.findall(t) if strict else sorted(set(_ANSWER_IS.findall(t)))
    if len(found) == 1 and found[0] in valid:
        return Parsed(valid.index(found[0]))
    if strict:
        return UNPARSED
    if (lone := _LONE_LETTER.fullmatch(t)) and lone.group(1).upper() in valid:
        return Parsed(valid.index(lone.group(1).upper()))
    if _LETTER_LIST.fullmatch(t) and len(set(re.findall(r"[A-Z]", t)) & set(valid)) > 1:
        return Parsed(None, "multiple")
    for pattern in (_ANSWER_IS_LOOSE, _MARKED_LETTER):
        hits = set(pattern.findall(t)) & set(valid)
        if len(hits) == 1:
            return Parsed(valid.index(hits.pop()))
        if len(hits) > 1:
            return Parsed(None, "multiple")
    if options:
        padded = f" {_norm(t)} "
        named = {i for i, opt in enumerate(options[:n_options]) if _norm(opt) and f" {_norm(opt)} " in padded}
        # An option whose text sits inside another named option ("cat" in "cat food") is not a second answer.
        named = {i for i in named if not any(j != i and f" {_norm(options[i])} " in f" {_norm(options[j])} "
                                             for j in named)}
        if len(named) == 1:
            return Parsed(named.pop())
        if len(named) > 1:
            return Parsed(None, "multiple")
    return UNPARSED


# -- ordinal grades (Kellgren-Lawrence 0-4) --------------------------------------------------------
_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "none": None}
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5}
_NUM = r"(\d+|zero|one|two|three|four|five|six|seven|eight|nine|IV|V|I{1,3})\b"
_KEY = r"(?:\bkl|\bgrades?\b)"
_GRADE = re.compile(_KEY + r"\s*(?:is|of|=|:|-|#|level)?\s*" + _NUM, re.IGNORECASE)
# After a grade: "or 4", "or maybe 4", "to 3", "-4", "/4", "and grade 4", ", 3"
_MORE = re.compile(r"\s*(?:,|/|-|–|\bor\b|\band\b|\bto\b)\s*(?:(?:maybe|possibly|perhaps|probably)\s+)?"
                   r"(?:(?:kl|grade)\s*)?" + _NUM, re.IGNORECASE)
_BARE = re.compile(r"^\W*" + _NUM + r"\W*$", re.IGNORECASE)


def _grade_value(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    if token.lower() in _NUMBER_WORDS:
        return _NUMBER_WORDS[token.lower()]
    return _ROMAN.get(token)  # roman numerals only in capitals: "grade i" is rarely meant as 1


def parse_grade(text: str, num_grades: int = 5) -> Parsed:
    """A grade in 0..num_grades-1 from free text: "Grade 2", "KL 2", "KL-2", "grade two", "Grade III",
    or an answer that is only a number. "Grade 3 or maybe 4" and "grades 2-3" -> multiple; no grade, or
    a grade out of range -> unparsed."""
    grades: list[int | None] = []
    for m in _GRADE.finditer(text):
        grades.append(_grade_value(m.group(1)))
        pos = m.end()
        while (more := _MORE.match(text, pos)) is not None:
            grades.append(_grade_value(more.group(1)))
            pos = more.end()
    if not grades and (bare := _BARE.match(text.strip())):
        grades.append(_grade_value(bare.group(1)))
    distinct = {g for g in grades if g is not None}
    if not distinct or any(g >= num_grades for g in distinct):
        return UNPARSED
    if len(distinct) > 1:
        return Parsed(None, "multiple")
    return Parsed(distinct.pop())


# -- open answers ----------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")


def normalise_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    text = _PUNCT.sub(" ", text.lower().replace("_", " "))
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(prediction: str, reference: str) -> bool:
    """Whether the normalised reference appears in the normalised prediction as whole words (a plural
    "s"/"es" on its last word is allowed): "Black footed Albatross" is in "It is a black-footed albatross."."""
    ref = normalise_answer(reference)
    if not ref:
        return False
    pattern = r"(?:^| )" + re.escape(ref) + r"(?:s|es)?(?: |$)"
    return re.search(pattern, normalise_answer(prediction)) is not None
