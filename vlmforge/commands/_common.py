"""Options every `vlmforge build <builder>` command shares, and the one function that runs a build."""

from __future__ import annotations

import functools
import json
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

Out = Annotated[Path, typer.Option("--out", help="root folder of builds; the build lands in OUT/<builder>/<version>/")]
Workers = Annotated[int, typer.Option("--workers", min=1, help="worker processes (results do not depend on it); with --executor ray: Ray workers, unless --concurrency")]
Executor = Annotated[str, typer.Option("--executor", help="local (processes) or ray")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (auto, ray://host:port); none: a local Ray instance")]
Concurrency = Annotated[Optional[int], typer.Option("--concurrency", min=1, help="with --executor ray: model workers (actors) or CPU tasks at once; default: as many as the cluster fits")]
GpusPerModelWorker = Annotated[Optional[float], typer.Option("--gpus-per-model-worker", min=0, help="with --executor ray: GPUs each model worker holds (fractions share a GPU); default: the model's declaration")]
MaxSamples = Annotated[int, typer.Option("--max-samples-per-shard", min=1, help="at most this many samples per shard")]
MaxBytes = Annotated[int, typer.Option("--max-shard-bytes", min=1024, help="start a new shard before this size")]
GenOptions = Annotated[Optional[list[str]], typer.Option("--generator-option", "-G", help="backend option KEY=VALUE, repeatable (e.g. -G base_url=http://127.0.0.1:8000/v1); values are JSON when they parse")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace a different build in the same folder")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or summary")]
Seed = Annotated[int, typer.Option("--seed", help="seed of every random choice (combined with each sample's key)")]

# Source options shared by builders that read raw data.
SourceKind = Annotated[str, typer.Option("--source", help="coco, llava-json, imagefolder, cub, fgvc-aircraft or stanford-dogs")]
CocoRoot = Annotated[Optional[Path], typer.Option("--coco-root", help="COCO root with annotations/ and <split>/ (official layout)")]
CocoSplit = Annotated[str, typer.Option("--split", help="COCO split folder name, e.g. val2017 or train2017")]
Captions = Annotated[Optional[Path], typer.Option("--captions", help="COCO-format captions JSON (with --images)")]
Instances = Annotated[Optional[Path], typer.Option("--instances", help="COCO-format instances JSON (with --images)")]
Images = Annotated[Optional[Path], typer.Option("--images", help="image folder for --captions/--instances")]
JsonFile = Annotated[Optional[Path], typer.Option("--json", help="LLaVA instruction JSON file (--source llava-json)")]
ImageRoot = Annotated[Optional[Path], typer.Option("--image-root", help="folder the LLaVA JSON's image paths are relative to")]
Root = Annotated[Optional[Path], typer.Option("--root", help="dataset root (--source imagefolder and dataset readers)")]


def run_cli_build(
    builder_cls,
    config,
    source,
    out: Path,
    workers: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    max_samples_per_shard: int = 10_000,
    max_shard_bytes: int = 1 << 30,
    overwrite: bool = False,
    quiet: bool = False,
    concurrency: int | None = None,
    gpus_per_model_worker: float | None = None,
    **builder_attrs,
) -> Path:
    """Run a builder as the CLI does. `builder_attrs` (e.g. device) are set on the builder and stay
    out of its identity: they change where work runs, not what it makes."""
    from vlmforge.api import make_executor
    from vlmforge.builders.base import run_build
    from vlmforge.manifests.writer import ShardLimits

    builder = builder_cls(config, source)
    for name, value in builder_attrs.items():
        setattr(builder, name, value)
    return run_build(
        builder, out=out, executor=make_executor(executor, workers, ray_address, concurrency, gpus_per_model_worker),
        limits=ShardLimits(max_samples_per_shard, max_shard_bytes), overwrite=overwrite, quiet=quiet,
    )


def generator_options(device: str | None, dtype: str | None, batch_size: int | None, pairs: list[str] | None) -> dict[str, Any]:
    """Runtime options for the backend (they never change the build's identity)."""
    from vlmforge.errors import UserError

    opts: dict[str, Any] = {}
    for name, value in (("device", device), ("dtype", dtype), ("batch_size", batch_size)):
        if value is not None:
            opts[name] = value
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--generator-option takes KEY=VALUE, not {pair!r}")
        try:
            opts[key.strip()] = json.loads(value)
        except ValueError:
            opts[key.strip()] = value
    return opts


@dataclass
class BuildRun:
    """What a build command's body returns: the builder (class or factory), its config and source,
    attributes set on the builder outside its identity (e.g. device), and a step to run on the
    finished build folder (e.g. an export), called with the folder and --quiet."""

    builder: Callable
    config: Any
    source: Any
    attrs: dict = field(default_factory=dict)
    after: Callable[[Path, bool], None] | None = None


def _run_options(
    out: Out = Path("builds"),
    workers: Workers = 1,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    concurrency: Concurrency = None,
    gpus_per_model_worker: GpusPerModelWorker = None,
    max_samples_per_shard: MaxSamples = 10_000,
    max_shard_bytes: MaxBytes = 1 << 30,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """The options every build command shares (their declarations; never called)."""


def build_command(build_app: typer.Typer, name: str) -> Callable:
    """Register `fn` as `vlmforge build NAME` with the shared run options added to its own. `fn`
    returns a BuildRun (or a (builder, config, source) tuple) and the build runs with those options.
    A shared option that `fn` declares itself (e.g. quiet) is passed to it as well."""
    shared = inspect.signature(_run_options, eval_str=True).parameters

    def decorate(fn: Callable[..., Any]) -> Callable:
        own = inspect.signature(fn, eval_str=True)
        added = [p for n, p in shared.items() if n not in own.parameters]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            run = {k: kwargs[k] for k in shared}
            for p in added:
                kwargs.pop(p.name)
            # Ctrl-C while the command imports, opens its source or builds: the CLI framework would end
            # silently with status 130 (or with a bare newline).
            try:
                result = fn(**kwargs)
                if isinstance(result, tuple):
                    result = BuildRun(*result)
                path = run_cli_build(result.builder, result.config, result.source, **run, **result.attrs)
                if result.after is not None:
                    result.after(path, run["quiet"])
            except KeyboardInterrupt:
                typer.echo("\ninterrupted: finished shards are kept; run the same command again to resume", err=True)
                raise typer.Exit(130) from None

        params = [*own.parameters.values(), *added]
        command.__signature__ = own.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        build_app.command(name)(command)
        return fn

    return decorate
