"""Answer extraction, label naming, and embedding soft matching."""

import pytest

from vlmforge.curation.softmatch import SoftMatcher, extract_answer, names_label, normalise


@pytest.mark.parametrize("text, want", [
    ("The blocks cover the middle.\nFinal answer: a red fire truck.", "red fire truck"),
    ("I think the final answer is **bus**. Other options were car.", "bus"),
    ("Reasoning...\n\\boxed{motorcycle}", "motorcycle"),
    ("The answer is: Golden retriever.", "Golden retriever"),
    ("Given the fur and the tail, it is most likely a St. Bernard.", "St. Bernard"),
    ("Answer: car. Wait, looking again, the answer is truck.", "truck"),
    ("Wheels show below the blocks. A bicycle", "bicycle"),
    ("", ""),
    # the answer said as a sentence: MiniLM's cosine of "it is a bus" and "bus" is 0.89, "the hidden object is
    # most likely a dog" and "dog" 0.53: right answers were counted wrong
    ("Final answer: It is a bus.", "bus"),
    ("Final answer: The occluded object is a bus (a double-decker).", "bus"),
    ("The hidden object is most likely a dog.", "dog"),
    ("Therefore, the occluded object is a dog.", "dog"),
    ("So, it's a kite.", "kite"),
    ("Dog is my final answer.", "Dog"),
    ("Final answer: a teddy bear is hidden behind the blocks.", "teddy bear"),
    ("Final answer: It is not a dog.", "not a dog"),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_names_label():
    assert names_label("This is a Black-footed albatross, seen from the side.", "Black footed Albatross")
    assert names_label("It's an F/A-18 fighter.", "F/A-18")
    assert not names_label("This is an albatross.", "Black footed Albatross")
    # a denied mention does not name it; another, affirmed mention still does
    assert not names_label("This is not a Black footed Albatross; it lacks the dark plumage.", "Black footed Albatross")
    assert not names_label("It isn't a gull.", "gull") and not names_label("No gull here.", "gull")
    assert names_label("This is not a gull: it is a Black footed Albatross.", "Black footed Albatross")
    assert names_label("Nothing else but a gull.", "gull")
    assert not names_label("A category of animals.", "cat")
    assert names_label("Laysan Albatross", "Albatross")
    # the label in the plural names it too (a right answer was dropped as answer_misses_label)
    assert names_label("These are two Laysan Albatrosses.", "Laysan Albatross") and names_label("Two men.", "man")
    assert not names_label("These are not Laysan Albatrosses.", "Laysan Albatross")
    assert not names_label("Laysan birds.", "Laysan Albatross")
    # CUB drops the possessive of its names (Brewer_Blackbird, Forsters_Tern, Chuck_will_Widow); an answer
    # that spells it ("Brewer's Blackbird") names the label, and was dropped as answer_misses_label
    assert names_label("This is a Brewer's Blackbird.", "Brewer Blackbird")
    assert names_label("A Forster’s Tern in flight.", "Forsters Tern") and names_label("Forsters Tern", "Forsters Tern")
    assert names_label("It is a Chuck-will's-widow.", "Chuck will Widow")
    assert not names_label("This is a Brewer's Sparrow.", "Brewer Blackbird")
    assert not names_label("This is not a Brewer's Blackbird.", "Brewer Blackbird")
    assert normalise("  Laysan_Albatross!! ") == "laysan albatross"


@pytest.mark.parametrize("text", [
    "It doesn't look like a Black footed Albatross.",  # the negation four words back named it
    "It doesn’t look like a Black-footed Albatross at all.",
    "It is not really a kind of Black footed Albatross.",
    "It is unlikely to be a Black footed Albatross.",
    "I don't think it's a Black footed Albatross.",
    "I do not think that this is a Black footed Albatross.",
    "It does not appear to be a Black footed Albatross, given the white head.",
    "I doubt this is a Black footed Albatross.",
    "This bird is hardly a Black footed Albatross.",
    "It is a gull rather than a Black footed Albatross.",
    "This is a Laysan Albatross instead of a Black footed Albatross.",
    "Neither a gull nor a Black footed Albatross.",
    "Unlike a Black footed Albatross, it has a white head.",
    "Is it a Black footed Albatross? No, the head is white.",  # a question asserts nothing
    "Could this be a Black footed Albatross, given the white head?",
])
def test_a_denied_label_is_not_named(text):
    assert not names_label(text, "Black footed Albatross")
    # the same text with the label asserted in a clause of its own names it
    assert names_label(text + " It is a Black footed Albatross.", "Black footed Albatross")


@pytest.mark.parametrize("text", [
    "This is not only a Black footed Albatross but also a fine example of one.",
    "It isn't just a bird: it is a Black footed Albatross.",
    "It doesn't just resemble a Black footed Albatross, it is one.",
    "There is no doubt that this is a Black footed Albatross.",
    "It is not difficult to identify this as a Black footed Albatross.",
    "I have no hesitation in calling it a Black footed Albatross.",
    "Without a doubt, a Black footed Albatross.",
    "It is not a gull but a Black footed Albatross.",
    "It doesn't look like a gull; it is a Black footed Albatross.",
    "It is not a gull and it's a Black footed Albatross.",
    "Not a gull (it is a Black footed Albatross).",
    "It cannot be anything other than a Black footed Albatross.",
    "It can't be anything but a Black footed Albatross.",
    "It is none other than a Black footed Albatross.",
    "Its bill is not yellow, so it is a Black footed Albatross.",
    "The bird has no white markings and long narrow dark wings, typical of a Black footed Albatross.",
    "The dark plumage with no white on the head suggests a Black footed Albatross.",
    "This is a Black footed Albatross, not a gull.",
    "What bird is this? It is a Black footed Albatross.",
    "Is it a gull? No: it is a Black footed Albatross.",
])
def test_a_negation_that_does_not_deny_the_label(text):
    assert names_label(text, "Black footed Albatross")


@pytest.mark.parametrize("text", [
    "It could be anything but a Black footed Albatross.",
    "It looks like anything other than a Black footed Albatross.",
    "This is anything except a Black footed Albatross.",
    "The bird here is everything but a Black footed Albatross, judging by the bill.",
])
def test_what_anything_but_excludes_is_not_named(text):
    """"anything but X" says the answer is not X, unless the clause before denies it ("can't be anything
    but X", among the asserting texts above)."""
    assert not names_label(text, "Black footed Albatross")
    assert names_label(text + " It is a Black footed Albatross.", "Black footed Albatross")
    assert names_label(text.replace("Black footed Albatross", "gull") + " So: a Black footed Albatross.",
                       "Black footed Albatross")


def test_a_clause_ends_at_a_sentence_not_inside_a_name():
    assert names_label("This is a St. Bernard.", "St. Bernard")
    assert not names_label("It is not a St. Bernard.", "St. Bernard")
    assert names_label("It isn't a gull—it is a tern.", "tern") and names_label("Model 3.5, not a gull.", "model 3.5")


def test_soft_match_threshold():
    m = SoftMatcher(threshold=0.85)
    sims = m.similarity(["Car", "banana", "", "the  car!"], "car")
    assert sims[0] == 1.0 and sims[2] == 0.0 and sims[1] < 0.6
    assert m.matches(["Car", "banana", ""], "car") == [True, False, False]
    # the cosine of the normalised texts' embeddings: automobile/car 0.86 counts, motorbike/motorcycle 0.81 not
    vecs = m.embedder.encode(["automobile", "car", "motorbike", "motorcycle"]).astype(float)
    sims = m.similarity_many([(["Automobile!"], "car"), (["motorbike"], "Motorcycle")])
    assert [float(s[0]) for s in sims] == pytest.approx([vecs[0] @ vecs[1], vecs[2] @ vecs[3]], abs=1e-6)
    assert [float(s[0]) for s in sims] == pytest.approx([0.8645, 0.8081], abs=1e-4)
    assert m.matches(["automobile", "motorbike"], "car") == [True, False] and m.matches(["motorbike"], "motorcycle") == [False]
    s = float(m.similarity(["banana"], "car")[0])
    assert SoftMatcher(m.embedder, threshold=s - 1e-4).matches(["banana"], "car") == [True]
    assert SoftMatcher(m.embedder, threshold=s).matches(["banana"], "car") == [False]  # strictly above counts


def test_the_label_in_another_number_or_with_a_count_matches():
    """An occlusion question about several objects gets plural answers; MiniLM's cosine of "dogs" and "dog"
    is 0.82, "benches"/"bench" 0.75, "men"/"man" 0.56: right answers were counted wrong at 0.85."""
    from vlmforge.curation.softmatch import same_in_number

    m = SoftMatcher(None)
    right = [("dogs", "dog"), ("benches", "bench"), ("men", "man"), ("people", "person"), ("two birds", "bird"),
             ("A dog.", "dog"), ("a couple of cups", "cup"), ("buses", "bus"), ("strawberries", "strawberry"),
             ("wine glasses", "wine glass"), ("skis", "skis"), ("ski", "skis")]
    for answer, label in right:
        assert same_in_number(answer, label), (answer, label)
        assert m.matches([answer], label) == [True], (answer, label)
    for answer, label in [("cat", "dog"), ("hot dog", "dog"), ("dog", "hot dog"), ("the", "dog"), ("", "dog"),
                          ("bus stop", "bus")]:
        assert not same_in_number(answer, label), (answer, label)
    assert m.matches(["cat", "frisbee"], "dog") == [False, False]


def test_the_label_itself_matches_at_any_threshold_and_an_empty_answer_never():
    """README: correct when the cosine is above --threshold, or when the answer is the label but for number,
    an article or a count. At --threshold 1 the label itself (cosine 1) was counted wrong; at -1 an empty
    answer (cosine 0) counted."""
    assert SoftMatcher(threshold=1.0).matches(["Dog", "two dogs", "puppy", ""], "dog") == [True, True, False, False]
    assert SoftMatcher(threshold=-1.0).matches(["", " . ", "banana"], "car") == [False, False, True]
