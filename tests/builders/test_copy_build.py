"""The build machinery end to end through the copy builder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vlmforge
from vlmforge.builders.base import run_build
from vlmforge.builders.copy import CopyBuilder, CopyConfig
from vlmforge.errors import UserError
from vlmforge.manifests.verify import verify_build
from vlmforge.manifests.writer import ShardLimits
from vlmforge.sources import open_source

from tests.helpers import build_files


def _coco_opts(root: Path) -> dict:
    return {"coco_root": str(root), "split": "val2017"}


def test_rebuild_is_byte_identical_with_1_and_2_workers(tmp_path, sample_coco):
    a = vlmforge.build("copy", "coco", out=tmp_path / "a", workers=1, max_samples_per_shard=5,
                       source_options=_coco_opts(sample_coco))
    b = vlmforge.build("copy", "coco", out=tmp_path / "b", workers=2, max_samples_per_shard=5,
                       source_options=_coco_opts(sample_coco))
    fa, fb = build_files(a.path), build_files(b.path)
    assert len(a.info["shards"]) == 3 and sum(s["samples"] for s in a.info["shards"]) == 12
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    assert a.build_id == b.build_id
    assert verify_build(a, quiet=True) == []


def test_workers_send_passthrough_images_by_reference(sample_coco):
    """In a multi-worker build a worker sends the writer a FileSpan for an unchanged image (the
    1-vs-2-workers test above shows the shards stay byte-identical); the digest is made from the bytes."""
    import hashlib

    from vlmforge.sample import FileSpan, finish_results

    b = CopyBuilder(CopyConfig(), open_source("coco", **_coco_opts(sample_coco)))
    rec = next(iter(b.src.records("val2017")))
    sample = finish_results(b.process([rec]), by_reference=True)[0][0]
    data = Path(rec["file"]).read_bytes()
    assert sample.image == FileSpan(str(rec["file"]), len(data))
    assert sample.image_sha256 == hashlib.sha256(data).hexdigest()
    kept = finish_results(b.process([rec]))[0][0]  # in-process (one worker): the bytes stay
    assert kept.image == data


def test_manifest_rows_match_samples(tmp_path, sample_coco):
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco), max_shard_bytes=200_000)
    rows = b.sql("SELECT key, shard, \"offset\", width, height, image_sha256, split FROM samples ORDER BY shard, \"offset\"").fetchall()
    assert len(rows) == 12 and len({r[1] for r in rows}) > 1  # byte limit forced several shards
    for s in b.info["shards"]:
        assert s["bytes"] <= 200_000 or s["samples"] == 1
    samples = list(b.samples())
    assert [s["__key__"] for s in samples] == [r[0] for r in rows]
    import hashlib
    for s, r in zip(samples, rows):
        assert hashlib.sha256(s["jpg"]).hexdigest() == r[5]
        assert s["json"]["conversations"][0]["value"].startswith("<image>")
        assert (r[3], r[4]) == (480, 360) and r[6] == "val"
        raw = (b.path / r[1]).read_bytes()
        assert raw[r[2] : r[2] + len(r[0])] == r[0].encode()


def test_bad_inputs_land_in_rejects(tmp_path, coco_copy):
    imgs = sorted((coco_copy / "val2017").iterdir())
    imgs[0].unlink()  # missing
    imgs[1].write_bytes(b"this is not a jpeg")  # corrupt
    imgs[2].write_bytes(imgs[3].read_bytes()[:5000])  # truncated
    whole = imgs[4].read_bytes()
    imgs[4].write_bytes(whole + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # a phone's video after EOI: kept, without it
    doc = json.loads((coco_copy / "annotations" / "captions_val2017.json").read_text())
    doc["annotations"].append({"id": 999999, "image_id": 424242, "caption": "A ghost."})
    (coco_copy / "annotations" / "captions_val2017.json").write_text(json.dumps(doc))
    b = vlmforge.build("copy", "coco", out=tmp_path / "out", source_options=_coco_opts(coco_copy))
    reasons = dict(b.sql("SELECT source_id, reason FROM rejects").fetchall())
    assert reasons == {
        str(int(imgs[0].stem)): "missing_image",
        str(int(imgs[1].stem)): "corrupt_image",
        str(int(imgs[2].stem)): "truncated_image",
        "annotation:999999": "orphan_annotation",
    }
    assert len(b) == 9
    assert b.info["splits"]["val"]["rejects"] == 4
    kept = [s for s in b.samples() if s["__key__"].endswith(str(int(imgs[4].stem)))]
    assert len(kept) == 1 and kept[0]["jpg"] == whole


def test_read_only_sql(tmp_path, sample_coco):
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco))
    assert b.sql("SELECT count(*) FROM samples").fetchall()[0][0] == 12
    for bad in ["CREATE TABLE x AS SELECT 1", "DROP TABLE samples", f"COPY samples TO '{tmp_path}/x.csv'",
                "ATTACH 'other.db'", "INSTALL httpfs", "INSERT INTO samples SELECT * FROM samples",
                "SELECT 1; DROP TABLE samples", "SET enable_external_access = true"]:
        with pytest.raises(UserError):
            b.sql(bad)
    import duckdb
    with pytest.raises(duckdb.Error):  # reading other files is off even inside a SELECT
        b.sql("SELECT * FROM read_csv('/etc/hostname')").fetchall()
    assert not (tmp_path / "x.csv").exists()
    assert b.sql("SELECT count(*) FROM samples").fetchall()[0][0] == 12


def test_verify_catches_flipped_byte_and_missing_shard(tmp_path, sample_coco):
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco), max_samples_per_shard=4)
    shards = b.shards()
    raw = bytearray(shards[0].read_bytes())
    raw[2000] ^= 0x01
    shards[0].write_bytes(bytes(raw))
    shards[2].unlink()
    problems = verify_build(b, quiet=True)
    assert any(shards[0].name in p and "sha256" in p for p in problems)
    assert any(shards[2].name in p and "missing" in p for p in problems)
    assert not any(shards[1].name in p for p in problems)
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "verify", str(b.path)], capture_output=True, text=True)
    assert r.returncode == 1 and shards[2].name in r.stderr


class _Crash(Exception):
    pass


class _CrashingCopy(CopyBuilder):
    """Dies after `crash_after` records, like a killed run; same name/version/config as copy."""

    crash_after = 7
    batch_size = 2

    def process(self, batch):
        for rec in batch:
            if rec.get("image_id") is not None and self._count() >= self.crash_after:
                raise _Crash()
        return super().process(batch)

    def _count(self):
        self.n = getattr(self, "n", 0) + 1
        return self.n


def test_resume_after_crash_is_identical(tmp_path, sample_coco):
    limits = ShardLimits(max_samples=3)
    ref = run_build(CopyBuilder(CopyConfig(), open_source("coco", **_coco_opts(sample_coco))), tmp_path / "ref", limits=limits, quiet=True)
    crashing = _CrashingCopy(CopyConfig(), open_source("coco", **_coco_opts(sample_coco)))
    crashing.batch_size = 2
    with pytest.raises(_Crash):
        run_build(crashing, tmp_path / "res", limits=limits, quiet=True)
    partial = tmp_path / "res" / "copy" / CopyBuilder.VERSION
    assert not (partial / "build.json").exists() and list(partial.glob("*.tar"))
    with pytest.raises(UserError):
        vlmforge.open_build(partial)
    resumed = run_build(CopyBuilder(CopyConfig(), open_source("coco", **_coco_opts(sample_coco))), tmp_path / "res", limits=limits, quiet=True)
    fa, fb = build_files(ref), build_files(resumed)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_sigkill_and_resume_is_identical(tmp_path, tmp_path_factory):
    from vlmforge.sources.sample_coco import make_sample

    data = make_sample(tmp_path / "coco", images=160, seed=5)
    cmd = [sys.executable, "-m", "vlmforge.cli", "build", "copy", "--coco-root", str(data), "--quiet",
           "--max-samples-per-shard", "2", "--check-images", "full"]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    target = out / "copy" / CopyBuilder.VERSION / "manifest"
    for attempt in range(5):
        proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and len(list(target.glob("*.stats.json"))) < 3 + attempt * 5:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (out / "copy" / CopyBuilder.VERSION / "build.json").exists():
            break
    assert not (out / "copy" / CopyBuilder.VERSION / "build.json").exists(), "the build finished before it could be killed"
    done_before = len(list(target.glob("*.stats.json")))
    assert 0 < done_before < 80
    r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fa, fb = build_files(tmp_path / "ref" / "copy" / CopyBuilder.VERSION), build_files(out / "copy" / CopyBuilder.VERSION)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_other_config_in_same_folder_is_refused(tmp_path, sample_coco):
    first = vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco))
    stamps = {p: p.stat().st_mtime_ns for p in first.path.rglob("*") if p.is_file() and p.name != "manifest.duckdb"}
    again = vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco))  # up to date
    assert again.build_id == first.build_id and again.path == first.path
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing written again
    with pytest.raises(UserError, match="another build"):
        vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco), seed=1)
    b = vlmforge.build("copy", "coco", out=tmp_path, source_options=_coco_opts(sample_coco), seed=1, overwrite=True)
    assert b.info["config"]["seed"] == 1


def test_imagefolder_and_llava_json(tmp_path, sample_coco):
    from PIL import Image

    root = tmp_path / "folder"
    for split in ("train", "test"):
        for cls in ("001.Black_footed_Albatross", "002.Laysan_Albatross"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 10), (i * 50, 10, 10)).save(d / f"img{i}.png")
            Image.new("RGBA", (8, 8)).save(d / "alpha.gif")
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "o1", source_options={"root": str(root)})
    assert b.sql("SELECT split, count(*) FROM samples GROUP BY 1 ORDER BY 1").fetchall() == [("test", 6), ("train", 6)]
    assert {r[0] for r in b.sql("SELECT label FROM samples").fetchall()} == {"Black footed Albatross", "Laysan Albatross"}
    fmts = dict(b.sql("SELECT original_format, any_value(image_format) FROM samples GROUP BY 1").fetchall())
    assert fmts == {"PNG": "png", "GIF": "jpg"}

    images = sorted((sample_coco / "val2017").iterdir())
    recs = [{"id": "a1", "image": f"val2017/{images[0].name}", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
            {"id": "t1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"id": "a2", "image": "val2017/nope.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "R"}]}]
    jf = tmp_path / "llava.json"
    jf.write_text(json.dumps(recs))
    b2 = vlmforge.build("copy", "llava-json", out=tmp_path / "o2", source_options={"json": str(jf), "image_root": str(sample_coco)})
    assert b2.sql("SELECT key, subsource, image_format FROM samples ORDER BY key").fetchall() == [("a1", "val2017", "jpg"), ("t1", "text-only", None)]
    assert b2.sql("SELECT source_id, reason FROM rejects").fetchall() == [("a2", "missing_image")]


def test_build_source_copies_a_filtered_parent(tmp_path, sample_coco):
    parent = vlmforge.build("copy", "coco", out=tmp_path / "p", source_options=_coco_opts(sample_coco), max_samples_per_shard=5)
    keys = [r[0] for r in parent.sql("SELECT key FROM samples ORDER BY key LIMIT 4").fetchall()]
    cond = "key IN (" + ",".join(f"'{k}'" for k in keys) + ")"
    child = vlmforge.build("copy", "build", out=tmp_path / "c", source_options={"path": str(parent.path), "where": cond})
    assert child.info["parents"] == [parent.build_id]
    assert child.sql("SELECT count(*) FROM builds").fetchall()[0][0] == 2
    got = {s["__key__"]: s for s in child.samples()}
    want = {s["__key__"]: s for s in parent.samples() if s["__key__"] in keys}
    assert got.keys() == want.keys()
    for k in keys:
        assert got[k]["jpg"] == want[k]["jpg"] and got[k]["json"] == want[k]["json"]
    with pytest.raises(UserError):
        vlmforge.build("copy", "build", out=tmp_path / "d", source_options={"path": str(parent.path), "where": "1=1; DROP TABLE samples"})


def test_copy_reads_classification_sources(tmp_path):
    from tests.classification_fixtures import make_cub

    root = make_cub(tmp_path / "cub")
    b = vlmforge.build("copy", "cub", out=tmp_path / "o", source_options={"root": str(root)})
    rows = b.sql("SELECT key, label, split FROM samples ORDER BY key").fetchall()
    assert len({k for k, _, _ in rows}) == 12 and all(k.startswith("cub_") for k, _, _ in rows)
    # 4 images per class, the last of each in the test split (train_test_split.txt)
    per_class = dict(b.sql("SELECT label || '/' || split, count(*) FROM samples GROUP BY 1").fetchall())
    assert per_class == {f"{label}/{split}": n for label in ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")
                         for split, n in (("train", 3), ("test", 1))}


def test_cli_refuses_options_of_another_source(tmp_path, sample_coco):
    """An option the chosen source does not read was ignored: the build was made of something else
    than the command line says (a --coco-root with --source imagefolder, a --split for class folders)."""
    cli = [sys.executable, "-m", "vlmforge.cli", "build", "copy", "--out", str(tmp_path), "-q"]
    for args, line in (
            (["--source", "coco", "--coco-root", str(sample_coco), "--json", "x.json"],
             "error: --json does not apply to --source coco (its options: --coco-root, --split, --captions, --instances, --images)"),
            (["--source", "imagefolder", "--root", str(sample_coco), "--coco-root", str(sample_coco)],
             "error: --coco-root does not apply to --source imagefolder (its options: --root)"),
            (["--source", "imagefolder", "--root", str(sample_coco), "--split", "val2017"],
             "error: --split does not apply to --source imagefolder (its options: --root)")):
        r = subprocess.run(cli + args, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [line]
    assert not any(tmp_path.iterdir())
    r = subprocess.run(cli + ["--source", "coco", "--coco-root", str(sample_coco)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # --split defaults to val2017
    assert len(vlmforge.open_build(tmp_path / "copy" / CopyBuilder.VERSION)) == 12


def test_imagefolder_files_that_differ_only_by_extension_are_two_samples(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (12, 10), (200, 10, 10)).save(root / "cat" / "001.jpg")
    Image.new("RGB", (12, 10), (10, 200, 10)).save(root / "cat" / "001.png")
    Image.new("RGB", (12, 10), (10, 10, 200)).save(root / "cat" / "002.jpg")
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "o", source_options={"root": str(root)})
    rows = sorted(b.sql("SELECT key, original_format FROM samples").fetchall())
    assert len(rows) == 3 and len({k for k, _ in rows}) == 3
    from vlmforge.sample import make_key

    assert (make_key("cat/002"), "JPEG") in rows  # a file alone with its name keeps the key it always had
    assert {f for k, f in rows if k.startswith("cat-001")} == {"JPEG", "PNG"}


def test_long_file_names_and_ids_make_keys_a_tar_member_name_holds(tmp_path):
    from vlmforge.sample import MAX_KEY, make_key

    from tests.derived_data import class_folder, long_ids_json

    # Web-scraped file names share long prefixes: cut keys keep a hash of the whole name, so they stay apart.
    root = class_folder(tmp_path / "folder", {"american_pit_bull_terrier": 2}, "train")
    folder = root / "train" / "american_pit_bull_terrier"
    stem = "photo_of_a_dog_downloaded_from_the_internet_at_high_resolution_number_{}_version_final"
    for i, f in enumerate(sorted(folder.iterdir())):
        f.rename(folder / (stem.format(i) + ".jpg"))
    b = vlmforge.build("copy", "imagefolder", out=tmp_path / "o", source_options={"root": str(root)})
    keys = [k for (k,) in b.sql("SELECT key FROM samples").fetchall()]
    assert len(keys) == len(set(keys)) == 2 and all(len(k) <= MAX_KEY for k in keys)
    assert len(make_key("x" * MAX_KEY)) == MAX_KEY == len(make_key("x" * (MAX_KEY + 1)))
    assert make_key("x" * MAX_KEY) == "x" * MAX_KEY  # a key short enough stays as it was

    b = vlmforge.build("copy", "llava-json", out=tmp_path / "l", source_options={"json": str(long_ids_json(tmp_path))})
    keys = [k for (k,) in b.sql("SELECT key FROM samples").fetchall()]
    assert len(keys) == len(set(keys)) == 3 and all(len(k) <= MAX_KEY for k in keys)

