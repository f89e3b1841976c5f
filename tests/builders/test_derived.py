"""What every derived build shares: the lineage in build.json names the whole chain of ancestors, and the
same parents give the same bytes in any process."""

from pathlib import Path

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


def _derived_builds(a: str, b: str, out: Path) -> dict[str, Path]:
    """A split, two subsets, an MCQA set and a mix of parents `a` and `b`, built into `out`."""
    split = vlmforge.build("split", "build", out=out / "split", source_options={"path": a}, fraction=0.5, stratify_by="label")
    made = {"split": split,
            "preserving": vlmforge.build("subset", "build", out=out / "p", source_options={"path": a},
                                         mode="class-preserving", fraction=0.5),
            "seen-unseen": vlmforge.build("subset", "build", out=out / "su", source_options={"path": a},
                                          mode="seen-unseen", unseen_fraction=0.34),
            "mcqa": vlmforge.build("mcqa", "build", out=out / "q", source_options={"path": a}, options=3),
            "mix": vlmforge.build("mix", "builds", out=out / "m", source_options={"paths": [str(split.path), b]},
                                  weights=[2, 1], size=12, into="train")}
    return {name: build.path for name, build in made.items()}


def test_derived_builds_are_the_same_in_a_fresh_process_under_another_string_hash_seed(tmp_path, roots):
    """Set and dict order of strings follows PYTHONHASHSEED, which differs from process to process: no
    class choice, split, draw or option order may follow it."""
    import os
    import subprocess
    import sys

    from tests.helpers import build_files

    a, b = (str(r.path) for r in roots)
    here = _derived_builds(a, b, tmp_path / "here")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    script = ("import sys; from pathlib import Path; from tests.builders.test_derived import _derived_builds; "
              "_derived_builds(sys.argv[1], sys.argv[2], Path(sys.argv[3])); print(hash('vlmforge'))")
    r = subprocess.run([sys.executable, "-c", script, a, b, str(tmp_path / "there")], capture_output=True, text=True,
                       cwd=Path(__file__).parents[2], env={**os.environ, "PYTHONHASHSEED": seed})
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) != hash("vlmforge")  # the premise: another string hash
    for name, path in here.items():
        there = tmp_path / "there" / path.relative_to(tmp_path / "here")
        assert build_files(there) == build_files(path), name
