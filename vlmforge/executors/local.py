"""Run a builder's `process` over batches, in this process or in a pool of worker processes.

Results come back in submission order, so the writer sees the same stream whatever the number of
workers. At most `2 * workers` batches are in flight: a slow writer never lets results pile up.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Iterable, Iterator

from vlmforge.errors import BuildError, UserError
from vlmforge.sample import finish_results

if TYPE_CHECKING:
    from vlmforge.builders.base import Builder

_WORKER_BUILDER: "Builder | None" = None
POLL_S = 1.0
DEATH_NOTICE_S = 5.0  # the pool itself notices a dead worker within a second or so
_SETUP_ERROR: "UserError | None" = None


def _init_worker(builder: "Builder") -> None:
    global _WORKER_BUILDER, _SETUP_ERROR
    from vlmforge.executors.memory import tune_allocator

    # Ctrl-C reaches the whole process group; the parent alone decides how to stop (see map_batches).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    tune_allocator()
    try:
        builder.setup()
    except UserError as e:  # raised with the first batch: from an initializer it only breaks the pool
        _SETUP_ERROR = e
    _WORKER_BUILDER = builder


def check_workers(workers: object) -> None:
    """A UserError, not a TypeError or a silent default, for a worker count below 1 or not a number."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be a whole number of at least 1, not {workers!r}")


def sendable(error: BaseException) -> BaseException:
    """`error`, or, when it cannot be unpickled in the driver (an exception whose constructor takes
    more than its message), one of its kind that can: a UserError stays a UserError (one line on the
    CLI), anything else becomes a RuntimeError naming its type. Else the local pool reads it as a
    killed worker and Ray as an UnserializableException."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        if isinstance(error, UserError):
            return UserError(str(error))
        return RuntimeError(f"{type(error).__name__}: {error}")


def _exit_with_parent() -> None:
    """End this worker when the build process ends without shutting the pool down (SIGKILL, SIGTERM,
    the out-of-memory killer): else the workers wait for work for ever, each holding its models."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's end of the pipe closes, i.e. when it is gone
        os._exit(1)

    threading.Thread(target=watch, name="vlmforge-parent-watch", daemon=True).start()


def _run_batch(task: tuple[int, list]) -> tuple[int, int, list]:
    try:
        if _SETUP_ERROR is not None:
            raise _SETUP_ERROR
        assert _WORKER_BUILDER is not None
        first, batch = task
        # The writer is on this machine and reads the same files: passthrough images go by reference.
        return first, len(batch), finish_results(_WORKER_BUILDER.process(batch), by_reference=True)
    except Exception as e:
        error = sendable(e)
        if error is e:
            raise
        raise error from e  # the worker's traceback, with the original, comes with it


class LocalExecutor:
    """`workers=1` runs in-process; more uses worker processes, each calling `setup()` once."""

    name = "local"

    def __init__(self, workers: int = 1):
        check_workers(workers)
        self.workers = workers

    def map_batches(self, builder: "Builder", tasks: Iterable[tuple[int, list]]) -> Iterator[tuple[int, int, list]]:
        """For each `(first_index, batch)`, yields `(first_index, len(batch), results)` in order."""
        if self.workers == 1:
            yield from _in_process(builder, tasks)
            return
        # forkserver, not fork: a parent that already ran torch (OpenMP) or holds threads (progress
        # bars, shard hashing) can deadlock a forked child. Each worker gets the builder pickled.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["vlmforge.builders.base"])
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(builder,))
        pending: deque[tuple[tuple[int, list], Future]] = deque()
        try:
            try:
                for task in tasks:
                    pending.append((task, pool.submit(_run_batch, task)))
                    if len(pending) >= 2 * self.workers:
                        yield _result(pool, pending[0][1])
                        pending.popleft()
                while pending:
                    yield _result(pool, pending[0][1])
                    pending.popleft()
            except BrokenProcessPool:  # a worker was killed (the OOM killer, kill -9): say how to go on
                first, batch = pending[0][0] if pending else (0, [None])
                raise BuildError(
                    f"a worker process died before inputs {first}-{first + len(batch) - 1} were done (killed, e.g. "
                    "by the system when memory ran out: fewer --workers need less); complete shards are kept: "
                    "rerun the same command to resume") from None
        except BaseException:  # an error, an interrupt, or the consumer closing this generator
            # Queued batches are dropped and the running ones finish (a batch is short), so that no
            # worker dies halfway through sending a result; a second interrupt stops them at once.
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except BaseException:
                _terminate(pool)
                raise
            raise
        pool.shutdown(wait=True)


# While a builder reads ahead in a thread, the interpreter hands the GIL round every 0.5 ms, not 5: a read
# that finished in C waits that long for the GIL to return its result while this thread runs Python.
# Measured on a repeated 640x480 occlusion build (medians of 5, one process): 1.02 s reading in turn, 0.76 s
# reading ahead, 0.73 s with the shorter switch.
AHEAD_SWITCH_S = 0.0005


def _in_process(builder: "Builder", tasks: Iterable[tuple[int, list]]) -> Iterator[tuple[int, int, list]]:
    """One process: each batch processed here, the next one handed to `builder.prefetch` first."""
    import sys

    from vlmforge.builders.base import Builder

    builder.setup()
    reads_ahead = type(builder).prefetch is not Builder.prefetch
    tasks = iter(tasks)
    switch = sys.getswitchinterval()
    if reads_ahead:
        sys.setswitchinterval(min(switch, AHEAD_SWITCH_S))
    try:
        upcoming = next(tasks, None)
        while upcoming is not None:
            first, batch = upcoming
            upcoming = next(tasks, None)
            if reads_ahead and upcoming is not None:
                builder.prefetch(upcoming[1])
            yield first, len(batch), finish_results(builder.process(batch))
    finally:
        sys.setswitchinterval(switch)


def _result(pool: ProcessPoolExecutor, future: Future) -> tuple[int, int, list]:
    """`future.result()`, or BrokenProcessPool when a worker is dead and the pool does not say so within
    DEATH_NOTICE_S: a worker killed while sending its result leaves the pool's reader waiting for the rest
    of the message for ever (the parent holds a write end of that pipe too, so no end of file comes)."""
    dead_since = None
    while True:
        try:
            return future.result(timeout=POLL_S)
        except FuturesTimeout:
            pass
        procs = list((getattr(pool, "_processes", None) or {}).values())
        if not any(p.exitcode is not None for p in procs):
            dead_since = None  # a worker the pool has since replaced or noticed
            continue
        dead_since = dead_since or time.monotonic()
        if time.monotonic() - dead_since >= DEATH_NOTICE_S:
            _unstick(pool)
            raise BrokenProcessPool("a worker died while sending its result")


def _unstick(pool: ProcessPoolExecutor) -> None:
    """Feed the pool's result reader bytes it cannot unpickle, from a daemon thread: it then finds the
    pool broken and ends (else its thread, which the interpreter joins at exit, blocks for ever)."""
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    manager = getattr(pool, "_executor_manager_thread", None)
    if writer is None or manager is None:
        return

    def feed() -> None:
        while manager.is_alive():
            try:
                os.write(writer.fileno(), bytes(4096))
            except OSError:
                return

    threading.Thread(target=feed, name="vlmforge-pool-unstick", daemon=True).start()


def _terminate(pool: ProcessPoolExecutor) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
