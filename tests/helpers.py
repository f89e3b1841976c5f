"""Helpers shared by tests."""

from pathlib import Path


def build_files(build_dir: Path) -> dict[str, bytes]:
    """Every file of a build that must be byte-identical across rebuilds (manifest.duckdb is an index)."""
    out = {}
    for p in sorted(build_dir.rglob("*")):
        if p.is_file() and p.name != "manifest.duckdb":
            out[p.relative_to(build_dir).as_posix()] = p.read_bytes()
    return out
