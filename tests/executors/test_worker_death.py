"""A local worker process killed mid-build (the out-of-memory killer, `kill -9`): one error line that
says how to resume, and the rerun ends byte-identical to an uninterrupted build."""

from __future__ import annotations

import os
import signal

import pytest

from vlmforge.builders.base import run_build
from vlmforge.builders.copy import CopyBuilder, CopyConfig
from vlmforge.errors import BuildError, UserError
from vlmforge.executors.local import LocalExecutor
from vlmforge.manifests.writer import ShardLimits
from vlmforge.sources import open_source

from tests.helpers import build_files


class KilledCopy(CopyBuilder):
    """Copy whose worker kills itself (SIGKILL) on the batch holding the sixth image. Workers import this
    module to unpickle it."""

    batch_size = 2

    def process(self, batch):
        if any(r.get("image_id") == self.victim for r in batch):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().process(batch)


def test_a_killed_worker_is_one_error_line_and_the_build_resumes(tmp_path, sample_coco):
    """Before: concurrent.futures' BrokenProcessPool traceback, with nothing said about resuming."""
    src = open_source("coco", coco_root=str(sample_coco), split="val2017")
    limits = ShardLimits(max_samples=2)
    killed = KilledCopy(CopyConfig(), src)
    killed.victim = [r["image_id"] for r in src.records("val")][5]
    with pytest.raises(BuildError, match=r"a worker process died before inputs \d+-\d+ were done .* rerun the same command to resume"):
        run_build(killed, tmp_path / "a", executor=LocalExecutor(2), limits=limits, quiet=True)
    again = run_build(CopyBuilder(CopyConfig(), src), tmp_path / "a", executor=LocalExecutor(2), limits=limits, quiet=True)
    whole = run_build(CopyBuilder(CopyConfig(), src), tmp_path / "b", limits=limits, quiet=True)
    assert build_files(again) == build_files(whole) and len(build_files(whole)) > 10


class CodedError(UserError):
    """A user error whose constructor takes more than its message: pickle cannot rebuild it from args."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class CodedBug(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class FailingCopy(CopyBuilder):
    """Copy that raises `error` on the batch holding the sixth image."""

    batch_size = 2

    def process(self, batch):
        if any(r.get("image_id") == self.victim for r in batch):
            raise self.error("image 6 names a model that does not exist", 3)
        return super().process(batch)


@pytest.mark.parametrize("error", [CodedError, CodedBug])
def test_a_worker_error_that_pickle_cannot_rebuild_is_reported_as_itself(tmp_path, sample_coco, error):
    """Before: the pool could not unpickle it and the build said a worker was killed (memory ran out)
    and to rerun, which fails the same way again."""
    src = open_source("coco", coco_root=str(sample_coco), split="val2017")
    failing = FailingCopy(CopyConfig(), src)
    failing.victim, failing.error = [r["image_id"] for r in src.records("val")][5], error
    want = (UserError, r"^image 6 names") if error is CodedError else (RuntimeError, r"^CodedBug: image 6 names")
    with pytest.raises(want[0], match=want[1]) as raised:
        run_build(failing, tmp_path, executor=LocalExecutor(2), limits=ShardLimits(max_samples=2), quiet=True)
    assert not isinstance(raised.value, BuildError)
