import io
import subprocess
import tarfile

import pytest
import webdataset as wds

from vlmforge.manifests.tarwriter import TarWriter, ustar_header


def test_header_matches_tarfile_ustar(tmp_path):
    info = tarfile.TarInfo("000000000139.jpg")
    info.size = 12345
    info.mode = 0o444
    info.mtime = 0
    info.uname = info.gname = ""
    assert ustar_header("000000000139.jpg", 12345) == info.tobuf(format=tarfile.USTAR_FORMAT)


def test_archive_reads_everywhere_with_fixed_fields(tmp_path):
    path = tmp_path / "a.tar"
    members = [("k1.jpg", b"\xff\xd8jpeg\xff\xd9"), ("k1.json", b'{"a":1}'), ("k2.jpg", b"x" * 1000), ("k2.json", b"{}")]
    with TarWriter(path) as w:
        offsets = [w.add(n, d) for n, d in members]
    data = path.read_bytes()
    assert len(data) % 10240 == 0
    with tarfile.open(path) as tf:
        got = [(m.name, tf.extractfile(m).read(), m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tf]
    assert [(n, d) for n, d, *_ in got] == members
    assert {tuple(g[2:]) for g in got} == {(0, 0, 0, "", 0o444)}
    # offsets point at each member's header
    for off, (name, _) in zip(offsets, members):
        assert data[off : off + len(name)] == name.encode()
    listing = subprocess.run(["tar", "tvf", str(path)], capture_output=True, text=True, check=True).stdout
    assert listing.count("\n") == 4
    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["k1", "k2"]
    assert samples[0]["json"] == b'{"a":1}'


def test_sha_and_size_match_file(tmp_path):
    import hashlib

    path = tmp_path / "b.tar"
    w = TarWriter(path)
    w.add("a.txt", b"hello")
    size, sha = w.close()
    raw = path.read_bytes()
    assert size == len(raw) and sha == hashlib.sha256(raw).hexdigest()


def test_shards_complete_in_order_while_hashes_overlap(tmp_path, monkeypatch):
    """Hash steps of one page make each shard's hash run in many steps, behind the writer and beside
    the next shard's; every shard still ends renamed, with its manifest part, and a sha256 equal to
    the file's."""
    import hashlib
    import json

    import vlmforge.manifests.tarwriter as tw
    from vlmforge.manifests.writer import ShardLimits, SplitWriter
    from vlmforge.sample import Sample

    monkeypatch.setattr(tw._FileHasher, "STEP", 4096)
    (tmp_path / "manifest").mkdir()
    w = SplitWriter(tmp_path, "train", [], {"builder": "t", "version": "0", "source": "s"},
                    ShardLimits(max_samples=3, max_bytes=1 << 30), set())
    for i in range(10):
        w.add(i, [Sample(key=f"k{i:03d}", image=bytes([i]) * (5000 + i), image_ext="jpg", width=1, height=1,
                         source_id=str(i), doc={"i": i})])
    stats = w.finish(10)
    assert [s["index"] for s in stats] == [0, 1, 2, 3]
    assert [s["samples"] for s in stats] == [3, 3, 3, 1]
    for s in stats:
        raw = (tmp_path / s["shard"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(raw).hexdigest() and s["bytes"] == len(raw)
        marker = tmp_path / "manifest" / s["shard"].replace(".tar", ".stats.json")
        assert json.loads(marker.read_text())["sha256"] == s["sha256"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("mode", ["copy_file_range", "sendfile", "read"])
def test_file_members_are_copied_byte_for_byte(tmp_path, mode):
    import hashlib

    from vlmforge.sample import FileSpan

    src = tmp_path / "img.jpg"
    src.write_bytes(bytes(range(256)) * 41 + b"tail")  # not a multiple of 512: the member is padded
    by_bytes, by_file = tmp_path / "a.tar", tmp_path / "b.tar"
    with TarWriter(by_bytes) as w:
        w.add("k.jpg", src.read_bytes())
        w.add("k.json", b"{}")
    w = TarWriter(by_file)
    w._copy_mode = mode
    w.add("k.jpg", FileSpan(str(src), src.stat().st_size))
    w.add("k.json", b"{}")
    size, sha = w.close()
    assert by_file.read_bytes() == by_bytes.read_bytes()
    assert (size, sha) == (by_bytes.stat().st_size, hashlib.sha256(by_bytes.read_bytes()).hexdigest())


def test_a_file_that_shrank_since_it_was_read_is_a_clear_error(tmp_path):
    from vlmforge.errors import BuildError
    from vlmforge.sample import FileSpan

    src = tmp_path / "img.jpg"
    src.write_bytes(b"x" * 100)
    w = TarWriter(tmp_path / "a.tar")
    with pytest.raises(BuildError, match="changed while the build ran"):
        w.add("k.jpg", FileSpan(str(src), 200))
    w.abort()


@pytest.mark.parametrize("sizes", [[10], [5000, 2], [9000, 600], [10240 - 512 * 3], [20000, 1, 1, 70000]])
def test_archives_end_on_a_whole_record_with_every_member_where_its_offset_says(tmp_path, sizes):
    """Gathered small writes and large ones interleave; the size reported, the file and the record
    padding (10 KiB, also when the end blocks alone cross into a new record) all agree."""
    import hashlib

    from vlmforge.sample import FileSpan

    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 400)
    path = tmp_path / "c.tar"
    w = TarWriter(path)
    offsets = []
    for i, n in enumerate(sizes):
        data = FileSpan(str(src), n) if n > 8000 else bytes([i]) * n
        offsets.append(w.add(f"m{i}.bin", data))
    size, sha = w.close()
    raw = path.read_bytes()
    assert size == len(raw) and len(raw) % 10240 == 0 and sha == hashlib.sha256(raw).hexdigest()
    with tarfile.open(path) as tf:
        members = tf.getmembers()
        assert [m.offset for m in members] == offsets
        for i, (m, n) in enumerate(zip(members, sizes)):
            expect = src.read_bytes()[:n] if n > 8000 else bytes([i]) * n
            assert tf.extractfile(m).read() == expect


def test_a_finished_sample_travels_as_its_encoded_json(tmp_path):
    """finish_results encodes the doc in the worker; pickled to the writer, only those bytes go."""
    import hashlib
    import pickle

    from vlmforge.sample import Sample, dumps_json, finish_results

    doc = {"id": "k", "conversations": [{"from": "human", "value": "<image>\nWhat is hidden?"}]}
    s = Sample(key="k", image=b"\xff\xd8x\xff\xd9", doc=doc)
    (done,) = finish_results([[s]])[0]
    assert done.doc_json == dumps_json(doc) and done.json_sha256 == hashlib.sha256(dumps_json(doc)).hexdigest()
    got = pickle.loads(pickle.dumps(done))
    assert got.doc is None and got.members() == s.members() == [("jpg", b"\xff\xd8x\xff\xd9"), ("json", dumps_json(doc))]
    assert pickle.dumps(done).count(b"What is hidden?") == 1  # the encoded json only, not the dict too
    import copy

    assert copy.copy(done).doc == doc and copy.deepcopy(done).doc == doc  # copies keep the dict


@pytest.mark.skipif(not hasattr(__import__("os"), "setpriority"), reason="no per-thread priorities here")
def test_a_finished_shards_hash_steps_back_for_the_writer(tmp_path):
    """finish() raises the hashing thread's nice value (and only that thread's)."""
    import os
    import threading

    import vlmforge.manifests.tarwriter as tw

    gate = threading.Event()
    seen = {}
    real_run = tw._FileHasher._run

    def run(self):
        real_run(self)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        gate.wait(10)

    tw_hasher = tw._FileHasher
    tw_hasher._run = run
    try:
        (tmp_path / "f").write_bytes(b"x" * 1000)
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        h = tw_hasher(str(tmp_path / "f"))
        h.finish(1000)
        gate.set()
        assert h.digest() == __import__("hashlib").sha256(b"x" * 1000).hexdigest()
    finally:
        tw_hasher._run = real_run
    assert seen["nice"] == min(19, before + 10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_the_writer_waits_rather_than_let_unhashed_shards_pile_up(tmp_path, monkeypatch):
    """At most MAX_SEALED shards wait for their hash; the rest of the stream waits for them."""
    import hashlib
    import threading

    import vlmforge.manifests.tarwriter as tw
    from vlmforge.manifests.writer import ShardLimits, SplitWriter
    from vlmforge.sample import Sample

    gate = threading.Event()  # hashes cannot finish until the test opens it
    real_run = tw._FileHasher._run

    def slow_run(self):
        self._started.set()  # the writer goes on; the hash itself waits for the gate
        gate.wait(30)
        real_run(self)

    monkeypatch.setattr(tw._FileHasher, "_run", slow_run)
    (tmp_path / "manifest").mkdir()
    w = SplitWriter(tmp_path, "train", [], {"builder": "t", "version": "0", "source": "s"},
                    ShardLimits(max_samples=1, max_bytes=1 << 30), set())
    w.MAX_SEALED = 2
    for i in range(3):  # shards 0 and 1 sealed; shard 2 open
        w.add(i, [Sample(key=f"k{i}", image=b"x" * 100, doc={"i": i})])
    assert len(w._sealed) == 2 and not w.finished
    opener = threading.Timer(0.3, gate.set)
    opener.start()
    w.add(3, [Sample(key="k3", image=b"x" * 100, doc={"i": 3})])  # a third sealed: waits for the oldest
    assert gate.is_set() and len(w._sealed) <= 2 and w.finished[0]["shard"] == "train-000000.tar"
    stats = w.finish(4)
    assert [s["samples"] for s in stats] == [1, 1, 1, 1]
    for s in stats:
        assert s["sha256"] == hashlib.sha256((tmp_path / s["shard"]).read_bytes()).hexdigest()


def test_an_interrupt_while_a_shard_is_sealed_stays_an_interrupt(tmp_path, monkeypatch):
    """Ctrl-C landing after a shard's file is closed but before the writer took note of it: stopping
    the writer must not fail again on that file (a double close was an OSError traceback in place of
    "interrupted; run the same command again"), and a rerun redoes that shard."""
    import vlmforge.manifests.tarwriter as tw
    from vlmforge.manifests.writer import ShardLimits, SplitWriter
    from vlmforge.sample import Sample

    finish = tw._FileHasher.finish
    calls = {"n": 0}

    def interrupted(self, size):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard's seal
            raise KeyboardInterrupt
        return finish(self, size)

    monkeypatch.setattr(tw._FileHasher, "finish", interrupted)
    (tmp_path / "manifest").mkdir()
    w = SplitWriter(tmp_path, "train", [], {"builder": "t", "version": "0", "source": "s"},
                    ShardLimits(max_samples=2, max_bytes=1 << 30), set())
    with pytest.raises(KeyboardInterrupt):
        for i in range(10):
            w.add(i, [Sample(key=f"k{i:03d}", image=bytes([i]) * 100, image_ext="jpg", width=1, height=1,
                             source_id=str(i), doc={"i": i})])
    w.abort()  # what run_build does with the interrupt: no error of its own
    assert [p.name for p in sorted(tmp_path.glob("*.tar"))] == ["train-000000.tar"]
    assert (tmp_path / "manifest" / "train-000000.stats.json").exists()
