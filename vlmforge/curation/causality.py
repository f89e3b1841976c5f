"""Causality tagging: how well an entity's context predicts it. Only predictable entities are worth
hiding, since the model is asked to infer them from what remains visible.

Backends:
- `cooccurrence` (offline default). Over the whole source, each image is a document whose labels are
  those its captions name. With n(a) images naming a and n(a, b) naming both, the context C of entity
  e in image i (the other labels of image i) predicts e with the noisy-OR
      score(e | C) = 1 - prod_{c in C} (1 - p(e | c)),   p(e | c) = (n(e, c) - 1) / (n(c) - 1 + alpha)
  where the -1 terms leave image i itself out (an entity must be predicted by other images, not by
  its own co-occurrence) and alpha = 1 smooths rare contexts. score is in [0, 1]; higher = more
  predictable; kept when score >= min_score (config).
- `mlm` (the CVC paper's method). The entity's label tokens are masked in the caption and a masked
  language model scores the gold tokens; value = exp(mean negative log-likelihood) (pseudo-perplexity).
  Kept when min_ppl < value < max_ppl (paper: roberta-large, 1 < ppl < 3.33). Any
  AutoModelForMaskedLM path or Hub id.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Iterable


@dataclass
class CausalityItem:
    caption: str
    start: int  # label span in the caption
    end: int
    label: str
    context: tuple[str, ...]  # the other labels of the same image


class CooccurrenceScorer:
    name = "cooccurrence"
    resources = {"cpu": 1}

    def __init__(self, min_score: float = 0.25, alpha: float = 1.0):
        self.min_score = min_score
        self.alpha = alpha
        self.single: Counter = Counter()
        self.pair: Counter = Counter()

    def fit(self, label_sets: Iterable[Iterable[str]]) -> "CooccurrenceScorer":
        """Count labels and label pairs over images (one set of labels per image)."""
        for labels in label_sets:
            uniq = sorted(set(labels))
            self.single.update(uniq)
            self.pair.update(combinations(uniq, 2))
        return self

    def p(self, e: str, c: str) -> float:
        pair = self.pair[(e, c) if e < c else (c, e)]
        denom = self.single[c] - 1 + self.alpha
        return max(pair - 1, 0) / denom if denom > 0 else 0.0

    def setup(self) -> None:
        pass

    def __call__(self, items: list[CausalityItem]) -> list[float]:
        out = []
        for it in items:
            miss = 1.0
            # Sorted: a product taken in set order differs in its last bit with PYTHONHASHSEED, and a
            # score at a threshold or a tie at the --max-entities cut would then change the build.
            for c in sorted(set(it.context) - {it.label}):
                miss *= 1.0 - self.p(it.label, c)
            out.append(1.0 - miss)
        return out

    def keep(self, value: float) -> bool:
        return value >= self.min_score


class MaskedLMScorer:
    """Pseudo-perplexity of the masked label tokens under a masked LM, batched."""

    name = "mlm"
    resources = {"cpu": 1, "gpu": 0.25}

    max_length = 128  # tokens of a caption scored; a label past them is not scored (inf)

    def __init__(self, model: str = "FacebookAI/roberta-large", min_ppl: float = 1.0, max_ppl: float = 3.33,
                 batch_size: int = 32, device: str | None = None):
        self.model_name = model
        self.min_ppl = min_ppl
        self.max_ppl = max_ppl
        self.batch_size = batch_size
        self.device = device
        self._model = None

    def setup(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from vlmforge.curation.models import load_checkpoint, torch_device
        from vlmforge.errors import UserError

        self._tok, model = load_checkpoint("masked LM", self.model_name, lambda: (
            AutoTokenizer.from_pretrained(self.model_name), AutoModelForMaskedLM.from_pretrained(self.model_name)))
        if not getattr(self._tok, "is_fast", False):
            raise UserError(f"{self.model_name}: the mlm backend needs a fast tokenizer (character offsets)")
        if set(self._tok("a dog on a bench", add_special_tokens=False)["input_ids"]) <= {self._tok.unk_token_id}:
            # transformers makes an empty tokenizer for a folder without tokenizer files: every word unknown
            raise UserError(f"cannot load masked LM {self.model_name!r}: its tokenizer knows no word "
                            "(are the tokenizer files missing?)")
        self._device = torch_device(self.device)
        self._model = model.eval().to(self._device)

    def __call__(self, items: list[CausalityItem]) -> list[float]:
        import torch

        self.setup()
        out: list[float] = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i : i + self.batch_size]
            enc = self._tok([it.caption for it in chunk], return_offsets_mapping=True, padding=True,
                            truncation=True, max_length=self.max_length, return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            ids = enc["input_ids"].clone()
            masked = torch.zeros_like(ids, dtype=torch.bool)
            for row, it in enumerate(chunk):
                for col, (a, b) in enumerate(offsets[row].tolist()):
                    if b > a and a < it.end and b > it.start:
                        masked[row, col] = True
            enc["input_ids"] = ids.masked_fill(masked, self._tok.mask_token_id)
            with torch.no_grad():
                logits = self._model(**{k: v.to(self._device) for k, v in enc.items()}).logits.float().cpu()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            for row in range(len(chunk)):
                sel = masked[row]
                if not bool(sel.any()):
                    out.append(math.inf)  # the label fell outside the truncated text
                    continue
                out.append(float(torch.exp(-logp[row][sel].mean())))
        return out

    def keep(self, value: float) -> bool:
        return self.min_ppl < value < self.max_ppl

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        state.pop("_tok", None)
        return state
