"""Derived builds check the parent bytes they copy against the sha256 its manifest records: a damaged
parent shard stops the build with one line naming the shard and the sample, instead of passing on."""

import hashlib
import shutil
import subprocess
import sys

import pytest

import vlmforge
from vlmforge.errors import UserError


@pytest.fixture
def parent(tmp_path, coco_build):
    """A private copy of the 12-sample COCO copy build (3 shards), for damaging."""
    dst = tmp_path / "parent"
    shutil.copytree(coco_build.path, dst)
    return vlmforge.open_build(dst)


def _flip(build, key: str, member: str, at: int = 100) -> str:
    """Flip one byte `at` bytes into the data of `key`'s `member` (its shard keeps its size)."""
    shard, offset = build.sql(f"SELECT shard, \"offset\" FROM samples WHERE key = '{key}'").fetchall()[0]
    path = build.path / shard
    raw = bytearray(path.read_bytes())
    pos = offset
    while not raw[pos : pos + 100].rstrip(b"\0").decode().endswith(f".{member}"):
        size = int(raw[pos + 124 : pos + 136].split(b"\0")[0].strip(), 8)
        pos += 512 + size + (-size % 512)
    raw[pos + 512 + at] ^= 0x01
    path.write_bytes(bytes(raw))
    return shard


@pytest.mark.parametrize("member", ["jpg", "json"])
@pytest.mark.parametrize("builder, config", [("subset", {}), ("split", {"fraction": 1.0}), ("model-ready", {"size": 16})])
def test_a_flipped_byte_in_the_parent_is_one_error_naming_shard_and_sample(tmp_path, parent, member, builder, config):
    key = parent.sql("SELECT key FROM samples ORDER BY key LIMIT 1 OFFSET 6").fetchall()[0][0]
    shard = _flip(parent, key, member, at=3 if member == "json" else 100)
    with pytest.raises(UserError) as e:
        vlmforge.build(builder, "build", out=tmp_path / "out", source_options={"path": str(parent.path)}, **config)
    msg = str(e.value)
    assert f"{shard}, sample {key}: its {member} bytes differ from the sha256 the manifest records" in msg
    assert msg.startswith(f"parent build {parent.path} is damaged") and "\n" not in msg


def test_a_damaged_tar_header_is_the_same_error(tmp_path, parent):
    key, shard, offset = parent.sql("SELECT key, shard, \"offset\" FROM samples ORDER BY key LIMIT 1").fetchall()[0]
    path = parent.path / shard
    raw = bytearray(path.read_bytes())
    raw[offset + 124 : offset + 135] = b"99999999999"  # the first member's size field
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"{shard}, sample {key}: "):
        vlmforge.build("subset", "build", out=tmp_path / "out", source_options={"path": str(parent.path)})


def test_the_cli_says_it_in_one_line_with_workers(tmp_path, parent):
    key = parent.sql("SELECT key FROM samples ORDER BY key DESC LIMIT 1").fetchall()[0][0]
    shard = _flip(parent, key, "jpg")
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "split", "--from", str(parent.path),
                        "--fraction", "1.0", "--workers", "2", "--out", str(tmp_path / "out"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{shard}, sample {key}: its jpg bytes differ" in lines[0]


def test_intact_parents_copy_unchanged_and_the_digest_is_reused_only_for_unchanged_images(tmp_path, coco_build, tiny_clip):
    sub = vlmforge.build("subset", "build", out=tmp_path / "s", source_options={"path": str(coco_build.path)})
    ready = vlmforge.build("model-ready", "build", out=tmp_path / "r", source_options={"path": str(coco_build.path)}, size=16)
    for build in (sub, ready):
        rows = dict(build.sql("SELECT key, image_sha256 FROM samples").fetchall())
        assert len(rows) == 12
        for s in build.samples(decode=False):
            assert hashlib.sha256(s["jpg"]).hexdigest() == rows[s["__key__"]]
    before = dict(coco_build.sql("SELECT key, image_sha256 FROM samples").fetchall())
    assert dict(sub.sql("SELECT key, image_sha256 FROM samples").fetchall()) == before


def test_a_parent_with_a_missing_or_foreign_manifest_part_is_refused(tmp_path, parent):
    """A shard whose manifest part is gone made an empty (or short) child without a word."""
    parts = sorted((parent.path / "manifest").glob("*-00000[0-9].parquet"))
    (parent.path / "manifest.duckdb").unlink()
    parts[0].unlink()
    with pytest.raises(UserError, match=rf"parent build {parent.path} is incomplete \(manifest/{parts[0].name}: missing\)"):
        vlmforge.build("subset", "build", out=tmp_path / "out", source_options={"path": str(parent.path)})
    parts[0].write_bytes(parts[-1].read_bytes())  # another shard's rows in its place
    with pytest.raises(UserError, match=r"is damaged: its manifest has 9 samples of split 'val', build.json 12"):
        vlmforge.build("subset", "build", out=tmp_path / "out", source_options={"path": str(parent.path)})
    assert not (tmp_path / "out").exists()


def test_an_unreadable_manifest_part_is_one_error_line(tmp_path, parent):
    part = sorted((parent.path / "manifest").glob("*-000000.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-100])  # its footer cut off
    (parent.path / "manifest.duckdb").unlink()
    with pytest.raises(UserError, match=rf"{parent.path}: manifest part manifest/{part.name} unreadable \(.*\); the build folder is damaged"):
        vlmforge.build("subset", "build", out=tmp_path / "out", source_options={"path": str(parent.path)})
