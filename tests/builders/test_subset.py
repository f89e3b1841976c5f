"""`subset`: class-preserving keeps every class, class-exclusive keeps whole classes, seen/unseen
classes never meet, and the rule is recorded."""

import re
from collections import Counter

import pytest

import vlmforge
from vlmforge.errors import UserError

from tests.derived_data import class_folder

COUNTS = {"cat": 10, "dog": 7, "bird": 5, "fish": 3, "frog": 1, "newt": 4}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    class_folder(root, COUNTS, "train")
    class_folder(root, {k: 2 for k in COUNTS}, "test")
    return vlmforge.build("copy", "imagefolder", out=tmp_path_factory.mktemp("parent"), source_options={"root": str(root)})


def _labels(build, split):
    return Counter(r[0] for r in build.sql(f"SELECT label FROM samples WHERE split = '{split}'").fetchall())


def test_class_preserving_keeps_every_class(tmp_path, parent):
    b = vlmforge.build("subset", "build", out=tmp_path, source_options={"path": str(parent.path)},
                       mode="class-preserving", fraction=0.3)
    # round(0.3 n) per class, at least one: 10->3, 7->2, 5->2 (1.5 rounds up), 3->1, 1->1 (kept), 4->1
    assert _labels(b, "train") == {"cat": 3, "dog": 2, "bird": 2, "fish": 1, "frog": 1, "newt": 1}
    assert _labels(b, "test") == {k: 1 for k in COUNTS}
    parent_keys = {r[0] for r in parent.sql("SELECT key FROM samples").fetchall()}
    assert {r[0] for r in b.sql("SELECT key FROM samples").fetchall()} <= parent_keys


def test_class_exclusive_keeps_whole_classes(tmp_path, parent):
    b = vlmforge.build("subset", "build", out=tmp_path, source_options={"path": str(parent.path)},
                       mode="class-exclusive", fraction=0.5, seed=1)
    train = _labels(b, "train")
    assert len(train) == 3
    assert all(train[c] == COUNTS[c] for c in train)  # all samples of a kept class
    assert _labels(b, "test") == {c: 2 for c in train}
    rule = b.info["source"]["selection"]
    assert rule["kept_classes"] == sorted(train)
    # The recorded SQL condition selects the same samples from the parent.
    same = parent.sql(f"SELECT count(*) FROM samples WHERE {rule['where']}").fetchall()[0][0]
    assert same == len(b)


def test_seen_unseen_never_share_a_class(tmp_path, parent):
    b = vlmforge.build("subset", "build", out=tmp_path / "a", source_options={"path": str(parent.path)},
                       mode="seen-unseen", unseen_fraction=0.34)
    seen, unseen = set(_labels(b, "test_seen")), set(_labels(b, "test_unseen"))
    assert len(unseen) == 2 and len(seen) == 4 and not seen & unseen
    assert set(_labels(b, "train")) == seen  # training holds seen classes only
    sel = b.info["source"]["selection"]
    assert sel["seen_classes"] == sorted(seen) and sel["unseen_classes"] == sorted(unseen)
    assert {r[0] for r in b.sql("SELECT class_set FROM samples WHERE split = 'test_unseen'").fetchall()} == {"unseen"}
    # The seen classes can be given as a list instead.
    listed = tmp_path / "seen.txt"
    listed.write_text("# seen classes\ncat\ndog\n")
    from vlmforge.builders.derived import read_lines

    c = vlmforge.build("subset", "build", out=tmp_path / "b", source_options={"path": str(parent.path)},
                       mode="seen-unseen", seen_classes=read_lines(listed, "list"))
    assert set(_labels(c, "train")) == {"cat", "dog"}
    assert set(_labels(c, "test_unseen")) == {"bird", "fish", "frog", "newt"}
    with pytest.raises(UserError, match="does not have"):
        vlmforge.build("subset", "build", out=tmp_path / "c", source_options={"path": str(parent.path)},
                       mode="seen-unseen", seen_classes=["cat", "unicorn"])


def test_where_only_subset_records_its_rule(tmp_path, parent):
    b = vlmforge.build("subset", "build", out=tmp_path, source_options={"path": str(parent.path), "where": "label IN ('cat', 'frog')"})
    assert set(_labels(b, "train")) == {"cat", "frog"} and len(b) == 15
    assert b.info["source"]["where"] == "label IN ('cat', 'frog')"
    with pytest.raises(UserError, match="does not parse|Binder|column"):
        vlmforge.build("subset", "build", out=tmp_path / "x", source_options={"path": str(parent.path), "where": "nosuch = 1"})


def test_where_with_a_comment_works_and_one_that_escapes_its_parentheses_is_refused(tmp_path, parent):
    opts = lambda where: {"path": str(parent.path), "where": where}  # noqa: E731
    b = vlmforge.build("subset", "build", out=tmp_path / "c", source_options=opts("label = 'cat' -- the cats"))
    assert set(_labels(b, "train")) == {"cat"} and len(b) == 12
    # Each would otherwise read every split's records into each split, or fail halfway with a traceback.
    for where, message in (("1=1) OR (1=1", "syntax error"), ("label", "Could not convert string"),
                           ("   ", "syntax error"), ("1=1 /*", "unterminated")):
        with pytest.raises(UserError, match=rf"^the condition '{re.escape(where)}' does not work on the manifest: .*{message}"):
            vlmforge.build("subset", "build", out=tmp_path / "x", source_options=opts(where))


def test_a_list_column_as_the_label_is_one_error_line(tmp_path, parent):
    mcqa = vlmforge.build("mcqa", "build", out=tmp_path / "m", source_options={"path": str(parent.path)}, options=2)
    for builder, cfg in (("subset", {"mode": "class-preserving", "fraction": 0.5}), ("mcqa", {})):
        with pytest.raises(UserError, match=r"column 'options' holds VARCHAR\[\] values, not class labels"):
            vlmforge.build(builder, "build", out=tmp_path / "x", source_options={"path": str(mcqa.path)},
                           label_column="options", **cfg)


def test_parent_split_is_part_of_the_build_identity(tmp_path, parent):
    opts = lambda **kw: {"path": str(parent.path), **kw}  # noqa: E731
    train = vlmforge.build("subset", "build", out=tmp_path, source_options=opts(splits=["train"]))
    assert set(train.info["splits"]) == {"train"} and train.info["source"]["splits"] == ["train"]
    with pytest.raises(UserError, match="holds another build"):
        vlmforge.build("subset", "build", out=tmp_path, source_options=opts(splits=["test"]))


def test_where_matching_nothing_is_an_empty_subset(tmp_path, parent):
    b = vlmforge.build("subset", "build", out=tmp_path, source_options={"path": str(parent.path), "where": "label = 'zebra'"},
                       mode="class-preserving", fraction=0.5)
    assert len(b) == 0
    with pytest.raises(UserError, match="no values in column 'subsource'"):
        vlmforge.build("subset", "build", out=tmp_path / "u", source_options={"path": str(parent.path)},
                       mode="class-preserving", fraction=0.5, label_column="subsource")


def test_seen_unseen_refuses_a_typo_or_a_one_sided_class_list(tmp_path, parent):
    opts = {"path": str(parent.path)}
    with pytest.raises(UserError, match="--train-split: the parent has no split 'nosuch'; it has: test, train"):
        vlmforge.build("subset", "build", out=tmp_path, source_options=opts, mode="seen-unseen", unseen_fraction=0.25,
                       train_splits=["nosuch"])
    for seen in ([], sorted(COUNTS)):  # an empty --classes-from file, or one listing every class
        with pytest.raises(UserError, match="needs both seen and unseen classes"):
            vlmforge.build("subset", "build", out=tmp_path, source_options=opts, mode="seen-unseen", seen_classes=seen)
    with pytest.raises(UserError, match="not both"):
        vlmforge.build("subset", "build", out=tmp_path, source_options=opts, mode="seen-unseen", unseen_fraction=0.25,
                       seen_classes=["cat"])


def test_a_missing_fraction_says_so(tmp_path, parent):
    with pytest.raises(UserError, match="--fraction is needed"):
        vlmforge.build("subset", "build", out=tmp_path, source_options={"path": str(parent.path)}, mode="class-preserving")


def test_seen_unseen_options_with_another_mode_are_refused():
    from vlmforge.builders.subset import SubsetConfig, SubsetPlan
    from vlmforge.errors import UserError

    with pytest.raises(UserError, match="--unseen-fraction applies to --seen-unseen only"):
        SubsetPlan(SubsetConfig(mode="class-exclusive", fraction=0.5, unseen_fraction=0.3))


def test_mode_options_without_their_mode_are_refused(tmp_path, parent):
    """`subset --fraction 0.5` with no --mode kept the whole parent: the fraction was ignored."""
    opts = {"path": str(parent.path)}
    for cfg, message in (({"fraction": 0.5}, "--fraction needs a --mode"),
                         ({"unseen_fraction": 0.5}, "--unseen-fraction needs a --mode"),
                         ({"train_splits": ["train"]}, "--train-split needs a --mode"),
                         ({"mode": "seen-unseen", "unseen_fraction": 0.3, "fraction": 0.5}, "--fraction applies to class-preserving")):
        with pytest.raises(UserError, match=message):
            vlmforge.build("subset", "build", out=tmp_path, source_options=opts, **cfg)


def test_seen_unseen_without_a_training_split_says_so(tmp_path, parent):
    """Every split of a parent without `train` (a typo'd or missing --train-split) became S_seen and
    S_unseen with no word that no split keeps seen classes only."""
    from vlmforge.builders.subset import SubsetBuilder, SubsetConfig
    from vlmforge.sources.build import BuildSource

    b = SubsetBuilder(SubsetConfig(mode="seen-unseen", unseen_fraction=0.34), BuildSource(parent.path, splits=["test"]))
    assert b.src.splits() == ["test_seen", "test_unseen"]
    assert b.src.notes == ["the parent has no training split train: no split keeps seen classes only (name yours with --train-split)"]
    with_train = SubsetBuilder(SubsetConfig(mode="seen-unseen", unseen_fraction=0.34), BuildSource(parent.path))
    assert "train" in with_train.src.splits()
    # the training records of unseen classes are left out: counted, said, not dropped unseen
    unseen = with_train.src.plan.unseen
    n = sum(COUNTS[c] for c in unseen)
    assert with_train.src.notes == [f"{n} records of unseen classes in train are left out (training keeps seen classes only)"]
    assert with_train.src.describe()["selection"]["unseen_left_out_of_training"] == n > 0


def test_a_numeric_label_column_is_a_class_name(tmp_path):
    """Grades are numbers: class-exclusive and seen-unseen over --label-column grade stopped with a
    TypeError (str + int) while ranking the classes."""
    root = tmp_path / "knee"
    class_folder(root, {"0": 6, "1": 5, "2": 4, "3": 3}, "train")
    class_folder(root, {"0": 2, "1": 2, "2": 2, "3": 2}, "test")
    graded = vlmforge.build("grading", "imagefolder", out=tmp_path / "g", source_options={"root": str(root)})
    src = {"path": str(graded.path)}
    ex = vlmforge.build("subset", "build", out=tmp_path / "x", source_options=src, mode="class-exclusive",
                        fraction=0.5, label_column="grade")
    kept = ex.info["source"]["selection"]["kept_classes"]
    assert len(kept) == 2 and ex.sql(f"SELECT count(*) FROM samples WHERE {ex.info['source']['selection']['where']}"
                                     ).fetchall() == [(len(ex),)]
    per_grade = dict(graded.sql("SELECT grade, count(*) FROM samples GROUP BY 1").fetchall())
    assert len(ex) == sum(per_grade[int(g)] for g in kept)
    su = vlmforge.build("subset", "build", out=tmp_path / "s", source_options=src, mode="seen-unseen",
                        seen_classes=["0", "2"], label_column="grade")
    assert _labels(su, "train") == {"0": 6, "2": 4} and _labels(su, "test_unseen") == {"1": 2, "3": 2}
    assert {r[0] for r in su.sql("SELECT DISTINCT class_set FROM samples WHERE split = 'test_seen'").fetchall()} == {"seen"}


def test_a_class_without_training_records_is_unseen(tmp_path, parent):
    """Before: the hash could call a class seen that no training record has (a rare label of a split
    occlusion build), and its test records went to test_seen as if the model had learnt it."""
    from vlmforge.builders.subset import SubsetBuilder, SubsetConfig

    where = "NOT (split = 'train' AND label IN ('frog', 'newt'))"
    opts = {"path": str(parent.path), "where": where}
    b = vlmforge.build("subset", "build", out=tmp_path / "a", source_options=opts, mode="seen-unseen", unseen_fraction=0.2)
    trained = set(_labels(b, "train"))
    assert set(_labels(b, "test_seen")) == trained and {"frog", "newt"} <= set(_labels(b, "test_unseen"))
    moved = b.info["source"]["selection"]["unseen_without_training_records"]  # those the hash had called seen
    assert len(trained) == 4 and moved and set(moved) <= {"frog", "newt"}
    listed = SubsetBuilder(SubsetConfig(mode="seen-unseen", seen_classes=["cat", "frog"]), SubsetBuilder.open_source("build", **opts))
    assert listed.src.count("test_seen") == 4  # the user's list stands, and is noted
    assert listed.src.notes == ["1 classes have no record in train, yet --classes-from lists them as seen: frog",
                                "15 records of unseen classes in train are left out (training keeps seen classes only)"]


def test_unseen_classes_that_name_a_seen_one_are_noted(tmp_path):
    """Before: 'puppy' held out while 'dog' was trained passed for an unseen class without a word."""
    from vlmforge.builders.subset import SubsetBuilder, SubsetConfig
    from vlmforge.sources.build import BuildSource

    root = tmp_path / "folder"
    for split in ("train", "test"):
        class_folder(root, {"dog": 2, "puppy": 2, "cat": 2, "kittens": 2, "newt": 2}, split)
    p = vlmforge.build("copy", "imagefolder", out=tmp_path / "p", source_options={"root": str(root)})
    b = SubsetBuilder(SubsetConfig(mode="seen-unseen", seen_classes=["dog", "cat"]), BuildSource(p.path)).src
    assert b.count("test_unseen") == 6
    assert b.notes[0] == ("2 unseen classes name the same thing as a seen class (kittens ~ cat, puppy ~ dog); a column "
                          "of categories (--label-column) holds them out together")
    other = SubsetBuilder(SubsetConfig(mode="seen-unseen", seen_classes=["dog", "puppy"]), BuildSource(p.path)).src
    assert other.count("test_seen") == 4 and not any("name the same thing" in n for n in other.notes)
