"""Executor options on the command line: Ray's options without the ray executor."""

import subprocess
import sys

import pytest

from vlmforge.api import make_executor
from vlmforge.errors import UserError
from vlmforge.executors.local import LocalExecutor


def test_ray_options_without_the_ray_executor_are_refused(tmp_path, sample_coco):
    """Before: `--ray-address auto` (or --concurrency, --gpus-per-model-worker) without `--executor ray`
    was ignored and the build ran on local processes, while the user meant the cluster."""
    for opts, named in (({"ray_address": "auto"}, "--ray-address applies"), ({"concurrency": 4}, "--concurrency applies"),
                        ({"gpus_per_model_worker": 0.5, "concurrency": 2}, "--concurrency, --gpus-per-model-worker apply")):
        with pytest.raises(UserError, match=f"{named} to --executor ray"):
            make_executor("local", 2, **opts)
    assert isinstance(make_executor("local", 2), LocalExecutor)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "copy", "--coco-root", str(sample_coco),
                        "--out", str(out), "--ray-address", "auto", "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("error: --ray-address applies to --executor ray; add --executor ray, "
                                 "or leave it out to build with local processes")
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, -2, "2", 1.5])
def test_a_worker_count_below_one_or_not_a_number_is_one_error_line(workers):
    """Before: LocalExecutor raised ValueError (0) or TypeError ("2"), and the ray executor took -2
    as the cluster's default."""
    from vlmforge.executors.ray import RayExecutor

    for make in (LocalExecutor, lambda w: RayExecutor(workers=w)):
        with pytest.raises(UserError, match=f"^--workers must be a whole number of at least 1, not {workers!r}$"):
            make(workers)


def test_a_ray_address_ray_cannot_parse_is_one_error_line(tmp_path, sample_coco, monkeypatch):
    """Before: `--ray-address garbage` ended in ray's ValueError traceback."""
    from vlmforge.executors.ray import RayExecutor

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "vlmforge.cli", "build", "copy", "--coco-root", str(sample_coco),
                        "--out", str(out), "--executor", "ray", "--ray-address", "head-node", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --ray-address 'head-node' is not a Ray address; give auto, HOST:PORT (the address "
        "`ray start --head` printed) or ray://HOST:PORT"), r.stderr
    assert not out.exists()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7")
    with pytest.raises(UserError, match="^RAY_ADDRESS '10.0.0.7' is not a Ray address"):
        RayExecutor()
