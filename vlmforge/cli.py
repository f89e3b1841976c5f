"""The `vlmforge` command. Core commands live here; each area adds its own from a module in
`vlmforge/commands/` that defines `register(app, build_app)`. Heavy imports stay inside commands so
that `--help` is instant."""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vlmforge.errors import UserError, quiet_teardown

app = typer.Typer(
    name="vlmforge",
    help="Versioned, reproducible vision-language training and test data: builders write WebDataset "
    "shards plus a DuckDB manifest; a thin trainer and evaluator read them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
build_app = typer.Typer(help="Run a builder. Output lands in OUT/<builder>/<version>/.", no_args_is_help=True)
manifest_app = typer.Typer(help="Query and compare build manifests (read-only SQL over DuckDB).", no_args_is_help=True)
sample_app = typer.Typer(help="Write the embedded sample datasets.", no_args_is_help=True)
app.add_typer(build_app, name="build")
app.add_typer(manifest_app, name="manifest")
app.add_typer(sample_app, name="sample")

BuildArg = Annotated[Path, typer.Argument(help="build folder, e.g. builds/copy/1.5.0")]


@sample_app.command("coco")
def sample_coco(
    out: Annotated[Path, typer.Option("--out", help="folder to write (new or empty; COCO layout: annotations/, val2017/)")],
    images: Annotated[int, typer.Option("--images", min=1, help="number of images")] = 32,
    seed: Annotated[int, typer.Option("--seed", min=0, help="random seed (0 or more); same seed, same bytes")] = 0,
) -> None:
    """Write a deterministic COCO-format sample: synthetic scenes with several objects each,
    captions_val2017.json and instances_val2017.json (polygons, boxes, areas, categories)."""
    from vlmforge.progress import console
    from vlmforge.sources.sample_coco import make_sample, write_fresh

    root = write_fresh(out, lambda root: make_sample(root, images=images, seed=seed, progress=True))
    console.print(f"[green]wrote[/] {images} images to {root}")


@sample_app.command("classes")
def sample_classes(
    out: Annotated[Path, typer.Option("--out", help="folder to write (new or empty): train/<category>/, test/<category>/")],
    images: Annotated[int, typer.Option("--images", min=1, help="scenes of the COCO sample to cut objects from")] = 200,
    seed: Annotated[int, typer.Option("--seed", min=0, help="random seed (0 or more); same seed, same bytes")] = 0,
) -> None:
    """Write a labelled image-folder sample: the objects of the COCO sample cut out of their scenes,
    one folder per category, about a quarter in test. For the class-based builders and CLIP
    training: `vlmforge build copy --source imagefolder --root OUT`, then subset, mcqa, train --mode clip."""
    from vlmforge.progress import console
    from vlmforge.sources.sample_classes import write_classes_sample

    counts = write_classes_sample(out, images=images, seed=seed, progress=True)
    per = ", ".join(f"{split} {sum(c.values())}" for split, c in counts.items())
    console.print(f"[green]wrote[/] {per} images of {len(counts['train'] | counts['test'])} categories to {out}")


@app.command("verify")
def verify(build: BuildArg) -> None:
    """Re-hash every shard and manifest part, check that shards and manifest agree key by key and that the
    manifest parts are those of build.json's shards, all readable. Exits 1 on any difference."""
    from vlmforge.manifests.read import DamagedBuildError, open_build
    from vlmforge.manifests.verify import verify_build
    from vlmforge.progress import console

    try:
        b = open_build(build)
    except DamagedBuildError as e:  # a damaged build.json is a finding of verify, like a damaged shard
        b, problems = None, [str(e)]
    else:
        problems = verify_build(b)
    if problems:
        for p in problems:
            console.print(f"[red]x[/] {p}")
        console.print(f"[red]{len(problems)} problem(s)[/] in {build}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/] {build}: {len(b.info['shards'])} shards, {len(b)} samples verified")


@manifest_app.command("query")
def manifest_query(
    build: BuildArg,
    sql: Annotated[str, typer.Argument(help="one SELECT over the tables samples, rejects, shards, builds")],
    format: Annotated[str, typer.Option("--format", help="table, csv, json or parquet")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="write here instead of stdout (needed for parquet)")] = None,
    limit: Annotated[int, typer.Option("--limit", help="rows shown in table format")] = 50,
) -> None:
    """Run a read-only SQL query on a build's manifest. Statements that would write are refused."""
    from vlmforge.manifests.query import run_query

    run_query(build, sql, format, output, limit)


@manifest_app.command("stats")
def manifest_stats(build: BuildArg) -> None:
    """Counts per split and per label (when the build has a label column), and rejects by reason."""
    from vlmforge.manifests.query import print_stats

    print_stats(build)


@manifest_app.command("diff")
def manifest_diff(a: BuildArg, b: BuildArg) -> None:
    """Compare two builds by key: keys only in A, only in B, samples whose image or json differ, and other members (mask.png, orig.jpg, ...) that differ, read from both shards. Exits 1 when any differ."""
    from vlmforge.manifests.query import print_diff

    if print_diff(a, b):
        raise typer.Exit(1)


@manifest_app.command("columns")
def manifest_columns(build: BuildArg) -> None:
    """The manifest's columns and what each holds."""
    from vlmforge.manifests.query import print_columns

    print_columns(build)


@manifest_app.command("reindex")
def manifest_reindex(build: BuildArg) -> None:
    """Remake manifest.duckdb from the Parquet parts (e.g. after copying a build without it)."""
    from vlmforge.builders import get_builder
    from vlmforge.manifests.finalize import MANIFEST_DB, write_index
    from vlmforge.manifests.read import check_manifest_parts, open_build
    from vlmforge.progress import console

    from vlmforge.manifests.verify import edited_parts

    b = open_build(build)
    check_manifest_parts(b)
    edited = edited_parts(b)
    if edited:  # an index made from them would carry the edit on, and verify would still fail
        raise UserError(f"{edited[0]}; the index is not remade from an edited part: rebuild with --overwrite"
                        + (f" ({len(edited) - 1} more part(s) edited)" if len(edited) > 1 else ""))
    try:
        columns = get_builder(b.info["builder"]).columns
    except UserError:
        columns = []
    write_index(b.path, b.info, columns)
    n = b.sql("SELECT count(*) FROM samples").fetchall()[0][0]
    console.print(f"reindexed {b.path / MANIFEST_DB}: {n} samples from {len(b.info['shards'])} manifest parts")


def _register_plugins() -> None:
    import vlmforge.commands as commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"vlmforge.commands.{mod.name}")
        module.register(app, build_app)


def _say_interrupts(typer_app: typer.Typer) -> None:
    """Ctrl-C inside a command: the CLI framework ends it with status 130 and not a word, and main()'s
    handler never sees it. Commands that say more themselves (builds, train) catch it first."""
    for info in typer_app.registered_commands:
        info.callback = _interruptible(info.callback)
    for group in typer_app.registered_groups:
        _say_interrupts(group.typer_instance)


def _interruptible(fn):
    @functools.wraps(fn)  # the signature typer reads the options from stays fn's
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            quiet_teardown()
            typer.echo("\ninterrupted; run the same command again to resume", err=True)
            raise typer.Exit(130) from None

    return command


_register_plugins()
_say_interrupts(app)


def main() -> None:
    try:
        app()
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, RuntimeError) as e:
        if isinstance(e, RuntimeError) and str(e) != "Query interrupted":  # DuckDB's Ctrl-C during a query
            raise
        quiet_teardown()
        typer.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
