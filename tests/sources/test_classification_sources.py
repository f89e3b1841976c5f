"""CUB-200-2011, FGVC-Aircraft and Stanford Dogs readers on fixtures laid out like the real datasets."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.classification_fixtures import CUB_RATES, make_cub, make_dogs, make_fgvc
from vlmforge.errors import SourceError, UserError
from vlmforge.sources import open_source
from vlmforge.sources.dogs import breed_name
from vlmforge.sources.fgvc import read_record_image


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    make_cub(root)
    return root


def test_cub_reader(cub):
    src = open_source("cub", root=cub)  # the archive's top folder; CUB_200_2011/ is found inside
    assert src.splits() == ["train", "test"] and (src.count("train"), src.count("test")) == (9, 3)
    test = list(src.records("test"))
    assert [r["key"] for r in test] == ["cub_00004", "cub_00008", "cub_00012"]
    r = test[0]
    assert r["label"] == "Black footed Albatross" and r["class_id"] == 1 and r["bbox"] == [4.0, 5.0, 30.0, 20.0]
    assert r["source_id"] == "001.Black_footed_Albatross/Black_footed_Albatross_0004_704.jpg"
    assert Image.open(r["file"]).size == (48, 40)
    assert {x["label"] for x in src.records("train")} == {"Black footed Albatross", "Laysan Albatross", "Sooty Albatross"}
    assert "attributes" not in r
    only_test = open_source("cub", root=cub / "CUB_200_2011", splits=["test"])
    assert only_test.splits() == ["test"]
    with pytest.raises(UserError, match="train and test"):
        open_source("cub", root=cub, splits=["val"])
    with pytest.raises(UserError, match="do not apply"):
        open_source("cub", root=cub, level="family")


def test_cub_attributes(cub):
    src = open_source("cub", root=cub, attributes=True)
    first = next(src.records("train"))
    # image 1 (class 1): attributes 2, 3, 6, 8 present with certainty 4, 4, 3, 4; the line with an extra field parses
    assert first["attributes"] == [[2, 4], [3, 4], [6, 3], [8, 4]]
    assert src.attribute_names()[5] == "has_size::large_(16_-_32_in)"
    assert np.allclose(src.class_attribute_rates(), CUB_RATES / 100)
    assert src.class_labels() == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert src.fingerprint() != open_source("cub", root=cub).fingerprint()


def test_cub_rates_counted_without_the_continuous_file(tmp_path):
    make_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "attributes" / "class_attribute_labels_continuous.txt").unlink()
    rates = open_source("cub", root=tmp_path, attributes=True).class_attribute_rates()
    want = np.zeros((3, 8))
    for c, present in {0: [2, 3, 6, 8], 1: [2, 4, 6, 7], 2: [1, 3, 5, 6, 8]}.items():
        want[c, [a - 1 for a in present]] = 1.0  # every image of the fixture's class shows them
    assert np.array_equal(rates, want)


def test_cub_errors(tmp_path):
    with pytest.raises(SourceError, match="not a CUB-200-2011 folder"):
        open_source("cub", root=tmp_path)
    make_cub(tmp_path, attributes=False)
    (tmp_path / "CUB_200_2011" / "classes.txt").unlink()
    with pytest.raises(SourceError, match="classes.txt not found"):
        open_source("cub", root=tmp_path)
    make_cub(tmp_path / "b", attributes=False)
    with pytest.raises(SourceError, match="attribute labels not found"):
        open_source("cub", root=tmp_path / "b", attributes=True)
    lines = (tmp_path / "b" / "CUB_200_2011" / "image_class_labels.txt").read_text().splitlines()
    (tmp_path / "b" / "CUB_200_2011" / "image_class_labels.txt").write_text("\n".join(lines[1:]) + "\n")
    first = next(open_source("cub", root=tmp_path / "b").records("train"))
    assert "no class" in first["invalid"]


def test_fgvc_reader(tmp_path):
    root = make_fgvc(tmp_path)
    src = open_source("fgvc-aircraft", root=root)
    assert src.splits() == ["train", "val", "test"]
    train = list(src.records("train"))
    assert [(r["key"], r["label"]) for r in train] == [("fgvc_0034309", "707-320"), ("fgvc_0037511", "F/A-18"),
                                                      ("fgvc_0040001", "A300B4")]
    assert train[0]["family"] == "Boeing 707" and train[0]["manufacturer"] == "Boeing"
    assert train[0]["bbox_xyxy"] == [3.0, 4.0, 50.0, 28.0]
    fam = open_source("fgvc-aircraft", root=root / "data", level="family", splits=["trainval"])
    assert [r["label"] for r in fam.records("trainval")] == ["Boeing 707", "Boeing 707", "F/A-18", "A300"]
    img = read_record_image(train[0])
    assert (img.width, img.height) == (60, 30)  # the 20-pixel banner is gone
    with Image.open(io.BytesIO(img.data)) as im:
        assert im.convert("RGB").getpixel((30, 29))[0] < 200  # last row is aircraft colour, not banner white
    uncut = open_source("fgvc-aircraft", root=root, crop_banner=False)
    assert read_record_image(next(uncut.records("train"))).height == 50
    assert uncut.fingerprint() != src.fingerprint()
    with pytest.raises(SourceError, match="level"):
        open_source("fgvc-aircraft", root=root, level="model")
    with pytest.raises(SourceError, match="not an FGVC-Aircraft folder"):
        open_source("fgvc-aircraft", root=tmp_path / "nothing")


def test_copy_of_fgvc_cuts_the_banner(tmp_path):
    """Before: `build copy --source fgvc-aircraft` stored the images with their 20-pixel copyright banner
    (the copy builder read the file itself and ignored the record's crop_bottom), unlike every other
    reader of the source and unlike the README ('banner cropped')."""
    import vlmforge

    b = vlmforge.build("copy", "fgvc-aircraft", out=tmp_path / "b", source_options={"root": str(make_fgvc(tmp_path))})
    assert b.sql("SELECT DISTINCT width, height FROM samples").fetchall() == [(60, 30)] and len(b) == 5
    for sample in b.samples():
        with Image.open(io.BytesIO(sample["jpg"])) as im:
            assert im.size == (60, 30) and im.convert("RGB").getpixel((30, 29))[1] < 200  # not banner white


@pytest.mark.parametrize("lists", ["mat", "txt", "none"])
def test_stanford_dogs_reader(tmp_path, lists):
    make_dogs(tmp_path, lists=lists)
    src = open_source("stanford-dogs", root=tmp_path)
    if lists == "none":
        assert src.splits() == ["train"] and src.count("train") == 5
        return
    assert src.splits() == ["train", "test"]
    train = list(src.records("train"))
    assert [(r["key"], r["label"]) for r in train] == [("dogs_n02085620_10074", "Chihuahua"),
                                                      ("dogs_n02085620_10131", "Chihuahua"),
                                                      ("dogs_n02085782_1039", "Japanese spaniel")]
    assert type(train[0]["source_id"]) is str and Image.open(train[0]["file"]).size == (48, 40)
    assert [r["source_id"] for r in src.records("test")] == ["n02085620-Chihuahua/n02085620_1007.jpg",
                                                             "n02085782-Japanese_spaniel/n02085782_1058.jpg"]


def test_breed_names():
    assert breed_name("n02085782-Japanese_spaniel") == "Japanese spaniel"
    assert breed_name("n02096294-Australian_terrier") == "Australian terrier"
    assert breed_name("n02113799-standard_poodle") == "standard poodle"


def test_cub_files_with_a_non_numeric_id_are_one_error_line(tmp_path):
    """Before: ValueError tracebacks (invalid literal for int()) from images.txt, image_class_labels.txt."""
    for name, line, field in (("images.txt", "x2 002.Laysan_Albatross/foo.jpg", "'x2'"),
                              ("image_class_labels.txt", "1 abc", "'abc'"), ("bounding_boxes.txt", "1 4 5 wide 20", "'wide'")):
        root = tmp_path / name
        root.mkdir()
        cub = make_cub(root)  # the CUB_200_2011 folder
        lines = (cub / name).read_text().splitlines()
        (cub / name).write_text("\n".join([line] + lines[1:]) + "\n")
        with pytest.raises(SourceError, match=rf"{name}:1: field \d should be .*, got {field}"):
            open_source("cub", root=cub)


def test_a_file_listed_twice_is_a_reject_not_a_stopped_build(tmp_path):
    """Before: an image listed twice in Stanford Dogs' lists (or in two of them), or twice in an FGVC split
    file, stopped the build ('two samples share the key ...: the builder must derive unique keys'); a list
    line without a breed folder made the key 'dogs_'."""
    import vlmforge

    make_dogs(tmp_path / "dogs", lists="txt")
    train = tmp_path / "dogs" / "train_list.txt"
    first = train.read_text().splitlines()[0]
    train.write_text(train.read_text() + f"{first}\nstray.jpg\nother.jpg\n")
    b = vlmforge.build("copy", "stanford-dogs", out=tmp_path / "o1", source_options={"root": str(tmp_path / "dogs")})
    assert len(b) == 5
    rejects = b.sql("SELECT source_id, reason, detail FROM rejects ORDER BY 1").fetchall()
    assert rejects == [(first, "invalid_record", f"{first} is listed twice in train_list.txt, test_list.txt (first in split train)"),
                       ("other.jpg", "invalid_record", "'other.jpg' is not <breed folder>/<file> under Images/"),
                       ("stray.jpg", "invalid_record", "'stray.jpg' is not <breed folder>/<file> under Images/")]
    fgvc = make_fgvc(tmp_path / "fgvc") / "data"
    test = fgvc / "images_variant_test.txt"
    test.write_text(test.read_text() + "0034309 707-320\n")  # a train image listed in test as well
    b = vlmforge.build("copy", "fgvc-aircraft", out=tmp_path / "o2", source_options={"root": str(fgvc)})
    assert len(b) == 5 and b.sql("SELECT split, source_id, detail FROM rejects").fetchall() == [
        ("test", "0034309.jpg", "image 0034309 is listed twice in images_variant_train.txt, images_variant_val.txt, "
                                "images_variant_test.txt (first in split train)")]


def test_a_cub_image_without_a_split_row_is_a_reject(tmp_path):
    """Before: an image missing from train_test_split.txt (or marked 2) went to train without a word,
    though it may be a test image (test leakage)."""
    import vlmforge

    cub = make_cub(tmp_path)
    split_file = cub / "train_test_split.txt"
    rows = split_file.read_text().splitlines()
    split_file.write_text("\n".join([rows[0].split()[0] + " 2"] + rows[2:]) + "\n")  # image 1 marked 2, image 2 gone
    b = vlmforge.build("copy", "cub", out=tmp_path / "o", source_options={"root": str(cub)})
    assert len(b) == 10 and b.sql("SELECT split, source_id, detail FROM rejects ORDER BY 2").fetchall() == [
        ("train", "001.Black_footed_Albatross/Black_footed_Albatross_0001_701.jpg",
         "image 1: train_test_split.txt says '2', not 1 (train) or 0 (test)"),
        ("train", "001.Black_footed_Albatross/Black_footed_Albatross_0002_702.jpg", "image 2 has no row in train_test_split.txt")]
