"""`mix`: counts, fractions and weights per parent; every parent in the lineage; shared keys survive."""

import pytest

import vlmforge
from vlmforge.builders.mix import largest_remainder
from vlmforge.errors import UserError

from tests.derived_data import class_folder, tiny_jpeg


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    base = tmp_path_factory.mktemp("mix")
    a = class_folder(base / "a", {"cat": 6, "dog": 6})
    b = class_folder(base / "b", {"cow": 5, "hen": 5}, "train")
    class_folder(base / "b", {"cow": 2}, "val")
    pa = vlmforge.build("copy", "imagefolder", out=base / "pa", source_options={"root": str(a)})
    pb = vlmforge.build("copy", "imagefolder", out=base / "pb", source_options={"root": str(b)})
    return pa, pb


def test_counts_and_fractions_with_lineage(tmp_path, parents):
    pa, pb = parents
    m = vlmforge.build("mix", "builds", out=tmp_path, source_options={"paths": [str(pa.path), str(pb.path)]},
                       take=["5", "0.5"])
    per_parent = dict(m.sql("SELECT parent_build, count(*) FROM samples GROUP BY 1").fetchall())
    assert per_parent == {pa.build_id: 5, pb.build_id: 6}
    assert m.info["parents"] == [pa.build_id, pb.build_id]
    ids = {r[0] for r in m.sql("SELECT build_id FROM builds WHERE NOT is_this_build").fetchall()}
    assert ids == {pa.build_id, pb.build_id}
    # every record keeps its key and its split in its parent
    split_of = {(p.build_id, k): s for p in parents for k, s in p.sql("SELECT key, split FROM samples").fetchall()}
    rows = m.sql("SELECT parent_build, parent_key, key, split FROM samples").fetchall()
    assert all(split_of[(b, pk)] == s and k == pk for b, pk, k, s in rows)
    # The parents' samples come through unchanged.
    from_a = {x["__key__"]: x["jpg"] for x in pa.samples()}
    for x in m.samples():
        if x["__key__"] in from_a:
            assert x["jpg"] == from_a[x["__key__"]]


def test_weights_and_shared_keys(tmp_path, parents):
    pa, _ = parents
    half = vlmforge.build("split", "build", out=tmp_path / "h", source_options={"path": str(pa.path)}, fraction=0.5)
    m = vlmforge.build("mix", "builds", out=tmp_path / "m", source_options={"paths": [str(pa.path), str(half.path)]},
                       weights=[2, 1], size=15, into="train")
    assert len(m) == 15 and m.info["splits"]["train"]["samples"] == 15
    rows = m.sql("SELECT key, parent_key, parent_build FROM samples").fetchall()
    assert len({r[0] for r in rows}) == 15  # keys stay unique
    counts = {}
    for key, parent_key, parent_build in rows:
        counts[parent_build] = counts.get(parent_build, 0) + 1
        if key != parent_key:
            assert key == f"{parent_build[:8]}-{parent_key}"
    assert counts == {pa.build_id: 10, half.build_id: 5}
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]
    with pytest.raises(UserError, match="has 6"):
        vlmforge.build("mix", "builds", out=tmp_path / "x", source_options={"paths": [str(pa.path), str(half.path)]},
                       weights=[1, 1], size=20)


def test_parent_split_is_part_of_the_build_identity(tmp_path, parents):
    pa, pb = parents
    opts = lambda **kw: {"paths": [str(pa.path), str(pb.path)], **kw}  # noqa: E731
    whole = vlmforge.build("mix", "builds", out=tmp_path / "w", source_options=opts(), take=["all", "all"])
    train = vlmforge.build("mix", "builds", out=tmp_path / "t", source_options=opts(splits=["train"]), take=["all", "all"])
    assert len(train) == 22 and train.build_id != whole.build_id
    with pytest.raises(UserError, match="holds another build"):
        vlmforge.build("mix", "builds", out=tmp_path / "t", source_options=opts(), take=["all", "all"])
    with pytest.raises(UserError, match="no split 'test'"):
        vlmforge.build("mix", "builds", out=tmp_path / "x", source_options=opts(splits=["test"]), take=["all", "all"])


def test_bad_into_weights_and_size(tmp_path, parents):
    pa, pb = parents
    opts = {"paths": [str(pa.path), str(pb.path)]}
    for cfg, message in (({"take": ["all", "all"], "into": "Bad/Name"}, "split name 'Bad/Name'"),
                         ({"weights": [1, float("nan")], "size": 10}, "finite"),
                         ({"weights": [1, float("inf")], "size": 10}, "finite"),
                         ({"weights": [1, 1], "size": 0}, "--size must be at least 1"),
                         ({"weights": [1, 1], "size": -5}, "--size must be at least 1")):
        with pytest.raises(UserError, match=message):
            vlmforge.build("mix", "builds", out=tmp_path, source_options=opts, **cfg)


def test_options_that_take_nothing_from_a_parent_are_refused(tmp_path, parents):
    """A parent that would give no record (--take 0, a fraction or weight that rounds to 0, an empty
    --parent-split) is an error, not a mix whose lineage names a parent it holds nothing of."""
    pa, pb = parents
    opts = {"paths": [str(pa.path), str(pb.path)]}
    for cfg, source, message in (
            ({"take": ["0", "all"]}, opts, r"--take takes all, a whole count of at least 1 .* got '0'"),
            ({"take": ["all", "-3"]}, opts, "got '-3'"),
            ({"take": ["all", "0.01"]}, opts, r"parent 2 \(.*\) would give 0 of its 12 records \(--take 0.01\)"),
            ({"weights": [1, 0], "size": 5}, opts, r"parent 2 .* would give 0 of its 12 records \(weight 0 of --size 5\)"),
            ({"weights": [1, 1], "size": 1}, opts, "parent 2 .* would give 0"),
            ({"take": ["all", "all"]}, {**opts, "splits": ["val"]}, r"parent 1 .* has no records in the --parent-split"),
            # A count for such a parent said "asks for 5 records, more than the parent has (0)"
            ({"take": ["5", "all"]}, {**opts, "splits": ["val"]},
             r"^parent 1 \(.*\) has no records in the --parent-split splits \(its splits: train\); leave it out or "
             r"name one of its splits$"),
            ({"take": ["all", "all"], "size": 5}, opts, "--size goes with --weights"),
            ({"take": ["all"]}, opts, r"^--take: 1 given for 2 parents; give one per --from, in order$"),
            ({"weights": [1, 2, 3], "size": 5}, opts, r"^--weights: 3 given for 2 parents; give one per --from, in order$")):
        with pytest.raises(UserError, match=message):
            vlmforge.build("mix", "builds", out=tmp_path, source_options=source, **cfg)
    assert not (tmp_path / "mix").exists()  # refused before any folder is made


def test_cli_take_zero_is_one_error_line(tmp_path, parents):
    import subprocess
    import sys

    pa, pb = parents
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "mix", "--from", str(pa.path), "--from",
                        str(pb.path), "--take", "0", "--take", "all", "--out", str(tmp_path), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --take takes all, a whole count of at least 1 (5000 or 5e3) or a fraction in (0, 1] (0.5); got '0'"]


def test_take_in_exponent_form_is_a_count(tmp_path, parents):
    """`--take 1e1` means ten records (as 10 and 10.0 do), not an error; 1.0 stays the whole parent and
    what is neither a whole count nor a fraction is one error line."""
    pa, pb = parents
    opts = {"paths": [str(pa.path), str(pb.path)]}
    counts = {}
    for take in ("1e1", "10.0", "10", "1.0", "5e-1"):
        m = vlmforge.build("mix", "builds", out=tmp_path / take, source_options=opts, take=[take, "all"])
        counts[take] = dict(m.sql("SELECT parent_build, count(*) FROM samples GROUP BY 1").fetchall())[pa.build_id]
    assert counts == {"1e1": 10, "10.0": 10, "10": 10, "1.0": 12, "5e-1": 6}
    for take, message in (("2.5", r"a whole count of at least 1 \(5000 or 5e3\) or a fraction in \(0, 1\] \(0.5\); got '2.5'$"),
                          ("50%", r"got '50%' \(for 50% write 0.5\)"),
                          ("2e1", r"--take 2e1 asks for 20 records, more than the parent has \(12\)")):
        with pytest.raises(UserError, match=message):
            vlmforge.build("mix", "builds", out=tmp_path / "x", source_options=opts, take=[take, "all"])


def test_a_parent_without_samples_is_named_not_a_column_type_clash(tmp_path, parents):
    """A build without samples has no manifest part to read column types from: a mix naming it said
    "column 'n_turns' is string in one parent and int32 in another" instead of what is wrong."""
    pa, pb = parents
    empty = vlmforge.build("subset", "build", out=tmp_path / "e", source_options={"path": str(pa.path), "where": "width < 0"})
    assert len(empty) == 0
    with pytest.raises(UserError, match=rf"^parent 2 \({empty.path}\) has no records; leave it out or take more$"):
        vlmforge.build("mix", "builds", out=tmp_path / "m", source_options={"paths": [str(pb.path), str(empty.path)]},
                       take=["all", "all"])


def zebras(tmp_path, n: int = 3):
    """A build of n images of its own (class_folder's images repeat across folders), split train."""
    (tmp_path / "z" / "zebra").mkdir(parents=True)
    for i in range(n):
        (tmp_path / "z" / "zebra" / f"{i}.jpg").write_bytes(tiny_jpeg(50_000 + i))
    return vlmforge.build("copy", "imagefolder", out=tmp_path / "pz", source_options={"root": str(tmp_path / "z")})


def test_parents_that_share_samples_are_noted(tmp_path, parents):
    """A mix of a build and one derived from it (its train split, say) held their shared samples twice,
    and the derived build's left-out records with them, without a word."""
    from vlmforge.builders.mix import MixBuilder, MixConfig

    pa, pb = parents
    half = vlmforge.build("split", "build", out=tmp_path / "h", source_options={"path": str(pa.path)}, fraction=0.5)
    b = MixBuilder(MixConfig(take=["all", "all"]), MixBuilder.open_source(None, paths=[str(half.path), str(pa.path)]))
    assert b.src.count("train") == len(half) + len(pa)  # fits the plan
    assert b.src.notes == [f"{len(half)} records of parent 2 ({pa.path}) have the image (text-only: the json) of a "
                           "record of an earlier parent: the same samples twice (is one parent derived from the other?)"]
    pz = zebras(tmp_path)
    other = MixBuilder(MixConfig(take=["all", "all"]), MixBuilder.open_source(None, paths=[str(pa.path), str(pz.path)]))
    assert other.src.count("train") == len(pa) + 3 and other.src.notes == []


def test_into_a_training_split_notes_a_parent_test_split_it_takes(tmp_path, parents):
    """--into train without --parent-split put a split build's test records into train without a word."""
    from vlmforge.builders.mix import MixBuilder, MixConfig

    pa, _ = parents
    pz = zebras(tmp_path)
    parts = vlmforge.build("split", "build", out=tmp_path / "h", source_options={"path": str(pa.path)},
                           splits="train=0.5,test=0.5")
    n_test = parts.info["splits"]["test"]["samples"]

    def notes(into, splits=None):
        b = MixBuilder(MixConfig(take=["all", "all"], into=into),
                       MixBuilder.open_source(None, paths=[str(parts.path), str(pz.path)], splits=splits))
        b.src.count(into)  # fits the plan
        return b.src.notes

    assert n_test and notes("train") == ["--into train puts records of parent 1's test split into train; "
                                         "--parent-split names the splits to read"]
    assert notes("train", splits=["train"]) == []
    assert notes("test") == []


def test_shared_keys_near_the_longest_key_are_renamed_within_it(tmp_path):
    from vlmforge.sample import MAX_KEY

    from tests.derived_data import long_ids_json

    a = vlmforge.build("copy", "llava-json", out=tmp_path / "a", source_options={"json": str(long_ids_json(tmp_path))})
    b = vlmforge.build("split", "build", out=tmp_path / "b", source_options={"path": str(a.path)}, fraction=1.0)
    m = vlmforge.build("mix", "builds", out=tmp_path / "m", source_options={"paths": [str(a.path), str(b.path)]},
                       take=["all", "all"])
    rows = m.sql("SELECT key, parent_key, parent_build FROM samples").fetchall()
    assert len(rows) == len({k for k, _, _ in rows}) == 2 * len(a)
    assert max(len(k) for k, _, _ in rows) == MAX_KEY  # the long parent keys, renamed, fit
    assert all(k.startswith(p[:8] + "-") for k, _, p in rows)


def test_text_only_samples_two_parents_share_are_noted(tmp_path):
    """Before: only records with an image were compared, so a LLaVA build mixed with its own split noted
    none of its text-only samples twice."""
    from vlmforge.builders.mix import MixBuilder, MixConfig

    from tests.derived_data import long_ids_json

    a = vlmforge.build("copy", "llava-json", out=tmp_path / "a", source_options={"json": str(long_ids_json(tmp_path))})
    b = vlmforge.build("split", "build", out=tmp_path / "b", source_options={"path": str(a.path)}, fraction=0.7)
    m = MixBuilder(MixConfig(take=["all", "all"]), MixBuilder.open_source(None, paths=[str(a.path), str(b.path)]))
    assert m.src.count("train") == 5 and len(b) == 2
    assert m.src.notes[0].startswith(f"2 records of parent 2 ({b.path}) have the image (text-only: the json)")
