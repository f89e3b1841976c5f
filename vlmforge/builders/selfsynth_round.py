"""`selfsynth-round`: one rejection-sampling round (k -> k+1) of the self-synthesized QA.

Input: the previous round's build (a `selfsynth` build or an earlier round) and a JSONL file of a
model's candidate answers per question, one line per question (`{"key", "question", "type"?,
"answers": [...]}`) or per candidate (`{"key", "question", "answer"}`). For each question the
candidates are scored by the information-bottleneck score against the image's concepts (other
images' concepts as negatives); of those that name the label, the best is kept. Simple questions take
the first candidate that names the label. Otherwise the answer falls back to "This is an image of
{label}.". A question the endpoint refused to answer (selfsynth-answers writes its line with
`"refused"`, the endpoint's words, and no answers) is left out like one without a line; a sample whose
every question was refused is a `refused_by_endpoint` reject. Keys and images stay those of the parent,
whose build id becomes this build's parent; build.json's `parent_builds` holds the whole chain (earlier
rounds and the selfsynth build, each with its builder, version, build id and config).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlmforge.builders.base import BuildConfig, Builder
from vlmforge.builders.selfsynth import (REFUSED, FromBuildMixin, ask, missing_columns, model_text,
                                        question_type_of)
from vlmforge.curation.concepts import IB_TEMPERATURE, ib_scores
from vlmforge.curation.softmatch import names_label
from vlmforge.errors import UserError
from vlmforge.sample import Reject, Sample
from vlmforge.sources.base import Record
from vlmforge.sources.build import load_record_sample

FALLBACK = "This is an image of {label}."


def read_answers(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Answers JSONL -> key -> [{"question", "type", "answers": [...]}], questions in first-seen order."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"cannot read answers file {p}: {e.strerror or e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{p}:{lineno} is not JSON: {e}") from None
        if not isinstance(row, dict) or "key" not in row or "question" not in row:
            raise UserError(f"{p}:{lineno}: each line needs 'key', 'question' and 'answers' (a list) or 'answer'")
        cands = row.get("answers", [row["answer"]] if "answer" in row else None)
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            raise UserError(f"{p}:{lineno}: 'answers' must be a list of strings")
        if not isinstance(row["question"], str):
            raise UserError(f"{p}:{lineno}: 'question' must be text, not {type(row['question']).__name__}")
        entry = out.setdefault(str(row["key"]), {}).setdefault(
            row["question"], {"question": row["question"], "type": row.get("type"), "answers": []})
        entry["answers"].extend(str(c) for c in cands)
        entry["type"] = entry["type"] or row.get("type")
        if row.get("refused"):  # the endpoint's words (selfsynth-answers): left out unless answered elsewhere
            entry.setdefault("refused", str(row["refused"]))
    return {k: list(v.values()) for k, v in out.items()}


@dataclass
class SelfSynthRoundConfig(BuildConfig):
    answers: str = ""  # JSONL of candidate answers
    answers_sha256: str = ""  # filled from the file: the build's identity follows its content
    embedder: str = "minilm"
    ib_temperature: float = IB_TEMPERATURE

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        del d["seed"]  # a round draws nothing at random: another --seed is the same build
        del d["answers"]  # the file's content (answers_sha256) is the build, not where it lies
        return d


class SelfSynthRoundBuilder(FromBuildMixin, Builder):
    name = "selfsynth-round"
    VERSION = "1.7.0"  # 1.7.0: "anything but a X" does not name X (softmatch.names_label)
    Config = SelfSynthRoundConfig
    description = ("A rejection-sampling round of selfsynth: a model's candidate answers scored against each "
                   "image's concepts; the best answer that names the label is kept, else a plain fallback.")
    columns = [
        ("label", pa.string(), "class label of the image"),
        ("concepts", pa.list_(pa.string()), "the image's concepts (carried over from the parent)"),
        ("question_types", pa.list_(pa.string()), "type of each question, in turn order"),
        ("n_qa", pa.int32(), "question-answer pairs in the sample"),
        ("n_fallback", pa.int32(), "questions answered by the fallback (no candidate named the label)"),
        ("round", pa.int32(), "rejection-sampling round (the selfsynth build is round 1)"),
        ("n_unanswered", pa.int32(), "questions of the parent sample the answers file has no line for (left out)"),
    ]
    batch_size = 32

    def __init__(self, config: SelfSynthRoundConfig, source):
        super().__init__(config, source)
        if not config.answers:
            raise UserError("selfsynth-round needs --answers FILE (JSONL of candidate answers)")
        path = Path(config.answers)
        if not path.is_file():
            raise UserError(f"answers file {'is a folder' if path.is_dir() else 'not found'}: {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if config.answers_sha256 and config.answers_sha256 != digest:
            raise UserError(f"answers file {path} does not match answers_sha256 {config.answers_sha256}")
        config.answers_sha256 = digest
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.all_concepts: list[str] = []

    def prepare(self) -> None:
        self.require_parent_columns({"label", "concepts"}, "--from must be a selfsynth build or round")
        build = self.src.build
        self.answers = read_answers(self.config.answers)
        if not self.answers:
            raise UserError(f"answers file {self.config.answers} has no answers (it is empty)")
        rows = build.sql("SELECT DISTINCT unnest(concepts) AS c FROM samples ORDER BY c").fetchall()
        self.all_concepts = [r[0] for r in rows]
        keys = {r[0] for r in build.sql("SELECT key FROM samples").fetchall()}
        unknown = sorted(set(self.answers) - keys)
        if keys and len(unknown) == len(self.answers):
            # Every sample would be a no_answers reject: most likely the answers of another build.
            raise UserError(f"no key of answers file {self.config.answers} is in the parent build {build.path} "
                            f"(the file's first: {unknown[0]}; the build's first: {min(keys)}); were the answers "
                            "made from another build?")
        if unknown and not getattr(self, "quiet", False):  # --quiet prints nothing but errors
            from vlmforge.progress import console

            console.print(f"[yellow]warning[/] {len(unknown)} keys of the answers file are not in the parent build "
                          f"(first: {unknown[0]}); their answers are not used")

    def setup(self) -> None:
        from vlmforge.curation.embedding import shared_embedder

        self._embedder = shared_embedder(self.config.embedder)
        self._concept_vecs = self._embedder.encode(self.all_concepts).astype(np.float64)
        self._concept_index = {c: i for i, c in enumerate(self.all_concepts)}

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        # Embed every candidate of the batch in one call: per-question calls would dominate the run.
        texts = sorted({model_text(c) for rec in batch for e in self.answers.get(rec["key"], [])
                        for c in e["answers"]} - {""})
        vecs = self._embedder.encode(texts).astype(np.float64) if texts else np.zeros((0, 1))
        self._cand_index = {t: vecs[i] for i, t in enumerate(texts)}
        return [[self._one(rec)] for rec in batch]

    def _one(self, rec: Record) -> Sample | Reject:
        entries = self.answers.get(rec["key"]) or []
        refused = [e["refused"] for e in entries if e.get("refused") and not e["answers"]]
        entries = [e for e in entries if e["answers"] or not e.get("refused")]
        if not entries:
            if refused:
                return Reject(rec["source_id"], REFUSED, "answers", refused[0])
            return Reject(rec["source_id"], "no_answers", "answers", "the answers file has no line for this key")
        parent = load_record_sample(rec)
        doc = json.loads(parent.pop("json"))
        key = parent.pop("__key__")
        image_ext = rec["image_format"]
        image = parent.pop(image_ext) if image_ext else None
        label, concepts = doc["label"], list(doc.get("concepts") or [])
        parent_types = {qa["question"]: qa.get("type") for qa in doc.get("qa", [])}
        subject = doc.get("subject") or "object"
        qa, n_fallback = [], 0
        for entry in entries:
            qtype = (entry["type"] or parent_types.get(entry["question"])
                     or question_type_of(entry["question"], subject) or "explain")
            answer, score = self._choose(entry["answers"], qtype, label, concepts)
            fallback = answer is None
            if fallback:
                answer, n_fallback = FALLBACK.format(label=label), n_fallback + 1
            qa.append({"type": qtype, "question": entry["question"], "answer": answer, "score": score,
                       "fallback": fallback})
        conv = []
        for n, item in enumerate(qa):
            conv += [{"from": "human", "value": ("<image>\n" if n == 0 else "") + item["question"]},
                     {"from": "gpt", "value": item["answer"]}]
        new_round = int(doc.get("round", 1)) + 1
        asked = {e["question"] for e in entries}
        unanswered = [q for q in parent_types if q not in asked]  # left out of this round: counted, not hidden
        new_doc = {k: v for k, v in doc.items() if k not in ("qa", "conversations", "round")}
        new_doc.update({"qa": qa, "conversations": conv, "round": new_round, "unanswered": unanswered})
        columns = {"label": label, "concepts": concepts, "question_types": [q["type"] for q in qa], "n_qa": len(qa),
                   "n_fallback": n_fallback, "round": new_round, "n_unanswered": len(unanswered)}
        return Sample(key=key, doc=new_doc, image=image, image_ext=image_ext or "jpg", width=rec["width"],
                      height=rec["height"], source_id=rec["source_id"], extras=parent, columns=columns)

    def _choose(self, cands: list[str], qtype: str, label: str, concepts: list[str]) -> tuple[str | None, float | None]:
        """(kept answer, its score) or (None, None) when no candidate may be kept."""
        cands = [c for c in (model_text(c) for c in cands) if c]
        if not cands:
            return None, None
        if qtype == "simple" or not concepts:
            for c in cands:
                if names_label(c, label):
                    return c, None
            return None, None
        # Only answers that name the label may be kept; the best of those by score (a wrong answer
        # scoring higher does not push a right one out).
        naming = [c for c in cands if names_label(c, label)]
        if not naming:
            return None, None
        scores = self.score(naming, concepts)
        best = int(np.argmax(scores))  # first of equal scores
        return naming[best], round(float(scores[best]), 6)

    def score(self, cands: list[str], concepts: list[str]) -> np.ndarray:
        """IB score of each candidate answer against the image's concepts; the build's other concepts
        are the negatives."""
        cand_vecs = np.stack([self._cand_index[c] if c in self._cand_index
                              else self._embedder.encode([c])[0].astype(np.float64) for c in cands])
        mine = [self._concept_index[c] for c in concepts if c in self._concept_index]
        own = self._concept_vecs[mine]
        others = np.ones(len(self.all_concepts), bool)
        others[mine] = False
        return ib_scores(own, cand_vecs, self._concept_vecs[others], t=self.config.ib_temperature)

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_embedder", "_concept_vecs", "_concept_index", "_cand_index"):
            state.pop(k, None)
        return state


def write_candidate_answers(build_path: str | Path, output: str | Path, backend: str, model: str | None,
                            samples: int = 8, temperature: float = 0.7, max_new_tokens: int = 256,
                            generator_options: dict[str, Any] | None = None, cache_dir=None, seed: int = 0,
                            quiet: bool = True) -> int:
    """Ask `model` every question of a selfsynth build (or round) `samples` times and write the answers
    file of the next round: one JSONL line per question. Returns the number of questions."""
    from vlmforge.curation.generation import make_generator
    from vlmforge.curation.instructions import with_article
    from vlmforge.manifests.read import open_build
    from vlmforge.progress import progress_bar

    build = open_build(build_path)
    if missing_columns(build, {"label", "concepts"}):  # a subset, split or mix of a selfsynth build has them
        raise UserError(f"{build_path} is {with_article(build.info['builder'])} build; candidate answers are asked "
                        "for the questions of a selfsynth build or round (or a subset or split of one)")
    if not len(build):
        raise UserError(f"{build_path} has no samples: there is no question to answer")
    out = Path(output)
    if out.is_dir():
        raise UserError(f"--output {out} is a folder; give the JSONL file to write")
    gen = make_generator(backend, model, cache_dir=cache_dir, **(generator_options or {}))
    tmp = out.with_name(out.name + ".tmp")
    try:  # before the model loads: a path that cannot be written fails now, not after the last answer
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, "w", encoding="utf-8")
    except OSError as e:  # mkdir's 'File exists' for a file in the path would hide which
        in_the_way = next((a for a in out.parents if a.exists() and not a.is_dir()), None)
        why = f"{in_the_way} is a file, not a folder" if in_the_way else e.strerror or e
        raise UserError(f"cannot write --output {out}: {why}") from None
    try:
        gen.setup()
        with f, progress_bar("candidate answers", total=len(build), disable=quiet) as advance:
            n_questions, refused = _write_answers(f, build, gen, samples, temperature, max_new_tokens, seed, advance)
        if refused and len(refused) == n_questions:  # about the requests' shape (a model that takes no images)
            raise UserError(f"the endpoint refused every question: {refused[0]}")
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)  # answers so far are in the response cache: a rerun asks only for the rest
        raise
    tmp.replace(out)
    if refused and not quiet:
        from vlmforge.progress import console

        console.print(f"[yellow]warning[/] the endpoint refused {len(refused)} of {n_questions} questions (first: "
                      f"{refused[0]}); their lines say so, and the next round leaves them out. Run again to ask again")
    return n_questions


def _write_answers(f, build, gen, samples: int, temperature: float, max_new_tokens: int, seed: int,
                   advance) -> tuple[int, list[str]]:
    """One JSONL line per question of every sample of `build`: its candidate answers, or for a question
    the endpoint refused, no answers and its words under "refused". Returns the number of questions and
    the refusals."""
    from vlmforge.builders.selfsynth import stable_int
    from vlmforge.curation.generation import GenerationRequest

    n_questions, refusals = 0, []
    for sample in build.samples():
        doc = sample["json"]
        image = next((sample[k] for k in ("jpg", "png", "webp") if k in sample), None)
        qa = doc.get("qa") or []
        reqs = [GenerationRequest("<image>\n" + item["question"], image=image, n=samples, temperature=temperature,
                                  max_new_tokens=max_new_tokens, seed=stable_int(seed, sample["__key__"], "answers", q),
                                  extra={"template": {"task": "answer", "label": doc.get("label"),
                                                      "concepts": doc.get("concepts"), "qtype": item.get("type"),
                                                      "subject": doc.get("subject", "object")}})
                for q, item in enumerate(qa)]
        answers, refused = ask(gen, reqs) if reqs else ([], {})
        for q, (item, texts) in enumerate(zip(qa, answers)):
            line = {"key": sample["__key__"], "question": item["question"], "type": item.get("type"),
                    "answers": texts or []}
            if q in refused:
                line["refused"] = refused[q]
                refusals.append(refused[q])
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            n_questions += 1
        advance(1)
    return n_questions, refusals
