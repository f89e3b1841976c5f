"""A local worker process killed mid-build (the out-of-memory killer, `kill -9`): one error line that
says how to resume, and the rerun ends byte-identical to an uninterrupted build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


class CutOffCopy(KilledCopy):
    """Its worker dies halfway through sending a result: a message header and part of the message are
    in the pool's result pipe, then SIGKILL (what the OOM killer does to a worker sending a large batch)."""

    def process(self, batch):
        if any(r.get("image_id") == self.victim for r in batch):
            import gc
            import struct
            from multiprocessing.queues import SimpleQueue

            results = next(o for o in gc.get_objects() if isinstance(o, SimpleQueue))
            with results._wlock:
                os.write(results._writer.fileno(), struct.pack("!i", 100_000) + bytes(100))
                os.kill(os.getpid(), signal.SIGKILL)
        return CopyBuilder.process(self, batch)


@pytest.mark.timeout(120)
def test_a_worker_killed_while_sending_its_result_is_one_error_line(tmp_path, sample_coco):
    """Before: the build waited for ever for the rest of the result (the pool's reader never saw the end)."""
    src = open_source("coco", coco_root=str(sample_coco), split="val2017")
    killed = CutOffCopy(CopyConfig(), src)
    killed.victim = [r["image_id"] for r in src.records("val")][5]
    with pytest.raises(BuildError, match=r"a worker process died before inputs \d+-\d+ were done .* rerun the same command to resume"):
        run_build(killed, tmp_path / "a", executor=LocalExecutor(2), limits=ShardLimits(max_samples=2), quiet=True)


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


class SlowCopy(CopyBuilder):
    """Copy, one image a batch, each logging its worker's pid and taking half a second."""

    batch_size = 1

    def process(self, batch):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return super().process(batch)


KILLED = """
import sys
from tests.executors.test_worker_death import SlowCopy
from vlmforge.builders.base import run_build
from vlmforge.builders.copy import CopyConfig
from vlmforge.executors.local import LocalExecutor
from vlmforge.sources import open_source

b = SlowCopy(CopyConfig(), open_source("coco", coco_root=sys.argv[1], split="val2017"))
b.log = sys.argv[2] + "/pids.log"
run_build(b, sys.argv[2] + "/out", LocalExecutor(2), quiet=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_a_build_process_killed_mid_build(tmp_path, sample_coco, sig):
    """Before: killed with SIGKILL or SIGTERM (the OOM killer, a batch scheduler), the build left its
    worker processes waiting for work for ever."""
    from tests.executors.test_interrupt import _alive, _descendants

    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(sample_coco), str(tmp_path)],
                            cwd=Path(__file__).parents[2], start_new_session=True)
    log, workers = tmp_path / "pids.log", set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _descendants(proc.pid)
        if log.exists() and len(set(log.read_text().split())) >= 2:
            break
        time.sleep(0.05)
    busy = {int(p) for p in log.read_text().split()}
    assert proc.poll() is None and len(busy) == 2 and busy <= workers
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert [p for p in workers if _alive(p)] == []
