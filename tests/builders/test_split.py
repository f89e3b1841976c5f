"""`split`: exact fractions, order independence, partitions, strata, --where, the JSON-to-JSON path."""

import json
import random
import subprocess
import sys

import pytest

import vlmforge
from vlmforge.builders.split import SplitBuilder, SplitConfig
from vlmforge.curation.selection import fit_cuts, fraction_sizes, rank_value
from vlmforge.errors import UserError
from vlmforge.sources.build import BuildSource
from vlmforge.export import split_llava_json

from tests.derived_data import class_folder, llava_records, tiny_jpeg, write_json
from tests.helpers import build_files


def _kept(keys, seed, fraction, value=rank_value):
    cuts = fit_cuts(lambda: ((k, None) for k in keys), seed, lambda g, n: fraction_sizes([fraction], n), value=value)
    return {k for k in keys if cuts.part(k) == 0}


def test_fractions_exact_nested_and_order_free():
    keys = [f"k{random.Random(i).random():.10f}" for i in range(1001)]
    # round half up of f * 1001: 500.5 -> 501, 250.25 -> 250, 100.1 -> 100, 999.999 -> 1000
    assert [len(_kept(keys, 0, f)) for f in (0.5, 0.25, 0.1, 0.999)] == [501, 250, 100, 1000]
    half, quarter = _kept(keys, 3, 0.5), _kept(keys, 3, 0.25)
    assert quarter < half  # the smaller fraction lies inside the larger one
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert _kept(shuffled, 3, 0.5) == half
    assert _kept(keys, 4, 0.5) != half  # another seed, another half
    assert fraction_sizes([0.9, 0.1], 75) == [68, 7] and fraction_sizes([0.5], 5) == [3]


def test_ties_in_rank_values_are_broken_by_key():
    # Every key gets the same rank value: the order is the keys' own, so 40% of a..e is {a, b}.
    assert _kept(list("edcba"), 0, 0.4, value=lambda seed, key: 7) == {"a", "b"}
    # A coarse hash (7 values for 500 keys) ties across the cut; still exact, still order-free.
    coarse = lambda seed, key: rank_value(seed, key) % 7  # noqa: E731
    keys = [f"key{i}" for i in range(500)]
    kept = _kept(keys, 0, 0.3, value=coarse)
    assert len(kept) == 150 and _kept(keys[::-1], 0, 0.3, value=coarse) == kept


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    class_folder(root, {"cat": 7, "dog": 8, "bird": 9, "fish": 11}, "train")
    class_folder(root, {"cat": 3, "dog": 4, "bird": 5, "fish": 6}, "test")
    return vlmforge.build("copy", "imagefolder", out=tmp_path_factory.mktemp("parent"), source_options={"root": str(root)},
                          max_samples_per_shard=7)


def _keys(build, split=None):
    q = "SELECT key FROM samples" + (f" WHERE split = '{split}'" if split else "")
    return {r[0] for r in build.sql(q).fetchall()}


def test_fraction_of_a_build_per_split_and_stratum(tmp_path, parent):
    b = vlmforge.build("split", "build", out=tmp_path / "a", source_options={"path": str(parent.path)}, fraction=0.5)
    assert b.info["parents"] == [parent.build_id]
    assert b.sql("SELECT count(*) FROM builds").fetchall()[0][0] == 2
    for split, half in (("train", 18), ("test", 9)):  # of 35 and 18
        assert len(_keys(b, split)) == half
        assert _keys(b, split) <= _keys(parent, split)
    s = vlmforge.build("split", "build", out=tmp_path / "b", source_options={"path": str(parent.path)},
                       fraction=0.5, stratify_by="label")
    got = dict(((sp, lab), n) for sp, lab, n in s.sql("SELECT split, label, count(*) FROM samples GROUP BY ALL").fetchall())
    want = {("train", "cat"): 4, ("train", "dog"): 4, ("train", "bird"): 5, ("train", "fish"): 6,
            ("test", "cat"): 2, ("test", "dog"): 2, ("test", "bird"): 3, ("test", "fish"): 3}
    assert got == want
    # The parent's samples come through unchanged (image bytes and json).
    kept = {x["__key__"]: x for x in s.samples()}
    for x in parent.samples():
        if x["__key__"] in kept:
            assert kept[x["__key__"]]["jpg"] == x["jpg"] and kept[x["__key__"]]["json"] == x["json"]


def test_partition_is_disjoint_and_covers(tmp_path, parent):
    b = vlmforge.build("split", "build", out=tmp_path, source_options={"path": str(parent.path)},
                       splits="train=0.7,val=0.2,test=0.1")
    parts = {s: _keys(b, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [37, 11, 5]  # of 53
    assert parts["train"] | parts["val"] | parts["test"] == _keys(parent)
    assert not (parts["train"] & parts["val"]) and not (parts["val"] & parts["test"])
    # Fractions that add up to less than 1 (a split forgotten) leave records out: said, not silent.
    plan = SplitBuilder(SplitConfig(splits="train=0.7,val=0.2"), BuildSource(parent.path)).src
    assert plan.count("train") == 37 and plan.notes[0] == "the --splits fractions add up to 0.9: 5 of the 53 records are in no split"
    # The parent's test records pooled into train: said (before: without a word), unless --parent-split chose.
    moved = len(parts["train"] & _keys(parent, "test"))
    assert moved and plan.notes[1:] == [f"--splits pools every parent split: records of the parent's test split go to "
                                        f"other splits ({moved} to train, {len(parts['val'] & _keys(parent, 'test'))} to "
                                        "val); --parent-split names the splits to read"]
    chosen = SplitBuilder(SplitConfig(splits="train=0.5,val=0.5"), BuildSource(parent.path, splits=["test"])).src
    assert chosen.count("train") == 9 and chosen.notes == []


def test_where_and_bad_options(tmp_path, parent):
    b = vlmforge.build("split", "build", out=tmp_path, fraction=1.0,
                       source_options={"path": str(parent.path), "where": "label <> 'cat'", "splits": ["train"]})
    assert b.sql("SELECT DISTINCT split FROM samples").fetchall() == [("train",)]
    assert "cat" not in {r[0] for r in b.sql("SELECT label FROM samples").fetchall()}
    assert len(b) == 28 and b.info["source"]["where"] == "label <> 'cat'"
    with pytest.raises(UserError, match="either"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path)},
                       fraction=0.5, splits="a=0.5")
    with pytest.raises(UserError, match="gives split 'val' the fraction 0; leave it out"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path)}, splits="train=0.9,val=0")
    with pytest.raises(UserError, match="--stratify-by is empty"):  # was a silently unstratified split
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path)}, fraction=0.5, stratify_by="")
    with pytest.raises(UserError, match="more than 1"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path)}, splits="a=0.6,b=0.6")
    with pytest.raises(UserError, match="no column"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path)},
                       fraction=0.5, stratify_by="colour")


def _llava_pair(tmp_path):
    """The same mix665k-like records (with repeated ids) in two orders and two JSON layouts."""
    recs = llava_records(60, duplicate_every=5)
    for r in recs:
        if "image" in r:
            p = tmp_path / "images" / r["image"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(tiny_jpeg(len(r["image"])))
    shuffled = recs[:]
    random.Random(7).shuffle(shuffled)
    return write_json(tmp_path / "a.json", recs), write_json(tmp_path / "b.json", shuffled, indent=2), recs


def test_llava_split_same_records_whatever_order(tmp_path):
    a, b, recs = _llava_pair(tmp_path)
    opts = lambda f: {"json": str(f), "image_root": str(tmp_path / "images")}  # noqa: E731
    ba = vlmforge.build("split", "llava-json", out=tmp_path / "oa", source_options=opts(a), fraction=0.5, stratify_by="source")
    bb = vlmforge.build("split", "llava-json", out=tmp_path / "ob", source_options=opts(b), fraction=0.5,
                        stratify_by="source", max_samples_per_shard=4)
    assert _keys(ba) == _keys(bb) and len(ba) == 30
    per_source = dict(ba.sql("SELECT subsource, count(*) FROM samples GROUP BY 1").fetchall())
    assert per_source == {s: 5 for s in ("coco", "gqa", "ocr_vqa", "textvqa", "vg", "text-only")}
    # The same content stays under the same key in both orders, repeated ids included.
    content = lambda build: {x["__key__"]: x["json"]["conversations"] for x in build.samples()}  # noqa: E731
    assert content(ba) == content(bb)
    # Records that are no LLaVA record are rejects, all of them: before, those the hash left out (and with
    # --stratify-by every one) were in no split and in no rejects table.
    broken = write_json(tmp_path / "c.json", recs + [{"id": f"bad{i}", "conversations": "none"} for i in range(6)])
    for how in (dict(fraction=0.5), dict(fraction=0.5, stratify_by="source"), dict(splits="x=0.2,y=0.3")):
        c = vlmforge.build("split", "llava-json", out=tmp_path / "c", source_options=opts(broken), overwrite=True, **how)
        assert sorted(c.sql("SELECT source_id, reason FROM rejects").fetchall()) == [(f"bad{i}", "invalid_record") for i in range(6)]
        assert len(c) == 30 and (_keys(c) == _keys(ba) or "stratify_by" not in how)  # the same selection
    with pytest.raises(UserError, match="--stratify-by label: a LLaVA JSON file can be stratified by source"):
        vlmforge.build("split", "llava-json", out=tmp_path / "x", source_options=opts(a), fraction=0.5, stratify_by="label")
    # The JSON-to-JSON split keeps exactly the same records, copied verbatim.
    for f in (a, b):
        out = split_llava_json(f, tmp_path / f.stem, fraction=0.5, stratify_by="source")
        kept = json.loads(out["train"].read_text())
        assert sorted(json.dumps(r["conversations"]) for r in kept) == sorted(json.dumps(c) for c in content(ba).values())


def test_cli_split(tmp_path, parent):
    cli = [sys.executable, "-m", "vlmforge.cli"]
    r = subprocess.run(cli + ["build", "split", "--from", str(parent.path), "--splits", "train=0.8,val=0.2",
                              "--out", str(tmp_path), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    b = vlmforge.open_build(tmp_path / "split" / SplitBuilder.VERSION)
    assert b.info["splits"]["train"]["samples"] == 42 and b.info["splits"]["val"]["samples"] == 11
    r = subprocess.run(cli + ["build", "split", "--from", str(parent.path), "--fraction", "1.5", "--out", str(tmp_path / "y")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_parent_split_is_part_of_the_build_identity(tmp_path, parent):
    opts = lambda **kw: {"path": str(parent.path), **kw}  # noqa: E731
    whole = vlmforge.build("split", "build", out=tmp_path / "w", source_options=opts(), fraction=0.5)
    train = vlmforge.build("split", "build", out=tmp_path / "p", source_options=opts(splits=["train"]), fraction=0.5)
    assert train.build_id != whole.build_id and train.info["source"]["splits"] == ["train"]
    assert "splits" not in whole.info["source"]  # builds of the whole parent keep their ids
    # Naming every split reads the whole parent: the same build.
    both = vlmforge.build("split", "build", out=tmp_path / "b", source_options=opts(splits=["test", "train"]), fraction=0.5)
    assert both.build_id == whole.build_id
    # Another parent split into the same folder is another build, not "up to date".
    with pytest.raises(UserError, match="holds another build"):
        vlmforge.build("split", "build", out=tmp_path / "p", source_options=opts(splits=["test"]), fraction=0.5)
    with pytest.raises(UserError, match="no split 'nosuch'; it has: test, train"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options=opts(splits=["train", "nosuch"]), fraction=0.5)


def test_damaged_parent_is_one_error_line(tmp_path, parent):
    import shutil

    cli = [sys.executable, "-m", "vlmforge.cli"]
    no_shard, bad_json = tmp_path / "no_shard", tmp_path / "bad_json"
    for folder in (no_shard, bad_json):
        shutil.copytree(parent.path, folder)
    (no_shard / parent.info["shards"][-1]["shard"]).unlink()
    (bad_json / "build.json").write_text("{")
    with pytest.raises(UserError, match="is incomplete .*run vlmforge verify"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(no_shard)}, fraction=0.5)
    with pytest.raises(UserError, match="build.json is not valid JSON"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(bad_json)}, fraction=0.5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "build.json").write_text("{}")
    with pytest.raises(UserError, match="lacks build_id"):
        vlmforge.open_build(tmp_path / "empty")
    # verify reports a damaged build.json as a problem: exit 1, no traceback.
    r = subprocess.run(cli + ["verify", str(bad_json)], capture_output=True, text=True)
    assert r.returncode == 1 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_empty_selection_is_an_empty_build(tmp_path, parent):
    for name, opts, cfg in (("where", {"where": "label = 'zebra'"}, {"fraction": 0.5}),
                            ("tiny", {}, {"fraction": 0.001})):
        b = vlmforge.build("split", "build", out=tmp_path / name, source_options={"path": str(parent.path), **opts}, **cfg)
        assert len(b) == 0 and b.info["shards"] == []
        cols = {r[0] for r in b.sql("SELECT column_name FROM (DESCRIBE samples)").fetchall()}
        assert {"offset", "label"} <= cols
    # An empty build is a parent like any other.
    again = vlmforge.build("split", "build", out=tmp_path / "again", source_options={"path": str(b.path)}, fraction=0.5)
    assert len(again) == 0


def test_llava_json_refuses_parent_options_and_mixed_sources(tmp_path, parent):
    a, _, _ = _llava_pair(tmp_path)
    llava = {"json": str(a), "image_root": str(tmp_path / "images")}
    for extra, message in (({"where": "subsource = 'coco'"}, "--where: only with a parent build"),
                           ({"splits": ["val"]}, "--parent-split: only with a parent build"),
                           ({"path": str(parent.path)}, "exclude each other")):
        with pytest.raises(UserError, match=message):
            vlmforge.build("split", "llava-json", out=tmp_path / "x", source_options={**llava, **extra}, fraction=0.5)
    with pytest.raises(UserError, match="--json: only with --source llava-json"):
        vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path), "json": str(a)},
                       fraction=0.5)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "split", "--source", "coco", "--fraction", "0.5",
                        "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 2 and "--source must be build" in r.stderr


def test_a_derived_build_never_lands_in_its_parents_folder(tmp_path, parent):
    """`split --from builds/split/1.3.0` with the default --out builds aims at the parent's own folder:
    --overwrite deleted the parent and left an empty build in its place."""
    first = vlmforge.build("split", "build", out=tmp_path / "builds", source_options={"path": str(parent.path)}, fraction=0.5)
    inner = vlmforge.build("split", "build", out=tmp_path / "a" / "split" / "1.3.0" / "in", fraction=0.5,
                           source_options={"path": str(parent.path)})
    before = build_files(first.path), build_files(inner.path)
    for out, p in ((tmp_path / "builds", first), (tmp_path / "a", inner)):  # its folder, or one above it
        for overwrite in (False, True):
            with pytest.raises(UserError, match=rf"{out / 'split' / '1.3.0'} is the folder of the parent build "
                                                rf"{p.path}; choose another --out"):
                vlmforge.build("split", "build", out=out, source_options={"path": str(p.path)}, fraction=0.5,
                               overwrite=overwrite)
    assert (build_files(first.path), build_files(inner.path)) == before


def test_stratify_by_a_column_of_unique_values(tmp_path, parent):
    """Stratified by `key` the fields query returned `key` once (a dict row), every record fell out of
    its stratum and the build was empty; and one-record strata only keep or drop whole records."""
    from vlmforge.builders.derived import iter_fields

    rows = list(iter_fields(BuildSource(parent.path), "train", ["key", "label"]))
    assert len(rows) == 35 and all(len(r) == 3 and r[0] == r[1] and r[2] for r in rows)
    with pytest.raises(UserError, match="--stratify-by key: every record has a value of its own"):
        vlmforge.build("split", "build", out=tmp_path / "k", source_options={"path": str(parent.path)},
                       fraction=0.5, stratify_by="key")
    # 20 classes of one image and one of two: 40% keeps 1 record where the fraction gives 9; a note says so.
    p = vlmforge.build("copy", "imagefolder", out=tmp_path / "p", source_options={
        "root": str(class_folder(tmp_path / "f", {"a": 2, **{f"c{i:02d}": 1 for i in range(20)}}))})
    b = SplitBuilder(SplitConfig(fraction=0.4, stratify_by="label"), BuildSource(p.path))
    assert b.src.count("train") == 1
    assert b.src.notes == ["train: 1 records where the fraction gives 9: each of the 21 strata of label rounds on its own"]
    plain = SplitBuilder(SplitConfig(fraction=0.1, stratify_by="label"), BuildSource(parent.path))
    assert plain.src.count("train") == 4 and plain.src.notes == []


def test_out_naming_a_file_is_one_error_line(tmp_path, parent):
    (tmp_path / "afile").write_text("")
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "split", "--from", str(parent.path), "--fraction",
                        "0.5", "--out", str(tmp_path / "afile"), "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot make the build folder {tmp_path / 'afile' / 'split' / '1.3.0'}: "
                           f"Not a directory ({tmp_path / 'afile'}")


def test_group_by_keeps_records_of_one_value_together(tmp_path, parent):
    """An occlusion build has several samples per image; split record by record, one image landed in
    train and test. --group-by hashes the column's values: the fractions count values."""
    b = vlmforge.build("split", "build", out=tmp_path / "g", source_options={"path": str(parent.path)},
                       splits="train=0.5,test=0.5", group_by="label")
    rows = b.sql("SELECT label, list(DISTINCT split), count(*) FROM samples GROUP BY 1").fetchall()
    assert all(len(splits) == 1 for _, splits, _ in rows)  # no class in both splits
    per_label = dict(parent.sql("SELECT label, count(*) FROM samples GROUP BY 1").fetchall())
    assert {label: n for label, _, n in rows} == per_label  # every record kept
    where = {label: splits[0] for label, splits, _ in rows}
    assert sorted(where.values()) == ["test", "test", "train", "train"]  # 2 of the 4 values each
    counts = dict(b.sql("SELECT split, count(*) FROM samples GROUP BY 1").fetchall())
    assert counts == {s: sum(n for label, n in per_label.items() if where[label] == s) for s in ("train", "test")}
    assert b.info["source"]["selection"]["groups"] == {"column": "label", "per_split": {"train": 2, "test": 2}}
    again = vlmforge.build("split", "build", out=tmp_path / "g2", source_options={"path": str(parent.path)},
                           splits="train=0.5,test=0.5", group_by="label")
    assert build_files(again.path) == build_files(b.path)
    # --fraction: half the values of each parent split, whole
    f = vlmforge.build("split", "build", out=tmp_path / "f", source_options={"path": str(parent.path)},
                       fraction=0.5, group_by="label")
    for split in ("train", "test"):
        labels = {r[0] for r in f.sql(f"SELECT DISTINCT label FROM samples WHERE split = '{split}'").fetchall()}
        assert len(labels) == 2
        assert _keys(f, split) == {r[0] for r in parent.sql(
            f"SELECT key FROM samples WHERE split = '{split}' AND label IN ({', '.join(repr(x) for x in labels)})").fetchall()}
    plain = vlmforge.build("split", "build", out=tmp_path / "p", source_options={"path": str(parent.path)}, fraction=0.5)
    assert "group_by" not in plain.info["config"]  # builds without the option keep their id
    for bad, msg in ((dict(group_by="nope"), "no column 'nope'"), (dict(group_by=" "), "--group-by is empty"),
                     (dict(group_by="label", stratify_by="label"), "cannot be combined")):
        with pytest.raises(UserError, match=msg):
            vlmforge.build("split", "build", out=tmp_path / "x", source_options={"path": str(parent.path)}, fraction=0.5, **bad)


def test_a_partition_that_puts_one_image_in_two_splits_is_noted(tmp_path):
    """Records are split one by one: an occlusion build's samples of one image (several objects hidden)
    landed in train and test without a word, so test scenes had been seen in training."""
    import pyarrow as pa

    from vlmforge.builders.base import Builder, BuildConfig, run_build
    from vlmforge.sample import Sample
    from vlmforge.sources.build import BuildSource

    from tests.evaluation.conftest import ListSource

    class ObjectsOfImages(Builder):
        name = "objects"
        VERSION = "0.0.1"
        Config = BuildConfig
        columns = [("image_id", pa.int64(), "image the sample hides an object of")]

        def process(self, batch):
            return [[Sample(key=r["source_id"], doc={"image_id": r["image_id"]}, image=tiny_jpeg(r["seed"]),
                            image_ext="jpg", width=12, height=10, source_id=r["source_id"],
                            columns={"image_id": r["image_id"]})] for r in batch]

    recs = [{"source_id": f"{img:03d}-{j}", "image_id": img, "seed": img * 10 + j} for img in range(20) for j in range(3)]
    parent = run_build(ObjectsOfImages(BuildConfig(), ListSource({"val": recs})), out=tmp_path / "p", quiet=True)
    built = vlmforge.build("split", "build", out=tmp_path / "s", source_options={"path": str(parent)},
                           splits="train=0.5,test=0.5")
    split_of = {}
    for key, split in built.sql("SELECT key, split FROM samples").fetchall():
        split_of.setdefault(key.split("-")[0], set()).add(split)
    shared = sum(len(s) > 1 for s in split_of.values())
    b = SplitBuilder(SplitConfig(splits="train=0.5,test=0.5"), BuildSource(parent))
    assert b.src.count("train") == 30
    assert shared > 0 and b.src.notes == [f"{shared} of 20 images (image_id) have samples in more than one of the "
                                          "new splits: they are not disjoint by image (--group-by image_id keeps "
                                          "them together)"]
    grouped = SplitBuilder(SplitConfig(splits="train=0.5,test=0.5", group_by="image_id"), BuildSource(parent))
    assert grouped.src.notes == [] and grouped.src.count("train") + grouped.src.count("test") == 60
    # A fraction keeps each parent split apart: nothing to note.
    half = SplitBuilder(SplitConfig(fraction=0.5), BuildSource(parent))
    assert half.src.count("val") == 30 and half.src.notes == []
