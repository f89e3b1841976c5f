"""curation/parsing.py: spaCy's tagger and parser, faster, must give spaCy's own parse."""

import pytest

from tests.curation.test_entities import CAPTIONS, TRICKY
from vlmforge.curation.parsing import MIN_EMBED_ROWS, PROBE, DedupEmbed, GreedyParser, load_pipeline

MORE = ["", "   ", "Dog.", "A man in a suit and a woman in a dress walk their dogs past a bakery, while a bus waits at the light.",
        "Three zebras, two giraffes and an elephant drink from a muddy river under a pale sky.", "Birds!"]


@pytest.fixture(scope="module")
def pipelines():
    """spaCy's pipeline as spacy.load gives it (BLIS products, the compiled parse loop) and ours."""
    import spacy

    from vlmforge.curation.entities import SPACY_MODEL

    return spacy.load(SPACY_MODEL, disable=["ner"]), load_pipeline(SPACY_MODEL, disable=["ner"])


def _parse(doc):
    return [(t.text, t.tag_, t.head.i, t.dep_, t.is_sent_start) for t in doc]


def test_every_layer_multiplies_through_numpy(pipelines):
    _, ours = pipelines
    layers = [node for _, comp in ours.pipeline if hasattr(getattr(comp, "model", None), "walk") for node in comp.model.walk()]
    assert layers and all(getattr(node.ops, "use_blis", None) is False for node in layers)


def test_the_embedding_is_worked_out_once_per_distinct_token(pipelines, monkeypatch):
    """tok2vec's embedding through DedupEmbed: the same vectors, bit for bit, as the layer's own, for
    batches of many tokens, of few (fewer than MIN_EMBED_ROWS: the layer's own) and of empty texts; and it
    multiplies only the distinct rows."""
    import numpy as np

    _, ours = pipelines
    model = ours.get_pipe("tok2vec").model
    assert model.layers[0].name == "dedup_embed"
    fast = model.layers[0]._func.__self__
    for texts in (TRICKY + CAPTIONS + MORE, ["Dog."], ["", " "], ["a a a a", "a"], CAPTIONS[:3], ["a cat"] * 40):
        docs = [ours.make_doc(t) for t in texts]
        own, dedup = fast.embed.predict(docs), model.layers[0].predict(docs)
        assert len(own) == len(dedup) == len(docs)
        assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(own, dedup)), texts[:2]
    seen, rest = [], fast.rest

    class Counted:
        def predict(self, xs):
            seen.append(len(xs[0]))
            return rest.predict(xs)

    monkeypatch.setattr(fast, "rest", Counted())
    model.layers[0].predict([ours.make_doc("a dog and a dog and a dog and a cat")])  # too few: the layer's own
    model.layers[0].predict([ours.make_doc("a dog and a dog and a dog and a cat " * 8)])
    many = [ours.make_doc(t) for t in (TRICKY + CAPTIONS) * 2]
    model.layers[0].predict(many)
    distinct = {(t.norm_, t.prefix_, t.suffix_, t.shape_, t.whitespace_, t.is_space) for d in many for t in d}
    assert seen[0] == MIN_EMBED_ROWS  # 4 distinct tokens of 88, padded to the least rows
    assert MIN_EMBED_ROWS < seen[1] == len(distinct) < sum(len(d) for d in many) // 2


def test_the_deduplicated_embedding_is_kept_only_for_spacys_shape_and_vectors(monkeypatch):
    import spacy

    from vlmforge.curation.entities import SPACY_MODEL

    assert not DedupEmbed.install(spacy.blank("en"))  # no tok2vec
    nlp = spacy.load(SPACY_MODEL, disable=["ner"])
    embed = nlp.get_pipe("tok2vec").model.layers[0]
    real = DedupEmbed._forward

    def off_by_a_bit(self, model, docs, is_train):
        out, back = real(self, model, docs, is_train)
        return [o + 1e-6 for o in out], back

    monkeypatch.setattr(DedupEmbed, "_forward", off_by_a_bit)
    assert not DedupEmbed.install(nlp)  # vectors that differ at all: spaCy's layer stays
    assert nlp.get_pipe("tok2vec").model.layers[0] is embed
    monkeypatch.setattr(DedupEmbed, "_forward", real)
    assert DedupEmbed.install(nlp)
    assert nlp.get_pipe("tok2vec").model.layers[0].name == "dedup_embed"


def test_greedy_parser_gives_spacys_parse(pipelines):
    """Tags, heads, labels and sentence starts equal those of spaCy's own pipeline, empty and
    multi-sentence texts included, in the order given (the parser sorts each batch by length)."""
    theirs, ours = pipelines
    fast = GreedyParser.for_pipeline(ours)
    assert fast is not None
    texts = TRICKY + CAPTIONS + MORE + PROBE
    tagged = ours.pipe(texts, disable=["parser", "attribute_ruler", "lemmatizer"])
    got = [_parse(d) for d in fast.pipe(tagged)]
    want = [_parse(d) for d in theirs.pipe(texts, disable=["attribute_ruler", "lemmatizer"])]
    assert [[w for w, *_ in d] for d in got] == [[w for w, *_ in d] for d in want]  # order kept
    assert got == want
    assert any(len({i for *_, i, _, _ in d}) > 1 for d in got)  # not all roots: a real parse


def test_small_batches_and_a_batch_of_empty_docs(pipelines):
    theirs, ours = pipelines
    fast = GreedyParser(ours.get_pipe("parser"), batch_size=2)
    texts = ["", "", "A cat on a mat.", "", "Two dogs and a frisbee."]
    docs = list(fast.pipe(ours.pipe(texts, disable=["parser", "attribute_ruler", "lemmatizer"])))
    assert [d.text for d in docs] == texts
    assert [_parse(d) for d in docs] == [_parse(d) for d in theirs.pipe(texts)]
    assert [(t.text, t.dep_) for t in docs[2]] == [("A", "det"), ("cat", "ROOT"), ("on", "prep"), ("a", "det"),
                                                    ("mat", "pobj"), (".", "punct")]


def test_a_parser_with_a_beam_or_no_parser_is_left_to_spacy():
    from vlmforge.curation.entities import SPACY_MODEL

    nlp = load_pipeline(SPACY_MODEL, disable=["ner"])
    nlp.get_pipe("parser").cfg["beam_width"] = 4
    assert GreedyParser.for_pipeline(nlp) is None
    assert GreedyParser.for_pipeline(load_pipeline(SPACY_MODEL, disable=["ner", "parser"])) is None


def test_a_parse_other_than_spacys_is_refused(pipelines, monkeypatch):
    """for_pipeline compares with spaCy's parse of the probe: a loop that parses differently (here one
    that stops after the first action) is not used."""
    _, ours = pipelines

    def one_step(self, docs):
        batch = self.parser.moves.init_batch(docs)
        model = self.parser.model.predict(docs)
        states = [s for s in batch if not s.is_final()]
        self.parser.transition_states(states, model.predict(states))
        model.clear_memory()
        return batch

    monkeypatch.setattr(GreedyParser, "predict", one_step)
    assert GreedyParser.for_pipeline(ours) is None


def test_the_extractor_parses_with_the_fast_loop_and_finds_the_same_entities():
    from vlmforge.curation.entities import SpacyEntityExtractor

    ex = SpacyEntityExtractor()
    ex.setup()
    assert ex._parser is not None
    texts = TRICKY + CAPTIONS
    fast = ex(texts)
    ex._parser = None  # spaCy's own parser component
    assert ex(texts) == fast
    assert sum(map(len, fast)) > len(texts) // 2
