"""`ingest backfill`, `ingest daemon` and `ingest migrate`: the commands that fill the corpus."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Annotated

import typer

from ingest.faces.cli.app import _run, _settings, _usage_errors, _with_signals, app, err, out
from ingest.infrastructure.config import parse_interval
from ingest.infrastructure.database import open_database
from ingest.orchestration.backfill import backfill as run_backfill
from ingest.orchestration.daemon import daemon as run_daemon
from ingest.orchestration.pipeline import Pipeline
from ingest.orchestration.progress import live_progress, summary
from ingest.stages.ledger import Ledger


@app.command()
def backfill(
    ctx: typer.Context,
    sources: Annotated[
        list[str], typer.Argument(help="Channel, playlist, video or feed URLs, files, folders.")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Take at most N videos not yet done.")
    ] = None,
    reprocess: Annotated[
        bool, typer.Option(help="Redo videos already done, replacing their chunks.")
    ] = False,
    retry_failed: Annotated[bool, typer.Option(help="Try failed videos again.")] = False,
    asr_model: Annotated[
        str | None, typer.Option(help="Whisper size, hub id or local folder.")
    ] = None,
    embedding_model: Annotated[
        str | None, typer.Option(help="sentence-transformers hub id or folder.")
    ] = None,
    download_workers: Annotated[int | None, typer.Option(min=1)] = None,
    asr_workers: Annotated[int | None, typer.Option(min=1)] = None,
    asr_batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    embed_batch: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Process every video of the sources that is not done yet, then exit.

    Exit status: 0 when every video is done (or a signal stopped the run); 1 when a video
    failed for good or was set aside, a source failed, or a site needs you; 2 on a usage or
    setup error; 3 when a site stayed throttled past INGEST_MAX_THROTTLE_WAIT (the rest is
    left to do); 4 when videos wait for a scheduled retry beyond INGEST_BACKFILL_RETRY_WAIT.
    """
    with _usage_errors():
        settings = _settings(
            ctx,
            asr_model=asr_model,
            embedding_model=embedding_model,
            download_workers=download_workers,
            asr_workers=asr_workers,
            asr_batch_size=asr_batch_size,
            embed_batch=embed_batch,
        )

        def display(ledger: Ledger, pipeline: Pipeline) -> AbstractContextManager[object]:
            if not err.is_terminal:
                return nullcontext()
            return live_progress(ledger, pipeline, err)

        result = _run(
            _with_signals(
                settings,
                lambda shutdown: run_backfill(
                    sources,
                    settings,
                    limit=limit,
                    reprocess=reprocess,
                    retry_failed=retry_failed,
                    display=display,
                    shutdown=shutdown,
                ),
            )
        )
    out.print(summary(result), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)


@app.command()
def daemon(
    ctx: typer.Context,
    sources: Annotated[list[str], typer.Argument(help="Channels, playlists, feeds, folders.")],
    poll_interval: Annotated[str, typer.Option(help="Between listings: 90s, 15m, 1h.")] = "15m",
    retry_failed: Annotated[bool, typer.Option(help="Try failed videos again (once).")] = False,
    asr_model: Annotated[str | None, typer.Option(help="Whisper size, hub id or folder.")] = None,
    embedding_model: Annotated[str | None, typer.Option(help="Embedding hub id or folder.")] = None,
) -> None:
    """Follow the sources: ingest new videos as they appear, until SIGTERM or SIGINT.

    On the first signal it stops taking new videos, lets in-flight work finish (or hands it
    back) within INGEST_SHUTDOWN_GRACE_SECONDS and exits 0; a second signal stops at once.
    """
    with _usage_errors():
        interval = parse_interval(poll_interval)
        settings = _settings(ctx, asr_model=asr_model, embedding_model=embedding_model)
        ledger = _run(
            _with_signals(
                settings,
                lambda shutdown: run_daemon(
                    sources,
                    settings,
                    poll_interval_s=interval,
                    retry_failed=retry_failed,
                    shutdown=shutdown,
                ),
            )
        )
    c = ledger.counters
    out.print(f"stopped: {c.done} done, {c.failed} failed, {c.handed_back} handed back")


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply pending database migrations (they are also applied at every start)."""
    with _usage_errors():
        settings = _settings(ctx)

        async def go() -> None:
            async with open_database(settings):
                pass

        _run(go())
    out.print("database schema is up to date")
