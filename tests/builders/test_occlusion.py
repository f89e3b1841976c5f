"""The occlusion builder end to end on the embedded-style sample, with every backend."""

import copy
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vlmforge
from vlmforge.curation.occlude import FILL_RGB
from vlmforge.errors import BuildError, UserError

from tests.helpers import build_files


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from vlmforge.training.tiny import make_tiny_grounding_dino, make_tiny_mlm, make_tiny_sam

    root = tmp_path_factory.mktemp("tiny")
    return {"dino": make_tiny_grounding_dino(root / "dino"), "sam": make_tiny_sam(root / "sam"),
            "mlm": make_tiny_mlm(root / "mlm")}


def _src(root):
    return {"coco_root": str(root), "split": "val2017"}


def test_default_build_samples_manifest_and_rejects(tmp_path, sample_coco):
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(sample_coco), keep_original=True)
    rows = b.sql("SELECT key, label, category, occluded_fraction, causality, box, image_id FROM samples ORDER BY key").fetchall()
    assert len(rows) >= 10
    per_image = b.sql("SELECT image_id, count(*) FROM samples GROUP BY 1").fetchall()
    assert max(n for _, n in per_image) <= 3
    assert {r[0] for r in b.sql("SELECT DISTINCT reason FROM rejects").fetchall()} >= {"low_causality", "not_grounded", "duplicate_object"}
    ins = json.loads((sample_coco / "annotations" / "instances_val2017.json").read_text())
    for s in b.samples():
        doc = s["json"]
        assert s["__key__"] == doc["id"] and doc["conversations"][1]["value"] == doc["label"]
        assert doc["conversations"][0]["value"].startswith("<image>\n") and "occluded" in doc["question"] or "hidden" in doc["question"] or "covered" in doc["question"] or "masked" in doc["question"]
        assert doc["label"].split()[-1] in doc["caption"].lower() or doc["label"] == "person"
        occluded = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")).astype(int)
        original = np.asarray(Image.open(io.BytesIO(s["orig.jpg"])).convert("RGB")).astype(int)
        mask = np.asarray(Image.open(io.BytesIO(s["mask.png"]))) > 0
        assert abs(mask.mean() - doc["occluded_fraction"]) < 1e-6
        # inside the mask the image is the fill colour (up to JPEG error); outside it is unchanged
        assert np.abs(occluded[mask] - FILL_RGB).mean() < 12
        assert np.abs(occluded[~mask] - original[~mask]).mean() < 4
        # the grounded instance is the hidden one: its category matches and the mask covers it
        anns = [a for a in ins["annotations"] if a["image_id"] == doc["image_id"]]
        cats = {c["id"]: c["name"] for c in ins["categories"]}
        x, y, w, h = doc["box"]
        assert any(cats[a["category_id"]] == doc["category"] and a["bbox"][0] >= x - 1 and a["bbox"][1] >= y - 1 for a in anns)
        assert mask[int(y + h / 2), int(x + w / 2)] or mask[int(y):int(y + h), int(x):int(x + w)].mean() > 0.5


def test_rebuild_is_byte_identical_whatever_the_workers(tmp_path, sample_coco):
    a = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(sample_coco), max_samples_per_shard=7)
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options=_src(sample_coco), max_samples_per_shard=7, workers=2)
    fa, fb = build_files(a.path), build_files(b.path)
    assert len(a.info["shards"]) > 1
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_grounding_dino_and_sam_backends_run_end_to_end(tmp_path, sample_coco, tiny_models):
    b = vlmforge.build("occlusion", "coco", out=tmp_path, source_options=_src(sample_coco),
                       grounder="grounding-dino", dino_model=str(tiny_models["dino"]), box_threshold=0.0,
                       text_threshold=0.0, segmenter="sam", sam_model=str(tiny_models["sam"]), causality="none",
                       min_area=0.0, max_area=1.0, fill="solid")
    assert len(b) > 0
    assert {r[0] for r in b.sql("SELECT DISTINCT grounding FROM samples").fetchall()} == {"grounding-dino"}
    s = next(iter(b.samples()))
    mask = np.asarray(Image.open(io.BytesIO(s["mask.png"]))) > 0
    assert mask.shape == (360, 480) and mask.any()


def test_mlm_causality_scores_with_a_masked_lm(tmp_path, sample_coco, tiny_models):
    keep_all = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(sample_coco),
                              causality="mlm", mlm_model=str(tiny_models["mlm"]), min_ppl=0.0, max_ppl=1e9)
    ppl = [r[0] for r in keep_all.sql("SELECT causality FROM samples").fetchall()]
    assert ppl and all(v > 1.0 for v in ppl)  # a random 2-layer LM is far from certain
    strict = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options=_src(sample_coco),
                            causality="mlm", mlm_model=str(tiny_models["mlm"]))  # the paper's 1 < ppl < 3.33
    assert len(strict) == 0
    assert strict.sql("SELECT count(*) FROM rejects WHERE reason = 'low_causality'").fetchall()[0][0] > 0


def test_bad_combinations_are_user_errors(tmp_path, sample_coco):
    with pytest.raises(UserError, match="segmenter annotations"):
        vlmforge.build("occlusion", "coco", out=tmp_path, source_options=_src(sample_coco), grounder="grounding-dino")
    with pytest.raises(UserError, match="fill"):
        vlmforge.build("occlusion", "coco", out=tmp_path, source_options=_src(sample_coco), fill="glitter")


def test_an_image_whose_size_disagrees_with_its_annotation_is_rejected(tmp_path, sample_coco):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(sample_coco, root)
    for kind in ("instances", "captions"):  # both files list the images
        path = root / "annotations" / f"{kind}_val2017.json"
        data = json.loads(path.read_text())
        wrong = data["images"][0]
        wrong["width"] += 8  # the file on disk is 8 px narrower than the annotation says
        for entry in data["images"][1:]:
            del entry["width"], entry["height"]  # left out: taken from the pixels
        path.write_text(json.dumps(data))
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "out", source_options=_src(root))
    reasons = dict(b.sql("SELECT source_id, reason FROM rejects WHERE stage = 'read_image'").fetchall())
    assert list(reasons.values()) == ["size_mismatch"] and str(wrong["id"]) in next(iter(reasons))
    assert b.sql("SELECT count(*) FROM samples").fetchall()[0][0] >= 10  # the unsized images build as usual


def test_broken_segmentations_reject_their_object_and_rle_builds_like_polygons(tmp_path, coco_copy):
    from pycocotools import mask as mask_utils

    path = coco_copy / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    a = vlmforge.build("occlusion", "coco", out=tmp_path / "poly", source_options=_src(coco_copy))
    hidden = dict(a.sql("SELECT key, category FROM samples").fetchall())
    for k, ann in enumerate(data["annotations"]):  # the same shapes, as compressed RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], *sizes[ann["image_id"]]))
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    path.write_text(json.dumps(data))
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "rle", source_options=_src(coco_copy))
    assert [s["mask.png"] for s in a.samples()] == [s["mask.png"] for s in b.samples()]
    broken = {}
    for ann in data["annotations"]:  # one instance of each hidden object gets a broken segmentation
        cat = next(c["name"] for c in data["categories"] if c["id"] == ann["category_id"])
        key = next((k for k, v in hidden.items() if int(k.split("-")[0]) == ann["image_id"] and v == cat), None)
        if key and len(broken) < 3 and ann["image_id"] not in {i for i, _ in broken.values()}:
            ann["segmentation"] = [{"size": [5, 5], "counts": "06"}, [[1.0, 2.0, 3.0]], None][len(broken)]
            broken[ann["id"]] = (ann["image_id"], cat)
    path.write_text(json.dumps(data))
    c = vlmforge.build("occlusion", "coco", out=tmp_path / "broken", source_options=_src(coco_copy))
    details = [d for (d,) in c.sql("SELECT detail FROM rejects WHERE reason = 'bad_segmentation'").fetchall()]
    assert len(details) >= len(broken) == 3
    assert {int(d.split()[1].rstrip(":")) for d in details} == set(broken)
    assert any("RLE size is [5, 5]" in d for d in details) and any("no segmentation" in d for d in details)
    assert c.sql("SELECT count(*) FROM samples").fetchall()[0][0] >= len(hidden) - 3 - 3


def test_kept_originals_of_cmyk_grey_and_png_images_are_readable(tmp_path, coco_copy):
    data = json.loads((coco_copy / "annotations" / "instances_val2017.json").read_text())
    a = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(coco_copy))
    ids = [i for (i,) in a.sql("SELECT DISTINCT image_id FROM samples ORDER BY 1 LIMIT 3").fetchall()]
    files = {im["id"]: coco_copy / "val2017" / im["file_name"] for im in data["images"]}
    for image_id, mode in zip(ids, ("CMYK", "L")):
        Image.open(files[image_id]).convert(mode).save(files[image_id], quality=92)
    Image.open(files[ids[2]]).save(files[ids[2]], format="PNG")  # a PNG source: its original too is orig.jpg
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options=_src(coco_copy), keep_original=True)
    seen = set()
    for s in b.samples():
        orig = next(k for k in s if k.startswith("orig."))
        assert orig == "orig.jpg"
        im = Image.open(io.BytesIO(s[orig]))
        assert im.mode in ("RGB", "L") and im.size == Image.open(io.BytesIO(s["jpg"])).size
        seen.add((s["json"]["image_id"], im.mode))
    assert {(ids[0], "RGB"), (ids[1], "L"), (ids[2], "RGB")} <= seen  # CMYK and PNG as RGB JPEG, grey as it is


def test_jpeg_sources_are_occluded_in_their_coefficients_and_keep_every_other_pixel(tmp_path, coco_copy):
    """The default writes the fill into the source JPEG's DCT blocks: away from the occluder the pixels
    are the source's own. --occluded-jpeg reencode (and sources that are not colour JPEGs) re-encode."""
    import cv2

    a = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(coco_copy), keep_original=True)
    r = vlmforge.build("occlusion", "coco", out=tmp_path / "r", source_options=_src(coco_copy), keep_original=True,
                       occluded_jpeg="reencode")
    assert len(a) == len(r) >= 10
    for s, t in zip(a.samples(), r.samples()):
        assert s["__key__"] == t["__key__"] and s["mask.png"] == t["mask.png"]
        assert s["json"]["jpeg"] == "coefficients" and t["json"]["jpeg"] == "reencoded"
        mask = np.asarray(Image.open(io.BytesIO(s["mask.png"]))) > 0
        far = ~cv2.dilate(mask.view(np.uint8), np.ones((33, 33), np.uint8)).view(bool)  # past the MCUs it touches
        original = np.asarray(Image.open(io.BytesIO(s["orig.jpg"])).convert("RGB")).astype(int)
        via_coefs = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")).astype(int)
        via_pixels = np.asarray(Image.open(io.BytesIO(t["jpg"])).convert("RGB")).astype(int)
        assert np.array_equal(via_coefs[far], original[far])
        assert np.abs(via_coefs[mask] - via_pixels[mask]).mean() < 6  # the same fill either way
    assert any(not np.array_equal(np.asarray(Image.open(io.BytesIO(t["jpg"]))), np.asarray(Image.open(io.BytesIO(t["orig.jpg"]))))
               for t in r.samples())

    data = json.loads((coco_copy / "annotations" / "instances_val2017.json").read_text())
    files = {im["id"]: coco_copy / "val2017" / im["file_name"] for im in data["images"]}
    ids = [i for (i,) in a.sql("SELECT DISTINCT image_id FROM samples ORDER BY 1 LIMIT 3").fetchall()]
    Image.open(files[ids[0]]).convert("L").save(files[ids[0]], quality=92)
    Image.open(files[ids[1]]).convert("CMYK").save(files[ids[1]], quality=92)
    Image.open(files[ids[2]]).save(files[ids[2]], format="PNG")
    m = vlmforge.build("occlusion", "coco", out=tmp_path / "m", source_options=_src(coco_copy))
    how = {}
    for s in m.samples():
        how.setdefault(s["json"]["image_id"], set()).add(s["json"]["jpeg"])
        assert Image.open(io.BytesIO(s["jpg"])).mode == "RGB"
    assert all(how[i] == {"reencoded"} for i in ids)
    assert len(how) > 3 and all(v == {"coefficients"} for i, v in how.items() if i not in ids)
    # a phone's video after the end-of-image marker: built through the coefficients, the video left out
    tail_id = next(i for i in sorted(how) if i not in ids)
    whole = files[tail_id].read_bytes()
    files[tail_id].write_bytes(whole + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    t = vlmforge.build("occlusion", "coco", out=tmp_path / "t", source_options=_src(coco_copy), keep_original=True)
    got = [s for s in t.samples() if s["json"]["image_id"] == tail_id]
    assert got and all(s["orig.jpg"] == whole and s["json"]["jpeg"] == "coefficients" for s in got)
    blurred = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options=_src(coco_copy), fill="blur")
    assert {s["json"]["jpeg"] for s in blurred.samples()} == {"reencoded"}  # blur reads the pixels it covers


def test_without_the_compiled_writer_the_default_says_what_to_do(tmp_path, sample_coco, monkeypatch):
    import vlmforge.builders.occlusion as occlusion

    r = subprocess.run([sys.executable, "-c", "import vlmforge.builders.occlusion as o; o.coefficient_writer = lambda: None; "
                        "import sys; from vlmforge.cli import main; sys.argv = ['vlmforge'] + sys.argv[1:]; main()",
                        "build", "occlusion", "--coco-root", str(sample_coco), "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--occluded-jpeg reencode" in r.stderr and "libjpeg" in r.stderr
    builder = occlusion.OcclusionBuilder(occlusion.OcclusionConfig(), occlusion.OcclusionBuilder.open_source(
        "coco", coco_root=str(sample_coco)))
    monkeypatch.setattr(occlusion, "coefficient_writer", lambda: None)
    with pytest.raises(UserError, match="--occluded-jpeg coefficients needs"):
        occlusion.OcclusionConfig().validate()
    with pytest.raises(UserError, match="was not built on .*, where a worker runs"):  # a worker on another machine
        builder.setup()
    occlusion.OcclusionConfig(occluded_jpeg="reencode").validate()
    occlusion.OcclusionConfig(fill="blur").validate()  # blur and inpaint never use it
    with pytest.raises(UserError, match="--occluded-jpeg must be one of"):
        occlusion.OcclusionConfig(occluded_jpeg="dct").validate()


def test_workers_get_the_categories_not_the_whole_dataset(sample_coco):
    """The builder pickled to workers leaves the per-image tables behind (records carry them)."""
    import pickle

    from vlmforge.builders.occlusion import OcclusionBuilder, OcclusionConfig

    b = OcclusionBuilder(OcclusionConfig(), OcclusionBuilder.open_source("coco", **_src(sample_coco)))
    b.entity_cache = False
    b.prepare()
    sent = pickle.loads(pickle.dumps(b))
    assert sent.src.ds.categories == b.src.ds.categories and not sent.src.ds.images and not sent.src.ds.instances
    assert b.src.ds.images and b.src.ds.instances  # the driver's own source is untouched
    assert len(pickle.dumps(b)) < len(pickle.dumps(dict(b.__dict__)))  # the same state with the full source
    # Caption entities travel with the records, not with the builder.
    assert b.entities and not sent.entities
    # What a worker makes of a record equals what the driver makes of it.
    sent.setup()
    b.setup()
    split = b.src.splits()[0]
    recs = [r for r in b.with_prepared(b.src.records(split)) if r.get("captions")][:6]
    plain = [r for r in b.src.records(split) if r.get("captions")][:6]
    for rec in recs:
        assert rec["entities"] == {int(c["id"]): b.entities[int(c["id"])] for c in rec["captions"]}
    got = [[(s.key, s.image) for s in per if hasattr(s, "key")] for per in sent.process(copy.deepcopy(recs))]
    want = [[(s.key, s.image) for s in per if hasattr(s, "key")] for per in b.process(copy.deepcopy(plain))]
    assert got == want and any(got)
    got, want = sent.process([dict(r) for r in recs]), b.process([dict(r) for r in recs])
    assert [[vars(r) for r in per] for per in got] == [[vars(r) for r in per] for per in want]
    assert any(hasattr(r, "key") for per in got for r in per)


def _chunk_server():
    """A local OpenAI-compatible server whose 'model' answers with spaCy's own noun chunks."""
    from tests.curation.test_openai_backend import ChatServer
    from vlmforge.curation.entities import SpacyEntityExtractor

    spacy = SpacyEntityExtractor()

    class ChunkServer(ChatServer):
        def answer(self, body):
            caption = body["messages"][-1]["content"].rsplit("Caption:", 1)[1].strip()
            lines = "\n".join(f"{e.phrase} | {e.label}" for e in spacy([caption])[0])
            return {"id": "x", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": lines}, "finish_reason": "stop"}]}

    return ChunkServer()


def test_entities_from_a_generation_model_over_an_openai_compatible_api(tmp_path, sample_coco):
    """--entity-extractor openai against a local server whose 'model' answers with spaCy's own noun
    chunks: the build asks for every distinct caption once, and builds the same samples as spaCy does."""
    server = _chunk_server()
    try:
        a = vlmforge.build("occlusion", "coco", out=tmp_path / "spacy", source_options=_src(sample_coco))
        with pytest.raises(UserError, match="needs --entity-model"):
            vlmforge.build("occlusion", "coco", out=tmp_path / "x", source_options=_src(sample_coco), entity_extractor="openai")
        b = vlmforge.build("occlusion", "coco", out=tmp_path / "gen", source_options=_src(sample_coco),
                           entity_extractor="openai", entity_model="chunker", workers=2,
                           builder_attrs={"generator_options": {"base_url": server.url, "backoff": 0.01},
                                          "entity_cache": False})
    finally:
        server.close()
    captions = json.loads((sample_coco / "annotations" / "captions_val2017.json").read_text())["annotations"]
    assert len(server.requests) == len({c["caption"].strip() for c in captions})
    assert server.requests[0]["body"]["temperature"] == 0.0
    assert b.build_id != a.build_id and b.info["config"]["entity_extractor"] == "openai"
    assert "entity_extractor" not in a.info["config"]  # the default keeps the id builds had before the option
    fields = ("jpg", "json", "mask.png")
    assert [[s[f] for f in fields] for s in a.samples()] == [[s[f] for f in fields] for s in b.samples()]
    assert len(list(a.samples())) >= 10


def test_a_caption_the_endpoint_refuses_is_a_reject_and_the_others_build(tmp_path, sample_coco):
    """A caption the endpoint refuses for its content (400) stopped the build on every rerun: it is a
    refused_by_endpoint reject of its caption, the other captions build, and the next run asks again."""
    server = _chunk_server()
    server.refuse = "a gray sheep"  # caption 9 of image 100040, in no other caption nor the prompt's examples

    def build(out, workers=1, **attrs):
        return vlmforge.build("occlusion", "coco", out=tmp_path / out, source_options=_src(sample_coco), quiet=True,
                              entity_extractor="openai", entity_model="chunker", workers=workers,
                              builder_attrs={"generator_options": {"base_url": server.url, "backoff": 0.01}, **attrs})

    try:
        b = build("a", workers=2)
        asked = len(server.requests)
        server.refuse = None
        again = build("b")  # the refusal was not cached: only it is asked again
        assert len(server.requests) == asked + 1 and "a gray sheep" in json.dumps(server.requests[-1]["body"])
        server.refuse = "Caption:"  # every caption refused: the requests' shape, not their content
        with pytest.raises(BuildError, match="the endpoint refused the requests of every caption: .*answered 400"):
            build("c", entity_cache=False)
    finally:
        server.close()
    rejects = b.sql("SELECT source_id, reason, stage, detail FROM rejects WHERE reason = 'refused_by_endpoint'").fetchall()
    assert [r[:3] for r in rejects] == [("100040:9", "refused_by_endpoint", "entities")]
    assert "answered 400: the prompt was filtered" in rejects[0][3]
    got = b.sql("SELECT caption_id FROM samples").fetchall()
    assert got and 9 not in {r[0] for r in got}
    assert again.sql("SELECT count(*) FROM rejects WHERE reason = 'refused_by_endpoint'").fetchall() == [(0,)]
    assert b.sql("SELECT count(*) FROM rejects WHERE source_id LIKE '100040:9:%'").fetchall() == [(0,)]


def test_a_generation_model_that_names_nothing_is_an_error(tmp_path, sample_coco):
    """Answers that never parse (a chatty or broken model) would otherwise build 0 samples, exit 0."""
    from tests.curation.test_openai_backend import ChatServer

    server = ChatServer()
    server.fixed_reply = "I am sorry, I cannot help with that."
    try:
        with pytest.raises(UserError, match="named no entity in any of"):
            vlmforge.build("occlusion", "coco", out=tmp_path / "g", source_options=_src(sample_coco), quiet=True,
                           entity_extractor="openai", entity_model="chatty",
                           builder_attrs={"generator_options": {"base_url": server.url}, "entity_cache": False})
    finally:
        server.close()
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "occlusion", "-G", "base_url=http://x",
                        "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 2 and "with --entity-extractor spacy there is none" in r.stderr


@pytest.mark.parametrize("options, message", [
    ({"min_causality": 1.5}, "--min-causality must be between 0 and 1"),
    ({"embed_threshold": 5.0}, "--embed-threshold must be between -1 and 1"),
    ({"box_threshold": -1.0}, "--box-threshold must be between 0 and 1"),
    ({"min_ppl": 5.0, "max_ppl": 1.0}, "need 0 <= --min-ppl < --max-ppl"),
    ({"causality": "mlm", "mlm_model": "/nonexistent/mlm"}, "no model at /nonexistent/mlm (the masked LM"),
    ({"grounder": "grounding-dino", "segmenter": "sam", "sam_model": "./no-sam"}, "no model at ./no-sam (the SAM"),
    ({"embedder": "/nonexistent/minilm"}, "no model at /nonexistent/minilm (the sentence embedder"),
])
def test_bad_options_are_refused_before_anything_runs(options, message):
    from vlmforge.builders.occlusion import OcclusionConfig

    with pytest.raises(UserError, match=re.escape(message)):
        OcclusionConfig(**options).validate()
    OcclusionConfig(**{**options, "causality": "none", "grounder": "annotations", "segmenter": "annotations",
                       "embedder": None, "min_causality": 0.5, "embed_threshold": 0.5, "box_threshold": 0.3,
                       "min_ppl": 1.0, "max_ppl": 3.0}).validate()  # the same with sane values passes


def test_same_build_under_any_string_hash_seed(tmp_path, sample_coco):
    """Set order varies with PYTHONHASHSEED from process to process; nothing built may follow it."""
    import hashlib
    import os
    import subprocess
    import sys

    digests = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "occlusion", "--coco-root", str(sample_coco),
                        "--out", str(out), "-q", "--workers", "2"], check=True, env=env)
        files = sorted(p for p in (out / "occlusion").rglob("*") if p.suffix in (".tar", ".parquet"))
        digests.append({p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert digests[0] and digests[0] == digests[1]


def test_questions_say_several_when_several_objects_are_hidden(tmp_path, sample_coco):
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(sample_coco), quiet=True)
    rows = b.sql("SELECT objects, question, entity FROM samples").fetchall()
    many = [r for r in rows if r[0] > 1]
    assert many and len(many) < len(rows)
    for objects, question, entity in rows:
        assert ("several" in question.lower() or " are most likely" in question) == (objects > 1), question


def test_grounding_dino_hides_one_detection_for_a_singular_phrase_and_all_for_a_plural(tmp_path, sample_coco, tiny_models):
    """A random detector finds many boxes per label: "a bench" hides the best one (one object, singular
    question); "two couches" hides every detection, and its box is theirs together. Places ("a kitchen")
    are not grounded, as with annotations."""
    from vlmforge.curation.grounding import is_not_object

    b = vlmforge.build("occlusion", "coco", out=tmp_path, source_options=_src(sample_coco), quiet=True,
                       grounder="grounding-dino", dino_model=str(tiny_models["dino"]), box_threshold=0.0,
                       text_threshold=0.0, segmenter="box", causality="none", min_area=0.0, max_area=1.0, fill="solid")
    singular = plural = 0
    for s in b.samples():
        doc = s["json"]
        assert not is_not_object(doc["label"]), doc
        mask = np.asarray(Image.open(io.BytesIO(s["mask.png"]))) > 0
        x, y, w, h = doc["box"]
        inside = np.zeros_like(mask)  # the recorded box (rounded to 0.01 px), give or take a pixel
        inside[max(int(y) - 1, 0) : int(y + h) + 2, max(int(x) - 1, 0) : int(x + w) + 2] = True
        assert mask[~inside].sum() == 0  # nothing hidden outside the recorded box
        if re.match(r"(a|an) ", doc["entity"], re.IGNORECASE):
            singular += 1
            assert doc["objects"] == 1 and "several" not in doc["question"].lower(), doc
            assert mask[int(np.ceil(y)) : int(y + h), int(np.ceil(x)) : int(x + w)].all()  # that one detection's box
        elif re.match(r"(two|three|several) ", doc["entity"], re.IGNORECASE):
            plural += doc["objects"] > 1
    assert singular and plural
    places = b.sql("SELECT count(*) FROM rejects WHERE reason = 'not_grounded' AND detail LIKE '%kitchen%'").fetchall()
    assert places[0][0] > 0


@pytest.mark.parametrize("options, message", [
    ({"grounder": "grounding-dino", "dino_model": "sam", "segmenter": "box"},
     "{sam} is a 'sam' checkpoint, not a Grounding DINO (model types: grounding-dino, mm-grounding-dino)"),
    ({"grounder": "grounding-dino", "dino_model": "dino", "segmenter": "sam", "sam_model": "mlm"},
     "{mlm} is a 'bert' checkpoint, not a SAM (model types: sam)"),
    ({"causality": "mlm", "mlm_model": "sam"}, "{sam} is a 'sam' checkpoint, not a masked LM (model types: albert,"),
])
def test_a_checkpoint_of_another_kind_is_one_error_line_before_the_captions_are_parsed(
        tmp_path, sample_coco, tiny_models, options, message, monkeypatch):
    """transformers said ValueError (a traceback) for a config its Auto class cannot take, after every
    caption was parsed (minutes on COCO train): the config is read first now."""
    from vlmforge.builders import occlusion

    monkeypatch.setattr(occlusion, "extract_entities", lambda *a, **k: pytest.fail("captions parsed first"))
    options = {k: str(tiny_models[v]) if k.endswith("_model") else v for k, v in options.items()}
    message = message.format(**{k: str(v) for k, v in tiny_models.items()})
    with pytest.raises(UserError, match=re.escape(message)):
        vlmforge.build("occlusion", "coco", out=tmp_path, source_options=_src(sample_coco), quiet=True, **options)


def test_a_model_that_fails_to_load_in_a_worker_is_one_error_line(tmp_path, sample_coco, tiny_models):
    """A masked LM folder without its tokenizer: transformers says ValueError, in each worker's setup,
    which broke the process pool (a BrokenProcessPool traceback)."""
    import shutil

    broken = tmp_path / "mlm"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models["mlm"] / name, broken / name)
    with pytest.raises(UserError, match=re.escape(f"cannot load masked LM '{broken}'")):
        vlmforge.build("occlusion", "coco", out=tmp_path / "out", source_options=_src(sample_coco), quiet=True,
                       causality="mlm", mlm_model=str(broken), workers=2)


@pytest.mark.parametrize("device, message", [("foo", "unknown --device 'foo'"), ("cuda", "no CUDA GPU is available")])
def test_a_device_that_is_not_here_is_one_error_line(tmp_path, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "occlusion", "--device", device, "--out",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_export_path_that_is_a_file_is_refused_before_the_build(tmp_path):
    """It was found only once the build had finished (hours on COCO train)."""
    target = tmp_path / "llava.json"
    target.write_text("[]")
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "occlusion", "--export-llava", str(target),
                        "--out", str(tmp_path / "builds")], capture_output=True, text=True)
    assert r.returncode == 2 and f"--export-llava {target} is a file" in r.stderr, r.stderr
    assert not (tmp_path / "builds").exists()


def _coco_of(root, captions, boxes):
    """One 320x240 image with box-shaped instances, (category, [x, y, w, h]) each, and its captions."""
    from vlmforge.sources.sample_coco import CATEGORIES

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.new("RGB", (320, 240), (90, 120, 150)).save(root / "val2017" / "000000000001.jpg", quality=90)
    image = {"id": 1, "file_name": "000000000001.jpg", "width": 320, "height": 240}
    anns = [{"id": k, "image_id": 1, "category_id": CATEGORIES[cat][0], "bbox": box, "area": box[2] * box[3],
             "iscrowd": 0, "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                                             box[1] + box[3], box[0], box[1] + box[3]]]}
            for k, (cat, box) in enumerate(boxes, 1)]
    cats = sorted({(CATEGORIES[cat][0], cat) for cat, _ in boxes})
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": [image], "annotations": anns, "categories": [{"id": i, "name": n} for i, n in cats]}))
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(
        {"images": [image], "annotations": [{"id": k, "image_id": 1, "caption": c} for k, c in enumerate(captions, 1)]}))
    return root


def test_a_man_and_a_woman_hide_two_people_and_a_word_names_one_person_in_every_caption(tmp_path):
    """Both took the largest person, and the woman was rejected as a duplicate of the man although a
    second person was free. A later caption's "a man" is still the first caption's man."""
    root = _coco_of(tmp_path / "coco", ["A man and a woman sitting on a bench.", "A man sitting on a bench.",
                                        "A woman and a man are sitting on a bench.", "A man, a woman and a boy on a bench."],
                    [("person", [20, 40, 60, 150]), ("person", [120, 60, 50, 120]), ("bench", [10, 150, 250, 60])])
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "out", source_options=_src(root), quiet=True, causality="none")
    hidden = b.sql("SELECT caption_id, label, box FROM samples WHERE category = 'person' ORDER BY key").fetchall()
    assert hidden == [(1, "man", [20.0, 40.0, 60.0, 150.0]), (1, "woman", [120.0, 60.0, 50.0, 120.0])]
    rejects = dict(b.sql("SELECT source_id, reason || ': ' || detail FROM rejects").fetchall())
    assert rejects["1:2:0"].startswith("duplicate_object: man")
    assert rejects["1:3:0"].startswith("duplicate_object: woman") and rejects["1:3:1"].startswith("duplicate_object: man")
    assert rejects["1:4:2"] == "not_grounded: boy: the caption's other entities hold every person instance (2)"


def test_grounding_dino_hides_one_person_once_for_a_man_and_a_woman(tmp_path, tiny_models, monkeypatch):
    """Two queries of the detector found nearly the same box, one labelled "man", one "woman": both
    became samples, one person hidden twice with two answers. The woman now takes the other person."""
    from vlmforge.curation.grounding import Grounding, GroundingDinoGrounder

    p1, p1b, p2 = [20.0, 40.0, 60.0, 150.0], [22.0, 41.0, 59.0, 148.0], [120.0, 60.0, 50.0, 120.0]
    dets = {"man": Grounding(p1, "person", 0.9, "grounding-dino", boxes=[p1, p2]),
            "woman": Grounding(p1b, "person", 0.8, "grounding-dino", boxes=[p1b, p2])}
    monkeypatch.setattr(GroundingDinoGrounder, "setup", lambda self: None)
    monkeypatch.setattr(GroundingDinoGrounder, "__call__", lambda self, images, labels: [
        {k: copy.deepcopy(v) for k, v in dets.items() if k in ls} for ls in labels])
    root = _coco_of(tmp_path / "coco", ["A man and a woman sitting on a bench."],
                    [("person", p1), ("person", p2), ("bench", [10, 150, 250, 60])])
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "out", source_options=_src(root), quiet=True,
                       causality="none", grounder="grounding-dino", dino_model=str(tiny_models["dino"]), segmenter="box")
    assert b.sql("SELECT label, box FROM samples ORDER BY key").fetchall() == [("man", p1), ("woman", p2)]


def test_grounding_dino_hides_an_object_once_though_later_captions_call_it_otherwise(tmp_path, tiny_models, monkeypatch):
    """Each word is its own detector query: "a man" and, in the next caption, "a person" found nearly the
    same box, and the one man was hidden twice, once per caption, with two answers. A later caption's
    detection overlapping (IoU >= 0.5) an object already hidden, of its category, is that object."""
    from vlmforge.curation.grounding import Grounding, GroundingDinoGrounder

    p1, p1b, p1c, p2 = [20.0, 40.0, 60.0, 150.0], [22.0, 41.0, 59.0, 148.0], [21.0, 39.0, 61.0, 149.0], [120.0, 60.0, 50.0, 120.0]
    bench = [10.0, 150.0, 250.0, 60.0]
    dets = {"man": Grounding(p1, "person", 0.9, "grounding-dino", boxes=[p1]),
            "person": Grounding(p1b, "person", 0.8, "grounding-dino", boxes=[p1b, p2]),
            "people": Grounding(p1c, "person", 0.7, "grounding-dino", boxes=[p1c, p2]),
            "bench": Grounding(bench, "bench", 0.9, "grounding-dino", boxes=[bench])}
    monkeypatch.setattr(GroundingDinoGrounder, "setup", lambda self: None)
    monkeypatch.setattr(GroundingDinoGrounder, "__call__", lambda self, images, labels: [
        {k: copy.deepcopy(v) for k, v in dets.items() if k in ls} for ls in labels])
    root = _coco_of(tmp_path / "coco", ["A man sitting on a bench.", "A person sitting on a bench.",
                                        "Two people near a bench."],
                    [("person", p1), ("person", p2), ("bench", bench)])
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "out", source_options=_src(root), quiet=True,
                       causality="none", grounder="grounding-dino", dino_model=str(tiny_models["dino"]), segmenter="box")
    assert b.sql("SELECT caption_id, label, objects FROM samples ORDER BY key").fetchall() == [
        (1, "man", 1), (1, "bench", 1), (3, "person", 2)]  # two people are another object than one man
    rejects = dict(b.sql("SELECT source_id, reason || ': ' || detail FROM rejects").fetchall())
    assert rejects["1:2:0"].startswith("duplicate_object: person") and rejects["1:2:1"].startswith("duplicate_object: bench")


def test_model_stages_on_the_cpu_ask_no_gpu_of_the_ray_cluster(sample_coco):
    """--device cpu with a model stage still asked Ray for a GPU per worker: on a cluster without one
    the build was refused ('the model stage asks for 1 GPU per worker but the Ray cluster has no GPU')."""
    from vlmforge.builders.occlusion import OcclusionBuilder, OcclusionConfig
    from vlmforge.executors.ray import declared_resources, plan_stage

    src = OcclusionBuilder.open_source("coco", **_src(sample_coco))
    b = OcclusionBuilder(OcclusionConfig(causality="mlm"), src)
    assert declared_resources(b) == {"cpu": 1.0, "gpu": 1.0}
    b.device = "cpu"
    assert declared_resources(b) == {"cpu": 1.0}
    assert plan_stage(declared_resources(b), True, {"CPU": 4.0}).num_gpus == 0


def test_a_not_grounded_reject_says_why(tmp_path, tiny_models, monkeypatch):
    """not_grounded rejects named the phrase and caption only: a place never asked for, an object the
    detector did not find over its thresholds and one the annotations lack all read alike."""
    from vlmforge.curation.grounding import Grounding, GroundingDinoGrounder

    dog = [20.0, 40.0, 60.0, 50.0]
    root = _coco_of(tmp_path / "coco", ["A dog and a cat in a kitchen."], [("dog", dog)])
    plain = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=_src(root), quiet=True, causality="none")
    monkeypatch.setattr(GroundingDinoGrounder, "setup", lambda self: None)
    monkeypatch.setattr(GroundingDinoGrounder, "__call__", lambda self, images, labels: [
        {"dog": Grounding(dog, "dog", 0.9, "grounding-dino", boxes=[dog])} for _ in labels])
    dino = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options=_src(root), quiet=True,
                          causality="none", grounder="grounding-dino", dino_model=str(tiny_models["dino"]), segmenter="box")
    q = "SELECT source_id, detail FROM rejects WHERE reason = 'not_grounded' ORDER BY 1"
    place = "'a kitchen' in 'A dog and a cat in a kitchen.': a place, a substance or a thing with no COCO category"
    assert [d for _, d in plain.sql(q).fetchall()] == [
        "'a cat' in 'A dog and a cat in a kitchen.': none of the image's annotated instances is what 'cat' names",
        place + ", never grounded"]
    assert [d for _, d in dino.sql(q).fetchall()] == [
        "'a cat' in 'A dog and a cat in a kitchen.': Grounding DINO found no box for 'cat' over --box-threshold 0.35 "
        "and --text-threshold 0.25", place + ", never grounded"]


def test_a_label_past_the_masked_lms_tokens_says_so(tmp_path, tiny_models):
    """A label the masked LM could not score (past its first 128 tokens) was a low_causality reject
    reading 'bench: inf'."""
    caption = "A dog " + "and a very big green field " * 25 + "near a bench."
    root = _coco_of(tmp_path / "coco", [caption], [("dog", [20, 40, 60, 50]), ("bench", [100, 150, 150, 60])])
    b = vlmforge.build("occlusion", "coco", out=tmp_path / "out", source_options=_src(root), quiet=True,
                       causality="mlm", mlm_model=str(tiny_models["mlm"]), min_ppl=0.0, max_ppl=1e9)
    assert b.sql("SELECT label FROM samples").fetchall() == [("dog",)]
    assert b.sql("SELECT detail FROM rejects WHERE reason = 'low_causality' AND detail LIKE 'bench%'").fetchall() == [
        ("bench: not scored: it lies past the masked LM's first 128 tokens",)]
