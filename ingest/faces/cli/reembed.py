"""`ingest reembed`: the stored chunks embedded with another model, without transcribing again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

from ingest.faces.cli.app import _run, _settings, _usage_errors, app, err, out
from ingest.orchestration.progress import clock, time_left
from ingest.orchestration.reembed import ReembedProgress, ReembedRefused, ReembedResult
from ingest.orchestration.reembed import reembed as run_reembed


@app.command()
def reembed(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", help="sentence-transformers hub id or folder to switch to.")
    ],
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Chunks per batch (default INGEST_EMBED_BATCH).")
    ] = None,
) -> None:
    """Embed every stored chunk with MODEL, then switch the corpus to it in one step.

    Search and writers go on meanwhile with the current model; a run stopped any way resumes
    where it stopped when run again. Exit status: 0 when the corpus uses MODEL (already, or
    now); 2 when MODEL cannot be loaded or another re-embedding is under way (nothing changed).
    """
    with _usage_errors():
        settings = _settings(ctx)
        progress = ReembedProgress()
        try:
            with _display(progress):
                result = _run(
                    run_reembed(settings, model, batch_size or settings.embed_batch, progress)
                )
        except ReembedRefused as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("stopped: run the same command again to go on where it stopped")
            raise typer.Exit(130) from None
    out.print(_summary(result), markup=False, highlight=False, soft_wrap=True)


def _summary(result: ReembedResult) -> str:
    if result.previous is None:
        return f"the corpus already uses {result.model}: nothing to do"
    return (
        f"re-embedded {result.embedded} of {result.total} chunks in {clock(result.elapsed_s)}; "
        f"the corpus now uses {result.model} instead of {result.previous}: "
        f"set INGEST_EMBEDDING_MODEL={result.model} for new runs"
    )


def _display(progress: ReembedProgress) -> AbstractContextManager[object]:
    return _live(progress) if err.is_terminal else nullcontext()


@contextmanager
def _live(progress: ReembedProgress) -> Iterator[None]:
    def render() -> RenderableType:
        bar = ProgressBar(total=max(progress.total, 1), completed=progress.done, width=40)
        line = Text.assemble(
            (f" chunks {progress.done}/{progress.total}", "bold"),
            f"  {clock(time.monotonic() - progress.started)}  {time_left(progress.eta_s())}",
        )
        return Group(bar, line)

    with Live(get_renderable=render, console=err, refresh_per_second=2, transient=True):
        yield
