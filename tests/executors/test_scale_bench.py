"""bench/scale.py runs as documented, from any working directory, on this checkout's code."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def _run(tmp_path: Path, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(BENCH), "--work", str(tmp_path / "work"), *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_throughput_on_1_and_2_workers_and_ray(tmp_path):
    """Before: ModuleNotFoundError (its `tests` import) unless run with the repository on sys.path."""
    out = _run(tmp_path, "--images", "12", "--repeats", "1", "--check-images", "quick")
    assert out["images"] == 12 and set(out["median_samples_per_s"]) == {"local, 1 worker", "local, 2 workers",
                                                                         "ray, 2 CPUs"}
    assert all(rate > 0 for rate in out["median_samples_per_s"].values())


def test_memory_over_a_build_of_tiny_images(tmp_path):
    out = _run(tmp_path, "--memory", "1000")
    assert out["images"] == 1000 and len(out["driver_rss_mb_quarters"]) == 4
    assert 0 < min(out["driver_rss_mb_quarters"]) <= out["driver_peak_mb"] and out["worker_peak_mb"] > 0
    assert len(list((tmp_path / "work" / "tiny-1000").glob("*/*.jpg"))) == 1000
