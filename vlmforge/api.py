"""The Python API, mirroring the CLI: `vlmforge.build(...)` and `vlmforge.open_build(path)`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vlmforge.builders import get_builder
from vlmforge.builders.base import run_build
from vlmforge.errors import UserError
from vlmforge.manifests.read import Build, open_build
from vlmforge.manifests.writer import ShardLimits


def make_executor(name: str = "local", workers: int = 1, ray_address: str | None = None,
                  concurrency: int | None = None, gpus_per_model_worker: float | None = None):
    """The executor a build runs on: `local` (processes) or `ray` (a local instance or a cluster)."""
    if name == "local":
        from vlmforge.executors.local import LocalExecutor

        ray_only = {"--ray-address": ray_address, "--concurrency": concurrency,
                    "--gpus-per-model-worker": gpus_per_model_worker}
        given = [flag for flag, value in ray_only.items() if value is not None]
        if given:  # else the build would run locally while the user meant the cluster
            raise UserError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to --executor ray; "
                            "add --executor ray, or leave "
                            + ("them" if len(given) > 1 else "it") + " out to build with local processes")

        return LocalExecutor(workers)
    if name == "ray":
        try:
            from vlmforge.executors.ray import RayExecutor
        except ImportError as e:
            raise UserError(f"the ray executor is not available: {e}") from None
        return RayExecutor(address=ray_address, workers=workers, concurrency=concurrency,
                           gpus_per_model_worker=gpus_per_model_worker)
    raise UserError(f"unknown executor {name!r}; use local or ray")


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_option_type(builder: str, name: str, value: Any, annotation: str) -> None:
    """A config value of the wrong simple type (trials="16") is one error line, not a TypeError deep in
    the build. Annotations other than int, float, str, bool and None are not checked."""
    kinds = [k.strip() for k in annotation.split("|")]
    if not all(k in _SIMPLE_TYPES or k == "None" for k in kinds) or (value is None and "None" in kinds):
        return
    ok = any(k in _SIMPLE_TYPES and isinstance(value, _SIMPLE_TYPES[k]) and (k == "bool" or not isinstance(value, bool))
             for k in kinds)
    if not ok:
        raise UserError(f"{builder} option {name} must be {' or '.join(kinds)}, not {value!r}")


def build(
    builder: str,
    source: str | None = None,
    *,
    out: str | Path = "builds",
    workers: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    concurrency: int | None = None,
    gpus_per_model_worker: float | None = None,
    max_samples_per_shard: int = 10_000,
    max_shard_bytes: int = 1 << 30,
    overwrite: bool = False,
    quiet: bool = True,
    source_options: dict[str, Any] | None = None,
    builder_attrs: dict[str, Any] | None = None,
    **config: Any,
) -> Build:
    """Run builder `builder` on a source and return the finished build.

    Example: `vlmforge.build("copy", "imagefolder", source_options={"root": "data/dogs"}, out="builds")`.
    `config` holds the builder's Config fields (e.g. `seed=1`). `executor="ray"` runs it on Ray
    (`ray_address`, `concurrency`, `gpus_per_model_worker`), byte-identical to the local executor.
    `builder_attrs` are set on the builder outside its identity, as the CLI sets them (e.g. `device`,
    `generator_options`)."""
    cls = get_builder(builder)
    fields = cls.Config.__dataclass_fields__
    unknown = sorted(set(config) - set(fields))
    if unknown:  # checked before the source opens, whose errors name CLI options (root=... is not --root)
        raise UserError(f"{builder} has no option(s) {unknown}; its options: {sorted(fields)} "
                        "(the source's, such as root or splits, go in source_options={...})")
    for name, value in config.items():
        if isinstance(value, os.PathLike):  # a file option given as a Path: stored as text (build.json is JSON)
            config[name] = value = os.fspath(value)
        check_option_type(builder, name, value, str(fields[name].type))
    src = cls.open_source(source, **(source_options or {}))
    cfg = cls.Config(**config)
    b = cls(cfg, src)
    for name, value in (builder_attrs or {}).items():
        if not hasattr(b, name):
            raise UserError(f"{builder} builders have no attribute {name!r} to set")
        setattr(b, name, value)
    path = run_build(
        b, out=out, executor=make_executor(executor, workers, ray_address, concurrency, gpus_per_model_worker),
        limits=ShardLimits(max_samples_per_shard, max_shard_bytes), overwrite=overwrite, quiet=quiet,
    )
    return open_build(path)


__all__ = ["build", "open_build", "make_executor"]
