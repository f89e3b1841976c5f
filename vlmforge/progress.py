"""One console and one progress-bar helper for the whole package (rich), so output stays uniform."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def progress_bar(label: str, total: int | None = None, disable: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields `advance(n)`. Silent when disabled or stderr is not a terminal
    and no total is known (logs stay clean in CI)."""
    if disable:
        yield lambda n=1: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n=1: prog.advance(task, n)


def quiet_model_loading() -> None:
    """Silence transformers' per-load progress bars and advisory warnings: a build shows its own bar."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
