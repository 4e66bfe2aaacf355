"""python -m bench [NAME...] [--quick] [--check] [--out FILE]"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench import claims, downloads, export, gpu, models, pipeline, search, sink
from bench.database import server
from bench.results import Figure, show, write
from ingest.infrastructure.logging import configure_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
NAMES = ("pipeline", "memory", "sink", "claims", "downloads", "models", "gpu")
# Run only when named: their corpora (200,000 chunks and an index build; a million chunks)
# take many minutes.
ON_REQUEST = ("search", "export")


def _run(name: str, quick: bool, uri: str, videos: int | None = None) -> list[Figure]:
    if name == "pipeline":
        return pipeline.efficiency(uri, videos=videos or (40 if quick else 200))
    if name == "memory":
        return pipeline.memory(uri, 20, 100) if quick else pipeline.memory(uri, 100, 1000)
    if name == "sink":
        return sink.sink(uri, quick)
    if name == "claims":
        return claims.claims(uri, quick)
    if name == "search":
        return search.search(uri, quick)
    if name == "export":
        return export.export(uri, quick)
    if name == "downloads":
        return downloads.downloads(files=10 if quick else 30, rate=100_000)
    if name == "models":
        return models.asr(quick) + models.embeddings(quick)
    return gpu.gpu(uri, quick)


@app.command()
def main(
    names: Annotated[
        list[str] | None,
        typer.Argument(help=f"Any of {', '.join(NAMES + ON_REQUEST)}; all but search by default."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Small sizes: a smoke test, not a measurement.")
    ] = False,
    check: Annotated[bool, typer.Option(help="Exit 1 when a target is missed.")] = False,
    videos: Annotated[
        int | None, typer.Option(min=1, help="Videos per pipeline run (default 200).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = Path(
        "bench/results.json"
    ),
) -> None:
    """Run the benchmarks, print a table, write JSON results."""
    configure_logging("warning")
    chosen = names or list(NAMES)
    unknown = set(chosen) - set(NAMES) - set(ON_REQUEST)
    if unknown:
        raise typer.BadParameter(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    figures: list[Figure] = []
    with server() as uri:
        for name in chosen:
            figures += _run(name, quick, uri, videos)
    show(figures, Console())
    write(figures, out)
    if check and any(f.met is False for f in figures):
        raise typer.Exit(1)


app()
