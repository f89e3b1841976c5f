"""open: free answers judged against a reference (usually a class name).

`containment`: the normalised reference appears in the normalised answer (the accuracy of the
self-synthesis papers). `soft_match`: the best cosine between the reference and the answer or any of
its sentences, in sentence-embedding space (offline MiniLM by default), is at least the threshold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlmforge.errors import UserError
from vlmforge.evaluation.items import (
    Dataset, EvalItem, ReadOptions, apply_limit, collect_items, first_turns, no_split, read_records, resolve_image,
)
from vlmforge.evaluation.metrics import accuracy, grouped_accuracy
from vlmforge.evaluation.parsers import Parsed, contains_answer
from vlmforge.evaluation.report import plot_bars
from vlmforge.evaluation.tasks import Record, Task

DEFAULT_THRESHOLD = 0.85
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


def _reference(doc: dict[str, Any]) -> str:
    for key in ("label", "answer", "reference", "class"):
        if isinstance(doc.get(key), str) and doc[key].strip():
            return doc[key]
    return first_turns(doc)[1]


class OpenTask(Task):
    name = "open"
    description = "open answers: containment after normalisation and embedding soft-match"
    scoring_modes = ("generate",)

    def read(self, paths: list[Path], opts: ReadOptions) -> Dataset:
        def from_file(path: Path) -> list[EvalItem]:
            no_split(opts, f"{path} is a file, not a build")
            return [self._item(str(rec.get("id", rec.get("question_id", i))), rec, opts,
                               image_path=resolve_image(rec.get("image"), [opts.image_root, path.parent]))
                    for i, rec in enumerate(read_records(path))]

        items, build_id, split = collect_items(
            paths, opts.split, lambda key, doc, image: self._item(key, doc, opts, image=image), from_file)
        return Dataset(apply_limit(items, opts.limit), source=", ".join(map(str, paths)), build_id=build_id,
                       split=split)

    def _item(self, ident: str, doc: dict[str, Any], opts: ReadOptions, **image: Any) -> EvalItem:
        prompt = opts.prompt or first_turns(doc)[0] or doc.get("text") or doc.get("question") or ""
        ref = _reference(doc)
        if not prompt or not ref:
            raise UserError(f"item {ident} needs a question and a reference answer (label, answer or a gpt turn)")
        meta = {"class": doc["label"]} if isinstance(doc.get("label"), str) else {}
        return EvalItem(id=ident, prompt=prompt, answer=ref, meta=meta, **image)

    def parse(self, rec: Record) -> Parsed:
        return Parsed(rec["prediction"])

    def is_correct(self, rec: Record, parsed: Parsed) -> bool:
        return parsed.ok and contains_answer(parsed.value, rec["answer"])

    def soft_scores(self, predictions: list[str], references: list[str]) -> list[float]:
        """For each pair, the highest cosine between the reference and the prediction or one of its sentences."""
        from vlmforge.curation.embedding import shared_embedder

        embedder = shared_embedder(self.options.get("embedder"))
        pieces: list[list[str]] = [[p] + [s for s in _SENTENCES.split(p) if s.strip() and s != p] for p in predictions]
        flat = [s for ps in pieces for s in ps]
        vp, vr = embedder.encode(flat), embedder.encode(references)
        out, i = [], 0
        for j, ps in enumerate(pieces):
            out.append(float(max(vp[i : i + len(ps)] @ vr[j])))
            i += len(ps)
        return out

    def score(self, records: list[Record]) -> dict[str, Any]:
        texts = [r.get("prediction") or "" for r in records]
        correct = [self.is_correct(r, self.interpret(r)) for r in records]
        out: dict[str, Any] = {"containment_accuracy": accuracy(correct), "n": len(records)}
        if self.options.get("soft", True) and records:
            given = self.options.get("soft_threshold")
            threshold = DEFAULT_THRESHOLD if given is None else float(given)
            cos = self.soft_scores(texts, [r["answer"] for r in records])
            out["soft_match_accuracy"] = accuracy([c >= threshold for c in cos])
            out["mean_cosine"] = sum(cos) / len(cos)
            out["soft_threshold"] = threshold
        classes = [r["meta"].get("class") for r in records]
        if all(classes):
            out["by_class"] = grouped_accuracy(correct, classes)
        return out

    def plots(self, records: list[Record], metrics: dict[str, Any], out: Path) -> list[Path]:
        if "by_class" not in metrics:
            return []
        return [plot_bars({k: v["accuracy"] for k, v in metrics["by_class"].items()}, out / "per_class_accuracy.png",
                          "containment accuracy per class", sort=True)]
