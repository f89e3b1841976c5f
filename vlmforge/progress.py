"""One console and one progress-bar helper for the whole package (rich), so output stays uniform."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())  # a log keeps each message on one line


# Seconds between two progress lines when stderr is not a terminal (a log file, a batch job).
LOG_INTERVAL = 30.0


@contextmanager
def progress_bar(label: str, total: int | None = None, disable: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields `advance(n)`. When stderr is not a terminal (a batch job's
    log) it writes a plain line every LOG_INTERVAL seconds instead, and one when it ends if it wrote
    any: work shorter than that (tests, CI) leaves the log clean."""
    if disable:
        yield lambda n=1: None
        return
    if not sys.stderr.isatty():
        with _log_lines(label, total) as advance:
            yield advance
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n=1: prog.advance(task, n)


@contextmanager
def _log_lines(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    start = time.monotonic()
    state = {"done": 0, "next": start + LOG_INTERVAL, "wrote": False}

    def line(now: float) -> None:
        done, took = state["done"], now - start
        text = f"{label}: {done:,}" + (f"/{total:,} ({100 * done / total:.0f}%)" if total else "")
        text += f", {_clock(took)} elapsed"
        if total and 0 < done < total:
            text += f", about {_clock(took * (total - done) / done)} left"
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        state["wrote"] = True

    def advance(n: int = 1) -> None:
        state["done"] += n
        now = time.monotonic()
        if now >= state["next"]:
            line(now)
            state["next"] = now + LOG_INTERVAL

    try:
        yield advance
    finally:
        if state["wrote"]:
            line(time.monotonic())


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def quiet_model_loading() -> None:
    """Silence transformers' per-load progress bars and advisory warnings: a build shows its own bar."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
