"""`vlmforge verify` against the sha256 of each manifest part that build.json records: a builder column or a
reject reason edited in a part is found, though the shard's bytes cannot show it."""

import hashlib
import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.report.tiny_occlusion import build_tiny_occlusion
from vlmforge.manifests.read import open_build
from vlmforge.manifests.verify import verify_build


@pytest.fixture(scope="module")
def occ(tmp_path_factory, sample_coco):
    """Occlusion-like build with a `label` column: train 6 samples + 2 rejects, val 4, 3 samples a shard."""
    return build_tiny_occlusion(sample_coco, tmp_path_factory.mktemp("occ"), max_samples_per_shard=3)


@pytest.fixture
def build(tmp_path, occ):
    dst = tmp_path / "b"
    shutil.copytree(occ.path, dst)
    return dst


def verify(build_dir):
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "verify", str(build_dir)], capture_output=True, text=True)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def edit_first_value(part, column, value):
    t = pq.read_table(part)
    values = t.column(column).to_pylist()
    assert values and values[0] != value
    values[0] = value
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, pa.array(values, t.schema.field(column).type)),
                   part)


def strip_part_hashes(entry):
    """A shard entry or stats as vlmforge wrote them before it recorded the parts' sha256."""
    for field in ("manifest_sha256", "rejects_sha256"):
        entry.pop(field, None)


def test_build_json_records_each_part_sha256_and_an_untouched_build_verifies(build):
    info = json.loads((build / "build.json").read_text())
    for s in info["shards"]:
        part = build / "manifest" / s["shard"].replace(".tar", ".parquet")
        rejects = part.with_name(part.name.replace(".parquet", ".rejects.parquet"))
        assert s["manifest_sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
        assert s["rejects_sha256"] == hashlib.sha256(rejects.read_bytes()).hexdigest()
    r = verify(build)
    assert r.returncode == 0 and "note:" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_an_edited_label_fails_verify_naming_the_part(build):
    """Before: a label changed in a manifest part verified ok once the index was remade from the parts
    (the index check even advised `manifest reindex`)."""
    edit_first_value(build / "manifest" / "train-000001.parquet", "label", "edited")
    info = json.loads((build / "build.json").read_text())
    want = next(s["manifest_sha256"] for s in info["shards"] if s["shard"] == "train-000001.tar")
    have = hashlib.sha256((build / "manifest" / "train-000001.parquet").read_bytes()).hexdigest()
    assert have != want
    assert verify_build(open_build(build), quiet=True) == [
        f"manifest/train-000001.parquet: sha256 {have[:12]}... differs from build.json's {want[:12]}...: "
        "the manifest part was edited or replaced"]
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "manifest", "reindex", str(build)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "manifest/train-000001.parquet: sha256 " in r.stderr and "not remade from an edited part" in r.stderr
    r = verify(build)
    assert r.returncode == 1 and "x manifest/train-000001.parquet: sha256 " in r.stderr, r.stderr


def test_an_edited_reject_reason_fails_verify_naming_the_part(build):
    info = json.loads((build / "build.json").read_text())
    shard = next(s["shard"] for s in info["shards"] if s["rejects"])
    part = f"manifest/{shard.replace('.tar', '.rejects.parquet')}"
    edit_first_value(build / part, "reason", "edited")
    (build / "manifest.duckdb").unlink()  # as a copy without the index: nothing else to compare with
    problems = verify_build(open_build(build), quiet=True)
    assert len(problems) == 1 and problems[0].startswith(f"{part}: sha256 "), problems
    assert problems[0].endswith("the manifest part was edited or replaced")


def test_a_build_json_without_part_hashes_still_verifies_with_a_note(build):
    """A build made before build.json recorded the parts' sha256 passes, and verify says what it left unchecked."""
    info = json.loads((build / "build.json").read_text())
    for s in info["shards"]:
        strip_part_hashes(s)
    (build / "build.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    r = verify(build)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "note: build.json records no sha256 of the manifest parts" in out, out


def test_a_part_hash_removed_from_one_entry_is_named(build):
    """One entry stripped of its hash while the others keep theirs is an edited build.json, not an old build."""
    info = json.loads((build / "build.json").read_text())
    del info["shards"][1]["manifest_sha256"]
    (build / "build.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    assert f"build.json: shard entry {info['shards'][1]['shard']} lacks manifest_sha256" in \
        verify_build(open_build(build), quiet=True)


def test_a_resume_over_shards_of_an_earlier_vlmforge_records_their_part_hashes(tmp_path, occ, sample_coco):
    """Shards completed before stats recorded the parts' sha256: finalize hashes the parts, and build.json
    is the one an uninterrupted build writes."""
    out = tmp_path / "out"
    shutil.copytree(occ.path, out / "occlusion" / "0.0.1")
    build_dir = out / "occlusion" / "0.0.1"
    for stats in (build_dir / "manifest").glob("*.stats.json"):
        s = json.loads(stats.read_text())
        strip_part_hashes(s)
        stats.write_text(json.dumps(s, indent=1))
    (build_dir / "build.json").rename(build_dir / "build.pending.json")
    build_tiny_occlusion(sample_coco, out, max_samples_per_shard=3)
    assert (build_dir / "build.json").read_bytes() == (occ.path / "build.json").read_bytes()
    assert all("manifest_sha256" in s and "rejects_sha256" in s for s in json.loads((build_dir / "build.json").read_text())["shards"])
    assert verify_build(open_build(build_dir), quiet=True) == []


def test_publish_refuses_a_build_with_an_edited_label(build, tmp_path, monkeypatch):
    """publish verifies first: a build whose manifest part was edited is not uploaded."""
    from tests.test_hub import TOKEN, FakeHub
    from vlmforge import hub
    from vlmforge.errors import UserError

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    edit_first_value(build / "manifest" / "train-000001.parquet", "label", "edited")
    fake = FakeHub()
    with pytest.raises(UserError, match="fails verification, so it is not published: manifest/train-000001.parquet: sha256"):
        hub.publish(build, "lab/occ", api=fake, stage_dir=tmp_path / "stage", quiet=True)
    assert fake.files == {}
