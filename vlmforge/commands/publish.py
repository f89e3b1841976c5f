"""`vlmforge publish` and `vlmforge pull`: a build to the Hugging Face Hub and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

BuildArg = Annotated[Path, typer.Argument(help="build folder, e.g. builds/occlusion/2.6.0")]


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    @app.command("publish", help=(
        "Publish a build to the Hugging Face Hub as a WebDataset dataset repo with a generated dataset card. "
        "Shards go to data/<split>/ (re-packed to --target-shard-bytes, at most 10,000 files per folder), the "
        "manifest to manifest/, plus build.json, publish.json and README.md; the revision is tagged with the "
        "builder version. A build that fails `vlmforge verify` is refused. The token comes from HF_TOKEN or the login cache and is never printed. An "
        "interrupted upload resumes when the same command runs again."))
    def publish(
        build: BuildArg,
        repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo, NAMESPACE/NAME; created if missing")],
        private: Annotated[bool, typer.Option("--private", help="create the repo as private (an existing public repo is refused: it keeps its visibility)")] = False,
        revision: Annotated[Optional[str], typer.Option("--revision", help="tag for this upload (default: the builder version); not a branch: the commit goes to main")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="print the file plan and write the card locally; no network")] = False,
        target_shard_bytes: Annotated[int, typer.Option("--target-shard-bytes", min=1, help="re-pack shards to about this size (the Hub likes ~1 GB)")] = 1 << 30,
        license: Annotated[str, typer.Option("--license", help="the Hub license id for the card (e.g. cc-by-4.0, apache-2.0, other; https://huggingface.co/docs/hub/repositories-licenses)")] = "unknown",
        stage: Annotated[Optional[Path], typer.Option("--stage", help="folder for the upload copy (default: the vlmforge cache); kept so a rerun resumes")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    ) -> None:
        from vlmforge.hub import publish as run

        run(build, repo, revision=revision, private=private, dry_run=dry_run, target_shard_bytes=target_shard_bytes,
            license=license, stage_dir=stage, quiet=quiet)

    @app.command("pull", help=(
        "Download a published build (or read a local clone of its repo) and restore the build folder with "
        "its original shards and field names, then verify it like `vlmforge verify`. Exit 1 when the restored "
        "build fails verification, 2 when it cannot be fetched or rebuilt (e.g. a shard whose sha256 differs)."))
    def pull(
        repo: Annotated[str, typer.Argument(help="Hub dataset repo NAMESPACE/NAME, or a local clone of a published repo")],
        revision: Annotated[Optional[str], typer.Option("--revision", help="tag, branch or commit of a Hub repo (default: main); not for a local clone")] = None,
        out: Annotated[Path, typer.Option("--out", help="root folder of builds; lands in OUT/<builder>/<version>/")] = Path("builds"),
        overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a different build in the target folder")] = False,
    ) -> None:
        from vlmforge.hub import pull as run
        from vlmforge.manifests.read import open_build
        from vlmforge.manifests.verify import verify_build
        from vlmforge.progress import console

        dest = run(repo, revision=revision, out=out, overwrite=overwrite)
        b = open_build(dest)
        problems = verify_build(b)
        for p in problems:
            console.print(f"[red]x[/] {p}")
        if problems:
            raise typer.Exit(1)
        console.print(f"[green]pulled[/] {dest}: build {b.build_id}, {len(b)} samples verified")
