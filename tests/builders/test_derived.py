"""What every derived build shares: the lineage in build.json names the whole chain of ancestors."""

import pytest

import vlmforge

from tests.derived_data import class_folder


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("lineage")
    a = class_folder(base / "a", {"cat": 6, "dog": 6, "owl": 4}, "train")
    class_folder(base / "a", {"cat": 2, "dog": 2, "owl": 2}, "test")
    b = class_folder(base / "b", {"cow": 3, "hen": 3}, "train")
    return (vlmforge.build("copy", "imagefolder", out=base / "ra", source_options={"root": str(a)}),
            vlmforge.build("copy", "imagefolder", out=base / "rb", source_options={"root": str(b)}))


def _entry(build) -> tuple:
    info = build.info
    return info["builder"], info["version"], info["build_id"], info["source_fingerprint"], info["parents"]


def _chain(build) -> list[tuple]:
    return [(p["builder"], p["version"], p["build_id"], p["source_fingerprint"], p["parents"])
            for p in build.info["parent_builds"]]


def test_a_chain_of_derived_builds_records_every_ancestor(tmp_path, roots):
    root, other = roots
    sub = vlmforge.build("subset", "build", out=tmp_path / "s", source_options={"path": str(root.path)},
                         mode="class-preserving", fraction=0.5)
    part = vlmforge.build("split", "build", out=tmp_path / "p", source_options={"path": str(sub.path)},
                          splits="train=0.5,test=0.5")
    mix = vlmforge.build("mix", "builds", out=tmp_path / "m", source_options={"paths": [str(part.path), str(other.path)]},
                         take=["all", "all"])
    assert _chain(sub) == [_entry(root)]
    assert _chain(part) == [_entry(sub), _entry(root)]
    # the direct parents first, then their ancestors, nearest first
    assert mix.info["parents"] == [part.build_id, other.build_id]
    assert _chain(mix) == [_entry(part), _entry(other), _entry(sub), _entry(root)]
    assert all("shards" not in p and "parent_builds" not in p for p in mix.info["parent_builds"])
    assert mix.info["parent_builds"][2]["config"] == sub.info["config"]
    rows = mix.sql("SELECT build_id FROM builds WHERE NOT is_this_build ORDER BY build_id").fetchall()
    assert [r[0] for r in rows] == sorted([part.build_id, other.build_id, sub.build_id, root.build_id])
    # a test set and model-ready images of the chain's end name it whole too
    mcqa = vlmforge.build("mcqa", "build", out=tmp_path / "q", source_options={"path": str(part.path)}, options=3)
    assert _chain(mcqa) == [_entry(part), _entry(sub), _entry(root)]
    ready = vlmforge.build("model-ready", "build", out=tmp_path / "r", source_options={"path": str(mix.path)}, size=8)
    assert _chain(ready) == [_entry(mix)] + _chain(mix)
    copy = vlmforge.build("copy", "build", out=tmp_path / "c", source_options={"path": str(part.path)})  # Python API only
    assert _chain(copy) == [_entry(part), _entry(sub), _entry(root)]


def test_a_build_reached_twice_is_named_once(tmp_path, roots):
    root, _ = roots
    half = vlmforge.build("split", "build", out=tmp_path / "h", source_options={"path": str(root.path)}, fraction=0.5)
    mix = vlmforge.build("mix", "builds", out=tmp_path / "m", source_options={"paths": [str(half.path), str(root.path)]},
                         take=["all", "1"])
    assert _chain(mix) == [_entry(half), _entry(root)]
