"""Fixtures for the evaluator: small images, a tiny MCQA build made by a test builder, tiny models."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from vlmforge.builders.base import Builder, BuildConfig, run_build
from vlmforge.sample import Sample
from vlmforge.sources.base import Source


def tiny_png(seed: int = 0, size: int = 24) -> bytes:
    """A small deterministic RGB PNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype="uint8")).save(buf, "PNG")
    return buf.getvalue()


class ListSource(Source):
    """Records given in memory, by split."""

    name = "list"

    def __init__(self, by_split: dict[str, list[dict[str, Any]]]):
        self._by_split = by_split

    def splits(self) -> list[str]:
        return sorted(self._by_split)

    def records(self, split: str) -> Iterator[dict[str, Any]]:
        yield from self._by_split[split]

    def count(self, split: str) -> int:
        return len(self._by_split[split])

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._by_split, sort_keys=True).encode()).hexdigest()


class DocBuilder(Builder):
    """Writes each record's `doc` as a sample with a small PNG: enough to stand in for the mcqa and
    grading builders, whose sample json this evaluator reads."""

    name = "evaltest"
    VERSION = "0.0.1"
    Config = BuildConfig

    def process(self, batch):
        return [[Sample(key=r["source_id"], doc=r["doc"], image=tiny_png(r["seed"]), image_ext="png",
                        width=24, height=24, source_id=r["source_id"])] for r in batch]


def make_build(out: Path, docs: list[dict[str, Any]], split: str = "test") -> Path:
    return make_split_build(out, {split: docs})


def make_split_build(out: Path, docs_by_split: dict[str, list[dict[str, Any]]]) -> Path:
    """A build with a split per key; sample keys start with their split's name."""
    by_split = {split: [{"source_id": f"{split}{i:03d}", "seed": i, "doc": d} for i, d in enumerate(docs)]
                for split, docs in docs_by_split.items()}
    return run_build(DocBuilder(BuildConfig(), ListSource(by_split)), out=out, quiet=True)


MCQA_CLASSES = ["cat", "dog", "bird", "horse"]


def mcqa_doc(label: str, options: list[str]) -> dict[str, Any]:
    """A sample json as `vlmforge build mcqa` writes it: options, answer_index, label, conversations."""
    letters = "ABCD"
    idx = options.index(label)
    question = "What is the main object in the image?\n" + "\n".join(
        f"{letters[i]}. {o}" for i, o in enumerate(options)) + "\nAnswer with the option's letter from the given choices directly."
    return {"options": options, "answer_index": idx, "label": label,
            "conversations": [{"from": "human", "value": "<image>\n" + question},
                              {"from": "gpt", "value": letters[idx]}]}


@pytest.fixture(scope="session")
def mcqa_build(tmp_path_factory) -> Path:
    """Six MCQA samples over four classes, gold positions spread over A-D."""
    rot = lambda k: MCQA_CLASSES[k:] + MCQA_CLASSES[:k]  # noqa: E731
    docs = [mcqa_doc("cat", rot(0)), mcqa_doc("dog", rot(2)), mcqa_doc("bird", rot(3)),
            mcqa_doc("horse", rot(1)), mcqa_doc("cat", rot(1)), mcqa_doc("dog", rot(0))]
    return make_build(tmp_path_factory.mktemp("mcqa-build"), docs)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from vlmforge.training.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from vlmforge.training.tiny import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def llava_runner(tiny_llava):
    """One loaded tiny LLaVA for the whole session (loading is the slow part)."""
    from vlmforge.evaluation.runners import LocalRunner

    runner = LocalRunner(str(tiny_llava), batch_size=3, max_new_tokens=4)
    runner.setup()
    return runner
