"""The ray executor: same bytes as the local executor, setup once per actor, killed workers survived.

One local Ray instance with 2 CPUs serves the whole module (start-up costs ~6 s and ~1.9 GB). The
test-only builders below are subclasses of the copy builder with the same name and config, so their
builds must equal the plain local copy build byte for byte; they only add side effects (logs of
which process did what, a worker that kills itself) that leave the output alone.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import vlmforge
from vlmforge.builders import BUILDERS
from vlmforge.builders.base import run_build
from vlmforge.builders.copy import CopyBuilder, CopyConfig
from vlmforge.curation.embedding import SentenceEmbedder
from vlmforge.errors import BuildError, UserError
from vlmforge.executors.local import LocalExecutor
from vlmforge.executors.ray import CONNECT_TIMEOUT_S, RayExecutor, declared_resources, plan_stage
from vlmforge.manifests.verify import verify_build
from vlmforge.manifests.writer import ShardLimits, complete_shards
from vlmforge.sources import open_source

from tests.helpers import build_files

LIMITS = ShardLimits(max_samples=2)  # 12 samples -> 6 shards: shard order is visible in the bytes


# -- test-only builders (pickled by reference: Ray workers import this module) --------------------

class SmallBatchCopy(CopyBuilder):
    """Copy in batches of 2 (6 batches for 12 images), logging which process handled each batch.
    The first batch is slow, so later batches finish first and the executor must reorder them."""

    batch_size = 2
    log_dir: str = ""
    victim: str | None = None  # source_id whose batch kills its worker process
    kill_always: bool = False  # kill on every attempt, not only the first
    driver_pid: int = 0

    def process(self, batch):
        pid = os.getpid()
        _append(Path(self.log_dir) / "process.log", f"{pid} {batch[0]['source_id']}")
        if pid != self.driver_pid and any(r["source_id"] == self.victim for r in batch):
            if self.kill_always or _first_time(Path(self.log_dir) / "killed"):
                os.kill(pid, signal.SIGKILL)
        if batch[0]["source_id"] == self.first_id:
            time.sleep(0.4)
        return super().process(batch)


class ModelCopy(SmallBatchCopy):
    """The same, as a model stage: `setup()` stands for loading a model and is logged per process."""

    def setup(self) -> None:
        _append(Path(self.log_dir) / "setup.log", str(os.getpid()))


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _first_time(marker: Path) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _builder(cls, sample_coco: Path, log_dir: Path, victim_index: int | None = None, kill_always: bool = False):
    src = open_source("coco", coco_root=str(sample_coco), split="val2017")
    ids = [r["source_id"] for r in src.records("val")]
    b = cls(CopyConfig(), src)
    log_dir.mkdir(parents=True, exist_ok=True)
    b.log_dir, b.first_id, b.driver_pid, b.kill_always = str(log_dir), ids[0], os.getpid(), kill_always
    b.victim = ids[victim_index] if victim_index is not None else None
    return b


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_copy(tmp_path_factory, sample_coco) -> dict[str, bytes]:
    """The reference: the plain copy build of the sample with the local executor."""
    src = open_source("coco", coco_root=str(sample_coco), split="val2017")
    path = run_build(CopyBuilder(CopyConfig(), src), tmp_path_factory.mktemp("local"), LocalExecutor(1), LIMITS, quiet=True)
    files = build_files(path)
    assert sum(name.endswith(".tar") for name in files) == 6
    return files


def _same(path: Path, reference: dict[str, bytes]) -> None:
    files = build_files(path)
    assert sorted(files) == sorted(reference)
    assert [k for k in files if files[k] != reference[k]] == []


# -- planning (no Ray needed) ---------------------------------------------------------------------

def test_plan_cpu_work_runs_as_tasks_sized_to_the_cluster():
    assert plan_stage({}, False, {"CPU": 2}) == ("tasks", 2, 1.0, 0.0)
    assert plan_stage({"cpu": 2}, False, {"CPU": 16}) == ("tasks", 8, 2.0, 0.0)
    assert plan_stage({}, False, {"CPU": 16}, concurrency=3) == ("tasks", 3, 1.0, 0.0)
    # --gpus-per-model-worker does not give GPUs to CPU work
    assert plan_stage({}, False, {"CPU": 2, "GPU": 1}, gpus_per_model_worker=1) == ("tasks", 2, 1.0, 0.0)


def test_plan_model_stage_uses_fractional_cpus_so_every_actor_fits():
    # 4 actors asking 1 CPU each on 2 CPUs: 2 could never start and the build would hang.
    assert plan_stage({"cpu": 1}, True, {"CPU": 2}, concurrency=4) == ("actors", 4, 0.5, 0.0)
    assert plan_stage({"cpu": 1}, True, {"CPU": 2}, concurrency=3) == ("actors", 3, 0.66, 0.0)
    assert plan_stage({"cpu": 1}, True, {"CPU": 2}) == ("actors", 2, 1.0, 0.0)


def test_plan_gpu_model_stage():
    cluster = {"CPU": 16, "GPU": 4}
    assert plan_stage({"cpu": 1, "gpu": 1}, True, cluster) == ("actors", 4, 1.0, 1.0)
    assert plan_stage({"cpu": 1, "gpu": 1}, True, cluster, gpus_per_model_worker=0.5) == ("actors", 8, 1.0, 0.5)
    assert plan_stage({"cpu": 1}, True, cluster, gpus_per_model_worker=2) == ("actors", 2, 1.0, 2.0)
    with pytest.raises(UserError, match="need 6 GPUs; the Ray cluster has 4"):
        plan_stage({"gpu": 2}, True, cluster, concurrency=3)
    with pytest.raises(UserError, match="has no GPU; pass --gpus-per-model-worker 0"):
        plan_stage({"gpu": 1}, True, {"CPU": 2})
    assert plan_stage({"gpu": 1}, True, {"CPU": 2}, gpus_per_model_worker=0) == ("actors", 2, 1.0, 0.0)


class _Detector:
    resources = {"cpu": 2, "gpu": 0.5}


def test_declared_resources_come_from_the_builder_or_its_backends(sample_coco):
    src = open_source("coco", coco_root=str(sample_coco), split="val2017")
    b = CopyBuilder(CopyConfig(), src)
    assert declared_resources(b) == {}
    b.embedder = SentenceEmbedder()  # declares {"cpu": 1}; lazy, so nothing loads here
    b.stages = [_Detector()]
    assert declared_resources(b) == {"cpu": 2.0, "gpu": 0.5}
    b.resources = {"GPU": 1}
    assert declared_resources(b) == {"gpu": 1.0}


# -- builds on Ray ----------------------------------------------------------------------------------

def test_a_quiet_build_on_a_private_ray_instance_prints_nothing(tmp_path, sample_coco):
    """Before: Ray's warning that token authentication is on, in every build, `--quiet` or not. (Before
    the module's Ray session starts: this build starts its own instance.)"""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "copy", "--coco-root", str(sample_coco),
                        "--out", str(tmp_path), "--executor", "ray", "--concurrency", "1", "-q"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    assert len(build_files(tmp_path / "copy" / CopyBuilder.VERSION)) > 3


def test_copy_build_on_ray_tasks_is_byte_identical(ray_session, tmp_path, sample_coco, local_copy):
    b = _builder(SmallBatchCopy, sample_coco, tmp_path / "log")
    ex = RayExecutor()
    path = run_build(b, tmp_path / "out", ex, LIMITS, quiet=True)
    assert ex.plan.mode == "tasks" and ex.plan.concurrency == 2
    _same(path, local_copy)
    handled = _lines(tmp_path / "log" / "process.log")
    assert len(handled) == 6 and str(os.getpid()) not in {h.split()[0] for h in handled}
    assert verify_build(vlmforge.open_build(path), quiet=True) == []


def test_actor_pool_sets_up_once_per_actor(ray_session, tmp_path, sample_coco, local_copy):
    b = _builder(ModelCopy, sample_coco, tmp_path / "log")
    ex = RayExecutor(concurrency=3)  # 3 actors on 2 CPUs: they only all start with fractional CPUs
    path = run_build(b, tmp_path / "out", ex, LIMITS, quiet=True)
    assert ex.plan == ("actors", 3, 0.66, 0.0)
    _same(path, local_copy)
    setups = _lines(tmp_path / "log" / "setup.log")
    workers = {line.split()[0] for line in _lines(tmp_path / "log" / "process.log")}
    assert len(setups) == 3 and set(setups) == workers  # three actors, one setup each, all used


def test_killed_actor_is_restarted_and_the_build_is_identical(ray_session, tmp_path, sample_coco, local_copy):
    b = _builder(ModelCopy, sample_coco, tmp_path / "log", victim_index=7)
    path = run_build(b, tmp_path / "out", RayExecutor(concurrency=2), LIMITS, quiet=True)
    _same(path, local_copy)
    assert (tmp_path / "log" / "killed").exists()
    setups = _lines(tmp_path / "log" / "setup.log")
    assert len(setups) == 3 and len(set(setups)) == 3  # the restarted actor is a new process, set up again


def test_killed_task_worker_is_retried_and_the_build_is_identical(ray_session, tmp_path, sample_coco, local_copy):
    b = _builder(SmallBatchCopy, sample_coco, tmp_path / "log", victim_index=5)
    path = run_build(b, tmp_path / "out", RayExecutor(), LIMITS, quiet=True)
    assert (tmp_path / "log" / "killed").exists()
    _same(path, local_copy)


def test_worker_that_keeps_dying_fails_cleanly_and_a_rerun_resumes(ray_session, tmp_path, sample_coco, local_copy):
    out = tmp_path / "out"
    b = _builder(SmallBatchCopy, sample_coco, tmp_path / "log", victim_index=9, kill_always=True)
    with pytest.raises(BuildError, match="inputs 8-9 .* rerun the same command to resume"):
        run_build(b, out, RayExecutor(max_retries=1), LIMITS, quiet=True)
    kept = complete_shards(out / "copy" / CopyBuilder.VERSION, "val")
    # A shard closes when the next sample arrives: shards of inputs 0-5 are complete and kept.
    assert [(s["shard"], s["input_end"]) for s in kept] == [(f"val-{i:06d}.tar", 2 * i + 2) for i in range(3)]
    again = _builder(SmallBatchCopy, sample_coco, tmp_path / "log2")
    path = run_build(again, out, RayExecutor(), LIMITS, quiet=True)
    _same(path, local_copy)
    ids = [r["source_id"] for r in again.src.records("val")]
    assert sorted(line.split()[1] for line in _lines(tmp_path / "log2" / "process.log")) == sorted(ids[6::2])


def test_cli_builds_on_ray(ray_session, tmp_path, sample_coco, local_copy):
    from typer.testing import CliRunner

    from vlmforge.cli import app

    r = CliRunner().invoke(app, ["build", "copy", "--coco-root", str(sample_coco), "--out", str(tmp_path),
                                 "--executor", "ray", "--concurrency", "2", "--gpus-per-model-worker", "0",
                                 "--max-samples-per-shard", "2", "-q"])
    assert r.exit_code == 0, r.output
    _same(tmp_path / "copy" / CopyBuilder.VERSION, local_copy)


@pytest.mark.skipif("occlusion" not in BUILDERS, reason="the occlusion builder has not landed on this branch yet")
def test_occlusion_build_on_ray_is_byte_identical(ray_session, tmp_path, sample_coco):
    opts = {"coco_root": str(sample_coco), "split": "val2017"}
    local = vlmforge.build("occlusion", "coco", out=tmp_path / "local", max_samples_per_shard=4, source_options=opts)
    # One actor: each actor loads the builder's models (seconds apiece on 2 cores); batch reordering
    # across actors is covered by the copy tests above.
    ex_opts = {"executor": "ray", "concurrency": 1}
    on_ray = vlmforge.build("occlusion", "coco", out=tmp_path / "ray", max_samples_per_shard=4, source_options=opts, **ex_opts)
    assert len(local) >= 10 and len(local.info["shards"]) >= 3
    _same(on_ray.path, build_files(local.path))


class BrokenModelCopy(SmallBatchCopy):
    def setup(self) -> None:
        raise UserError("model 'nowhere/tiny' not found: give a local path or a Hub id")


def test_a_failing_setup_is_reported_as_the_users_error(ray_session, tmp_path, sample_coco):
    b = _builder(BrokenModelCopy, sample_coco, tmp_path / "log")
    with pytest.raises(UserError) as err:
        run_build(b, tmp_path / "out", RayExecutor(concurrency=1), LIMITS, quiet=True)
    assert str(err.value) == "model 'nowhere/tiny' not found: give a local path or a Hub id"


class CodedError(UserError):
    def __init__(self, message: str, code: int):  # pickle cannot rebuild it from its args alone
        super().__init__(message)
        self.code = code


class CodedErrorCopy(SmallBatchCopy):
    def process(self, batch):
        if any(r["source_id"] == self.victim for r in batch):
            raise CodedError(f"image {self.victim} names a model that does not exist", 3)
        return super().process(batch)


def test_a_worker_error_pickle_cannot_rebuild_is_the_users_error(ray_session, tmp_path, sample_coco):
    """Before: Ray's UnserializableException with the worker's whole traceback."""
    b = _builder(CodedErrorCopy, sample_coco, tmp_path / "log", victim_index=5)
    with pytest.raises(UserError) as err:
        run_build(b, tmp_path / "out", RayExecutor(), LIMITS, quiet=True)
    assert str(err.value) == f"image {b.victim} names a model that does not exist"


def test_unreachable_cluster_fails_at_once_and_writes_nothing(tmp_path, sample_coco):
    """ray.init retries an address nothing answers at for ever; the executor checks it first."""
    import socket

    from typer.testing import CliRunner

    from vlmforge.cli import app

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    r = CliRunner().invoke(app, ["build", "copy", "--coco-root", str(sample_coco), "--out", str(tmp_path / "out"),
                                 "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "-q"])
    assert isinstance(r.exception, UserError), r.output
    assert str(r.exception).startswith(f"cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert time.monotonic() - start < CONNECT_TIMEOUT_S
    assert not list(tmp_path.rglob("build.pending.json"))


def test_a_cluster_that_wants_a_token_the_command_lacks_is_one_line_at_once(ray_session, tmp_path, sample_coco):
    """Ray 2.60 turns token authentication on; a HOST:PORT address without RAY_AUTH_MODE=token gets no
    token through. Before: ray.init retried for 20 s, a warning line a second, then said it."""
    import subprocess
    import sys

    address = ray_session.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "copy", "--coco-root", str(sample_coco),
                        "--out", str(tmp_path / "out"), "--executor", "ray", "--ray-address", address, "-q"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: the Ray cluster at {address} asks for its token (Ray's token authentication) and this command "
        "gives no token: set RAY_AUTH_MODE=token and the token that `ray get-auth-token` prints on the head node "
        "in RAY_AUTH_TOKEN (or ~/.ray/auth_token)"], r.stderr
    assert time.monotonic() - start < CONNECT_TIMEOUT_S and not (tmp_path / "out").exists()
