"""Every parser on tricky answers."""

import pytest

from vlmforge.evaluation.parsers import (
    contains_answer, normalise_answer, parse_grade, parse_letter, parse_yes_no,
)


@pytest.mark.parametrize("text,expected", [
    ("No, there is not.", "no"),
    ("Yes, there is a dog. No cat though.", "yes"),  # only the first sentence counts
    ("There is not a single car in the picture", "no"),
    ("Yes", "yes"),
    ("no", "no"),
    ("I do not see a dog.", "no"),
    ("Nope.", "yes"),  # not one of the words
    ("Not at all.", "yes"),  # LLaVA's script looks for lower-case "not" only
    ("There is a knot in the rope.", "yes"),  # "knot" is not "not"
    ("No,there is nothing", "yes"),  # LLaVA drops commas without adding a space: "Nothere"
    ("", None),  # no answer (an API's content filter): unparsed, not LLaVA's "yes"
    (" \n", None),
])
def test_pope_yes_no(text, expected):
    assert parse_yes_no(text).value == expected


@pytest.mark.parametrize("text,n,expected", [
    ("B", 4, 1),
    ("B. a cat", 4, 1),
    ("The answer is C.", 4, 2),
    ("  D ", 4, 3),
    ("E", 4, None),  # beyond the options
    ("AB", 4, None),
    ("The answer is A. No. The answer is B.", 4, None),  # two different answers
    ("The answer is A. Or maybe the answer is B.", 4, 0),  # LLaVA's pattern is case-sensitive: one hit
    ("(B)", 4, None),  # strict: not one of LLaVA's forms
    ("The answer is B.\nThe answer is B.", 4, None),  # LLaVA counts matches: twice is no answer
    ("The answer is B)", 4, 1),  # LLaVA's pattern takes any character after the letter
    ("The answer is B", 4, None),
    ("B.", 4, None),
])
def test_letter_strict_is_llava_scienceqa_rule(text, n, expected):
    assert parse_letter(text, n, strict=True).value == expected


@pytest.mark.parametrize("text,options,expected,status", [
    ("The answer is B.", None, 1, "ok"),
    ("(B)", None, 1, "ok"),
    ("B.", None, 1, "ok"),
    ("Answer: C", None, 2, "ok"),
    ("the answer is (d) perhaps", None, None, "unparsed"),  # lower-case letters are not options
    ("I think B. The bird is clearly visible.", None, 1, "ok"),
    ("A dog is sitting on the grass.", ["cat", "dog", "bird"], 1, "ok"),  # "A" is the article; the text names dog
    ("It is either (A) or (C).", None, None, "multiple"),
    ("It could be a cat or a dog.", ["cat", "dog"], None, "multiple"),
    ("a hot dog stand", ["hot dog", "dog"], 0, "ok"),  # "dog" inside the named "hot dog" is not a second answer
    ("Nothing I can tell.", ["cat", "dog"], None, "unparsed"),
    ("The answer is B.\nThe answer is B.", None, 1, "ok"),  # lenient: one answer, repeated
    # the options echoed one a line named A (or D: the first line) as the answer
    ("A. cat\nB. dog\nC. bird\nD. horse", ["cat", "dog", "bird", "horse"], None, "multiple"),
    ("D. horse\nA. cat", None, None, "multiple"),
    ("B. dog\nThe bird is behind it.", None, 1, "ok"),
    ("b", None, 1, "ok"),  # a whole answer of one lower-case letter was unparsed
    ("(c)", None, 2, "ok"),
    ("e", None, None, "unparsed"),
    ("**B**", None, 1, "ok"),  # Markdown emphasis (API models)
    ("**Answer:** B", None, 1, "ok"),
    ("Option B", None, 1, "ok"),
    ("Correct option: C", None, 2, "ok"),
    ("A and C", None, None, "multiple"),  # several letters were unparsed
    ("A, C.", None, None, "multiple"),
])
def test_letter_lenient(text, options, expected, status):
    p = parse_letter(text, 4 if options is None else len(options), options)
    assert (p.value, p.status) == (expected, status)


@pytest.mark.parametrize("text,expected,status", [
    ("Grade 2", 2, "ok"),
    ("KL 2", 2, "ok"),
    ("KL-3", 3, "ok"),
    ("kl4", 4, "ok"),
    ("grade two", 2, "ok"),
    ("Grade III", 3, "ok"),
    ("The most likely Kellgren-Lawrence grade of this knee X-ray image is Grade 1: doubtful narrowing.", 1, "ok"),
    ("KL grade is 0", 0, "ok"),
    ("3", 3, "ok"),
    ("Grade 2, with 3 osteophytes visible.", 2, "ok"),
    ("Grade 2. I am confident it is grade 2.", 2, "ok"),  # the same grade twice is one answer
    ("Grade 3 or maybe 4", None, "multiple"),
    ("grades 2-3", None, "multiple"),
    ("between grade 1 and grade 2", None, "multiple"),
    ("Grade 5", None, "unparsed"),  # outside 0-4
    ("The joint looks healthy.", None, "unparsed"),
    ("I graded it carefully", None, "unparsed"),
])
def test_grade(text, expected, status):
    p = parse_grade(text, 5)
    assert (p.value, p.status) == (expected, status)


def test_open_containment():
    assert normalise_answer("The Black-footed  Albatross!") == "black footed albatross"
    assert contains_answer("It is a black-footed albatross.", "Black footed Albatross")
    assert contains_answer("Two dogs on a bench", "dog")  # plural allowed
    assert not contains_answer("A hotdog stand", "dog")  # whole words only
    assert not contains_answer("A cat", "dog")
    assert not contains_answer("anything", "")
