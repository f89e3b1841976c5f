"""`grading`: KL-style answers from a graded folder tree, balanced draws, 16-bit X-rays made 8-bit."""

import io

import numpy as np
import pytest
from PIL import Image

import vlmforge
from vlmforge.builders.grading import KL_DESCRIPTIONS, grade_of
from vlmforge.errors import UserError

from tests.derived_data import class_folder
from tests.helpers import build_files


@pytest.fixture(scope="module")
def knees(tmp_path_factory):
    root = tmp_path_factory.mktemp("knee")
    class_folder(root, {"0": 9, "1": 6, "2": 7, "3": 5, "4": 3}, "train")
    class_folder(root, {"0": 2, "1": 2, "2": 2, "3": 2, "4": 2}, "test")
    # A 12-bit X-ray stored as 16-bit PNG: naive conversion would clip it to white.
    arr = (np.arange(64 * 48).reshape(48, 64) % 4096).astype(np.uint16)
    Image.fromarray(arr).save(root / "test" / "4" / "xray16.png")
    return root


def test_grade_names():
    assert [grade_of(x) for x in ("2", "KL2", "grade_02", 3, "healthy")] == ["2", "2", "2", "3", "healthy"]


def test_per_grade_draw_and_answer_template(tmp_path, knees):
    b = vlmforge.build("grading", "imagefolder", out=tmp_path, source_options={"root": str(knees)}, per_grade=4)
    got = dict(((s, g), n) for s, g, n in b.sql("SELECT split, grade, count(*) FROM samples GROUP BY ALL").fetchall())
    assert got == {("train", 0): 4, ("train", 1): 4, ("train", 2): 4, ("train", 3): 4, ("train", 4): 3,
                   ("test", 0): 2, ("test", 1): 2, ("test", 2): 2, ("test", 3): 2, ("test", 4): 3}
    assert b.info["source"]["selection"]["short"] == {"train": {"4": 1}, "test": {"0": 2, "1": 2, "2": 2, "3": 2, "4": 1}}
    from vlmforge.builders.grading import GradingConfig, GradingPlan
    from vlmforge.sources import open_source

    plan = GradingPlan(GradingConfig(per_grade=4))
    plan.fit(open_source("imagefolder", root=str(knees)))
    assert plan.notes == ["fewer usable images than asked for (all taken): test grade 0 short by 2, test grade 1 "
                          "short by 2, test grade 2 short by 2, test grade 3 short by 2, test grade 4 short by 1, "
                          "train grade 4 short by 1"]
    for s in b.samples("train"):
        doc = s["json"]
        g = doc["grade"]
        assert doc["conversations"][0]["value"].startswith("<image>\n")
        assert doc["conversations"][1]["value"] == (
            f"The most likely Kellgren-Lawrence grade of this knee X-ray image is Grade {g}: {KL_DESCRIPTIONS[g]}.")


def test_size_and_sixteen_bit_images(tmp_path, knees):
    b = vlmforge.build("grading", "imagefolder", out=tmp_path, source_options={"root": str(knees)}, size=12,
                       answer_template="Grade {grade}.", prompt="Which grade?")
    counts = dict(b.sql("SELECT grade, count(*) FROM samples WHERE split = 'train' GROUP BY 1").fetchall())
    assert counts == {0: 3, 1: 3, 2: 2, 3: 2, 4: 2}  # 12 over 5 grades: the first two get one more
    b = vlmforge.build("grading", "imagefolder", out=tmp_path / "all", source_options={"root": str(knees)},
                       answer_template="Grade {grade}.", prompt="Which grade?")
    assert len(b) == 41
    xray = [s for s in b.samples("test") if s["__key__"].startswith("test-4-xray16")]
    assert len(xray) == 1 and xray[0]["json"]["conversations"][1]["value"] == "Grade 4."
    assert xray[0]["json"]["conversations"][0]["value"] == "<image>\nWhich grade?"
    img = Image.open(io.BytesIO(xray[0]["jpg"]))
    # Values 0..3071 use 12 bits: mean 1535.5 * 255 / 4095 = 95.6 (clipping to 8 bits would give ~234).
    assert img.mode == "RGB" and abs(np.asarray(img).mean() - 95.6) < 2
    fmt = b.sql("SELECT original_format FROM samples WHERE key LIKE 'test-4-xray16%'").fetchall()
    assert fmt == [("PNG",)]
    with pytest.raises(UserError, match="not both"):
        vlmforge.build("grading", "imagefolder", out=tmp_path / "x", source_options={"root": str(knees)}, size=5, per_grade=1)


def test_unknown_answer_placeholder(tmp_path, knees):
    with pytest.raises(UserError, match=r"unknown placeholder\(s\) \{nope\}; use \{grade\}, \{description\}"):
        vlmforge.build("grading", "imagefolder", out=tmp_path, source_options={"root": str(knees)},
                       answer_template="Grade {grade} {nope}")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_draws_count_only_usable_images(tmp_path):
    """A corrupt image drawn for a grade is a reject with its reason, and the next record of that grade
    (in rank order) fills its slot: the draw is not short. Same inputs, same draw."""
    from vlmforge.curation.selection import rank_value
    from vlmforge.sample import make_key

    root = class_folder(tmp_path / "knee", {"0": 6, "1": 6}, "train")
    ranked = sorted((rank_value(0, make_key(f"train/1/{i:03d}")), i) for i in range(6))
    first, second = (root / "train" / "1" / f"{i:03d}.jpg" for _, i in ranked[:2])
    first.write_bytes(b"not an image")  # the two records drawn first for grade 1 are unusable
    second.write_bytes(second.read_bytes()[:-2])  # truncated: no end-of-image marker
    for opts in ({"per_grade": 3}, {"size": 6}):
        b = vlmforge.build("grading", "imagefolder", out=tmp_path / str(opts), source_options={"root": str(root)}, **opts)
        assert dict(b.sql("SELECT grade, count(*) FROM samples GROUP BY 1").fetchall()) == {0: 3, 1: 3}
        rejects = sorted(b.sql("SELECT source_id, reason FROM rejects").fetchall())
        assert rejects == sorted([(f"train/1/{first.name}", "corrupt_image"), (f"train/1/{second.name}", "truncated_image")])
        keys = {r[0] for r in b.sql("SELECT key FROM samples WHERE grade = 1").fetchall()}
        assert keys == {make_key(f"train/1/{i:03d}") for _, i in ranked[2:5]}  # the next three in rank order
        selection = b.info["source"]["selection"]
        assert selection["drawn"] == {"train/0": 3, "train/1": 3} and selection["unusable"] == {"train/1": 2}
        assert "short" not in selection
    again = vlmforge.build("grading", "imagefolder", out=tmp_path / "again", source_options={"root": str(root)}, size=6)
    assert build_files(again.path) == build_files(b.path)


def test_grades_from_a_build_and_an_unknown_label_column(tmp_path, knees):
    a = vlmforge.build("grading", "imagefolder", out=tmp_path / "a", source_options={"root": str(knees)})
    b = vlmforge.build("grading", "build", out=tmp_path / "b", source_options={"path": str(a.path)}, per_grade=1)
    assert sorted(b.sql("SELECT split, grade FROM samples").fetchall()) == [(s, g) for s in ("test", "train") for g in range(5)]
    with pytest.raises(UserError, match="the parent build has no column 'grade_kl'; its columns: .*label"):
        vlmforge.build("grading", "build", out=tmp_path / "c", source_options={"path": str(a.path)},
                       label_column="grade_kl")


def test_files_differing_by_extension_only(tmp_path):
    """Both would have the key of the path without its extension: the first in path order keeps it,
    the other is a reject, drawn or not (the build used to stop on a duplicate key)."""
    root = class_folder(tmp_path / "knee", {"0": 3, "1": 3}, "train")
    (root / "train" / "1" / "001.png").write_bytes((root / "train" / "1" / "001.jpg").read_bytes())
    for opts in ({}, {"per_grade": 3}):
        b = vlmforge.build("grading", "imagefolder", out=tmp_path / str(opts), source_options={"root": str(root)}, **opts)
        assert b.sql("SELECT source_id, reason FROM rejects").fetchall() == [("train/1/001.png", "duplicate_key")]
        assert dict(b.sql("SELECT grade, count(*) FROM samples GROUP BY 1").fetchall()) == {0: 3, 1: 3}
