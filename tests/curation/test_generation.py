"""Generation backends: the response cache, the transformers backend on tiny random models (causal
LM and LLaVA), the vllm backend's absence, and the template backend."""

import importlib.util
import io
import json
import re

import pytest
from PIL import Image

from vlmforge.curation.generation import (BACKENDS, CachedGenerator, GenerationRequest, make_generator,
                                          request_key)
from vlmforge.errors import UserError


def _jpeg(color=(200, 20, 20), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from vlmforge.training.tiny import make_tiny_causal_lm

    return str(make_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "lm"))


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from vlmforge.training.tiny import make_tiny_llava

    return str(make_tiny_llava(tmp_path_factory.mktemp("llava") / "llava"))


def test_request_key_covers_every_field():
    base = GenerationRequest("Describe.", image=_jpeg(), system="sys", temperature=0.7, top_p=0.9, n=2, seed=1)
    k = request_key("transformers", "m", base)
    assert k == request_key("transformers", "m", GenerationRequest("Describe.", image=_jpeg(), system="sys",
                                                                   temperature=0.7, top_p=0.9, n=2, seed=1))
    variants = [("openai", "m", base), ("transformers", "m2", base)]
    for field, value in [("prompt", "Describe!"), ("image", _jpeg((0, 0, 255))), ("image", None), ("system", None),
                         ("temperature", 0.8), ("top_p", 1.0), ("n", 3), ("seed", 2), ("max_new_tokens", 9),
                         ("stop", ["\n"])]:
        variants.append(("transformers", "m", GenerationRequest(**{**base.__dict__, field: value})))
    variants.append(("openai", "m", GenerationRequest(**{**base.__dict__, "extra": {"api_params": {"top_k": 5}}})))
    keys = {request_key(b, m, r) for b, m, r in variants}
    assert len(keys) == len(variants) and k not in keys


def test_template_hints_are_not_part_of_a_cached_request():
    """cvc-trials hints the template backend with every label of the parent build: another parent (one
    more label) made a model answer each trial again, though the model never sees the hint."""
    a = GenerationRequest("Reason.", image=_jpeg(), n=16, extra={"template": {"candidates": ["cat", "dog"]}})
    b = GenerationRequest("Reason.", image=_jpeg(), n=16, extra={"template": {"candidates": ["cat", "dog", "cow"]}})
    assert request_key("transformers", "m", a) == request_key("transformers", "m", b)


def test_cache_second_run_makes_no_backend_call(tmp_path, tiny_lm):
    reqs = [GenerationRequest("What is in the image?", max_new_tokens=6, temperature=1.0, n=3, seed=5),
            GenerationRequest("Describe the image.", max_new_tokens=6),
            GenerationRequest("What is in the image?", max_new_tokens=6, temperature=1.0, n=3, seed=5)]  # duplicate
    first = make_generator("transformers", tiny_lm, cache_dir=tmp_path / "cache")
    assert isinstance(first, CachedGenerator)
    calls = []
    real = type(first.inner)

    class Spy(real):  # the real backend, counting the requests that reach it
        def __call__(self, requests):
            calls.append(len(requests))
            return real.__call__(self, requests)

    first.inner.__class__ = Spy
    out1 = first(reqs)
    assert calls == [2]  # the duplicate was asked once
    assert [len(t) for t in out1] == [3, 1, 3] and out1[0] == out1[2]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2

    second = make_generator("transformers", tiny_lm, cache_dir=tmp_path / "cache")
    second.inner.__class__ = Spy
    out2 = second(reqs)
    assert out2 == out1 and calls == [2]  # no backend call at all
    assert second.inner._model is None  # ... and the model was never even loaded
    assert (second.hits, second.misses) == (2, 0)
    changed = second([GenerationRequest("What is in the image?", max_new_tokens=6, temperature=1.0, n=3, seed=6)])
    assert calls == [2, 1] and len(changed[0]) == 3


def test_cache_asks_again_when_the_model_folder_gets_new_weights(tmp_path):
    """A model retrained into the same folder (the next round's `--model runs/round1/final`) is asked
    again: its answers are not the old weights' cached ones."""
    from vlmforge.training.tiny import make_tiny_causal_lm

    folder = make_tiny_causal_lm(tmp_path / "model", seed=0)
    reqs = [GenerationRequest("What is in the image?", max_new_tokens=8, temperature=1.0, n=2, seed=5)]
    before = make_generator("transformers", str(folder), cache_dir=tmp_path / "cache")(reqs)
    make_tiny_causal_lm(folder, seed=1)  # new weights, same path
    gen = make_generator("transformers", str(folder), cache_dir=tmp_path / "cache")
    after = gen(reqs)
    assert (gen.hits, gen.misses) == (0, 1)
    assert after != before and after == make_generator("transformers", str(folder), cache_dir=False)(reqs)
    again = make_generator("transformers", str(folder), cache_dir=tmp_path / "cache")
    assert again(reqs) == after and (again.hits, again.misses) == (1, 0)


def test_transformers_causal_lm_batches_and_seeds(tiny_lm):
    gen = make_generator("transformers", tiny_lm, cache_dir=False, batch_size=2)
    reqs = [GenerationRequest(f"Describe the image {i}.", system="Be brief." if i % 2 else None, max_new_tokens=5,
                              temperature=1.0, top_p=0.9, n=2, seed=i) for i in range(3)]
    reqs.append(GenerationRequest("Answer with the option's letter.", max_new_tokens=4))
    out = gen(reqs)
    assert [len(t) for t in out] == [2, 2, 2, 1] and all(isinstance(s, str) for t in out for s in t)
    again = make_generator("transformers", tiny_lm, cache_dir=False, batch_size=2)(reqs)
    assert again == out  # seeded sampling: same requests, same texts
    with pytest.raises(UserError, match="text-only"):
        gen([GenerationRequest("<image>\nWhat is this?", image=_jpeg())])


def test_transformers_image_text_to_text(tiny_llava):
    gen = make_generator("transformers", tiny_llava, cache_dir=False)
    reqs = [GenerationRequest("<image>\nWhat is in the image?", image=_jpeg(), max_new_tokens=4, n=2, temperature=1.0),
            GenerationRequest("Describe the bird.", image=_jpeg((10, 200, 10), (64, 20)), system="You are an expert.",
                              max_new_tokens=3),
            GenerationRequest("A text-only question.", max_new_tokens=3)]
    out = gen(reqs)
    assert [len(t) for t in out] == [2, 1, 1]
    assert gen.is_vision


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_absent_is_a_user_error():
    gen = make_generator("vllm", "some/model", cache_dir=False)
    with pytest.raises(UserError, match="optional vllm"):
        gen([GenerationRequest("hi")])
    from vlmforge.evaluation.runners import GeneratorRunner

    with pytest.raises(UserError, match="optional vllm.*eval: --api-base http://HOST:PORT/v1"):  # eval has no -G
        GeneratorRunner("vllm", "some/model").setup()


def test_unknown_backend_and_missing_model():
    with pytest.raises(UserError, match="unknown generator backend"):
        make_generator("nope")
    with pytest.raises(UserError, match="--model"):
        make_generator("transformers", None)
    assert set(BACKENDS) >= {"transformers", "vllm", "openai", "template"}


def test_template_backend_is_deterministic_and_uses_the_image():
    from vlmforge.curation.generation.template import image_facts

    gen = make_generator("template")
    assert not isinstance(gen, CachedGenerator)  # not worth caching
    assert image_facts(_jpeg((200, 20, 20), (80, 30)))[0].startswith("mostly red")
    assert "wide" in image_facts(_jpeg((200, 20, 20), (80, 30)))[2]
    reqs = [GenerationRequest("d", image=_jpeg(), n=3, seed=1,
                              extra={"template": {"task": "describe", "subject": "bird", "facts": ["black wing color"]}}),
            GenerationRequest("a", extra={"template": {"task": "answer", "label": "Sooty Albatross", "qtype": "explain",
                                                       "concepts": ["dagger bill shape", "brown upperparts color"]}}),
            GenerationRequest("r", n=4, extra={"template": {"task": "reason", "candidates": ["car", "bus"],
                                                           "context": "vehicle"}}),
            GenerationRequest("c", extra={"template": {"task": "concepts", "label": "Black footed Albatross",
                                                       "subject": "bird"}})]
    out = gen(reqs)
    assert out == gen(list(reversed(reqs)))[::-1]  # no dependence on batch order
    assert all(t.startswith("The image shows a bird with") and "black wing color" in t for t in out[0])
    assert "Sooty Albatross" in out[1][0] and "dagger bill shape" in out[1][0]
    assert all(t.endswith(("Final answer: car.", "Final answer: bus.")) for t in out[2])
    assert out[3][0].startswith("- black colouring on the bird\n")
    with pytest.raises(UserError, match="template"):
        gen([GenerationRequest("free prompt")])
    json.dumps(out)


def test_template_texts_take_the_right_article():
    from vlmforge.curation.generation import GenerationRequest
    from vlmforge.curation.generation.template import TemplateGenerator

    gen = TemplateGenerator()
    for qtype in ("simple", "explain", "cot"):
        hint = {"task": "answer", "label": "Albatross", "subject": "bird", "concepts": ["a hooked bill", "long wings"],
                "qtype": qtype}
        texts = gen([GenerationRequest(prompt="q", n=4, extra={"template": hint})])[0]
        assert all("an Albatross" in t and "a Albatross" not in t for t in texts), texts
    described = gen([GenerationRequest(prompt="q", extra={"template": {"task": "describe", "subject": "owl"}})])[0][0]
    assert described.startswith("The image shows an owl")


def test_image_facts_take_the_right_article():
    import io

    from PIL import Image

    from vlmforge.curation.generation.template import image_facts

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (128, 128, 128)).save(buf, "PNG")
    assert image_facts(buf.getvalue())[1:] == ["an evenly lit scene", "a nearly square frame"]


def test_an_encoder_checkpoint_is_refused_as_a_generation_model(tmp_path):
    """Before: BERT loaded as a causal LM (transformers allows it) and generating raised an IndexError
    from torch's embedding."""
    from vlmforge.training.tiny import make_tiny_mlm

    gen = make_generator("transformers", str(make_tiny_mlm(tmp_path / "mlm")))
    with pytest.raises(UserError, match="is a 'bert' checkpoint, an encoder \\(masked LM\\) that does not generate text"):
        gen([GenerationRequest("Hello")])


def test_a_model_folder_missing_files_is_one_error_line(tmp_path, tiny_lm):
    """A checkpoint copied in part was transformers' traceback in the builders that generate (descriptions,
    QA, entities): the folder's missing part is named before anything loads."""
    import shutil

    for missing, says in (("weights", "has no weights"), ("tokenizer", "has no tokenizer")):
        folder = tmp_path / missing
        shutil.copytree(tiny_lm, folder)
        for f in folder.iterdir():
            if (missing == "weights") == f.name.startswith(("model", "pytorch_model")) and f.name != "config.json" \
                    and (missing == "weights" or f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))):
                f.unlink()
        with pytest.raises(UserError, match=f"the generation model folder {folder} {says}"):
            make_generator("transformers", str(folder), cache_dir=False).setup()


def test_bad_dtype_and_a_missing_gpu_are_one_error_line(tiny_lm):
    import torch

    with pytest.raises(UserError, match="unknown --dtype 'float64x'"):
        make_generator("transformers", tiny_lm, dtype="float64x")
    with pytest.raises(UserError, match="unknown --device 'cpux'"):
        make_generator("transformers", tiny_lm, cache_dir=False, device="cpux").setup()
    if not torch.cuda.is_available():  # torch raised an AssertionError traceback here
        with pytest.raises(UserError, match="no CUDA GPU"):
            make_generator("transformers", tiny_lm, cache_dir=False, device="cuda").setup()


def test_greedy_requests_for_several_texts(tiny_lm, tiny_llava):
    # --describe-temperature 0 with 2 descriptions per instruction was a ValueError traceback from transformers
    for model, image in ((tiny_lm, None), (tiny_llava, _jpeg())):
        gen = make_generator("transformers", model, cache_dir=False, batch_size=2)
        reqs = [GenerationRequest(f"<image>\nDescribe {i}.", image=image, max_new_tokens=5, temperature=0.0, n=3)
                for i in range(3)]
        out = gen(reqs)
        single = gen([GenerationRequest(r.prompt, image=image, max_new_tokens=5) for r in reqs])
        assert [len(t) for t in out] == [3, 3, 3]
        assert all(texts == [one[0]] * 3 for texts, one in zip(out, single))  # greedy: one text, n times


def test_vllm_greedy_requests_for_several_texts(monkeypatch):
    """vLLM is not installed here: a stand-in engine records the sampling parameters it is given."""
    import sys
    import types

    from vlmforge.curation.generation.vllm import VllmGenerator

    class Params:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            pass

        def chat(self, messages, sampling_params, use_tqdm):
            self.seen = sampling_params
            one = types.SimpleNamespace
            return [one(outputs=[one(text=f" text {i}.{j} ") for j in range(p.n)]) for i, p in enumerate(sampling_params)]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=Params))
    gen = VllmGenerator("some/model")
    out = gen([GenerationRequest("a", n=3), GenerationRequest("b", temperature=0.7, n=2, seed=4)])
    assert [p.n for p in gen._llm.seen] == [1, 2]  # vLLM refuses n > 1 without sampling in some versions
    assert out == [["text 0.0"] * 3, ["text 1.0", "text 1.1"]]


@pytest.mark.parametrize("kind, message", [
    ("lora", r"final is a LoRA adapter of `vlmforge train --mode lora`, not a full model vLLM loads: merge it "
             r"first \(`vlmforge model merge .*/run/final --out DIR`, then --model DIR\), or use the transformers"),
    ("projector", r"final is a projector-only export of `vlmforge train --mode projector`, .*vlmforge model merge"),
    ("peft", r"final is a PEFT adapter, not a model vLLM loads: merge it into its base model"),
    ("clip", r"final is a CLIP model, which does not generate text"),
    ("missing", r"no model at .*/run/final \(the generation model; not a folder"),  # vLLM took it for a Hub id
])
def test_vllm_refuses_a_run_that_is_not_a_full_model(tmp_path, kind, message):
    """vLLM was handed a LoRA or projector-only run folder as a model: it failed deep in its engine."""
    from typer.testing import CliRunner

    from vlmforge.cli import app
    from vlmforge.curation.generation.vllm import VllmGenerator
    from vlmforge.training.llava import EXPORT_INFO

    final = tmp_path / "run" / "final"
    (tmp_path / "run").mkdir()
    if kind != "missing":
        final.mkdir()
    if kind in ("lora", "peft"):
        (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "some/base"}))
    if kind not in ("peft", "missing"):
        (final / EXPORT_INFO).write_text(json.dumps({"kind": kind, "base": "some/base", "template": "chat"}))
    model = str(final if kind in ("peft", "missing") else tmp_path / "run")  # a run folder stands for its final/
    with pytest.raises(UserError, match=message):  # before vLLM is imported: it is not installed here
        VllmGenerator(model)
    (tmp_path / "q.json").write_text(json.dumps([{"id": "1", "text": "What is it?", "label": "cat"}]))
    res = CliRunner().invoke(app, ["eval", "--task", "open", "--data", str(tmp_path / "q.json"), "--backend", "vllm",
                                   "--model", model, "--out", str(tmp_path / "o"), "-q"])
    assert isinstance(res.exception, UserError) and re.search(message, str(res.exception))


def test_a_training_run_folder_stands_for_its_final_model(tmp_path, tiny_lm):
    # the README's `selfsynth-answers --model runs/round1` failed: 'Unrecognized model in runs/round1'
    import shutil

    from vlmforge.training.llava import EXPORT_INFO

    shutil.copytree(tiny_lm, tmp_path / "run" / "final")
    (tmp_path / "run" / "final" / EXPORT_INFO).write_text(json.dumps({"mode": "full"}))
    gen = make_generator("transformers", str(tmp_path / "run"), cache_dir=False)
    assert gen.model == str(tmp_path / "run" / "final")
    assert len(gen([GenerationRequest("Hello.", max_new_tokens=3)])[0]) == 1
    from vlmforge.curation.generation.vllm import VllmGenerator

    assert VllmGenerator(str(tmp_path / "run")).engine_args["model"] == str(tmp_path / "run" / "final")
    (tmp_path / "lora" / "final").mkdir(parents=True)
    (tmp_path / "lora" / "final" / "adapter_config.json").write_text("{}")
    (tmp_path / "lora" / "final" / EXPORT_INFO).write_text(json.dumps({"mode": "lora"}))
    # A LoRA run goes onto the base model its adapter names (tests/builders/test_selfsynth.py loads one).
    with pytest.raises(UserError, match="adapter_config.json names no base_model_name_or_path"):
        make_generator("transformers", str(tmp_path / "lora"), cache_dir=False).setup()


def test_a_cache_folder_that_cannot_be_written_fails_before_any_request(tmp_path, monkeypatch):
    from vlmforge.curation.generation import Generator

    asked = []

    class Counting(Generator):
        backend = "counting"

        def __call__(self, requests):
            asked.extend(requests)
            return [["an answer"] for _ in requests]

    (tmp_path / "a-file").write_text("")
    gen = CachedGenerator(Counting("m"), tmp_path / "a-file" / "generation")  # $VLMFORGE_CACHE set to a file
    with pytest.raises(UserError, match=r"the response cache .*a-file/generation cannot be used \(Not a directory\)"):
        gen([GenerationRequest("hi")])
    assert asked == []  # nothing was paid for and then lost
    gen = CachedGenerator(Counting("m"), tmp_path / "ok")
    assert gen([GenerationRequest("hi")]) == [["an answer"]] and len(list((tmp_path / "ok").rglob("*.json"))) == 1

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vlmforge.curation.generation.os.replace", disk_full)
    with pytest.raises(UserError, match=r"the response cache .*ok cannot be used \(No space left on device\)"):
        gen([GenerationRequest("another")])
    assert [p.name for p in (tmp_path / "ok").rglob("*") if p.is_file()] == [next((tmp_path / "ok").rglob("*.json")).name]
