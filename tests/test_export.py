"""`export llava`: JSON + image folder the official LLaVA scripts read; `export llava-split`."""

import json
import re
import subprocess
import sys

import pytest

import vlmforge
from vlmforge.errors import UserError
from vlmforge.export import export_llava, llava_record

from tests.derived_data import class_folder, llava_records, tiny_jpeg, write_json


def check_llava_dataset(json_path, image_folder):
    """What LLaVA's LazySupervisedDataset and preprocess need of every record."""
    recs = json.loads(json_path.read_text())
    for r in recs:
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
        n_tokens = sum(t["value"].count("<image>") for t in turns)
        if "image" in r:
            assert (image_folder / r["image"]).is_file() and n_tokens == 1 and "<image>" in turns[0]["value"]
        else:
            assert n_tokens == 0
    return recs


@pytest.fixture(scope="module")
def llava_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    recs = llava_records(12)
    recs[0]["conversations"][0]["value"] = recs[0]["conversations"][0]["value"].replace("<image>\n", "")  # token missing
    for r in recs:
        if "image" in r:
            p = root / "img" / r["image"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(tiny_jpeg(len(r["image"])))
    path = write_json(root / "mix.json", recs)
    return vlmforge.build("copy", "llava-json", out=root / "b", source_options={"json": str(path), "image_root": str(root / "img")}), recs


def test_export_llava_round_trip(tmp_path, llava_build):
    b, recs = llava_build
    path = export_llava(b, tmp_path)
    assert path == tmp_path / "llava.json"
    out = check_llava_dataset(path, tmp_path)
    assert len(out) == 12 and sum("image" not in r for r in out) == 2
    by_id = {r["id"]: r for r in out}
    shard = {s["__key__"]: s for s in b.samples()}
    for rec in recs:
        got = by_id[rec["id"]]
        assert got["conversations"][1] == rec["conversations"][1]
        if "image" in rec:
            assert (tmp_path / got["image"]).read_bytes() == shard[rec["id"]]["jpg"]
    assert by_id["000000"]["conversations"][0]["value"].startswith("<image>\n")  # the missing token is put back
    # Exporting again over the same folder gives the same file.
    assert export_llava(b.path, tmp_path).read_bytes() == path.read_bytes()


def test_export_of_a_derived_build_and_cli(tmp_path):
    root = class_folder(tmp_path / "f", {"cat": 3, "dog": 3}, "train")
    class_folder(root, {"cat": 1, "dog": 1}, "test")
    p = vlmforge.build("copy", "imagefolder", out=tmp_path / "p", source_options={"root": str(root)})
    m = vlmforge.build("mcqa", "build", out=tmp_path / "m", options=2, source_options={"path": str(p.path)})
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "export", "llava", str(m.path), "--out", str(tmp_path / "x"),
                        "--split", "test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = check_llava_dataset(tmp_path / "x" / "llava_test.json", tmp_path / "x")
    assert len(recs) == 2 and all(r["conversations"][1]["value"] in "AB" for r in recs)
    assert "holds every split" not in r.stderr
    # without --split every split lands in one file: said, so that test records do not go into training unseen
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "export", "llava", str(m.path), "--out", str(tmp_path / "z")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "llava.json holds every split (test 2, train 6); --split NAME exports one" in r.stderr
    assert len(json.loads((tmp_path / "z" / "llava.json").read_text())) == 8
    with pytest.raises(UserError, match="no split"):
        export_llava(m, tmp_path / "y", split="val")
    with pytest.raises(UserError, match="human turn"):
        llava_record("k", {"conversations": [{"from": "gpt", "value": "hi"}]}, None)


def test_llava_split_cli(tmp_path):
    recs = llava_records(30)
    path = write_json(tmp_path / "mix.json", recs)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "export", "llava-split", str(path), "--out", str(tmp_path / "o"),
                        "--splits", "train=0.8,val=0.2", "--seed", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    train = json.loads((tmp_path / "o" / "train.json").read_text())
    val = json.loads((tmp_path / "o" / "val.json").read_text())
    assert (len(train), len(val)) == (24, 6)
    assert sorted(json.dumps(x) for x in train + val) == sorted(json.dumps(x) for x in recs)
    # A split given the fraction 0 would be an empty file: refused, as `build split` refuses it.
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "export", "llava-split", str(path), "--out", str(tmp_path / "z"),
                        "--splits", "train=0.8,val=0"], capture_output=True, text=True)
    assert r.returncode == 2 and "gives split 'val' the fraction 0" in r.stderr and not (tmp_path / "z").exists()


def test_export_to_a_file_path_is_a_user_error(tmp_path, coco_build):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    with pytest.raises(UserError, match="is a file; the export needs a folder"):
        export_llava(coco_build, taken)
    with pytest.raises(UserError, match="cannot create the export folder"):
        export_llava(coco_build, taken / "below")
    (tmp_path / "x" / "vlmforge.export.json").mkdir(parents=True)  # where the export records itself: no file
    with pytest.raises(UserError, match=r"cannot write .*vlmforge.export.json: Is a directory"):
        export_llava(coco_build, tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["vlmforge.export.json"]


def test_exporting_again_replaces_an_older_image_under_the_same_key(tmp_path, coco_build):
    path = export_llava(coco_build, tmp_path / "x", quiet=True)
    rec = json.loads(path.read_text())[0]
    image = tmp_path / "x" / rec["image"]
    original = image.read_bytes()
    image.write_bytes(bytes(len(original)))  # same size, other bytes: an older build's image
    export_llava(coco_build, tmp_path / "x", quiet=True)
    assert image.read_bytes() == original


def test_a_damaged_shard_stops_the_export_instead_of_dropping_samples(tmp_path, coco_build):
    """Before: a truncated shard was a tarfile traceback, and a member header with a flipped byte
    ended the tar stream silently, so llava.json held only the samples before it."""
    import shutil

    import pyarrow.parquet as pq

    from vlmforge.manifests.read import open_build

    b = tmp_path / "b"
    shutil.copytree(coco_build.path, b)
    shard = b / "val-000001.tar"
    offset = pq.read_table(b / "manifest" / "val-000001.parquet").column("offset").to_pylist()[2]
    raw = bytearray(shard.read_bytes())
    raw[offset + 3] ^= 0x20  # inside the third sample's first member name: its header checksum fails,
    # so that shard gives 2 of its 5 samples (5 + 2 + the last shard's 2 = 9)
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"read 9 of the 12 samples build.json lists; a shard of .* is damaged"):
        export_llava(open_build(b), tmp_path / "x", quiet=True)
    assert not (tmp_path / "x" / "llava.json").exists() and not (tmp_path / "x" / "llava.json.tmp").exists()
    raw[offset + 3] ^= 0x20
    raw[offset + 512 * 3 + 100] ^= 1  # inside the third sample's first member's data (its size: headers intact)
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"sample \S+ in val-000001.tar is not the one its manifest row describes"):
        export_llava(open_build(b), tmp_path / "x", quiet=True)
    assert not (tmp_path / "x" / "llava.json").exists() and not (tmp_path / "x" / "llava.json.tmp").exists()
    shard.write_bytes(bytes(raw[:-2000]))
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "export", "llava", str(b), "--out", str(tmp_path / "y")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "shard val-000001.tar: " in r.stderr, r.stderr
    assert "bytes, build.json records" in " ".join(r.stderr.split())


def test_export_into_the_build_itself_is_refused(llava_build):
    b, _ = llava_build
    for inside in (b.path, b.path / "llava"):
        with pytest.raises(UserError, match="is inside the build"):
            export_llava(b, inside)
    assert not (b.path / "llava.json").exists() and not (b.path / "images").exists() and not (b.path / "llava").exists()


def test_a_build_without_samples_is_not_exported(tmp_path, coco_build):
    """Before: llava.json held [] and the command said nothing."""
    none = vlmforge.build("subset", "build", out=tmp_path / "b", source_options={"path": str(coco_build.path), "where": "width < 0"})
    with pytest.raises(UserError, match="has no samples and no rejects: .*; there is nothing to export"):
        export_llava(none, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "vlmforge.cli", *map(str, args)], capture_output=True, text=True)


def test_llava_split_again_with_other_settings_never_mixes_two_runs(tmp_path):
    """Before: a --fraction 0.5 run into the folder of a train=0.8,val=0.2 run wrote train.json and left
    the earlier run's val.json beside it, so that the folder mixed two runs without a word."""
    path = write_json(tmp_path / "mix.json", llava_records(30))
    out = tmp_path / "o"
    assert _cli("export", "llava-split", path, "--out", out, "--splits", "train=0.8,val=0.2").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _cli("export", "llava-split", path, "--out", out, "--splits", "train=0.8,val=0.2", "-q").returncode == 0  # the same run again
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = _cli("export", "llava-split", path, "--out", out, "--fraction", "0.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "holds the split of mix.json (--splits train=0.8,val=0.2 --seed 0): train.json, val.json" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before anything was written
    r = _cli("export", "llava-split", path, "--out", out, "--fraction", "0.5", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.json", "vlmforge.export.json"]
    record = json.loads((out / "vlmforge.export.json").read_text())
    assert record["files"] == {"train.json": {"split": "train", "records": 15}}
    assert len(json.loads((out / "train.json").read_text())) == 15
    # JSON files no export recorded (an older vlmforge's split, or anything else) are not written beside either
    (out / "vlmforge.export.json").unlink()
    (out / "notes.json").write_text("{}")
    r = _cli("export", "llava-split", path, "--out", out, "--fraction", "0.5")
    assert r.returncode == 2 and "holds files no vlmforge export recorded: notes.json, train.json" in r.stderr, r.stderr
    assert _cli("export", "llava-split", path, "--out", out, "--splits", "a=0.5", "--overwrite").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "notes.json", "train.json", "vlmforge.export.json"]  # never removed
    # the file being split is never a split file, nor one of the files --overwrite replaces
    r = _cli("export", "llava-split", out / "a.json", "--out", out, "--splits", "a=0.5", "--overwrite")
    assert r.returncode == 2 and "would write over" in r.stderr and len(json.loads((out / "a.json").read_text())) == 15


def test_llava_split_says_which_records_are_in_no_file(tmp_path):
    recs = llava_records(6)
    path = write_json(tmp_path / "mix.json", recs[:2] + [{"id": "x"}, 7] + recs[2:])
    r = _cli("export", "llava-split", path, "--out", tmp_path / "o", "--fraction", "1")
    assert r.returncode == 0, r.stderr
    assert "2 of the 8 records are no usable LLaVA record" in r.stderr and "#2, #3" in r.stderr
    assert len(json.loads((tmp_path / "o" / "train.json").read_text())) == 6


def test_splits_of_one_build_share_a_folder_and_another_build_is_refused(tmp_path, coco_build, llava_build):
    other, _ = llava_build
    out = tmp_path / "x"
    first = export_llava(other, out, quiet=True)
    export_llava(other, out, split="train", quiet=True)  # the same build: its files live side by side
    images = sorted(p.relative_to(out) for p in (out / "images").rglob("*") if p.is_file())
    version = re.escape(other.info["version"])
    with pytest.raises(UserError, match=rf"holds the export of build copy {version} \S+ \(.*\): images/, llava\.json, "
                                        r"llava_train\.json; export to a new folder, or add --overwrite"):
        export_llava(coco_build, out, quiet=True)
    assert sorted(p.relative_to(out) for p in (out / "images").rglob("*") if p.is_file()) == images
    assert json.loads(first.read_text())[0]["id"] == "000000"
    path = export_llava(coco_build, out, quiet=True, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["images", "llava.json", "vlmforge.export.json"]
    recs = check_llava_dataset(path, out)
    kept = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file())
    assert kept == sorted(r["image"] for r in recs) and len(recs) == 12  # the other build's images are gone
    assert all(any(d.iterdir()) for d in (out / "images").iterdir())  # and their emptied folders
    # an images/ folder the export did not make is not the export's to clean
    mine = tmp_path / "mine"
    (mine / "images" / "ab").mkdir(parents=True)
    (mine / "images" / "ab" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="holds files no vlmforge export recorded: images/"):
        export_llava(other, mine, quiet=True)
    export_llava(other, mine, quiet=True, overwrite=True)
    export_llava(coco_build, mine, quiet=True, overwrite=True)
    assert (mine / "images" / "ab" / "photo.jpg").exists()


def test_occlusion_export_folder_of_another_build_is_refused_before_the_build(tmp_path, coco_build):
    export_llava(coco_build, tmp_path / "x", quiet=True)
    r = _cli("build", "occlusion", "--out", tmp_path / "b", "--export-llava", tmp_path / "x", "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "holds the export of build copy" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()


def test_records_llava_cannot_train_on_are_refused_by_name():
    """Before: they were exported, and LLaVA's preprocess stopped on them (an assertion on the roles, a
    KeyError for 'user', an image-token count that no image matches) or the export was a traceback."""
    def turns(*pairs):
        return {"conversations": [{"from": f, "value": v} for f, v in pairs]}

    with pytest.raises(UserError, match=r"sample k: turn 2 is from 'assistant'; LLaVA's scripts take turns from human and gpt"):
        llava_record("k", turns(("human", "<image>\nq"), ("assistant", "a")), "images/k.jpg")
    with pytest.raises(UserError, match="turn 3 is from 'gpt'"):
        llava_record("k", turns(("human", "q"), ("gpt", "a"), ("gpt", "b")), None)
    with pytest.raises(UserError, match=r"sample k has 2 <image> tokens; LLaVA's scripts take one per image"):
        llava_record("k", turns(("human", "<image>\nq"), ("gpt", "a"), ("human", "<image>\nr"), ("gpt", "b")), "images/k.jpg")
    with pytest.raises(UserError, match="a conversation turn is not an object"):
        llava_record("k", {"conversations": ["hello", "hi"]}, None)
    ok = llava_record("k", turns(("human", "q"), ("gpt", "a"), ("human", "r"), ("gpt", "b")), "images/k.jpg")
    assert ok["conversations"][0]["value"] == "<image>\nq" and ok["conversations"][2]["value"] == "r"


def test_export_into_another_build_or_of_an_empty_split_is_refused(tmp_path, coco_build, llava_build):
    """Before: llava.json and images/ were written into another build's folder, and a split holding
    only rejects gave an empty llava_<split>.json without a word."""
    other, _ = llava_build
    with pytest.raises(UserError, match=f"is inside the build {other.path}"):
        export_llava(coco_build, other.path / "x", quiet=True)
    assert not (other.path / "x").exists()
    root = tmp_path / "data"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "test" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "a.jpg").write_bytes(tiny_jpeg(1))
    (root / "test" / "cat" / "b.heic").write_bytes(b"x")
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "b", source_options={"root": str(root)})
    with pytest.raises(UserError, match=r"the split test of .* has no samples, and 1 rejects; there is nothing to export"):
        export_llava(b, tmp_path / "x", split="test", quiet=True)
    assert not (tmp_path / "x").exists()


def test_png_images_and_unicode_text_are_exported_as_stored(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    (root / "café").mkdir(parents=True)
    Image.new("RGBA", (8, 6), (1, 2, 3, 128)).save(root / "café" / "a.png")
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "b", source_options={"root": str(root)})
    path = export_llava(b, tmp_path / "x", quiet=True)
    assert "café" in path.read_text(encoding="utf-8")  # UTF-8, as LLaVA's json.load reads it
    (rec,) = check_llava_dataset(path, tmp_path / "x")
    assert rec["image"].endswith(".png") and rec["conversations"][1]["value"] == "café"
    assert (tmp_path / "x" / rec["image"]).read_bytes() == (root / "café" / "a.png").read_bytes()


def test_an_export_of_json_files_never_owns_an_images_folder(tmp_path, llava_build):
    """Before: the split's record said images/ was its own, so an export replacing it with --overwrite
    removed images a user had put there since."""
    b, _ = llava_build
    out = tmp_path / "o"
    assert _cli("export", "llava-split", write_json(tmp_path / "m.json", llava_records(4)), "--out", out, "--fraction", "1",
                "-q").returncode == 0
    (out / "images" / "zz").mkdir(parents=True)
    (out / "images" / "zz" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=r"holds the split of m.json \(--fraction 1.0 --seed 0\): train.json and files no "
                                        r"vlmforge export recorded: images/"):
        export_llava(b, out, quiet=True)
    export_llava(b, out, quiet=True, overwrite=True)
    assert (out / "images" / "zz" / "mine.jpg").exists() and not (out / "train.json").exists()
