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

Only the order in which floats are summed inside a matrix product differs from spaCy's path, as it
differs between BLIS's kernels on different CPUs. `GreedyParser.for_pipeline` takes the fast loop only
where it reproduces spaCy's own parse of a probe set, and returns None otherwise (an unknown parser, a
beam, a model of another shape): the caller then runs spaCy's component.
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
    """spacy.load with every thinc layer's matrix products through numpy (see the module's doc)."""
    import spacy
    from thinc.api import NumpyOps, use_ops

    ops = NumpyOps(use_blis=False)
    with use_ops("numpy", use_blis=False):
        nlp = spacy.load(model, disable=list(disable))
    for _, component in nlp.pipeline:  # layers built with explicit ops too (the parser's output layer)
        if hasattr(getattr(component, "model", None), "walk"):
            for node in component.model.walk():
                if isinstance(node.ops, NumpyOps):
                    node.ops = ops
    return nlp


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
