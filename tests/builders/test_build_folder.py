"""What a build folder holds when a build failed, and two builds of one folder at once."""

import fcntl
import json

import pytest

import vlmforge
from vlmforge.builders.copy import CopyBuilder
from vlmforge.errors import UserError


def _opts(root) -> dict:
    return {"coco_root": str(root), "split": "val2017"}


def _fail_in_writer(monkeypatch, after: int) -> None:
    """The writer raises after `after` samples (as a full disk or a bug would)."""
    from vlmforge.manifests import writer

    add = writer.SplitWriter.add
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("no space left on device")
        return add(self, *args, **kwargs)

    monkeypatch.setattr(writer.SplitWriter, "add", failing)


def test_a_failed_build_with_no_finished_shard_is_replaced_by_another_config(tmp_path, sample_coco, monkeypatch):
    folder = tmp_path / "copy" / CopyBuilder.VERSION
    with monkeypatch.context() as m:
        _fail_in_writer(m, 0)
        with pytest.raises(OSError):
            vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco))
        assert not folder.exists()  # a new folder that got no shard is removed on the error
        # A folder that existed (empty) keeps its record of the unfinished build, as a killed run does.
        folder.mkdir(parents=True)
        with pytest.raises(OSError):
            vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco))
    assert (folder / "build.pending.json").exists() and not list((folder / "manifest").glob("*.stats.json"))
    # The corrected command (another config) needs no --overwrite: nothing was finished.
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco), seed=3)
    assert b.info["config"]["seed"] == 3 and not (folder / "build.pending.json").exists()


def test_a_failed_first_build_leaves_no_folder_behind(tmp_path, sample_coco, monkeypatch):
    out = tmp_path / "new" / "builds"
    (tmp_path / "kept").mkdir()
    with monkeypatch.context() as m:
        _fail_in_writer(m, 0)
        with pytest.raises(OSError):
            vlmforge.build("copy", "coco", out=out, source_options=_opts(sample_coco))
        assert not (tmp_path / "new").exists()  # nor OUT/copy/, nor OUT, nor its new parent
        with pytest.raises(OSError):  # folders that were there before stay
            vlmforge.build("copy", "coco", out=tmp_path / "kept", source_options=_opts(sample_coco))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not list((tmp_path / "kept").iterdir())
    b = vlmforge.build("copy", "coco", out=out, source_options=_opts(sample_coco))
    assert b.path == out / "copy" / CopyBuilder.VERSION and len(b) > 0


def test_a_failed_build_with_finished_shards_is_kept(tmp_path, sample_coco, monkeypatch):
    with monkeypatch.context() as m:
        _fail_in_writer(m, 7)
        with pytest.raises(OSError):
            vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco), max_samples_per_shard=2)
    folder = tmp_path / "copy" / CopyBuilder.VERSION
    finished = sorted(p.name for p in (folder / "manifest").glob("*.stats.json"))
    assert finished == [f"val-00000{i}.stats.json" for i in range(3)]  # 6 of the 7 samples written, 2 a shard
    with pytest.raises(UserError, match="holds an unfinished build"):
        vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco), seed=3)
    assert sorted(p.name for p in (folder / "manifest").glob("*.stats.json")) == finished
    # The same command resumes it.
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco), max_samples_per_shard=2)
    assert json.loads((folder / "build.json").read_text())["build_id"] == b.build_id


def test_a_second_build_into_a_folder_being_built_stops(tmp_path, sample_coco):
    folder = tmp_path / "copy" / CopyBuilder.VERSION
    folder.parent.mkdir(parents=True)
    # Another process's lock on the folder (flock: held per open file, so this open counts as one).
    with open(folder.parent / f".{CopyBuilder.VERSION}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another vlmforge process is building into"):
            vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco))
        assert not folder.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco))
    assert b.path == folder and (folder / "build.json").exists()
    assert [p.name for p in folder.parent.iterdir()] == [CopyBuilder.VERSION]  # no lock file left beside it
    # Released at the end: the build runs again (up to date) at once.
    assert vlmforge.build("copy", "coco", out=tmp_path, source_options=_opts(sample_coco)).build_id == b.build_id
