"""`vlmforge show` (contact sheet) and `vlmforge report` (self-contained HTML page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

BuildArg = Annotated[Path, typer.Argument(help="build folder, e.g. builds/occlusion/2.6.0")]
Where = Annotated[Optional[str], typer.Option("--where", help="SQL condition on the manifest's samples, e.g. \"label = 'dog'\"")]
Seed = Annotated[int, typer.Option("--seed", help="samples are ordered by md5(seed:key); another seed, another choice")]


def register(app: typer.Typer, build_app: typer.Typer) -> None:
    @app.command("show", help=(
        "Draw a contact sheet of samples chosen by a SQL filter over the manifest (deterministic). Occlusion "
        "samples show the original (when built with --keep-original), the mask outlined and the occluded image "
        "side by side, with label and "
        "question; other builds show the image with its label, question and answer."))
    def show(
        build: BuildArg,
        out: Annotated[Path, typer.Option("--out", help="image file to write, PNG or JPEG by its suffix (e.g. sheet.png)")],
        where: Where = None,
        n: Annotated[int, typer.Option("--n", min=1, max=400, help="number of samples")] = 16,
        seed: Seed = 0,
        cols: Annotated[Optional[int], typer.Option("--cols", min=1, help="cells per row (default: 2 for triptychs, 3 for pairs, 4 for single images)")] = None,
        thumb: Annotated[int, typer.Option("--thumb", min=32, max=1024, help="panel size in pixels")] = 192,
    ) -> None:
        from vlmforge.manifests.read import open_build
        from vlmforge.progress import console
        from vlmforge.report.show import SheetLayout, write_contact_sheet

        path = write_contact_sheet(open_build(build), out, where=where, n=n, seed=seed, cols=cols,
                                   layout=SheetLayout(thumb=thumb))
        console.print(f"[green]wrote[/] {path}")

    @app.command("report", help=(
        "Write one self-contained HTML page about a build: identity and lineage, counts per split and label, "
        "histograms of numeric manifest columns, rejects by reason and a sample gallery. Images are embedded; "
        "it opens in a browser with no server and no network."))
    def report(
        build: BuildArg,
        out: Annotated[Path, typer.Option("--out", help="HTML file to write")] = Path("report.html"),
        n: Annotated[int, typer.Option("--n", min=1, max=400, help="samples in the gallery")] = 24,
        seed: Seed = 0,
        where: Annotated[Optional[str], typer.Option("--where", help="SQL condition choosing the gallery's samples")] = None,
    ) -> None:
        from vlmforge.progress import console
        from vlmforge.report.html import write_report

        path = write_report(build, out, n=n, seed=seed, where=where)
        console.print(f"[green]wrote[/] {path} ({path.stat().st_size:,} bytes)")
