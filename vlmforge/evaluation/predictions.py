"""Predictions as JSONL, written as they come, so an interrupted run resumes where it stopped.

Each batch's records are appended and flushed together. On resume the file is read back; a last line
cut off mid-write is dropped (and trimmed from the file) and its item is simply asked again. A
`run.json` beside it records what produced the predictions, so a resume with a different model,
task or scoring is refused instead of mixing two runs in one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from vlmforge.errors import UserError

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"


class PredictionLog:
    """Append-only JSONL of prediction records keyed by item id."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """Records already written, by id. Trims a torn last line."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        done: dict[str, dict[str, Any]] = {}
        good_end = 0
        pos = 0
        lines = raw.splitlines(keepends=True)
        for n, line in enumerate(lines, 1):
            pos += len(line)
            try:
                rec = json.loads(line) if line.endswith(b"\n") else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict) or "id" not in rec:
                if n == len(lines):
                    break  # torn write: the process died mid-line
                # Not the end: cutting the file here would drop the predictions after it.
                raise UserError(f"{self.path} line {n} is not a prediction record; remove that line to resume, "
                                "or pass --overwrite to start again")
            done[str(rec["id"])] = rec
            good_end = pos
        if good_end < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        return done

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def check_run(out: Path, run: dict[str, Any], overwrite: bool, items: int | None = None) -> None:
    """Refuse to continue predictions made by a different run; --overwrite starts over. `items` (how many
    the run asks, which --limit may change on a resume) is recorded beside the run's identity."""
    run_file = out / RUN_FILE
    preds = out / PREDICTIONS
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give the folder for the predictions and report")
    other = not_an_evaluation(out)
    if other:  # its predictions, summary and plots would land among that folder's files
        raise UserError(f"--out {out} is {other}; write the evaluation elsewhere")
    if overwrite:
        preds.unlink(missing_ok=True)
        _remove_report(out)
    elif run_file.exists():
        try:
            old = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{run_file} is damaged, so its predictions cannot be told apart from another run's; "
                            "pass --overwrite to start again or choose another --out") from None
        old.pop("items", None)
        if old != run:
            diff = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
            raise UserError(f"{out} holds predictions of another run (differs in {', '.join(diff)}); "
                            "pass --overwrite to start again or choose another --out")
    elif preds.exists():
        raise UserError(f"{preds} exists but has no {RUN_FILE}; pass --overwrite or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the output folder {out}: {e.strerror} ({e.filename})") from None
    tmp = run_file.with_name(RUN_FILE + ".tmp")  # whole or not there: a run killed as it writes leaves no half file
    tmp.write_text(json.dumps({**run, "items": items} if items is not None else run, indent=1, sort_keys=True) + "\n")
    tmp.replace(run_file)


def check_not_an_evaluation(path: Path, option: str) -> None:
    """An evaluation's output folder given where data is read was called 'a training run (a model: give it as
    --model)', for its run.json: say what it is, and what to give instead."""
    path = Path(path)
    if not (path / PREDICTIONS).is_file():
        return
    if option == "--predictions":
        raise UserError(f"{path} is an evaluation's output folder; give its predictions file: --predictions "
                        f"{path / PREDICTIONS}")
    try:
        data = json.loads((path / RUN_FILE).read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        data = None
    hint = f" (it evaluated {data})" if data else ""
    raise UserError(f"{option} {path} is an evaluation's output folder, not data; give the data it evaluated{hint}")


def not_an_evaluation(out: Path) -> str | None:
    """What `out` is when it is a build, a training run or a model rather than an evaluation's folder. A training
    run's run.json was taken for another evaluation's, and --overwrite, which the refusal suggested, replaced it:
    the run could no longer be resumed or merged."""
    if (out / "build.json").exists():
        return "a build folder"
    if (out / "final").is_dir() or any(out.glob("checkpoint-*")):
        return "a training run (`vlmforge train --out`)"
    try:
        if "config" in json.loads((out / RUN_FILE).read_text()):  # an evaluation's run.json has no config
            return "a training run (`vlmforge train --out`)"
    except (OSError, ValueError, TypeError):
        pass  # none, or damaged: told apart below, or by the caller
    if any((out / name).is_file() for name in ("config.json", "adapter_config.json", "vlmforge_export.json")):
        return "a model folder"
    return None


def _remove_report(out: Path) -> None:
    """The summary, plots and task files of the predictions discarded: a run stopped before its own
    report would leave the old run's numbers beside its predictions."""
    summary = out / "summary.json"
    if not summary.is_file():
        return
    try:
        doc = json.loads(summary.read_text())
    except json.JSONDecodeError:
        doc = {}
    for name in [*doc.get("plots", []), *doc.get("files", [])]:
        (out / Path(name).name).unlink(missing_ok=True)
    summary.unlink()
