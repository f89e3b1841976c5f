"""Concept parsing, the information-bottleneck score on hand-computed vectors, the selection rule,
and the CUB attribute path."""

import math

import numpy as np
import pytest

from vlmforge.curation.concepts import (ConceptSelector, attribute_specificity, attribute_text, ib_scores,
                                        parse_bullets, select_attributes, select_concepts)


def test_parse_bullets():
    text = """Here are the features:
- **Plumage:** dark brown body
* white ring around the bill.
  • long, narrow wings
1. Black feet
2) pale patch on the face;
- White ring around the bill
**Head:**
- **Markings:**
Not a bullet line
-no space after the dash"""
    assert parse_bullets(text) == ["Plumage: dark brown body", "white ring around the bill", "long, narrow wings",
                                   "Black feet", "pale patch on the face"]
    assert parse_bullets("") == []


def test_ib_score_hand_computed():
    t = 0.1
    desc = np.array([[1.0, 0.0], [0.6, 0.8]])  # the image's descriptions a_i
    concepts = np.array([[1.0, 0.0], [0.0, 1.0]])  # b_1, b_2
    negatives = np.array([[0.0, 1.0]])  # other images' descriptions c
    # s(a,b): a1.b1 = 1, a1.b2 = 0, a2.b1 = 0.6, a2.b2 = 0.8;  s(b,c): b1.c = 0, b2.c = 1
    # score_1 = log(e^10/(e^10 + e^0)) + log(e^6/(e^6 + e^0))
    # score_2 = log(e^0/(e^0 + e^10)) + log(e^8/(e^8 + e^10))
    want = [math.log(math.exp(10) / (math.exp(10) + 1)) + math.log(math.exp(6) / (math.exp(6) + 1)),
            math.log(1 / (1 + math.exp(10))) + math.log(math.exp(8) / (math.exp(8) + math.exp(10)))]
    got = ib_scores(desc, concepts, negatives, t=t)
    assert got == pytest.approx(want, rel=1e-9)
    assert want == pytest.approx([-0.0025210, -12.1269734], abs=1e-6)
    # The same through precomputed negative sums, and with no negatives at all (log 1 = 0 per term).
    assert ib_scores(desc, concepts, neg_log_sum=np.array([0.0, 10.0]), t=t) == pytest.approx(want)
    assert ib_scores(desc, concepts, np.zeros((0, 2)), t=t) == pytest.approx([0.0, 0.0])
    # Large similarities stay finite (no overflow of e^{s/t}).
    assert np.isfinite(ib_scores(desc, concepts, negatives, t=0.001)).all()


def test_select_concepts_rule():
    names = list("abcdefghij")
    # mean 3.4, sample std sqrt(178.4/9) = 4.452, threshold 3.4 + 0.4 * 4.452 = 5.181: four pass.
    scores = [10, 0, 9, 0, 8, 0, 7, 0, 0, 0]
    assert [c for c, _ in select_concepts(names, scores)] == ["a", "c", "e", "g"]
    # mean 3, std sqrt(2.5) = 1.581, threshold 3.632: only 5 and 4 pass, so the best three are kept.
    assert select_concepts(list("vwxyz"), [5, 1, 2, 3, 4]) == [("v", 5.0), ("z", 4.0), ("y", 3.0)]
    assert select_concepts(["p", "q"], [1.0, 2.0]) == [("q", 2.0), ("p", 1.0)]  # fewer than 3: all
    assert select_concepts(["p", "q", "r", "s"], [1, 1, 1, 1]) == [("p", 1.0), ("q", 1.0), ("r", 1.0)]  # ties: input order
    assert select_concepts([], []) == []
    assert [c for c, _ in select_concepts(names, scores, std_factor=0.0, min_keep=1)] == ["a", "c", "e", "g"]
    assert [c for c, _ in select_concepts(names, scores, std_factor=1.0, min_keep=1)] == ["a", "c", "e"]  # > 7.85


def test_attribute_path():
    assert attribute_text("has_bill_shape::curved_(up_or_down)") == "curved (up or down) bill shape"
    assert attribute_text("has_size::small_(5_-_9_in)") == "small (5 - 9 in) size"
    rates = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])
    w = attribute_specificity(rates)
    # p(a|c) * log(p(a|c) / mean_c p(a|c)): 1*log(1/0.5), 0.5*log(1), 0; 0, 0.5*log(1), 1*log(1/0.5)
    assert w == pytest.approx(np.array([[math.log(2), 0, 0], [0, 0, math.log(2)]]), abs=1e-5)
    assert select_attributes([0, 1], w[0]) == [(0, pytest.approx(math.log(2), abs=1e-5)), (1, pytest.approx(0, abs=1e-5))]
    assert select_attributes([], w[0]) == []


def test_selector_matches_direct_scores_with_real_embeddings():
    from vlmforge.curation.embedding import shared_embedder

    emb = shared_embedder(None)
    descriptions = {"a": ["A black bird with a hooked bill.", "Dark wings and a pale face."],
                    "b": ["A white seabird with grey wings."],
                    "c": ["A brown bird standing on grass.", "A small brown bird.", "Brown feathers."]}
    labels = {"a": "x", "b": "x", "c": "y"}
    concepts = {"x": ["hooked bill", "black plumage", "white body", "grey wings"], "y": ["brown feathers"]}
    got = ConceptSelector(emb).select(descriptions, labels, concepts)
    for key in descriptions:
        own = emb.encode(descriptions[key])
        others = emb.encode([d for k, v in sorted(descriptions.items()) if k != key for d in v])
        names = concepts[labels[key]]
        want = select_concepts(names, ib_scores(own, emb.encode(names), others))
        assert [c for c, _ in got[key]] == [c for c, _ in want]
        assert [s for _, s in got[key]] == pytest.approx([s for _, s in want], rel=1e-5)
    assert [c for c, _ in got["a"]][:2] == ["hooked bill", "black plumage"]


def test_selector_keeps_far_negatives_at_a_small_temperature():
    """At t = 0.01 the other images' terms are below float precision next to the image's best description:
    subtracting the image's own terms from the total left 0, so the negatives were log 0 = -inf and the
    image's weaker description scored log(1) = 0 instead of about -28."""

    class Fixed:
        vectors = {"own1": [1.0, 0.0, 0.0], "own2": [0.0, 0.0, 1.0], "other": [0.0, 1.0, 0.0],
                   "c1": [0.96, 0.28, 0.0], "c2": [0.8, 0.6, 0.0], "c3": [0.6, 0.8, 0.0]}

        def encode(self, texts):
            return np.array([self.vectors[t] for t in texts])

    emb = Fixed()
    got = ConceptSelector(emb, t=0.01, min_keep=3).select({"a": ["own1", "own2"], "b": ["other"]},
                                                            {"a": "x", "b": "y"}, {"x": ["c1", "c2", "c3"], "y": []})
    want = ib_scores(emb.encode(["own1", "own2"]), emb.encode(["c1", "c2", "c3"]), emb.encode(["other"]), t=0.01)
    assert want[0] == pytest.approx(-28, abs=0.01)  # the premise: own2 against c1, negatives s(c1, other) = 0.28
    assert dict(got["a"]) == pytest.approx(dict(zip(["c1", "c2", "c3"], want)), rel=1e-9)
