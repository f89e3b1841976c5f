"""Batches run in the build process: the next batch goes to `builder.prefetch` before the current one is
processed, and the occlusion builder reads and decodes it in a thread meanwhile, with the same results."""

from __future__ import annotations

import sys

import vlmforge
from vlmforge.builders.base import Builder
from vlmforge.builders.occlusion import OcclusionBuilder
from vlmforge.executors.local import AHEAD_SWITCH_S, LocalExecutor

from tests.helpers import build_files


class Recording(Builder):
    def __init__(self):
        self.calls = []

    def prefetch(self, batch):
        self.calls.append(("prefetch", batch[0]))
        self.calls.append(("switch", sys.getswitchinterval()))

    def process(self, batch):
        self.calls.append(("process", batch[0]))
        return [[] for _ in batch]


def test_each_batch_is_prefetched_just_before_the_one_before_it_is_processed():
    b = Recording()
    switch = sys.getswitchinterval()
    got = list(LocalExecutor(1).map_batches(b, [(0, ["a"]), (1, ["b"]), (2, ["c"])]))
    assert [first for first, _, _ in got] == [0, 1, 2]
    assert [c for c in b.calls if c[0] != "switch"] == [("prefetch", "b"), ("process", "a"), ("prefetch", "c"),
                                                         ("process", "b"), ("process", "c")]
    assert {v for k, v in b.calls if k == "switch"} == {min(switch, AHEAD_SWITCH_S)}  # while reading ahead
    assert sys.getswitchinterval() == switch  # and put back after


def test_a_builder_that_does_not_read_ahead_keeps_the_interpreter_as_it_was():
    class Plain(Recording):
        prefetch = Builder.prefetch

        def process(self, batch):
            self.calls.append(("switch", sys.getswitchinterval()))
            return [[] for _ in batch]

    b, switch = Plain(), sys.getswitchinterval()
    list(LocalExecutor(1).map_batches(b, [(0, ["a"]), (1, ["b"])]))
    assert b.calls == [("switch", switch)] * 2


def test_an_occlusion_build_read_ahead_is_the_build_read_in_turn(tmp_path, coco_copy, monkeypatch):
    """Damaged images in a prefetched batch are rejected as they are when read in turn, every prefetched read
    is taken, and the build is byte-identical."""
    files = sorted((coco_copy / "val2017").glob("*.jpg"))
    files[9].write_bytes(files[9].read_bytes()[:600])  # cut short, in the second batch (8 images a batch)
    files[10].unlink()
    opts = {"coco_root": str(coco_copy), "split": "val2017"}
    taken = []
    prefetch = OcclusionBuilder.prefetch

    def counted(self, batch):
        prefetch(self, batch)
        taken.append(self)

    monkeypatch.setattr(OcclusionBuilder, "prefetch", counted)
    ahead = vlmforge.build("occlusion", "coco", out=tmp_path / "a", source_options=opts, keep_original=True)
    assert taken and all(b._ahead == {} for b in taken)  # prefetched reads were all taken
    monkeypatch.setattr(OcclusionBuilder, "prefetch", Builder.prefetch)
    in_turn = vlmforge.build("occlusion", "coco", out=tmp_path / "b", source_options=opts, keep_original=True)
    assert build_files(ahead.path) == build_files(in_turn.path)
    reasons = {r for (r,) in ahead.sql("SELECT reason FROM rejects WHERE stage = 'read_image'").fetchall()}
    assert reasons == {"corrupt_image", "missing_image"} and len(ahead) >= 5
