"""Ctrl-C during a multi-worker build (SIGINT to the whole process group, as a terminal sends it, or to
the build process alone, as `kill -INT` does): the workers stop, the command says how to resume and
exits 130 without a traceback, and running it again finishes the same bytes as an uninterrupted build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmforge.builders.occlusion import OcclusionBuilder


def _descendants(pid: int) -> set[int]:
    """Processes below `pid`, from /proc (Linux)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted([*folder.glob("*.tar"), *(folder / "manifest").glob("*.parquet")])}


VLMFORGE = [sys.executable, "-c", "from vlmforge.cli import main; main()"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """A sample, its build's arguments and environment, and the shard hashes of an uninterrupted build."""
    from vlmforge.sources.sample_coco import make_sample

    tmp = tmp_path_factory.mktemp("interrupt")
    root = make_sample(tmp / "coco", images=160, seed=1)
    env = {**os.environ, "VLMFORGE_CACHE": str(tmp / "cache")}
    args = ["build", "occlusion", "--coco-root", str(root), "--max-samples-per-shard", "4", "--quiet"]
    subprocess.run([*VLMFORGE, *args, "--out", str(tmp / "whole")], env=env, check=True, timeout=300)
    return args, env, _hashes(tmp / "whole" / "occlusion" / OcclusionBuilder.VERSION)


@pytest.mark.parametrize("group", [True, False], ids=["ctrl-c", "kill-int"])
def test_sigint_stops_workers_and_the_build_resumes_to_the_same_bytes(tmp_path, whole, group):
    args, env, want = whole
    vlmforge = VLMFORGE
    out = tmp_path / "out"
    proc = subprocess.Popen([*vlmforge, *args, "--out", str(out), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    build = out / "occlusion" / OcclusionBuilder.VERSION
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _descendants(proc.pid)
        if len(list(build.glob("*.tar"))) >= 2:  # shards are being written: workers are busy
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    workers |= _descendants(proc.pid)
    assert len(workers) >= 2
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the interrupted build"
    assert (build / "build.pending.json").exists() and not (build / "build.json").exists()

    subprocess.run([*vlmforge, *args, "--out", str(out), "--workers", "2"], env=env, check=True, timeout=300)
    resumed = _hashes(build)
    assert len(resumed) > 10 and resumed == want


SCRIPT = """
import sys, time
import vlmforge
from vlmforge.manifests import writer

def interrupted(self, *args, **kwargs):  # Ctrl-C landing in the writer, between two batches
    raise KeyboardInterrupt

writer.SplitWriter.add = interrupted
t = time.monotonic()
try:
    vlmforge.build("copy", "coco", out=sys.argv[2], workers=2, source_options={"coco_root": sys.argv[1]})
except KeyboardInterrupt as e:
    kept = e  # as a CLI framework may: its traceback keeps run_build's frames, and the batch stream, alive
    print("interrupted after %.1f s" % (time.monotonic() - t))
"""


def test_an_interrupt_in_the_writer_stops_the_pool_and_the_process_exits(tmp_path):
    """Left open, the pool's workers would wait for work while interpreter exit waits for them."""
    from vlmforge.sources.sample_coco import make_sample

    root = make_sample(tmp_path / "coco", images=64, seed=2)
    env = {**os.environ, "VLMFORGE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "interrupted after" in done.stdout, done.stderr
