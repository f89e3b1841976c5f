"""The caption parse: spaCy's pipeline as spacy.load runs it, next to the same model as the entity
extractor runs it (curation/parsing.py: matrix products through numpy, the greedy parser stepped from
Python), on the same captions in the same run, one core each.

  python bench/parse.py [--images 200] [--repeats 5] [--captions FILE]

Rows: tagger + parser (what noun chunks need) both ways, and the whole entity extraction (the memoised
attribute rules and our filters included) on the fast path. The parses are compared token by token
(tag, head, label, sentence start): a difference is printed and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def timed(f, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="images of the generated sample (5 captions each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--captions", type=Path, help="a text file, one caption per line, instead of the sample's")
    args = ap.parse_args()

    import spacy
    from threadpoolctl import threadpool_limits

    from vlmforge.curation.entities import SPACY_MODEL, SpacyEntityExtractor, load_spacy
    from vlmforge.curation.parsing import GreedyParser

    if args.captions:
        captions = [line.strip() for line in args.captions.read_text().splitlines() if line.strip()]
    else:
        from vlmforge.sources.sample_coco import make_sample

        root = make_sample(Path(tempfile.mkdtemp(prefix="vlmforge-parse-")) / "coco", images=args.images)
        doc = json.loads((root / "annotations" / "captions_val2017.json").read_text())
        captions = [a["caption"] for a in doc["annotations"]]
    theirs = spacy.load(SPACY_MODEL, disable=["ner"])
    ours = load_spacy(SPACY_MODEL)
    fast = GreedyParser.for_pipeline(ours)
    if fast is None:
        sys.exit("the fast parse loop does not apply to this pipeline (spaCy's own parse runs): nothing to compare")
    extractor = SpacyEntityExtractor(SPACY_MODEL)
    extractor.setup()
    rest = ["attribute_ruler", "lemmatizer"]

    def key(d):
        return [(t.tag_, t.head.i, t.dep_, t.is_sent_start) for t in d]

    with threadpool_limits(limits=1, user_api="blas"):  # one core each, as a build process parses
        spacy_parse = lambda: list(theirs.pipe(captions, batch_size=256, disable=rest))  # noqa: E731
        fast_parse = lambda: list(fast.pipe(ours.pipe(captions, batch_size=256, disable=["parser"] + rest)))  # noqa: E731
        differ = [c for c, a, b in zip(captions, spacy_parse(), fast_parse()) if key(a) != key(b)]
        t_spacy = timed(spacy_parse, args.repeats)
        t_fast = timed(fast_parse, args.repeats)
    t_extract = timed(lambda: extractor(captions), args.repeats)  # sets its own one-thread limit
    n = len(captions)
    print(f"{n} captions, {sum(len(c.split()) for c in captions) / n:.1f} words each; median of {args.repeats}")
    print(f"{'tagger + parser, spaCy as loaded':<40}{t_spacy:>8.3f}s {n / t_spacy:>8.0f} captions/s")
    print(f"{'tagger + parser, curation/parsing.py':<40}{t_fast:>8.3f}s {n / t_fast:>8.0f} captions/s   "
          f"({t_spacy / t_fast:.2f}x spaCy's speed)")
    print(f"{'entity extraction (all of it)':<40}{t_extract:>8.3f}s {n / t_extract:>8.0f} captions/s")
    if differ:
        print(f"{len(differ)} caption(s) parse differently, e.g. {differ[0]!r}")
        sys.exit(1)
    print("parses: the same on every caption")


if __name__ == "__main__":
    main()
