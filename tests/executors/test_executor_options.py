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
