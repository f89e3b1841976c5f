"""`cvc-trials`: trial-learning data from an occlusion build (CVC).

For each occluded image the generator writes K reasoning trials (paper: 16, temperature 1, top_p
0.9). Each trial's final answer is extracted (rules, or a generator prompt) and compared with the
label by embedding cosine (offline MiniLM; BGE-M3 when given): correct when above 0.85, or when it is
the label but for number (`SoftMatcher.is_match`). Images the
model solves only sometimes (1 <= correct <= 4 of 16 by default) are the useful ones: each yields
one chain-of-thought sample per correct trial and one short-answer sample per distinct correct
answer, in LLaVA format. Pass rates land in the manifest (kept) and in the rejects (too easy/hard);
an image whose trials are all empty (a generator fault) is an `empty_trials` reject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vlmforge.builders.base import BuildConfig, Builder
from vlmforge.builders.selfsynth import (REFUSED, FromBuildMixin, GeneratorMixin, ask, model_text, refused_by_owner,
                                        stable_int)
from vlmforge.curation.generation import GenerationRequest
from vlmforge.curation.instructions import short_answer_question, with_article, with_instruction
from vlmforge.curation.softmatch import DEFAULT_THRESHOLD, SoftMatcher, clean_answer, extract_answer, same_in_number
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record
from vlmforge.sources.build import load_record_sample

REASONING_SUFFIX = ("Please provide your reasoning process and confirm a unique answer. "
                    "End with 'Final answer: <answer>'.")
EXTRACT_PROMPT = ("Below is a reasoning about what is hidden in an image.\n\n{text}\n\n"
                  "What final answer does it give? Reply with the answer phrase only.")


@dataclass
class CvcTrialsConfig(BuildConfig):
    generator: str = "template"
    model: str | None = None
    trials: int = 16
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 512
    reasoning_suffix: str = REASONING_SUFFIX  # appended to the occlusion question for the trials
    extractor: str = "rule"  # rule | generator
    embedder: str = "minilm"  # or e.g. BAAI/bge-m3
    threshold: float = DEFAULT_THRESHOLD
    min_correct: int = 1
    max_correct: int | None = None  # default: 4, or trials when fewer


class CvcTrialsBuilder(GeneratorMixin, FromBuildMixin, Builder):
    name = "cvc-trials"
    VERSION = "1.4.0"
    Config = CvcTrialsConfig
    description = ("CVC trial learning: K reasoning trials per occluded image, answers soft-matched to the label; "
                   "images solved only sometimes give chain-of-thought and short-answer samples.")
    columns = [
        ("label", pa.string(), "the occluded object's label"),
        ("supercategory", pa.string(), "the label's supercategory"),
        ("sample_kind", pa.string(), "cot (one correct reasoning trial) or answer (one distinct correct answer)"),
        ("trial", pa.int32(), "index of the trial the sample comes from (first one giving the answer)"),
        ("answer", pa.string(), "the trial's extracted final answer"),
        ("similarity", pa.float64(), "embedding cosine of the answer and the label"),
        ("n_correct", pa.int32(), "correct trials of the image"),
        ("n_trials", pa.int32(), "trials sampled for the image"),
        ("pass_rate", pa.float64(), "n_correct / n_trials"),
        ("parent_key", pa.string(), "key of the occlusion sample"),
    ]
    batch_size = 8

    def __init__(self, config: CvcTrialsConfig, source, generator_options: dict[str, Any] | None = None,
                 cache_dir=None, quiet: bool = True):
        super().__init__(config, source)
        if config.extractor not in ("rule", "generator"):
            raise UserError("--extractor must be rule or generator")
        if config.max_correct is None:
            config.max_correct = min(4, config.trials)
        if not -1 <= config.threshold <= 1:  # a cosine similarity: 2 would call every answer wrong
            raise UserError(f"--threshold must be between -1 and 1 (a cosine similarity), got {config.threshold}")
        if not 1 <= config.min_correct <= config.max_correct <= config.trials:
            raise UserError(f"need 1 <= --min-correct ({config.min_correct}) <= --max-correct ({config.max_correct}) "
                            f"<= --trials ({config.trials})")
        self._init_generation(generator_options, cache_dir, quiet)
        self.candidates: dict[str, list[str]] = {}

    def prepare(self) -> None:
        """Labels per supercategory: the answer space the template backend guesses from."""
        self.require_parent_columns({"label", "supercategory"}, "--from must be an occlusion build")
        first = next(self.src.build.samples(), None)
        if first is not None and "question" not in first["json"]:  # e.g. a cvc-trials build: no occlusion question
            raise UserError(f"{self.src.build.path} is {with_article(self.src.build.info['builder'])} build whose samples "
                            "have no occlusion question: --from must be an occlusion build")
        rows = self.src.build.sql("SELECT DISTINCT supercategory, label FROM samples WHERE label IS NOT NULL "
                         "ORDER BY supercategory, label").fetchall()
        self.candidates = {}
        for sup, label in rows:
            self.candidates.setdefault(sup or "", []).append(label)

    def setup(self) -> None:
        self._make_generator(self.config.generator, self.config.model)
        self._matcher = SoftMatcher(self.config.embedder, self.config.threshold)

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        cfg = self.config
        gen = self._make_generator(cfg.generator, cfg.model)
        parents, reqs, done = [], [], {}
        for i, rec in enumerate(batch):
            parent = load_record_sample(rec)
            doc = json.loads(parent.pop("json"))
            if not isinstance(doc.get("question"), str) or not doc.get("label"):
                done[i] = [Reject(rec["source_id"], "not_occlusion", "trials",
                                  "the parent sample has no occlusion question and label")]
                continue
            prompt = with_instruction(doc["question"], cfg.reasoning_suffix)
            reqs.append(GenerationRequest(
                "<image>\n" + prompt, image=parent.get(rec["image_format"]), n=cfg.trials, temperature=cfg.temperature,
                top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=stable_int(cfg.seed, rec["key"], "trials"),
                extra={"template": {"task": "reason", "context": doc.get("supercategory") or "object",
                                    "candidates": self.candidates.get(doc.get("supercategory") or "", [doc["label"]])}}))
            parents.append((i, rec, parent, doc, prompt))
        trials, refused = ask(gen, reqs) if reqs else ([], {})
        for i, words in refused_by_owner(refused, [p[0] for p in parents], "image of a batch").items():
            done[i] = [Reject(batch[i]["source_id"], REFUSED, "trials", words)]
        asked = [(p, texts) for p, texts in zip(parents, trials) if texts is not None]
        answers, refused = self._extract([texts for _, texts in asked])
        for j, words in refused.items():
            i = asked[j][0][0]
            done[i] = [Reject(batch[i]["source_id"], REFUSED, "extract", words)]
        asked = [(p, texts, found) for (p, texts), found in zip(asked, answers) if found is not None]
        sims = self._matcher.similarity_many([(found, p[3]["label"]) for p, _, found in asked])
        for ((i, rec, parent, doc, prompt), texts, found), sim in zip(asked, sims):
            done[i] = self._samples(rec, parent, doc, prompt, texts, found, sim)
        return [done[i] for i in range(len(batch))]

    def _extract(self, trials: list[list[str]]) -> tuple[list[list[str] | None], dict[int, str]]:
        """Each image's final answers (None where the endpoint refused to extract one), and the refusals
        by image index."""
        if self.config.extractor == "rule":
            return [[extract_answer(t) for t in texts] for texts in trials], {}
        gen = self._make_generator(self.config.generator, self.config.model)
        flat = [t for texts in trials for t in texts]
        reqs = [GenerationRequest(EXTRACT_PROMPT.format(text=t), max_new_tokens=32, seed=self.config.seed,
                                  extra={"template": {"task": "extract", "text": t}}) for t in flat]
        outs, refused = ask(gen, reqs) if reqs else ([], {})
        refused_images = refused_by_owner(refused, [j for j, texts in enumerate(trials) for _ in texts],
                                          "image of a batch")
        cleaned = [extract_answer(o) if "answer" in o.lower() else clean_answer(o)
                   for o in (o[0] if o else "" for o in outs)]
        it = iter(cleaned)
        found = [[next(it) for _ in texts] for texts in trials]
        return [None if j in refused_images else f for j, f in enumerate(found)], refused_images

    def _samples(self, rec: Record, parent: dict, doc: dict, prompt: str, texts: list[str],
                 found: list[str], sims) -> list[Sample | Reject]:
        cfg = self.config
        label = doc["label"]
        n = len(texts)
        if not any(t.strip() for t in texts):  # a fault (an empty completion), not an image too hard
            return [Reject(rec["source_id"], "empty_trials", "trials", f"the generator returned {n} empty trials")]
        correct = [j for j, s in enumerate(sims) if self._matcher.is_match(found[j], label, s)]
        if len(correct) < cfg.min_correct or len(correct) > cfg.max_correct:
            reason = "too_hard" if len(correct) < cfg.min_correct else "too_easy"
            return [Reject(rec["source_id"], reason, "trials", f"pass rate {len(correct)}/{n}")]
        key = parent.pop("__key__")
        image_ext = rec["image_format"]
        image = parent.pop(image_ext)
        base = {"label": label, "supercategory": doc.get("supercategory"), "n_correct": len(correct), "n_trials": n,
                "pass_rate": len(correct) / n if n else 0.0, "parent_key": key}
        out: list[Sample | Reject] = []

        def make(suffix: str, kind: str, j: int, question: str, reply: str) -> Sample:
            conv = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": reply}]
            meta = {**base, "sample_kind": kind, "trial": j, "answer": found[j], "similarity": round(float(sims[j]), 6)}
            new_doc = {"id": f"{key}_{suffix}", "parent_key": key, "label": label,
                       "supercategory": doc.get("supercategory"), "entity": doc.get("entity"), "kind": kind,
                       "trial": j, "answer": found[j], "similarity": meta["similarity"],
                       "n_correct": len(correct), "n_trials": n, "conversations": conv}
            return Sample(key=f"{key}_{suffix}", doc=new_doc, image=image, image_ext=image_ext, width=rec["width"],
                          height=rec["height"], source_id=rec["source_id"], extras=dict(parent), columns=meta)

        for j in correct:
            out.append(make(f"cot{j:02d}", "cot", j, prompt, model_text(texts[j])))
        seen: list[str] = []
        for j in correct:
            if any(same_in_number(found[j], s) for s in seen):  # "kites", "a kite" and "kite" are one answer
                continue
            seen.append(found[j])
            out.append(make(f"ans{len(seen) - 1:02d}", "answer", j, short_answer_question(doc["question"]), found[j]))
        return out
