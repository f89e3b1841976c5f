"""`selfsynth`: self-synthesized concepts and explained QA for image classification
(Shi et al., "Enhancing Cognition and Explainability of Multimodal Foundation Models with
Self-Synthesized Data", ICLR 2025).

Recipe, per split of a labelled source (CUB, FGVC-Aircraft, Stanford Dogs, class folders):
1. class concepts: the generator lists each class's visual features (parsed bullets), or a JSON file
   gives them, or CUB's attribute annotations stand in with no model at all;
2. descriptions: the generator describes every image (several instructions x n samples);
3. selection (prepare, needs every image): information-bottleneck scores of each class concept
   against the image's descriptions, other images' descriptions as negatives; mean + 0.4 std, >= 3.
   With CUB attributes: the image's own positive attributes weighted by class specificity;
4. QA (process, per batch): several questions (simple, explain, step-by-step) answered from "This is
   a picture of a {label} with the following visual features: ..."; a pair is kept only when the
   answer names the label (every answer empty: an `empty_answers` reject). One sample per image, kept
   pairs as turns, in LLaVA format.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlmforge.builders.base import BuildConfig, Builder
from vlmforge.builders.derived import lineage
from vlmforge.curation.concepts import (IB_TEMPERATURE, MIN_CONCEPTS, STD_FACTOR, ConceptSelector,
                                        attribute_specificity, attribute_text, parse_bullets, select_attributes,
                                        unique_concepts)
from vlmforge.curation.generation import REFUSED, GenerationRequest, Generator, ask, make_generator, refused_by_owner
from vlmforge.curation.images import ImageError
from vlmforge.curation.selection import key_clashes
from vlmforge.curation.softmatch import names_label, normalise
from vlmforge.errors import BuildError, UserError
from vlmforge.progress import progress_bar
from vlmforge.sample import Reject, Sample, make_key
from vlmforge.sources.base import Record
from vlmforge.sources.fgvc import read_record_image

CONCEPT_SYSTEM = "You describe the visual features of things accurately and in detail."
CONCEPT_PROMPT = ("List the distinctive visual features of the {label} ({subject}) comprehensively, "
                  "as a bullet list, one feature per line, with no other text.")
DESCRIBE_PROMPTS = [
    "Look only at the {subject} in the image and describe its appearance in detail, focusing on its most "
    "noticeable physical features. Leave the background out.",
    "Describe the distinctive physical features of the {subject} in this picture, and nothing about its surroundings.",
    "Give a precise description of the visual attributes of the {subject} shown, limited to the {subject} itself.",
]
QUESTIONS = {
    "simple": ["What is the name of the {subject} in this image?", "Which {subject} is shown in the picture?",
               "What kind of {subject} is this?", "Identify the {subject} in this image."],
    "explain": ["What {subject} is this, and which visual details tell you so?",
                "Name the {subject} in the image and explain how you recognised it.",
                "Which {subject} does this picture show? Support your answer with what you see.",
                "Identify this {subject} and describe the features that support your identification."],
    "cot": ["Identify the {subject} in this image. Reason step by step through its visual features before "
            "giving its name.",
            "Think step by step: which features of the {subject} are visible, and which {subject} do they point to?",
            "Work through the evidence in the image one feature at a time, then name the {subject}."],
}
QUESTION_WEIGHTS = {"simple": 0.4, "explain": 0.3, "cot": 0.3}
QA_PROMPT = ("This is a picture of a {label} with the following visual features:\n\n{features}\n\n"
             "Based on the information provided, please answer the following question.\nQuestion: {question}")


def stable_int(*parts: Any) -> int:
    """A 31-bit seed from parts (config seed, key, index): the same on every run and machine."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def model_text(text: str) -> str:
    """A generated text for an answer turn: stripped, without `<image>` (a model echoing its prompt would
    put a second image into the conversation, which LLaVA's training refuses)."""
    return text.replace("<image>", "").strip()


def subject_of(source, configured: str | None) -> str:
    return configured or getattr(source, "subject", None) or "object"


def record_key(rec: Record) -> str:
    return rec.get("key") or make_key(str(rec["source_id"]).rsplit(".", 1)[0])


def question_type_of(question: str, subject: str) -> str | None:
    """The type of one of our question templates, or None for a question we did not write."""
    for qtype, templates in QUESTIONS.items():
        if question in (t.format(subject=subject) for t in templates):
            return qtype
    return None


class GeneratorMixin:
    """A builder that calls a generator: made once (in prepare or setup), cached on disk, never pickled.
    Runtime options (device, batch size, endpoint, cache folder) stay out of the config, so they never
    change the build's identity."""

    generator_options: dict[str, Any] = {}
    cache_dir: str | Path | None = None
    quiet = True

    def _init_generation(self, generator_options: dict[str, Any] | None, cache_dir: str | Path | None,
                         quiet: bool) -> None:
        self.generator_options = dict(generator_options or {})
        self.cache_dir = cache_dir
        self.quiet = quiet

    def _make_generator(self, backend: str, model: str | None) -> Generator:
        cache = {} if not hasattr(self, "_generators") else self._generators
        self._generators = cache
        if (backend, model) not in cache:
            gen = make_generator(backend, model, cache_dir=self.cache_dir, **self.generator_options)
            gen.setup()
            cache[(backend, model)] = gen
        return cache[(backend, model)]

    def _generate_all(self, gen: Generator, requests: list[GenerationRequest], label: str,
                      chunk: int = 32) -> tuple[list[list[str] | None], dict[int, str]]:
        """Many requests in chunks, with a progress bar (the response cache makes reruns instant): the
        texts, None for a request the endpoint refused, and the refusals by request index (see `ask`)."""
        out: list[list[str] | None] = []
        refused: dict[int, str] = {}
        with progress_bar(label, total=len(requests), disable=self.quiet or not requests) as advance:
            for i in range(0, len(requests), chunk):
                part = requests[i : i + chunk]
                texts, no = ask(gen, part)
                out.extend(texts)
                refused.update((i + j, words) for j, words in no.items())
                advance(len(part))
        return out, refused

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_generators", None)  # each worker makes its own (ray pickles the builder)
        return state


class FromBuildMixin:
    """A builder whose source is a finished build (a round, trials). Its lineage is the whole chain:
    the parent and, from the parent's build.json, every build before it (round 3 names round 2, round
    1 and the selfsynth build with their configs)."""

    src: Any

    def __init__(self, config, source, *args: Any, **kwargs: Any):
        super().__init__(config, source, *args, **kwargs)
        if hasattr(source, "build") and hasattr(source, "parent_infos"):
            source.parent_infos = lineage(source)

    @classmethod
    def open_source(cls, kind: str | None, **options: Any):
        from vlmforge.sources import open_source

        return open_source("build", **options)

    def require_parent_columns(self, names: set[str], hint: str) -> None:
        build = self.src.build
        missing = missing_columns(build, names)
        if missing:
            raise BuildError(f"{build.path} has no {'/'.join(missing)} column: {hint}")


def missing_columns(build, names: set[str]) -> list[str]:
    """Those of `names` the build's manifest has no column for."""
    have = {r[0] for r in build.sql("SELECT column_name FROM (DESCRIBE samples)").fetchall()}
    return sorted(names - have)


def _some(names: list[str], n: int = 3) -> str:
    """The first `n` names quoted, and how many more."""
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "") if names else "no labels"


@dataclass
class SelfSynthConfig(BuildConfig):
    concepts: str = "generate"  # generate | attributes | path to a JSON file {label: [features]}
    concepts_sha256: str = ""  # of the concepts file, filled in: the build's identity follows its content
    generator: str = "template"  # backend for descriptions and QA (a BACKENDS name)
    model: str | None = None
    concept_generator: str | None = None  # backend for class concepts (default: the generator)
    concept_model: str | None = None
    embedder: str = "minilm"  # sentence-transformers model for the IB score
    subject: str | None = None  # "bird", "dog", ...; default: the source's
    instructions: int = 3  # description instructions per image
    descriptions_per_instruction: int = 2  # n samples per instruction
    questions: int = 4  # questions per image
    ib_temperature: float = IB_TEMPERATURE
    std_factor: float = STD_FACTOR
    min_concepts: int = MIN_CONCEPTS
    min_certainty: int = 3  # CUB attributes: 3 = probably, 4 = definitely
    describe_temperature: float = 0.7
    qa_temperature: float = 0.3
    max_new_tokens: int = 256

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["concepts"] not in ("generate", "attributes"):
            d["concepts"] = "file"  # the file's content (concepts_sha256) is the build, not where it lies
        return d


class SelfSynthBuilder(GeneratorMixin, Builder):
    name = "selfsynth"
    VERSION = "1.8.0"  # 1.8.0: "anything but a X" does not name X (softmatch.names_label)
    Config = SelfSynthConfig
    description = ("Self-synthesized explained QA for image classification: class concepts, per-image concept "
                   "selection by the information-bottleneck score, answers that must name the label.")
    columns = [
        ("label", pa.string(), "class label of the image"),
        ("concepts", pa.list_(pa.string()), "visual concepts selected for the image, best first"),
        ("concept_source", pa.string(), "where concepts came from: generated, attributes or file"),
        ("question_types", pa.list_(pa.string()), "type of each kept question, in turn order (simple, explain, cot)"),
        ("n_qa", pa.int32(), "question-answer pairs kept (answer names the label)"),
        ("n_qa_dropped", pa.int32(), "question-answer pairs dropped because the answer misses the label"),
    ]
    batch_size = 16

    def __init__(self, config: SelfSynthConfig, source, generator_options: dict[str, Any] | None = None,
                 cache_dir: str | Path | None = None, quiet: bool = True):
        if config.concepts == "attributes" and getattr(source, "with_attributes", None) is False:
            # CUB opened without its attribute files (the Python API; the CLI asks for them): read them now
            source = type(source)(source.root, source.splits(), attributes=True)
        super().__init__(config, source)
        self._init_generation(generator_options, cache_dir, quiet)
        self.subject = subject_of(source, config.subject)
        self.selected: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, tuple[str, str]] = {}  # key -> (stage, the endpoint's words): rejects
        self.duplicates: dict[str, str] = {}  # source id -> the source id whose key it has
        n_questions = sum(map(len, QUESTIONS.values()))
        if not 1 <= config.questions <= n_questions:
            raise UserError(f"--questions must be 1 to {n_questions} (the distinct questions there are), "
                            f"not {config.questions}")
        if config.concepts not in ("generate", "attributes"):
            path = Path(config.concepts)
            if not path.is_file():
                raise UserError(f"--concepts must be generate, attributes or a JSON file; {config.concepts!r} is none")
            config.concepts_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    SOURCES = ("cub", "fgvc-aircraft", "stanford-dogs", "imagefolder")  # labelled images, read from --root

    @classmethod
    def open_source(cls, kind: str | None, **options: Any):
        from vlmforge.sources import open_source

        if (kind or "cub") not in cls.SOURCES:  # else the generic check names options as not applying to it
            raise UserError(f"selfsynth reads labelled images: --source must be {', '.join(cls.SOURCES[:-1])} "
                            f"or {cls.SOURCES[-1]}, not {kind!r}")
        return open_source(kind or "cub", **options)

    # -- prepare: concepts per class, descriptions per image, selection --------------------------
    @property
    def concept_source(self) -> str:
        c = self.config.concepts
        return "attributes" if c == "attributes" else "generated" if c == "generate" else "file"

    def prepare(self) -> None:
        self.selected, self.refused = {}, {}
        usable = {split: [r for r in self.src.records(split) if "invalid" not in r and r.get("label")]
                  for split in self.src.splits()}
        # Files differing by extension only share a key: the first keeps it, the others are rejects.
        self.duplicates = key_clashes((record_key(r), r["source_id"]) for recs in usable.values() for r in recs)
        for split, recs in usable.items():
            recs = [r for r in recs if r["source_id"] not in self.duplicates]
            if self.config.concepts == "attributes":
                self.selected.update(self._select_by_attributes(recs))
            else:
                self.selected.update(self._select_by_descriptions(recs, split))

    def _select_by_attributes(self, recs: list[Record]) -> dict[str, dict[str, Any]]:
        if not hasattr(self.src, "class_attribute_rates") or not getattr(self.src, "with_attributes", False):
            raise BuildError("--concepts attributes needs --source cub with its attribute files "
                             "(attributes.txt, attributes/image_attribute_labels.txt)")
        names = self.src.attribute_names()
        weights = attribute_specificity(self.src.class_attribute_rates())
        row = {c: i for i, c in enumerate(sorted(self.src.classes))}
        out = {}
        for rec in recs:
            present = sorted({aid - 1 for aid, cert in rec.get("attributes", []) if cert >= self.config.min_certainty})
            picked = select_attributes(present, weights[row[rec["class_id"]]], self.config.std_factor,
                                       self.config.min_concepts)
            out[record_key(rec)] = {"concepts": [attribute_text(names[i]) for i, _ in picked],
                                    "scores": [round(s, 6) for _, s in picked], "descriptions": []}
        return out

    def _class_concepts(self, labels: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Concepts per class, and the classes whose request the endpoint refused (their words)."""
        if self.config.concepts != "generate":
            return self._concepts_from_file(labels), {}
        cfg = self.config
        backend = cfg.concept_generator or cfg.generator
        gen = self._make_generator(backend, cfg.concept_model or (cfg.model if backend == cfg.generator else None))
        reqs = [GenerationRequest(CONCEPT_PROMPT.format(label=lab, subject=self.subject), system=CONCEPT_SYSTEM,
                                  max_new_tokens=max(cfg.max_new_tokens, 256), seed=cfg.seed,
                                  extra={"template": {"task": "concepts", "label": lab, "subject": self.subject}})
                for lab in labels]
        texts, refused = self._generate_all(gen, reqs, "concepts per class")
        refused_labels = refused_by_owner(refused, labels, "class")
        out = {lab: parse_bullets(t[0]) if t else [] for lab, t in zip(labels, texts) if t is not None}
        if out and not any(out.values()):
            # Every image would be a no_concepts reject: an empty build hides a generator that lists nothing.
            first = next((t[0] for t in texts if t and t[0].strip()), "")
            raise BuildError(f"the concept generator ({backend}) returned no bullet list of features for any of the "
                             f"{len(out)} classes (first answer: {first[:80]!r}); it must answer with '- feature' "
                             "lines, or give --concepts FILE")
        return out, refused_labels

    def _concepts_from_file(self, labels: list[str]) -> dict[str, list[str]]:
        path = Path(self.config.concepts)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"concepts file {path} is not readable JSON: {e}") from None
        if not isinstance(doc, dict):
            raise UserError(f"concepts file {path} must map each label to a list of features")
        for lab, v in doc.items():
            if not isinstance(v, str) and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise UserError(f"concepts file {path}: the value for {lab!r} must be a list of features (strings) "
                                f"or one bulleted text, not {json.dumps(v)[:60]}")
            if isinstance(v, str) and v.strip() and not parse_bullets(v):  # its images would all be no_concepts
                raise UserError(f"concepts file {path}: the value for {lab!r} is text without '- feature' lines; "
                                f"give a list of features, not {json.dumps(v)[:60]}")
        # A key that differs from a label in case or separators only ("black_footed_albatross") is its entry.
        by_name: dict[str, str] = {}
        for k in sorted(doc):
            by_name.setdefault(normalise(k), k)
        keys = {lab: lab if lab in doc else by_name.get(normalise(lab)) for lab in labels}
        if labels and not any(keys.values()):
            # Every image would be a no_concepts reject: most likely the file is keyed by folder names or ids.
            raise UserError(f"concepts file {path} has no entry for any label of this build "
                            f"(labels: {_some(labels)}; the file has: {_some(sorted(doc))})")
        out = {}
        for lab in labels:
            v = doc[keys[lab]] if keys[lab] is not None else []
            out[lab] = parse_bullets(v) if isinstance(v, str) else unique_concepts(v)  # a repeat is one concept
        return out

    def _select_by_descriptions(self, recs: list[Record], split: str) -> dict[str, dict[str, Any]]:
        from vlmforge.curation.embedding import CachedEmbedder

        cfg = self.config
        labels = sorted({r["label"] for r in recs})
        class_concepts, refused_labels = self._class_concepts(labels)
        gen = self._make_generator(cfg.generator, cfg.model)
        reqs: list[GenerationRequest] = []
        owners: list[str] = []
        label_of: dict[str, str] = {}
        for rec in recs:
            try:
                image = read_record_image(rec).data
            except ImageError:
                continue  # process() rejects it with the reason
            key = record_key(rec)
            if rec["label"] in refused_labels:  # rejected: its descriptions would not be used
                self.refused[key] = ("concepts", refused_labels[rec["label"]])
                continue
            label_of[key] = rec["label"]
            for j, template in enumerate(DESCRIBE_PROMPTS[: cfg.instructions]):
                reqs.append(GenerationRequest(
                    "<image>\n" + template.format(subject=self.subject), image=image, n=cfg.descriptions_per_instruction,
                    temperature=cfg.describe_temperature, top_p=0.95, max_new_tokens=cfg.max_new_tokens,
                    seed=stable_int(cfg.seed, key, "describe", j),
                    extra={"template": {"task": "describe", "subject": self.subject, "facts": self._facts(rec)}}))
                owners.append(key)
        texts, refused = self._generate_all(gen, reqs, f"descriptions {split}")
        refused_keys = refused_by_owner(refused, owners, f"image of split {split!r}")
        self.refused.update((key, ("descriptions", words)) for key, words in refused_keys.items())
        # A refused image is a reject, and its other descriptions are no other image's negatives.
        label_of = {k: lab for k, lab in label_of.items() if k not in refused_keys}
        descriptions: dict[str, list[str]] = {k: [] for k in label_of}
        for key, outs in zip(owners, texts):
            if key in label_of:
                descriptions[key].extend(t.strip() for t in outs if t.strip())
        if descriptions and not any(descriptions.values()):
            # Every image would be rejected: an empty build hides a broken generator, so stop and say so.
            raise BuildError(f"the generator ({cfg.generator}) returned no usable description for any of the "
                             f"{len(descriptions)} images of split {split!r}; check that it answers image prompts")
        if sum(map(bool, descriptions.values())) == 1 and not self.quiet:
            from vlmforge.progress import console

            console.print(f"[yellow]warning[/] split {split!r} has one described image: with no other image's "
                          "descriptions to compare with, every concept scores 0 and the first of its class's are kept")
        # Embedding thousands of descriptions is most of this step on a CPU: the vectors are cached
        # with the responses (--no-cache turns both off), so a resumed build does not embed them again.
        embedder = CachedEmbedder(cfg.embedder, False if self.cache_dir is False else None,
                                  f"embedding descriptions {split}", self.quiet)
        selector = ConceptSelector(embedder, cfg.ib_temperature, cfg.std_factor, cfg.min_concepts)
        picked = selector.select(descriptions, label_of, class_concepts)
        return {k: {"concepts": [c for c, _ in picked[k]], "scores": [round(s, 6) for _, s in picked[k]],
                    "descriptions": descriptions[k]} for k in picked}

    def _facts(self, rec: Record) -> list[str]:
        """Annotated attributes the template backend may mention (CUB with attributes)."""
        if not rec.get("attributes") or not hasattr(self.src, "attribute_names"):
            return []
        names = self.src.attribute_names()
        return [attribute_text(names[a - 1]) for a, cert in rec["attributes"] if cert >= 4][:6]

    # -- process: QA per image -------------------------------------------------------------------
    def setup(self) -> None:
        self._make_generator(self.config.generator, self.config.model)

    def _questions(self, key: str) -> list[tuple[str, str]]:
        """(type, question) of each question asked about the image: types drawn by QUESTION_WEIGHTS,
        seeded by (seed, key); no question twice."""
        rng = random.Random(stable_int(self.config.seed, key, "questions"))
        types = list(QUESTION_WEIGHTS)
        chosen = rng.choices(types, weights=[QUESTION_WEIGHTS[t] for t in types], k=self.config.questions)
        pools = {t: rng.sample(QUESTIONS[t], len(QUESTIONS[t])) for t in types}
        used = {t: 0 for t in types}
        out = []
        for qtype in chosen:
            if used[qtype] == len(pools[qtype]):
                # Every wording of the type is asked already: another type with one left, by weight (a
                # repeated question would be a second sample of one pair, and merge in the next round).
                left = [t for t in types if used[t] < len(pools[t])]
                qtype = rng.choices(left, weights=[QUESTION_WEIGHTS[t] for t in left])[0]
            out.append((qtype, pools[qtype][used[qtype]].format(subject=self.subject)))
            used[qtype] += 1
        return out

    def process(self, batch: list[Record]) -> list[list[Sample | Reject]]:
        cfg = self.config
        results: list[list[Sample | Reject]] = [[] for _ in batch]
        pending: list[tuple[int, Record, Any, list[tuple[str, str]], dict]] = []
        reqs: list[GenerationRequest] = []
        for i, rec in enumerate(batch):
            sid = rec["source_id"]
            if "invalid" in rec:
                results[i] = [Reject(sid, "invalid_record", "source", rec["invalid"])]
                continue
            if "unusable" in rec:  # a file the source lists but cannot read as a sample (reason, detail)
                reason, detail = rec["unusable"]
                results[i] = [Reject(sid, reason, "source", detail)]
                continue
            if sid in self.duplicates:
                results[i] = [Reject(sid, "duplicate_key", "source", f"{sid} has the key of {self.duplicates[sid]} "
                                     "(the same path without its extension)")]
                continue
            try:
                img = read_record_image(rec)
            except ImageError as e:
                results[i] = [Reject(sid, e.reason, "read_image", e.detail)]
                continue
            key = record_key(rec)
            if key in self.refused:
                stage, words = self.refused[key]
                results[i] = [Reject(sid, REFUSED, stage, words)]
                continue
            sel = self.selected.get(key)
            if sel and not sel["concepts"] and not sel["descriptions"] and self.concept_source != "attributes":
                results[i] = [Reject(sid, "no_descriptions", "descriptions",
                                     "the generator returned no usable description of this image")]
                continue
            if not sel or not sel["concepts"]:
                why = (f"the image has no attribute of certainty >= {cfg.min_certainty}"
                       if self.concept_source == "attributes" else f"no concepts for class {rec['label']!r}")
                results[i] = [Reject(sid, "no_concepts", "concepts", why)]
                continue
            features = "\n".join(f"- {c}" for c in sel["concepts"])
            questions = self._questions(key)
            for q, (qtype, question) in enumerate(questions):
                reqs.append(GenerationRequest(
                    "<image>\n" + QA_PROMPT.format(label=rec["label"], features=features, question=question),
                    image=img.data, temperature=cfg.qa_temperature, max_new_tokens=cfg.max_new_tokens,
                    seed=stable_int(cfg.seed, key, "qa", q),
                    extra={"template": {"task": "answer", "label": rec["label"], "concepts": sel["concepts"],
                                        "qtype": qtype, "subject": self.subject}}))
            pending.append((i, rec, img, questions, sel))
        answers, refused = ask(self._make_generator(cfg.generator, cfg.model), reqs) if reqs else ([], {})
        owners = [rec["source_id"] for _, rec, _, questions, _ in pending for _ in questions]
        refused_ids = refused_by_owner(refused, owners, "image of a batch")
        pos = 0
        for i, rec, img, questions, sel in pending:
            outs = answers[pos : pos + len(questions)]
            pos += len(questions)
            if rec["source_id"] in refused_ids:
                results[i] = [Reject(rec["source_id"], REFUSED, "qa", refused_ids[rec["source_id"]])]
                continue
            results[i] = [self._sample(rec, img, questions, [model_text(o[0]) if o else "" for o in outs], sel)]
        return results

    def _sample(self, rec: Record, img, questions: list[tuple[str, str]], answers: list[str],
                sel: dict[str, Any]) -> Sample | Reject:
        label = rec["label"]
        kept = [(t, q, a) for (t, q), a in zip(questions, answers) if a and names_label(a, label)]
        if not any(answers):  # a fault (empty completions), not answers that miss the label
            return Reject(rec["source_id"], "empty_answers", "qa",
                          f"the generator returned {len(questions)} empty answers")
        if not kept:
            first = next((a for a in answers if a), "")
            return Reject(rec["source_id"], "answer_misses_label", "qa",
                          f"none of {len(questions)} answers names {label!r} (first answer: {first[:60]!r})")
        conv = []
        for n, (_, q, a) in enumerate(kept):
            conv += [{"from": "human", "value": ("<image>\n" if n == 0 else "") + q}, {"from": "gpt", "value": a}]
        doc = {"id": rec["source_id"], "image": rec["source_id"], "label": label, "subject": self.subject,
               "concepts": sel["concepts"],
               "concept_scores": sel["scores"], "concept_source": self.concept_source,
               "descriptions": sel["descriptions"], "qa": [{"type": t, "question": q, "answer": a} for t, q, a in kept],
               "conversations": conv}
        columns = {"label": label, "concepts": sel["concepts"], "concept_source": self.concept_source,
                   "question_types": [t for t, _, _ in kept], "n_qa": len(kept),
                   "n_qa_dropped": len(questions) - len(kept)}
        return Sample(key=record_key(rec), doc=doc, image=img.data, image_ext=img.ext, width=img.width,
                      height=img.height, source_id=rec["source_id"], columns=columns)
