"""The default sentence embedder runs MiniLM with transformers alone; its vectors must be the very
bits sentence-transformers gives, whatever the batch size and the texts' lengths."""

import json
import random
import shutil

import numpy as np
import pytest

from vlmforge.curation.embedding import MeanPooledEncoder, SentenceEmbedder, default_model_path


def _texts(n=150, seed=0):
    rng = random.Random(seed)
    words = "a red double-decker bus dog two people on the street hot dog teddy bear cell phone umbrella".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(n)]
    return texts + ["", "x" * 600, "Ünïcode café au lait", "a  b", "bus"]  # empty, truncated at 256 tokens


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_path(), device="cpu")


@pytest.mark.parametrize("batch_size", [1, 7, 64, 500])
def test_default_embedder_gives_sentence_transformers_bits(reference, batch_size):
    texts = _texts()
    emb = SentenceEmbedder(batch_size=batch_size)
    got = emb.encode(texts)
    assert isinstance(emb._model, MeanPooledEncoder)  # sentence-transformers is not what ran
    want = reference.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384) and emb.dim == 384
    assert np.array_equal(got, want)


def test_other_model_shapes_go_to_sentence_transformers(tmp_path):
    src = default_model_path()
    assert MeanPooledEncoder.fits(src)
    variants = {
        "cls": lambda d: _edit(d / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False, pooling_mode_cls_token=True),
        "lower": lambda d: _edit(d / "sentence_bert_config.json", do_lower_case=True),
        "prompts": lambda d: _edit(d / "config_sentence_transformers.json", prompts={"query": "query: "}),
        "no_normalize": lambda d: (d / "modules.json").write_text(json.dumps(json.loads((d / "modules.json").read_text())[:2])),
        "no_modules": lambda d: (d / "modules.json").unlink(),
    }
    for name, edit in variants.items():
        folder = tmp_path / name
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        edit(folder)
        assert not MeanPooledEncoder.fits(str(folder)), name
    assert not MeanPooledEncoder.fits("sentence-transformers/all-MiniLM-L6-v2")  # a Hub id, not a folder


def _edit(path, **changes):
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))
