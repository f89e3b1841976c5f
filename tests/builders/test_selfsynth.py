"""`selfsynth` end to end (offline attribute path, generated concepts, the transformers model path
with its response cache) and `selfsynth-round` (scoring, fallback, lineage)."""

import json
import os
import re
import subprocess
import sys

import pytest

import vlmforge
from tests.classification_fixtures import make_cub
from tests.helpers import build_files
from vlmforge.builders.base import run_build
from vlmforge.builders.selfsynth import QA_PROMPT, SelfSynthBuilder, SelfSynthConfig, stable_int
from vlmforge.curation.concepts import ConceptSelector, ib_scores, parse_bullets, select_concepts
from vlmforge.curation.embedding import shared_embedder
from vlmforge.curation.generation import BACKENDS, GenerationRequest, make_generator
from vlmforge.curation.generation.template import TemplateGenerator
from vlmforge.curation.softmatch import names_label
from vlmforge.errors import BuildError, UserError
from vlmforge.manifests.verify import verify_build
from vlmforge.sources import open_source

# Hand-worked from the fixture (tests/classification_fixtures.py): class rates p(a|c) and the mean
# over classes give weights p*log(p/mean). Class 1 shows attributes 2, 3, 6, 8 (certainty >= 3):
# weights log(1.5), log(1.5), 0.75*log(1) = 0, log(1/0.4167) = 0.875; threshold mean + 0.4 std = 0.564
# keeps only attribute 8, so the best three are kept, ties in id order. Class 3 shows 1, 3, 5, 6 (8 only
# with certainty 2): weights log 3, log 1.5, log 3, 0; threshold 0.868 keeps 1 and 5, then 3.
WANT_CONCEPTS = {
    "Black footed Albatross": ["black primary color", "hooked seabird bill shape", "black wing color"],
    "Sooty Albatross": ["dagger bill shape", "brown upperparts color", "black wing color"],
}


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cubdata")
    make_cub(root)
    return root


@pytest.fixture(scope="module")
def offline_build(tmp_path_factory, cub):
    """The no-model path through the CLI: attributes + template generator, every split."""
    out = tmp_path_factory.mktemp("offline")
    cmd = [sys.executable, "-m", "vlmforge.cli", "build", "selfsynth", "--source", "cub", "--root", str(cub),
           "--concepts", "attributes", "--generator", "template", "--split", "all", "--out", str(out), "--quiet",
           "--max-samples-per-shard", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return vlmforge.open_build(out / "selfsynth" / SelfSynthBuilder.VERSION)


def test_offline_attribute_path(offline_build):
    b = offline_build
    assert verify_build(b, quiet=True) == []
    rows = b.sql("SELECT key, split, label, concepts, concept_source, question_types, n_qa, n_qa_dropped "
                 "FROM samples ORDER BY key").fetchall()
    assert len(rows) == 12 and {r[1] for r in rows} == {"train", "test"}
    for key, _, label, concepts, source, qtypes, n_qa, dropped in rows:
        if label in WANT_CONCEPTS:
            assert concepts == WANT_CONCEPTS[label], key
        assert source == "attributes" and n_qa == len(qtypes) == 4 and dropped == 0
        assert set(qtypes) <= {"simple", "explain", "cot"}
    gen = make_generator("template")
    for s in b.samples():
        doc = s["json"]
        conv = doc["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and not any("<image>" in c["value"] for c in conv[1:])
        assert [c["from"] for c in conv] == ["human", "gpt"] * 4
        assert all(names_label(qa["answer"], doc["label"]) for qa in doc["qa"])
        # each answer is the generator's own for the QA prompt of that image's label, concepts and question
        features = "\n".join(f"- {c}" for c in doc["concepts"])
        for q, qa in enumerate(doc["qa"]):
            req = GenerationRequest("<image>\n" + QA_PROMPT.format(label=doc["label"], features=features, question=qa["question"]),
                                    seed=stable_int(0, s["__key__"], "qa", q), extra={"template": {
                                        "task": "answer", "label": doc["label"], "concepts": doc["concepts"],
                                        "qtype": qa["type"], "subject": "bird"}})
            assert qa["answer"] == gen([req])[0][0] and conv[2 * q + 1]["value"] == qa["answer"]
        assert doc["concept_scores"] == sorted(doc["concept_scores"], reverse=True)
    assert b.sql("SELECT count(*) FROM rejects").fetchall()[0][0] == 0


def test_rebuild_is_identical_with_two_workers(tmp_path, cub, offline_build):
    again = vlmforge.build("selfsynth", "cub", out=tmp_path, workers=2, max_samples_per_shard=5,
                           source_options={"root": str(cub), "attributes": True, "splits": None}, concepts="attributes")
    fa, fb = build_files(offline_build.path), build_files(again.path)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_generated_concepts_offline(tmp_path, cub):
    b = vlmforge.build("selfsynth", "cub", out=tmp_path, source_options={"root": str(cub), "splits": ["train"]},
                       concepts="generate", questions=2)
    gen = make_generator("template")
    emb = shared_embedder(None)
    docs = {s["__key__"]: s["json"] for s in b.samples()}
    assert len(docs) == 9
    left_out = 0
    for key, doc in docs.items():
        offered = parse_bullets(gen([GenerationRequest("c", extra={"template": {
            "task": "concepts", "label": doc["label"], "subject": "bird"}})])[0][0])
        assert len(doc["descriptions"]) == 6 and doc["concept_source"] == "generated"
        assert all(d.startswith("The image shows a bird") for d in doc["descriptions"])
        # The IB selection, scored here directly: the class's generated concepts against the image's own
        # descriptions, every other image's descriptions as negatives; mean + 0.4 std, at least three.
        others = [d for k, other in sorted(docs.items()) if k != key for d in other["descriptions"]]
        scores = ib_scores(emb.encode(doc["descriptions"]), emb.encode(offered), emb.encode(others))
        want = select_concepts(offered, scores)
        assert doc["concepts"] == [c for c, _ in want], key
        assert doc["concept_scores"] == pytest.approx([s for _, s in want], abs=1e-5)
        left_out += len(offered) - len(want)
    assert left_out > 0  # the selection chose, it did not keep every concept


def test_a_repeated_build_takes_description_vectors_from_the_cache(tmp_path, cub, monkeypatch):
    from vlmforge.curation.embedding import SentenceEmbedder

    monkeypatch.setenv("VLMFORGE_CACHE", str(tmp_path / "cache"))
    opts = dict(source_options={"root": str(cub), "splits": ["train"]}, concepts="generate", questions=2)
    first = vlmforge.build("selfsynth", "cub", out=tmp_path / "a", **opts)
    assert list((tmp_path / "cache" / "embeddings").glob("*.npz"))

    def no_model(self, texts, advance=None):
        raise AssertionError("the embedding model ran again")

    monkeypatch.setattr(SentenceEmbedder, "encode", no_model)
    second = vlmforge.build("selfsynth", "cub", out=tmp_path / "b", **opts)
    assert build_files(first.path) == build_files(second.path)
    with pytest.raises(AssertionError, match="ran again"):  # --no-cache: no vectors read back
        vlmforge.build("selfsynth", "cub", out=tmp_path / "c", builder_attrs={"cache_dir": False}, **opts)


def test_concepts_file_and_rejects(tmp_path, cub):
    data = tmp_path / "data"
    make_cub(data, attributes=False)
    (data / "CUB_200_2011" / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0001_705.jpg").unlink()
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({"Black footed Albatross": ["dark plumage", "pale face ring", "long wings"],
                                    "Laysan Albatross": "- white head\n- dark back\n- pink bill"}))
    b = vlmforge.build("selfsynth", "cub", out=tmp_path / "out", source_options={"root": str(data)},
                       concepts=str(concepts))
    rejects = dict(b.sql("SELECT source_id, reason FROM rejects").fetchall())
    assert rejects["002.Laysan_Albatross/Laysan_Albatross_0001_705.jpg"] == "missing_image"
    assert sorted(r for s, r in rejects.items() if s.startswith("003")) == ["no_concepts"] * 4
    # each image keeps its own class's three concepts (at least three are kept), best first
    given = {"Black footed Albatross": {"dark plumage", "pale face ring", "long wings"},
             "Laysan Albatross": {"white head", "dark back", "pink bill"}}
    rows = b.sql("SELECT label, concepts FROM samples").fetchall()
    assert len(rows) == 7 and all(set(concepts) == given[label] for label, concepts in rows)
    with pytest.raises(UserError, match="--concepts"):
        vlmforge.build("selfsynth", "cub", out=tmp_path / "x", source_options={"root": str(data)}, concepts="nope.json")
    with pytest.raises(UserError, match="attribute labels not found"):
        vlmforge.build("selfsynth", "cub", out=tmp_path / "y", source_options={"root": str(data)}, concepts="attributes")


def test_a_concept_listed_twice_in_a_file_is_one_concept(tmp_path, cub):
    # a file's list was taken as is: "dark bill" twice could be selected twice, and listed twice to the QA model
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({"Black footed Albatross": ["Dark bill", "dark bill ", "long wings", " ", "pale ring"]}))
    b = vlmforge.build("selfsynth", "cub", out=tmp_path / "out", concepts=str(concepts), instructions=1, questions=1,
                       source_options={"root": str(cub), "splits": ["train"]})
    rows = b.sql("SELECT concepts FROM samples").fetchall()
    assert rows and all(sorted(r[0]) == ["Dark bill", "long wings", "pale ring"] for r in rows)


def test_a_concepts_file_keyed_in_another_case_or_spelling(tmp_path, cub):
    """Keys that differ from the labels in case or separators only ('black_footed_albatross', 'Laysan-Albatross')
    found no entry: their classes' images were all no_concepts rejects."""
    doc = {"black_footed_albatross": ["dark plumage", "pale bill", "long wings"],
           "Laysan-Albatross": ["white head", "grey back", "pink bill"],
           "Sooty Albatross": ["sooty plumage", "dark bill", "narrow wings"]}
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps(doc))
    b = vlmforge.build("selfsynth", "cub", out=tmp_path / "out", source_options={"root": str(cub)}, concepts=str(path),
                       questions=1)
    images = list((cub / "CUB_200_2011" / "images").rglob("*.jpg"))
    assert b.sql("SELECT count(*) FROM rejects").fetchall() == [(0,)] and len(b) == len(images)
    got = dict(b.sql("SELECT label, list_sort(flatten(list(concepts))) FROM samples GROUP BY 1").fetchall())
    want = dict(zip(("Black footed Albatross", "Laysan Albatross", "Sooty Albatross"), doc.values()))
    assert {k: sorted(set(v)) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}


def test_api_concepts_attributes_reads_the_attribute_files(tmp_path, cub, offline_build):
    """vlmforge.build("selfsynth", "cub", concepts="attributes") needed source_options attributes=True, which
    the CLI adds for --concepts attributes; without it the build said the files were missing."""
    b = vlmforge.build("selfsynth", "cub", out=tmp_path, max_samples_per_shard=5, concepts="attributes",
                       source_options={"root": str(cub)})
    assert b.build_id == offline_build.build_id and b.info["source"]["attributes"] is True


def test_transformers_model_path_and_cache(tmp_path, cub):
    from vlmforge.builders.selfsynth import DESCRIBE_PROMPTS, record_key
    from vlmforge.sources.fgvc import read_record_image
    from vlmforge.training.tiny import make_tiny_llava

    model = str(make_tiny_llava(tmp_path / "tiny"))
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({lab: ["dark plumage", "white head", "long narrow wings", "pink bill"]
                                    for lab in ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")}))
    cache = tmp_path / "cache"
    cfg = SelfSynthConfig(concepts=str(concepts), generator="transformers", model=model, instructions=1,
                          descriptions_per_instruction=2, questions=2, max_new_tokens=6)

    def build(out, spy_calls=None):
        # one request per forward pass: a sampled batch is seeded by its requests, so each text can be asked again alone
        builder = SelfSynthBuilder(cfg, open_source("cub", root=str(cub), splits=["train"]), cache_dir=cache,
                                   generator_options={"batch_size": 1})
        if spy_calls is not None:
            gen = builder._make_generator("transformers", model)
            real = type(gen.inner)

            class Spy(real):  # the real backend, counting what reaches it
                def __call__(self, requests):
                    spy_calls.append(len(requests))
                    return real.__call__(self, requests)

            gen.inner.__class__ = Spy
        return builder, vlmforge.open_build(run_build(builder, out, quiet=True))

    first_calls: list[int] = []
    builder, a = build(tmp_path / "a", first_calls)
    assert sum(first_calls) == 9 + 9 * 2  # one description request and two questions per image
    # The model's own texts went into the build, asked again here without the builder or its cache: the
    # descriptions of an image (empty texts dropped) that the IB selection read, and its first answer
    # (one image per class: each text asked again costs a forward pass).
    model_gen = make_generator("transformers", model, cache_dir=False, batch_size=1)
    details = {r[0]: r[1:] for r in a.sql("SELECT source_id, reason, detail FROM rejects").fetchall()}
    records = list(open_source("cub", root=str(cub), splits=["train"]).records("train"))
    assert len({r["label"] for r in records[::3]}) == 3
    for rec in records[::3]:
        key, image = record_key(rec), read_record_image(rec).data
        described = model_gen([GenerationRequest(
            "<image>\n" + DESCRIBE_PROMPTS[0].format(subject="bird"), image=image, n=2, temperature=0.7, top_p=0.95,
            max_new_tokens=6, seed=stable_int(0, key, "describe", 0))])[0]
        assert builder.selected[key]["descriptions"] == [t.strip() for t in described if t.strip()], key
        assert len(builder.selected[key]["concepts"]) == 3
        features = "\n".join(f"- {c}" for c in builder.selected[key]["concepts"])
        answers = [model_gen([GenerationRequest(
            "<image>\n" + QA_PROMPT.format(label=rec["label"], features=features, question=q), image=image,
            temperature=0.3, max_new_tokens=6, seed=stable_int(0, key, "qa", i))])[0][0].strip()
            for i, (_, q) in enumerate(builder._questions(key))]
        # A random model never spells the label: the image is a rejected QA, with what the model answered;
        # when it answered nothing at all, that is what the reject says
        first = next((t for t in answers if t), "")
        want = (("answer_misses_label", f"none of 2 answers names {rec['label']!r} (first answer: {first[:60]!r})")
                if first else ("empty_answers", "the generator returned 2 empty answers"))
        assert details[rec["source_id"]] == want
    assert len(a) == 0 and len(details) == 9
    assert sum(reason == "answer_misses_label" for reason, _ in details.values()) >= 5
    assert len(list(cache.rglob("*.json"))) == 27

    # The same build again, elsewhere: every response comes from the cache, the model is never called.
    again_calls: list[int] = []
    _, b = build(tmp_path / "b", again_calls)
    assert again_calls == []
    fa, fb = build_files(a.path), build_files(b.path)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


# -- selfsynth-round ---------------------------------------------------------------------------------

def _answers_line(key, question, answers, qtype=None):
    row = {"key": key, "question": question, "answers": answers}
    if qtype:
        row["type"] = qtype
    return json.dumps(row)


def test_round_scores_candidates_and_falls_back(tmp_path, offline_build):
    parent = offline_build
    label = "Black footed Albatross"
    keys = [r[0] for r in parent.sql(f"SELECT key FROM samples WHERE label = '{label}' ORDER BY key").fetchall()]
    q_explain = "What bird is this, and which visual details tell you so?"
    lines = [
        # best-scoring candidate (it lists the image's concepts) names the label: kept
        _answers_line(keys[0], q_explain, [
            "Banana bread on a plate. This is a Black footed Albatross.",
            "This is a Black footed Albatross: black primary color, hooked seabird bill shape and black wing color."],
            "explain"),
        # the best-scoring candidate does not name the label: the best of those that do is kept
        _answers_line(keys[1], q_explain, ["A black bird with a hooked bill.", "Black footed Albatross."], "explain"),
        # none names the label: the fallback
        _answers_line(keys[3], q_explain, ["A black bird with a hooked bill.", "A gull."], "explain"),
        # a simple question takes the first candidate that names the label (one candidate per line here)
        _answers_line(keys[2], "What kind of bird is this?", ["A gull."]),
        _answers_line(keys[2], "What kind of bird is this?", ["It is a Black footed Albatross."]),
        _answers_line("not_in_parent", "Q?", ["x"]),
    ]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(lines) + "\n")
    # The premise, scored independently: the image's concepts against each candidate, the build's
    # other concepts as negatives.
    emb = shared_embedder(None)
    own = WANT_CONCEPTS[label]
    others = [r[0] for r in parent.sql("SELECT DISTINCT unnest(concepts) FROM samples").fetchall() if r[0] not in own]
    for cands, best in ((json.loads(lines[0])["answers"], 1), (json.loads(lines[1])["answers"], 0)):
        scores = ib_scores(emb.encode(own), emb.encode(cands), emb.encode(others))
        assert int(scores.argmax()) == best
    child = vlmforge.build("selfsynth-round", "build", out=tmp_path, source_options={"path": str(parent.path)},
                           answers=str(answers))
    assert child.info["parents"] == [parent.build_id]
    got = {s["__key__"]: s for s in child.samples()}
    assert set(got) == set(keys[:4])
    qa0, qa1, qa2, qa3 = (got[k]["json"]["qa"][0] for k in keys[:4])
    assert qa0["answer"].startswith("This is a Black footed Albatross: black") and not qa0["fallback"]
    assert qa1["answer"] == "Black footed Albatross." and not qa1["fallback"]
    assert qa2["answer"] == "It is a Black footed Albatross." and qa2["type"] == "simple"
    assert qa3["answer"] == "This is an image of Black footed Albatross." and qa3["fallback"]
    # the parent's other questions have no line in the answers file: counted and named, not hidden
    asked = {json.loads(line)["key"]: json.loads(line)["question"] for line in lines}
    for k in keys[:4]:
        parent_qs = [q["question"] for q in next(s for s in parent.samples() if s["__key__"] == k)["json"]["qa"]]
        want = [q for q in parent_qs if q != asked[k]]
        assert got[k]["json"]["unanswered"] == want and want
    n_unanswered = dict(child.sql("SELECT key, n_unanswered FROM samples").fetchall())
    assert all(n_unanswered[k] == len(got[k]["json"]["unanswered"]) for k in keys[:4])
    rows = dict((r[0], r[1:]) for r in child.sql("SELECT key, n_qa, n_fallback, round FROM samples").fetchall())
    assert rows[keys[0]] == (1, 0, 2) and rows[keys[1]] == (1, 0, 2) and rows[keys[3]] == (1, 1, 2)
    assert {r[0] for r in child.sql("SELECT reason FROM rejects").fetchall()} == {"no_answers"}
    assert child.sql("SELECT count(*) FROM rejects").fetchall()[0][0] == 8
    parent_imgs = {s["__key__"]: s["jpg"] for s in parent.samples()}
    assert all(got[k]["jpg"] == parent_imgs[k] for k in got)
    assert got[keys[0]]["json"]["conversations"][0]["value"] == "<image>\n" + q_explain


def test_candidate_answers_for_a_subset_of_a_selfsynth_build(tmp_path, offline_build):
    """`build selfsynth-round` took a subset of a selfsynth build, but `selfsynth-answers` refused it ('is a
    subset build'): a round on part of the data could not be asked for."""
    from vlmforge.builders.selfsynth_round import write_candidate_answers

    half = vlmforge.build("subset", "build", out=tmp_path / "half", source_options={"path": str(offline_build.path)},
                          mode="class-preserving", fraction=0.5)
    assert 0 < len(half) < len(offline_build)
    answers = tmp_path / "r2.jsonl"
    assert write_candidate_answers(half.path, answers, "template", None, samples=2) == len(half) * 4
    r2 = vlmforge.build("selfsynth-round", "build", out=tmp_path / "o2", source_options={"path": str(half.path)},
                        answers=str(answers))
    assert len(r2) == len(half) and r2.sql("SELECT DISTINCT round FROM samples").fetchall() == [(2,)]


def test_rounds_chain_with_generated_answers(tmp_path, offline_build):
    from vlmforge.builders.selfsynth_round import write_candidate_answers

    file2 = tmp_path / "r2.jsonl"
    assert write_candidate_answers(offline_build.path, file2, "template", None, samples=3) == 12 * 4
    r2 = vlmforge.build("selfsynth-round", "build", out=tmp_path / "o2", source_options={"path": str(offline_build.path)},
                        answers=str(file2))
    assert len(r2) == 12 and r2.sql("SELECT sum(n_fallback), min(round), max(round) FROM samples").fetchall() == [(0, 2, 2)]
    # every answer of the round is one of the candidates generated for its image and question, naming the label
    candidates = {(row["key"], row["question"]): row["answers"] for row in map(json.loads, file2.read_text().splitlines())}
    assert len(candidates) == 12 * 4 and all(len(a) == 3 for a in candidates.values())
    for s in r2.samples():
        doc = s["json"]
        assert len(doc["qa"]) == 4
        for qa in doc["qa"]:
            assert qa["answer"] in candidates[(s["__key__"], qa["question"])] and names_label(qa["answer"], doc["label"])
    file3 = tmp_path / "r3.jsonl"
    write_candidate_answers(r2.path, file3, "template", None, samples=2, seed=1)
    r3 = vlmforge.build("selfsynth-round", "build", out=tmp_path / "o3", source_options={"path": str(r2.path)},
                        answers=str(file3))
    assert r3.info["parents"] == [r2.build_id] and r3.sql("SELECT DISTINCT round FROM samples").fetchall() == [(3,)]
    # the whole chain, nearest first, each with its builder, version, id, config and its own parents
    chain = r3.info["parent_builds"]
    assert [(p["builder"], p["build_id"]) for p in chain] == [
        ("selfsynth-round", r2.build_id), ("selfsynth", offline_build.build_id)]
    assert chain[0]["config"] == r2.info["config"] and chain[0]["parents"] == [offline_build.build_id]
    assert chain[1]["config"] == offline_build.info["config"] and chain[1]["config"]["concepts"] == "attributes"
    assert chain[1]["version"] == offline_build.info["version"] and "shards" not in chain[1]
    builds = r3.sql("SELECT builder, is_this_build FROM builds ORDER BY is_this_build DESC, builder").fetchall()
    assert builds == [("selfsynth-round", True), ("selfsynth", False), ("selfsynth-round", False)]
    with pytest.raises(UserError, match="answers file not found"):
        vlmforge.build("selfsynth-round", "build", out=tmp_path / "o4", source_options={"path": str(r2.path)},
                       answers=str(tmp_path / "missing.jsonl"))


def test_round_seed_is_not_part_of_the_build(tmp_path, offline_build):
    """A round draws nothing at random: --seed changed the build id (and so the folder's identity) but
    not one byte of the samples. It is left out of the config, so any seed is the same build."""
    from vlmforge.builders.selfsynth_round import write_candidate_answers

    answers = tmp_path / "r2.jsonl"
    write_candidate_answers(offline_build.path, answers, "template", None, samples=2)
    a, b = (vlmforge.build("selfsynth-round", "build", out=tmp_path / name, source_options={"path": str(offline_build.path)},
                           answers=str(answers), seed=seed) for name, seed in (("a", 0), ("b", 7)))
    assert a.build_id == b.build_id and "seed" not in a.info["config"]
    fa, fb = build_files(a.path), build_files(b.path)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_where_a_concepts_or_answers_file_lies_is_not_part_of_the_build(tmp_path, cub, offline_build, monkeypatch):
    """The same file given by another path (relative, from another folder, a copy) is the same build: a
    resumed or repeated command was refused as 'another build' when the path was spelt differently."""
    from vlmforge.builders.selfsynth_round import write_candidate_answers

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    concepts = {lab: ["dark plumage", "white head", "long narrow wings", "pink bill"]
                for lab in ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")}
    for folder in ("a", "b"):
        (tmp_path / folder / f"{folder}.json").write_text(json.dumps(concepts))
    write_candidate_answers(offline_build.path, tmp_path / "a" / "r2.jsonl", "template", None, samples=2)
    (tmp_path / "b" / "copy.jsonl").write_bytes((tmp_path / "a" / "r2.jsonl").read_bytes())
    built = {}
    for folder, name in (("a", "a.json"), ("b", str(tmp_path / "b" / "b.json"))):
        monkeypatch.chdir(tmp_path / folder)
        ss = vlmforge.build("selfsynth", "cub", out=tmp_path / "ss", source_options={"root": str(cub)}, concepts=name)
        rd = vlmforge.build("selfsynth-round", "build", out=tmp_path / "rd", source_options={"path": str(offline_build.path)},
                            answers="r2.jsonl" if folder == "a" else "copy.jsonl")
        built[folder] = (ss, rd)  # the second command finds the first build up to date (no 'another build' error)
    for x, y in zip(built["a"], built["b"]):
        assert x.build_id == y.build_id and x.path == y.path
    ss, rd = built["a"]
    assert ss.info["config"]["concepts"] == "file" and len(ss.info["config"]["concepts_sha256"]) == 64
    assert "answers" not in rd.info["config"] and len(rd.info["config"]["answers_sha256"]) == 64
    # another content is another build
    (tmp_path / "a" / "a.json").write_text(json.dumps({**concepts, "Sooty Albatross": ["sooty plumage", "dark bill"]}))
    monkeypatch.chdir(tmp_path / "a")
    with pytest.raises(BuildError, match="another build"):
        vlmforge.build("selfsynth", "cub", out=tmp_path / "ss", source_options={"root": str(cub)}, concepts="a.json")


class _MuteDescriber(TemplateGenerator):
    """Template texts, except that it describes no image listed in `mute` (every image when None)."""

    mute: set[str] | None = None

    def _one(self, req, i):
        if (req.extra.get("template") or {}).get("task") == "describe" and self._muted(req):
            return "  "
        return super()._one(req, i)

    def _muted(self, req):
        return self.mute is None or req.image in self.mute


def test_images_without_descriptions(tmp_path, cub, monkeypatch):
    monkeypatch.setitem(BACKENDS, "mute", f"{__name__}:_MuteDescriber")
    options = {"root": str(cub), "splits": ["train"]}
    monkeypatch.setattr(_MuteDescriber, "mute", None)
    with pytest.raises(BuildError, match="no usable description for any of the 9 images"):
        vlmforge.build("selfsynth", "cub", out=tmp_path / "all", source_options=options, generator="mute",
                       questions=1)
    first = sorted((cub / "CUB_200_2011" / "images").glob("001.*/*.jpg"))[0]
    monkeypatch.setattr(_MuteDescriber, "mute", {first.read_bytes()})
    b = vlmforge.build("selfsynth", "cub", out=tmp_path / "one", source_options=options, generator="mute",
                       questions=1)
    assert b.sql("SELECT reason, stage FROM rejects").fetchall() == [("no_descriptions", "descriptions")]
    assert len(b) == 8


class _EchoAnswers(TemplateGenerator):
    """Template texts, except that answers and reasoning trials begin by echoing their prompt's image token."""

    def _one(self, req, i):
        text = super()._one(req, i)
        return "<image>\n" + text if (req.extra.get("template") or {}).get("task") in ("answer", "reason") else text


def test_an_answer_echoing_the_image_token_keeps_one_image(tmp_path, cub, monkeypatch):
    """An answer holding '<image>' went into the conversation as it was: a second image in the sample, which
    `export llava` and LLaVA's training refuse."""
    monkeypatch.setitem(BACKENDS, "echo", f"{__name__}:_EchoAnswers")
    b = vlmforge.build("selfsynth", "cub", out=tmp_path, source_options={"root": str(cub)}, concepts="attributes",
                       generator="echo", questions=2)
    convs = [s["json"]["conversations"] for s in b.samples()]
    assert len(convs) == len(b) > 0
    assert all([t["value"].count("<image>") for t in conv] == [1, 0, 0, 0] for conv in convs)


def test_a_split_of_one_image_says_its_concepts_are_not_chosen_by_score(tmp_path):
    """A split holding one image has no other image's descriptions to score its concepts against: each
    scores 0 and the first ones are kept, which the build did without a word."""
    from PIL import Image

    for split, name in (("train", "cat/a.jpg"), ("train", "dog/b.jpg"), ("test", "cat/c.jpg")):
        (tmp_path / "data" / split / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), (40 * len(split), 90, 30 * len(name))).save(tmp_path / "data" / split / name)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "selfsynth", "--source", "imagefolder", "--root",
                        str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--questions", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert "split 'test' has one described image" in err and "split 'train'" not in err
    b = vlmforge.open_build(next((tmp_path / "out").rglob("build.json")).parent)
    split_of = dict(b.sql("SELECT key, split FROM samples").fetchall())
    scores: dict[str, set[float]] = {}
    for s in b.samples():
        scores.setdefault(split_of[s["__key__"]], set()).update(s["json"]["concept_scores"])
    assert len(split_of) == 3 and scores["test"] == {0.0} and 0.0 not in scores["train"]


class _ProseConcepts(TemplateGenerator):
    """Template texts, except that class concepts come as prose, never as a bullet list."""

    def _one(self, req, i):
        if (req.extra.get("template") or {}).get("task") == "concepts":
            return "Birds are lovely animals with feathers."
        return super()._one(req, i)


def test_a_concept_generator_that_lists_nothing_is_an_error(tmp_path, cub, monkeypatch):
    monkeypatch.setitem(BACKENDS, "prose", f"{__name__}:_ProseConcepts")
    with pytest.raises(BuildError, match=r"concept generator \(prose\) returned no bullet list of features for any of "
                                         r"the 3 classes \(first answer: 'Birds are lovely"):
        vlmforge.build("selfsynth", "cub", out=tmp_path, source_options={"root": str(cub)}, generator="prose",
                       questions=1)


def test_selector_without_any_description():
    sel = ConceptSelector(shared_embedder("minilm"))
    assert sel.select({"a": [], "b": []}, {"a": "x", "b": "x"}, {"x": ["red bill"]}) == {"a": [], "b": []}


@pytest.mark.parametrize("doc, error", [
    ({"Black footed Albatross": 5}, "the value for 'Black footed Albatross' must be a list of features"),
    ({"Black footed Albatross": {"dark wings": 1}}, "must be a list of features .* not {\"dark wings\": 1}"),
    # prose, not a bullet list: its class's images were all no_concepts rejects
    ({"Black footed Albatross": "dark wings, white head", "Laysan Albatross": ["white head"]},
     r"the value for 'Black footed Albatross' is text without '- feature' lines; give a list of features, not "
     r"\"dark wings, white head\""),
    ({"001.Black_footed_Albatross": ["dark wings"]},
     r"no entry for any label of this build \(labels: 'Black footed Albatross', .*the file has: '001.Black"),
])
def test_concepts_file_shape(tmp_path, cub, doc, error):
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=error):
        vlmforge.build("selfsynth", "cub", out=tmp_path / "out", source_options={"root": str(cub)}, concepts=str(path))


def test_concepts_help_keeps_its_brackets():
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "selfsynth", "--help"], capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "300"})
    assert "{label: [features]}" in r.stdout


def test_answers_files_and_parents_of_the_wrong_kind_are_one_error(tmp_path, offline_build, coco_build):
    from vlmforge.builders.selfsynth_round import read_answers, write_candidate_answers

    bad = tmp_path / "a.jsonl"
    bad.write_text('{"key": "k", "question": ["a"], "answers": ["x"]}\n')
    with pytest.raises(UserError, match="'question' must be text"):
        read_answers(bad)
    bad.write_text('{"key": "k", "question": "q", "answers": [null, 5]}\n')
    with pytest.raises(UserError, match="'answers' must be a list of strings"):
        read_answers(bad)
    with pytest.raises(UserError, match="is a copy build; candidate answers are asked for the questions of a selfsynth"):
        write_candidate_answers(coco_build.path, tmp_path / "out.jsonl", "template", None)


def test_unusable_answers_files_leave_no_unfinished_build(tmp_path, offline_build):
    """An answers file that is empty, made from another build, or malformed is one error, and leaves
    nothing behind: the corrected file (another build id) then builds in the same --out."""
    good = tmp_path / "good.jsonl"
    good.write_text(_answers_line(offline_build.sql("SELECT min(key) FROM samples").fetchall()[0][0], "Q?", ["x"]))
    other = tmp_path / "other.jsonl"
    other.write_text(_answers_line("not_in_parent", "Q?", ["x"]) + "\n" + _answers_line("neither", "Q?", ["x"]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"key": "k"}\n')
    out = tmp_path / "out"
    for path, error in ((empty, "has no answers"), (other, r"no key of answers file .* is in the parent build .*"
                        r"the file's first: neither"), (malformed, "each line needs 'key'"),
                        (tmp_path, "answers file is a folder")):
        with pytest.raises(UserError, match=error):
            vlmforge.build("selfsynth-round", "build", out=out, source_options={"path": str(offline_build.path)},
                           answers=str(path))
        assert not (out / "selfsynth-round").exists() or not any((out / "selfsynth-round").iterdir())
    b = vlmforge.build("selfsynth-round", "build", out=out, source_options={"path": str(offline_build.path)},
                       answers=str(good))
    assert len(b) == 1 and b.sql("SELECT count(*) FROM rejects WHERE reason = 'no_answers'").fetchall() == [(11,)]


def test_candidate_answers_check_their_output_before_any_model_work(tmp_path, offline_build, monkeypatch):
    from vlmforge.builders.selfsynth_round import write_candidate_answers

    asked = []
    monkeypatch.setattr(TemplateGenerator, "setup", lambda self: asked.append(1))
    with pytest.raises(UserError, match="is a folder; give the JSONL file"):
        write_candidate_answers(offline_build.path, tmp_path, "template", None)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write --output"):
        write_candidate_answers(offline_build.path, tmp_path / "file" / "a.jsonl", "template", None)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(_answers_line(offline_build.sql("SELECT min(key) FROM samples").fetchall()[0][0], "Q?", ["x"]))
    empty = vlmforge.build("selfsynth-round", "build", out=tmp_path / "e", answers=str(answers),
                           source_options={"path": str(offline_build.path), "where": "false"})
    with pytest.raises(UserError, match="has no samples: there is no question to answer"):
        write_candidate_answers(empty.path, tmp_path / "a.jsonl", "template", None)
    assert asked == [] and not list(tmp_path.glob("*.tmp"))


def test_an_image_without_certain_attributes_says_so(tmp_path, cub):
    import shutil

    root = tmp_path / "cub"
    shutil.copytree(cub, root)
    labels = root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    rows = [line.split() for line in labels.read_text().splitlines()]
    labels.write_text("".join(" ".join(r[:2] + (["0"] if r[0] == "1" else r[2:3]) + r[3:]) + "\n" for r in rows))
    b = vlmforge.build("selfsynth", "cub", out=tmp_path / "out", concepts="attributes", questions=1,
                       source_options={"root": str(root), "attributes": True})
    assert b.sql("SELECT reason, detail FROM rejects").fetchall() == [
        ("no_concepts", "the image has no attribute of certainty >= 3")]


def test_files_differing_by_extension_only_are_one_sample(tmp_path):
    from tests.derived_data import class_folder

    root = class_folder(tmp_path / "birds", {"gull": 2, "tern": 2})
    (root / "tern" / "001.png").write_bytes((root / "tern" / "001.jpg").read_bytes())
    b = vlmforge.build("selfsynth", "imagefolder", out=tmp_path / "out", source_options={"root": str(root)},
                       instructions=1, descriptions_per_instruction=1, questions=1)
    assert b.sql("SELECT source_id, reason FROM rejects").fetchall() == [("tern/001.png", "duplicate_key")]
    assert len(b) == 4


def test_a_round_warns_of_unused_answers_unless_quiet(tmp_path, offline_build):
    key = offline_build.sql("SELECT key FROM samples ORDER BY key LIMIT 1").fetchall()[0][0]
    answers = tmp_path / "answers.jsonl"
    answers.write_text(_answers_line(key, "What bird is this?", ["A bird."]) + "\n"
                       + _answers_line("not_in_parent", "Q?", ["x"]) + "\n")
    base = [sys.executable, "-m", "vlmforge.cli", "build", "selfsynth-round", "--from", str(offline_build.path),
            "--answers", str(answers)]
    loud = subprocess.run(base + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert loud.returncode == 0 and "1 keys of the answers file are not in the parent build" in loud.stderr
    quiet = subprocess.run(base + ["--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # --quiet prints nothing but errors


# -- requests an endpoint refuses -------------------------------------------------------------------
@pytest.fixture
def chat_server():
    """An OpenAI-compatible server on 127.0.0.1 that echoes prompts; `refuse` makes it answer 400 (a
    content filter) to requests holding that text."""
    from tests.curation.test_openai_backend import ChatServer

    server = ChatServer()
    yield server
    server.close()


def _openai_build(out, cub, server, cache, attributes=False, **config):
    src = open_source("cub", root=str(cub), splits=["train"], attributes=attributes)
    builder = SelfSynthBuilder(SelfSynthConfig(generator="openai", model="m", questions=2, **config), src,
                               generator_options={"base_url": server.url, "backoff": 0.01}, cache_dir=cache)
    return vlmforge.open_build(run_build(builder, out, quiet=True))


def test_an_image_the_endpoint_refuses_is_a_reject_asked_again_next_time(tmp_path, cub, chat_server):
    from vlmforge.curation.generation.openai import data_url

    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({lab: ["dark plumage", "white head", "long narrow wings", "pink bill"]
                                    for lab in ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")}))
    image = sorted((cub / "CUB_200_2011" / "images").glob("003.*/*.jpg"))[0]
    chat_server.refuse = data_url(image.read_bytes())  # the filter refuses this one image, whatever the prompt
    config = {"concepts": str(concepts), "instructions": 1, "descriptions_per_instruction": 1}
    a = _openai_build(tmp_path / "a", cub, chat_server, tmp_path / "cache", **config)
    assert a.sql("SELECT source_id, reason, stage, detail FROM rejects").fetchall() == [
        (f"{image.parent.name}/{image.name}", "refused_by_endpoint", "descriptions",
         f"{chat_server.url} answered 400: the prompt was filtered")]
    assert len(a) == 8  # the other images' answers echo the prompt, which names the label
    # The refusal is not an answer in the cache: the rerun asks for it again, and only for it.
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 8 + 8 * 2
    asked = len(chat_server.requests)
    b = _openai_build(tmp_path / "b", cub, chat_server, tmp_path / "cache", **config)
    assert [data_url(image.read_bytes()) in json.dumps(r["body"]) for r in chat_server.requests[asked:]] == [True]
    fa, fb = build_files(a.path), build_files(b.path)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    # An error about the endpoint, not a request, still stops the build with its line.
    chat_server.refuse, chat_server.plan = None, [401] * 4
    with pytest.raises(UserError, match="answered 401: planned failure 401"):
        _openai_build(tmp_path / "c", cub, chat_server, tmp_path / "cache2", **config)


def test_a_refused_class_or_question_is_a_reject_without_a_cache(tmp_path, cub, chat_server):
    chat_server.refuse = "Sooty Albatross"  # in its concept request and its questions
    chat_server.fixed_reply = "- dark plumage\n- long narrow wings\n- hooked bill"
    a = _openai_build(tmp_path / "a", cub, chat_server, False, instructions=1, descriptions_per_instruction=1)
    q = "SELECT reason, stage, count(*) FROM rejects GROUP BY ALL ORDER BY ALL"
    assert a.sql(q).fetchall() == [("answer_misses_label", "qa", 6), ("refused_by_endpoint", "concepts", 3)]
    # Its images were asked nothing more: one request per class, then one description and 2 questions each.
    assert len(chat_server.requests) == 3 + 6 * 3
    chat_server.fixed_reply = None
    b = _openai_build(tmp_path / "b", cub, chat_server, False, concepts="attributes", attributes=True)
    assert b.sql(q).fetchall() == [("refused_by_endpoint", "qa", 3)] and len(b) == 6
    detail = b.sql("SELECT DISTINCT detail FROM rejects").fetchall()
    assert detail == [(f"{chat_server.url} answered 400: the prompt was filtered",)]
    # Every image of a batch refused is about the requests' shape (a model that takes no image): an error.
    chat_server.refuse = "Question:"
    with pytest.raises(BuildError, match="the endpoint refused the requests of every image of a batch: .* answered "
                                         "400: the prompt was filtered"):
        _openai_build(tmp_path / "c", cub, chat_server, False, concepts="attributes", attributes=True)


def test_empty_answers_are_their_own_reject(tmp_path, cub, chat_server):
    """An endpoint answering with no text (a reasoning model out of tokens) made every image an
    answer_misses_label reject, as if the model had named another bird."""
    chat_server.fixed_reply = ""
    a = _openai_build(tmp_path / "a", cub, chat_server, tmp_path / "cache", concepts="attributes", attributes=True)
    assert len(a) == 0 and a.sql("SELECT reason, stage, detail, count(*) FROM rejects GROUP BY ALL").fetchall() == [
        ("empty_answers", "qa", "the generator returned 2 empty answers", 9)]
    assert not list((tmp_path / "cache").rglob("*.json"))  # asked again next time


def test_candidate_answers_note_a_refusal_and_the_round_leaves_it_out(tmp_path, offline_build, chat_server, capsys):
    from vlmforge.builders.selfsynth_round import write_candidate_answers
    from vlmforge.curation.generation.openai import data_url

    first = next(offline_build.samples())
    chat_server.refuse = data_url(first["jpg"])  # every question about this image is refused
    out = tmp_path / "r2.jsonl"
    options = {"base_url": chat_server.url, "backoff": 0.01}
    assert write_candidate_answers(offline_build.path, out, "openai", "m", samples=1, generator_options=options,
                                   cache_dir=tmp_path / "cache", quiet=False) == 12 * 4
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    refused = [line for line in lines if "refused" in line]
    assert {line["key"] for line in refused} == {first["__key__"]} and len(refused) == 4
    assert all(line["answers"] == [] and "answered 400: the prompt was filtered" in line["refused"] for line in refused)
    assert all(line["answers"] for line in lines if "refused" not in line)
    assert "the endpoint refused 4 of 48 questions" in " ".join(capsys.readouterr().err.split())
    r2 = vlmforge.build("selfsynth-round", "build", out=tmp_path / "o2",
                        source_options={"path": str(offline_build.path)}, answers=str(out))
    assert len(r2) == 11 and r2.sql("SELECT source_id, reason, stage FROM rejects").fetchall() == [
        (first["__key__"], "refused_by_endpoint", "answers")]
    # One question refused is left out of its sample, counted as unanswered.
    question = lines[1]["question"]
    chat_server.refuse = question
    write_candidate_answers(offline_build.path, out, "openai", "m", samples=1, generator_options=options,
                            cache_dir=False)
    r2 = vlmforge.build("selfsynth-round", "build", out=tmp_path / "o3",
                        source_options={"path": str(offline_build.path)}, answers=str(out))
    asking = sorted({line["key"] for line in lines if line["question"] == question})
    assert r2.sql("SELECT key, n_unanswered FROM samples WHERE n_unanswered > 0 ORDER BY key").fetchall() == [
        (key, 1) for key in asking] and len(r2) == 12
    # Every question refused is about the requests' shape: an error, and no answers file.
    chat_server.refuse = "bird"
    with pytest.raises(UserError, match="the endpoint refused every question: .*answered 400"):
        write_candidate_answers(offline_build.path, tmp_path / "none.jsonl", "openai", "m", samples=1,
                                generator_options=options, cache_dir=False)
    assert not (tmp_path / "none.jsonl").exists()


def test_candidate_answers_from_a_projector_only_or_lora_run(tmp_path, offline_build):
    """`selfsynth-answers --model runs/round1` of a `train --mode projector` (or lora) run failed with
    'cannot load model ... Unrecognized model': the run goes onto its base as `vlmforge eval` loads it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from typer.testing import CliRunner

    from vlmforge.cli import app
    from vlmforge.training.llava import export, load_llava, projector_names
    from vlmforge.training.tiny import make_tiny_llava

    base = str(make_tiny_llava(tmp_path / "tiny"))
    model, processor = load_llava(base)
    with torch.no_grad():
        for name in projector_names(model):
            model.get_parameter(name).fill_(0.25)  # stands in for training
    export(model, processor, "projector", base, tmp_path / "proj" / "final")
    gen = make_generator("transformers", str(tmp_path / "proj"), cache_dir=False, device="cpu")
    gen.setup()
    assert all(bool((gen._model.get_parameter(name) == 0.25).all()) for name in projector_names(model))
    lora = get_peft_model(load_llava(base)[0], LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    export(lora, processor, "lora", base, tmp_path / "lora" / "final")
    for run in ("proj", "lora"):
        out = tmp_path / f"{run}.jsonl"
        r = CliRunner().invoke(app, ["selfsynth-answers", "--from", str(offline_build.path), "-o", str(out), "--model",
                                     str(tmp_path / run), "--samples", "1", "--max-new-tokens", "2", "--device", "cpu",
                                     "--no-cache", "--quiet"])
        assert r.exit_code == 0, r.output
        assert len(out.read_text().splitlines()) == 12 * 4


def test_no_image_is_asked_one_question_twice(cub):
    # Four draws of the type with three wordings (0.3^4, about 1 image in 120) asked one of them twice.
    src = open_source("cub", root=str(cub), splits=["train"])
    builder = SelfSynthBuilder(SelfSynthConfig(concepts="attributes"), src)
    keys = [f"train-{i:05d}" for i in range(3000)]
    picks = {k: builder._questions(k) for k in keys}
    assert all(len({q for _, q in qs}) == len(qs) == 4 for qs in picks.values())
    assert any([t for t, _ in qs].count("cot") == 3 for qs in picks.values())  # a type is used up, not avoided
    assert picks == {k: builder._questions(k) for k in keys}  # seeded by (seed, key)
    every = SelfSynthBuilder(SelfSynthConfig(concepts="attributes", questions=11), src)._questions("train-00000")
    assert len({q for _, q in every}) == 11
    with pytest.raises(UserError, match="--questions must be 1 to 11"):
        SelfSynthBuilder(SelfSynthConfig(concepts="attributes", questions=12), src)
