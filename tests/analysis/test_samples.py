"""Reading test samples: build folders, shard globs, loose shards, SQL filters, md5(seed:key) order."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from vlmforge.analysis.samples import read_test_samples
from vlmforge.errors import UserError


def _order(seed, key):
    return hashlib.md5(f"{seed}:{key}".encode()).hexdigest()


def test_build_folder_where_and_order(label_build):
    everything = read_test_samples(label_build)
    keys = [s.key for s in everything.samples]
    assert len(keys) == 7 and keys == sorted(keys, key=lambda k: _order(0, k))
    assert everything.labels == ["cat", "horse"] and everything.build_id
    assert all(s.image[:4] == b"\x89PNG" and s.label == s.doc["label"] for s in everything.samples)
    horses = read_test_samples(label_build, where="label = 'horse'", n=2, seed=5)
    assert [s.label for s in horses.samples] == ["horse", "horse"]
    assert horses.labels == ["cat", "horse"]  # the classes of the data, not only of the chosen samples
    assert [s.key for s in horses.samples] == sorted(
        [s.key for s in everything.samples if s.label == "horse"], key=lambda k: _order(5, k))[:2]
    with pytest.raises(UserError, match="where"):
        read_test_samples(label_build, where="no_such_column = 1")


def test_shard_glob_and_loose_shards(label_build, tmp_path):
    in_build = read_test_samples(f"{label_build}/*.tar", where="label = 'cat'", n=3)
    # Before: a condition ending in an SQL comment commented out the shard condition after it (parse error)
    commented = read_test_samples(f"{label_build}/*.tar", where="label = 'cat' -- cats only", n=3)
    assert [s.key for s in commented.samples] == [s.key for s in in_build.samples]
    assert [s.label for s in in_build.samples] == ["cat"] * 3
    for shard in label_build.glob("*.tar"):
        shutil.copy(shard, tmp_path / shard.name)
    loose = read_test_samples(f"{tmp_path}/*.tar", n=3)
    assert [s.key for s in loose.samples] == [s.key for s in read_test_samples(label_build, n=3).samples]
    assert loose.labels == ["cat", "horse"] and loose.build_id is None
    assert len(read_test_samples(tmp_path).samples) == 7  # a folder of shards
    with pytest.raises(UserError, match="needs a manifest"):
        read_test_samples(f"{tmp_path}/*.tar", where="label = 'cat'")
    with pytest.raises(UserError, match="no shards match"):
        read_test_samples(f"{tmp_path}/nothing-*.tar")
    with pytest.raises(UserError, match="no sample matches"):
        read_test_samples(label_build, where="label = 'zebra'")


def test_a_file_that_is_not_a_shard_among_loose_shards_is_one_error(label_build, tmp_path):
    """Before: tarfile's ReadError traceback."""
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in sorted(label_build.glob("*.tar")):
        shutil.copy(p, loose / p.name)
    (loose / "notes.tar").write_text("not a tar")
    with pytest.raises(UserError, match="notes.tar is not a readable tar shard"):
        read_test_samples(f"{loose}/*.tar", n=2)


def test_a_build_without_samples_is_named_as_such(tmp_path, coco_build):
    """Before: 'no sample matches in ...', as if a filter had left the samples out."""
    import vlmforge

    none = vlmforge.build("subset", "build", out=tmp_path, source_options={"path": str(coco_build.path), "where": "width < 0"})
    with pytest.raises(UserError, match=f"^{none.path} has no samples and no rejects"):
        read_test_samples(none.path)
    with pytest.raises(UserError, match="no sample matches --where"):  # a filter that matches nothing still says so
        read_test_samples(coco_build.path, where="width < 0")


def test_chosen_samples_say_their_splits_and_training_images_are_named(tmp_path, capsys):
    """Before: a build folder gave every split, training images included, with nothing said; gradcam's
    accuracy then counted images the model was trained on."""
    import numpy as np

    import vlmforge
    from tests.analysis.conftest import png

    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
        for i in range(n):
            (tmp_path / "imgs" / split / "cat" / f"{i}.png").write_bytes(png(np.full((8, 8, 3), 40 * i + n, "uint8")))
    build = vlmforge.build("copy", "imagefolder", out=tmp_path / "b", source_options={"root": str(tmp_path / "imgs")}).path
    every = read_test_samples(build)
    assert every.split_counts() == {"test": 2, "train": 3}
    every.warn_if_training()
    assert "3 of the 5 chosen samples are from the train split" in capsys.readouterr().err
    test = read_test_samples(build, where="split = 'test'")
    assert test.split_counts() == {"test": 2}
    test.warn_if_training()
    assert "train" not in capsys.readouterr().err
