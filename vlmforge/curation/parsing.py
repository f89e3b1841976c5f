"""spaCy's tagger and dependency parser at more than twice the speed, with spaCy's own weights and steps.

Measured on this project's 2-core machine (see `bench/occlusion.py`), two costs of spaCy's small
English pipeline are not the model's arithmetic:

- thinc multiplies matrices through BLIS, and the BLIS wheel that thinc 8.3 takes runs its generic
  reference kernels here: about 22 GFLOP/s on one core, where numpy's OpenBLAS does about 90 on the same
  product. `load_pipeline` builds every layer with thinc's own NumpyOps told not to use BLIS, whose
  matrix product is numpy's.
- The parser's compiled greedy loop spends about a third of its time taking and dropping the GIL inside
  its per-state arithmetic (perf shows PyGILState_Ensure, take_gil and their mutexes above the sums).
  `GreedyParser` runs the same loop from Python instead, one vectorised step per transition for the whole
  batch: the parser's own feature extraction (`ParserStepModel`), weights and transition system
  (`transition_states`, `set_annotations`), in the sub-batches its `pipe` uses.
- tok2vec embeds every token from its own attributes before any layer reads its neighbours, a third of
  its arithmetic, though a batch of captions holds each word many times. `DedupEmbed` embeds each
  distinct token once per batch and gathers the rows back (tok2vec 15-20% faster on captions).

Only the order in which floats are summed inside a matrix product differs from spaCy's path, as it
differs between BLIS's kernels on different CPUs. `GreedyParser.for_pipeline` takes the fast loop only
where it reproduces spaCy's own parse of a probe set, and returns None otherwise (an unknown parser, a
beam, a model of another shape): the caller then runs spaCy's component. `DedupEmbed.install` likewise
keeps spaCy's layer unless the probe's vectors come out bit for bit the same.
"""

from __future__ import annotations

from typing import Iterable, Iterator

# Parsed both ways when a pipeline loads (GreedyParser.for_pipeline): lists, clauses, a question, a possessive.
PROBE = ["A man riding a wave on top of a surfboard.", "Two dogs are sleeping on the couch next to a cat.",
         "There is a red double-decker bus parked by the side of the road.",
         "A kitchen with a stove, a sink and a fridge.", "Someone left a pizza on the table, isn't it gonna get cold?",
         "The bus's doors are open.", "A giraffe standing in a field eating leaves from a tall tree.",
         "Let's see: a laptop, a mouse and a keyboard."]


def load_pipeline(model: str, disable: Iterable[str] = ()):
    """spacy.load with every thinc layer's matrix products through numpy, and tok2vec's embedding
    worked out once per distinct token of a batch where that gives the same vectors (see the module's
    doc and DedupEmbed)."""
    import spacy
    from thinc.api import NumpyOps, use_ops
    from threadpoolctl import threadpool_limits

    ops = NumpyOps(use_blis=False)
    with use_ops("numpy", use_blis=False):
        nlp = spacy.load(model, disable=list(disable))
    for _, component in nlp.pipeline:  # layers built with explicit ops too (the parser's output layer)
        if hasattr(getattr(component, "model", None), "walk"):
            for node in component.model.walk():
                if isinstance(node.ops, NumpyOps):
                    node.ops = ops
    with threadpool_limits(limits=1, user_api="blas"):  # as the extractor runs it
        DedupEmbed.install(nlp)
    return nlp


# Rows the deduplicated embedding multiplies at the least: a product of very few rows may take another BLAS
# kernel than a large one (OpenBLAS does below 7 rows here) and round differently. A batch of fewer tokens
# goes through the layer itself; the distinct rows of a larger one are padded up to this many.
MIN_EMBED_ROWS = 64


class DedupEmbed:
    """tok2vec's embedding, worked out once per distinct token in a batch.

    spaCy's tok2vec first embeds each token from its own attributes alone (norm, prefix, suffix, shape,
    ...: hashed tables, then a maxout layer and a layer norm), a third of the model's arithmetic; only the
    encoder after it reads the neighbours. Captions repeat their words ("a", "of", "the", "on" and the
    objects), so the embedding is computed for the batch's distinct attribute rows and gathered back:
    about 40% of the embedding's time. Row-wise layers give each row the same floats however many rows
    are multiplied (the product's kernel aside: MIN_EMBED_ROWS), and `install` keeps it only where a probe
    batch's vectors come out bit for bit the same as the layer's own."""

    def __init__(self, embed):
        from thinc.api import Model, chain

        self.embed = embed
        self.features = embed.layers[0]
        self.rest = chain(*embed.layers[1:])
        self.model = Model("dedup_embed", self._forward, ops=embed.ops)

    @classmethod
    def install(cls, nlp, name: str = "tok2vec") -> bool:
        """Put the deduplicated embedding in `nlp`'s tok2vec if its model has the shape of spaCy's
        (embed >> encode, the embed a chain from extract_features to ragged2list) and it reproduces the
        vectors of a probe batch exactly. Whether it was put in."""
        import numpy as np

        if name not in nlp.pipe_names:
            return False
        model = getattr(nlp.get_pipe(name), "model", None)
        layers = getattr(model, "layers", [])
        if getattr(model, "name", "").count(">>") < 1 or len(layers) != 2:
            return False
        embed = layers[0]
        names = [layer.name for layer in getattr(embed, "layers", [])]
        if len(names) < 3 or names[0] != "extract_features" or names[-1] != "ragged2list":
            return False
        fast = cls(embed)
        docs = [nlp.make_doc(text) for text in PROBE]
        try:
            same = all(np.array_equal(a, b) for a, b in zip(embed.predict(docs), fast.model.predict(docs)))
        except (AttributeError, TypeError, ValueError):  # a thinc whose layers moved
            return False
        if same:
            model.layers[0] = fast.model
        return same

    def _forward(self, model, docs, is_train: bool):
        import numpy as np

        if is_train:
            raise ValueError("the deduplicated embedding predicts only (it is put in for inference)")
        rows = self.features.predict(docs)  # per doc: (tokens, attributes) uint64
        if sum(len(r) for r in rows) < MIN_EMBED_ROWS:  # a product this small may round otherwise: the layer's own
            return self.embed.predict(docs), lambda d_out: []
        distinct, where = np.unique(np.concatenate(rows), axis=0, return_inverse=True)
        short = MIN_EMBED_ROWS - len(distinct)
        if short > 0:
            distinct = np.concatenate([distinct, np.repeat(distinct[:1], short, axis=0)])
        vectors = self.rest.predict([distinct])[0][where.ravel()]
        out, k = [], 0
        for r in rows:
            out.append(vectors[k : k + len(r)])
            k += len(r)
        return out, lambda d_out: []


class GreedyParser:
    """A greedy transition parser's `pipe`, stepped from Python. Build with `for_pipeline`."""

    def __init__(self, parser, batch_size: int = 256):
        self.parser = parser
        self.batch_size = batch_size

    @classmethod
    def for_pipeline(cls, nlp, name: str = "parser") -> GreedyParser | None:
        """The fast loop for `nlp`'s parser, or None where it is not spaCy's greedy dependency parser or
        does not parse the probe sentences exactly as spaCy does."""
        from spacy.pipeline import DependencyParser

        if name not in nlp.pipe_names or name in nlp.disabled:
            return None
        parser = nlp.get_pipe(name)
        if type(parser) is not DependencyParser or parser.cfg.get("beam_width", 1) != 1:
            return None
        fast = cls(parser)
        before = nlp.pipe_names[: nlp.pipe_names.index(name)]
        try:
            theirs = list(nlp.pipe(PROBE, disable=[n for n in nlp.pipe_names if n not in before + [name]]))
            ours = list(fast.pipe(nlp.pipe(PROBE, disable=[n for n in nlp.pipe_names if n not in before])))
        except (AttributeError, TypeError, ValueError):  # a spaCy whose internals moved
            return None
        same = all([(t.head.i, t.dep) for t in a] == [(t.head.i, t.dep) for t in b] and
                   [t.is_sent_start for t in a] == [t.is_sent_start for t in b] for a, b in zip(theirs, ours))
        return fast if same else None

    def predict(self, docs: list) -> list:
        """The final parse states of `docs`, as the parser's own `predict` gives them."""
        from spacy.ml.parser_model import ParserStepModel

        parser = self.parser
        parser._ensure_labels_are_added(docs)  # as spaCy's greedy_parse: labels a doc already carries
        batch = parser.moves.init_batch(docs)
        if not any(len(doc) for doc in docs):
            return batch
        model = parser.model.predict(docs)  # tokens' features through the lower layer, once
        if not isinstance(model, ParserStepModel):
            raise TypeError(f"unexpected parser model {type(model).__name__}")
        states = [s for s in batch if not s.is_final()]
        while states:
            scores = model.predict(states)  # context features -> hidden -> action scores
            states = parser.transition_states(states, scores)  # best valid action, taken
        model.clear_memory()
        return batch

    def pipe(self, docs: Iterable) -> Iterator:
        """Parse a stream of docs in order, as `parser.pipe` does: batches of `batch_size`, each in
        sub-batches of a quarter of it sorted by length."""
        from spacy.util import minibatch

        for batch in minibatch(docs, size=self.batch_size):
            by_length = sorted(batch, key=len)
            for sub in minibatch(by_length, size=max(self.batch_size // 4, 2)):
                self.parser.set_annotations(sub, self.predict(sub))
            yield from batch
