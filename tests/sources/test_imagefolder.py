"""Class-folder datasets (`--source imagefolder`): layouts and user mistakes."""

import subprocess
import sys

import pytest
from PIL import Image

from vlmforge.errors import UserError
from vlmforge.sources import open_source


def _image(path, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path)


def test_split_folders_beside_other_folders_are_refused(tmp_path):
    """Before: ROOT/train/cat, ROOT/test/cat and ROOT/unlabeled/x made one split, train, whose labels
    were the top folders ('train', 'test', 'unlabeled'): every image mislabelled, without a word."""
    root = tmp_path / "data"
    for rel in ("train/cat/a.jpg", "train/dog/b.jpg", "test/cat/c.jpg", "unlabeled/x/d.jpg"):
        _image(root / rel)
    with pytest.raises(UserError, match=r"mixes split folders \(test, train\) with other folders \(unlabeled\)"):
        open_source("imagefolder", root=root)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "copy", "--source", "imagefolder", "--root",
                        str(root), "--out", str(tmp_path / "out"), "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "mixes split folders" in r.stderr, r.stderr
    (root / "unlabeled" / "x" / "d.jpg").unlink()
    (root / "unlabeled" / "x").rmdir()
    (root / "unlabeled").rmdir()
    src = open_source("imagefolder", root=root)  # the split layout alone is read as such
    assert src.splits() == ["test", "train"]
    assert sorted(r["label"] for r in src.records("train")) == ["cat", "dog"]


def _folder_with_other_files(root, cat="cat", dog="dog"):
    """Two classes of images in every format read, and the files a real folder also holds."""
    img = Image.new("RGB", (20, 16), (10, 200, 30))
    (root / "cat").mkdir(parents=True)
    (root / "dog" / ".cache").mkdir(parents=True)
    img.save(root / "cat" / "a.jpg")
    img.save(root / "cat" / "c.avif")
    img.save(root / "dog" / "d.jp2", format="JPEG2000")
    img.save(root / "dog" / "e.dat", format="JPEG")  # a misnamed image
    img.save(root / "dog" / "f", format="PNG")
    img.save(root / "loose.jpg")  # beside the class folders
    (root / "cat" / "g.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(40))
    (root / "cat" / "a.txt").write_text("a cat")  # a caption sidecar: same stem as a.jpg
    for junk in ("cat/.DS_Store", "dog/Thumbs.db", "dog/.cache/x.txt", "README.md"):
        (root / junk).write_text("x")
    (root / "cat").rename(root / cat)
    (root / "dog").rename(root / dog)
    return root


@pytest.mark.parametrize("builder", ["copy", "grading", "selfsynth"])
def test_files_that_are_not_read_are_rejects_with_their_reason(tmp_path, builder):
    """Before: a .heic, .jp2, .avif, a misnamed image or a sidecar in a class folder was skipped without
    a word (no sample, no reject); .jp2 and .avif are now read."""
    import vlmforge

    cat, dog = ("0", "1") if builder == "grading" else ("cat", "dog")  # grading reads grade folders
    root = _folder_with_other_files(tmp_path / "data", cat, dog)
    options = {"generator": "template", "concepts": "generate"} if builder == "selfsynth" else {}
    b = vlmforge.build(builder, "imagefolder", out=tmp_path / "b", source_options={"root": str(root)}, **options)
    rejects = {sid.replace(f"{cat}/", "cat/").replace(f"{dog}/", "dog/"): reason
               for sid, reason in b.sql("SELECT source_id, reason FROM rejects").fetchall()}
    assert rejects == {"cat/g.heic": "unsupported_image", "dog/e.dat": "unsupported_image", "dog/f": "unsupported_image",
                       "cat/a.txt": "not_an_image", "loose.jpg": "no_class"}
    details = {sid.rsplit("/", 1)[-1]: d for sid, d in b.sql("SELECT source_id, detail FROM rejects").fetchall()}
    assert details["e.dat"] == "a JPEG image under the extension '.dat'; rename it to .jpg to read it"
    assert details["f"] == "a PNG image without an extension; rename it to .png to read it"
    assert "HEIC images are not read" in details["g.heic"]
    read = sorted(r[0].rsplit("/", 1)[-1] for r in b.sql("SELECT source_id FROM samples").fetchall())
    assert read == ["a.jpg", "c.avif", "d.jp2"]


def test_other_files_change_no_key_and_an_empty_folder_names_them(tmp_path):
    import vlmforge

    root = _folder_with_other_files(tmp_path / "data")
    keys = {r["source_id"]: r["stem"] for r in open_source("imagefolder", root=root).records("train") if "stem" in r}
    assert keys["cat/a.jpg"] == "cat/a"  # the sidecar a.txt does not make a.jpg's key keep its extension
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "b", source_options={"root": str(root)})
    assert b.info["splits"]["train"]["samples"] == 3 and b.info["splits"]["train"]["rejects"] == 5
    heic = tmp_path / "heic"
    (heic / "cat").mkdir(parents=True)
    (heic / "cat" / "a.HEIC").write_bytes(b"x")
    with pytest.raises(UserError, match=r"no images found under .* \(1 other files: a.HEIC: HEIC images are not read"):
        open_source("imagefolder", root=heic)
    with pytest.raises(UserError, match=r"a.HEIC is a file; --root takes the folder that holds the class folders"):
        open_source("imagefolder", root=heic / "cat" / "a.HEIC")  # it said "image folder not found"


def test_image_bytes_are_told_apart_from_text_that_starts_alike(tmp_path):
    from vlmforge.sources.imagefolder import _not_read

    for name, data, reason in (("a.csv", b"BMW,Audi\n", "not_an_image"), ("b.dat", b"BMW,Audi,Opel,Fiat\n", "not_an_image"),
                               ("c.bin", Image.new("RGB", (4, 4)).tobytes(), "not_an_image"),
                               ("d.txt", b"\xff\xd8\xff", "not_an_image")):  # a text file is not opened
        (tmp_path / name).write_bytes(data)
        assert _not_read(tmp_path / name)[0] == reason, name
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="BMP")
    (tmp_path / "e.dat").write_bytes(buf.getvalue())
    assert _not_read(tmp_path / "e.dat") == ("unsupported_image", "a BMP image under the extension '.dat'; rename it to .bmp to read it")


def test_a_macos_zip_folder_is_no_class_and_no_split(tmp_path):
    """A folder unzipped from a Mac zip holds __MACOSX/ (resource forks named like the images): it became
    a class of its own, or, beside split folders, stopped the build as a mixed layout."""
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / split / "cat" / "a.jpg")
        (tmp_path / "__MACOSX" / split / "cat").mkdir(parents=True)
        (tmp_path / "__MACOSX" / split / "cat" / "._a.jpg").write_bytes(b"\0\x05\x16\x07")
    (tmp_path / "train" / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "__MACOSX" / "cat" / "._b.jpg").write_bytes(b"\0\x05\x16\x07")
    src = open_source("imagefolder", root=tmp_path)
    assert src.splits() == ["test", "train"]
    assert [(r["source_id"], r.get("label")) for r in src.records("train")] == [("train/cat/a.jpg", "cat")]


def test_workers_get_the_source_without_its_file_lists(tmp_path):
    """Before: the builder went to each worker with every image path of the source (at 160k images a
    worker held ~142 MB); records carry their own path and label."""
    import pickle

    from vlmforge.builders.copy import CopyBuilder, CopyConfig

    def pickled_size(n: int) -> int:
        root = tmp_path / f"d{n}"
        for i in range(n):
            (root / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
            (root / f"class{i % 3}" / f"image_{i:05d}.jpg").write_bytes(b"\xff\xd8\xff")
        (root / "class0" / "notes.txt").write_text("x")
        src = open_source("imagefolder", root=root)
        assert src.count("train") == n + 1  # the driver keeps its lists
        return len(pickle.dumps(CopyBuilder(CopyConfig(), src)))

    assert pickled_size(600) - pickled_size(6) < 200
