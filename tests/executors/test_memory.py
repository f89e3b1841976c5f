import platform
import subprocess
import sys

import pytest

CODE = """
import resource
from vlmforge.executors.memory import tune_allocator
on = (tune_allocator(), tune_allocator())
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a build's pattern: a batch of image-sized buffers, then all freed
    batch = [b"x" * 200_000 for _ in range(64)]
    del batch
print(*on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def run(env_extra: dict) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VLMFORGE_MALLOC"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_allocator_tuning_reuses_freed_buffers_and_yields_to_the_users_settings():
    tuned, default = run({}).split(), run({"VLMFORGE_MALLOC": "default"}).split()
    assert tuned[:2] == ["True", "True"] and default[:2] == ["False", "False"]
    # 20 batches x 64 x 200 KB: without reuse every batch's ~3,200 pages fault in again
    assert int(tuned[2]) * 5 < int(default[2])
    assert run({"MALLOC_TRIM_THRESHOLD_": "1000000"}).split()[:2] == ["False", "False"]
