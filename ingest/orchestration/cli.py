"""The `ingest` command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from db.corpus import EmbeddingModelMismatch
from db.sites import SitePause
from db.speakers import ProfileModelMismatch
from db.videos import FailedSummary, RecentError, StatusSummary, status_summary
from db.workers import Replica
from ingest.infrastructure.config import (
    ConfigError,
    Device,
    LogFormat,
    LogLevel,
    Settings,
    load_settings,
    parse_interval,
)
from ingest.infrastructure.database import DatabaseUnavailable, open_database
from ingest.infrastructure.event_loop import loop_factory
from ingest.infrastructure.logging import configure_logging
from ingest.infrastructure.models import ModelLoadError
from ingest.infrastructure.shutdown import Shutdown, exit_process
from ingest.orchestration import doctor as checkup
from ingest.orchestration.backfill import backfill as run_backfill
from ingest.orchestration.daemon import daemon as run_daemon
from ingest.orchestration.pipeline import Pipeline
from ingest.orchestration.progress import clock, live_progress, summary
from ingest.orchestration.search import Result, search_options
from ingest.orchestration.search import search as run_search
from ingest.orchestration.serve import serve as run_serve
from ingest.orchestration.speakers import EnrollError
from ingest.orchestration.speakers import enroll as run_enroll
from ingest.orchestration.speakers import profiles as run_profiles
from ingest.stages.ledger import Ledger

T = TypeVar("T")

app = typer.Typer(
    help="Turn channels, playlists, feeds and folders of audio into a searchable corpus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# Errors a user fixes by changing the command or its settings: one line, exit status 2.
USAGE_ERRORS = (
    ConfigError,
    ModelLoadError,
    DatabaseUnavailable,
    EmbeddingModelMismatch,
    ProfileModelMismatch,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL; unset: embedded PostgreSQL in the data dir.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Audio and embedded database.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto, cpu or cuda.")] = None,
    log_level: Annotated[LogLevel | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help="auto, console or json.")] = None,
) -> None:
    ctx.obj = {
        "database_url": database_url,
        "data_dir": data_dir,
        "device": device,
        "log_level": log_level,
        "log_format": log_format,
    }


@contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        cause = _alone(exc)
        if not isinstance(cause, USAGE_ERRORS):
            raise
        err.print(f"error: {cause}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _alone(exc: BaseException) -> BaseException:
    """The one error inside task groups' exception groups, if there is just one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _settings(ctx: typer.Context, **overrides: Any) -> Settings:
    settings = load_settings(**ctx.obj, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory(load_settings().event_loop)) as runner:
        return runner.run(coro)


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


async def _with_signals(settings: Settings, start: Callable[[Shutdown], Awaitable[T]]) -> T:
    shutdown = Shutdown(settings.shutdown_grace_seconds)
    shutdown.install()
    try:
        return await start(shutdown)
    finally:
        shutdown.uninstall()


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


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Videos per status, chunks stored, and the most recent errors."""
    with _usage_errors():
        settings = _settings(ctx)

        async def go() -> Any:
            async with open_database(settings) as pool, pool.acquire() as conn:
                return await status_summary(conn)

        report = _run(go())
    if as_json:
        data = asdict(report)
        data["audio_hours"] = report.audio_seconds / 3600
        data["total_videos"] = sum(report.counts.values())
        data["todo_audio_hours"] = report.todo_audio_seconds / 3600
        data["eta_seconds"] = report.eta_s
        out.print_json(json.dumps(data, default=str))
        return
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items())
    out.print(f"videos: {counts}", highlight=False)
    out.print(
        f"chunks: {report.chunks}; audio: {report.audio_seconds / 3600:.2f} h", highlight=False
    )
    if report.transcripts:
        kinds = ", ".join(f"{n} {kind}" for kind, n in report.transcripts.items())
        out.print(f"transcripts: {kinds}", markup=False, highlight=False)
    out.print(_to_do(report), highlight=False)
    if line := _failed(report.failed):
        out.print(line, highlight=False)
    for replica in report.replicas:
        out.print(_replica(replica), markup=False, highlight=False)
    for pause in report.paused_sites:
        out.print(_paused(pause), markup=False, highlight=False, soft_wrap=True)
    for e in report.recent_errors:
        out.print(_recent(e), markup=False, highlight=False)


def _replica(replica: Replica) -> str:
    where = f"{replica.host} (pid {replica.pid}, since {replica.started_at.astimezone():%H:%M})"
    if replica.alive:
        return f"replica {where}: {replica.videos} videos in hand"
    return f"replica {where}: heartbeat stopped {replica.seen_s / 60:.0f} min ago"


def _failed(failed: FailedSummary) -> str:
    """The failed videos by what happens to them next."""
    parts = [
        (failed.for_good, "for good"),
        (failed.waiting, "wait for a retry"),
        (failed.gave_up, "ran out of tries"),
        (
            failed.needs_cookies,
            "need cookies of an account that may see them (age-restricted, "
            "members-only: tried again when the cookies change)",
        ),
        (
            failed.needs_location,
            "need another location (geo-blocked: tried again when the proxy changes)",
        ),
    ]
    line = "failed: " + ", ".join(f"{n} {what}" for n, what in parts if n)
    if failed.next_retry_at is not None:
        line += f"; next retry at {failed.next_retry_at.astimezone():%Y-%m-%d %H:%M:%S}"
    return line if any(n for n, _ in parts) else ""


def _recent(e: RecentError) -> str:
    what = f"attempt {e.attempts}"
    if e.failure_class:
        what += f", {e.failure_class.replace('_', ' ')}"
    if e.retry_at is not None:
        what += f", retry at {e.retry_at.astimezone():%H:%M:%S}"
    return f"failed {e.video_id} ({what}): {e.error}"


def _paused(pause: SitePause) -> str:
    if pause.kind == "extractor_broken":
        return f"broken {pause.site} ({pause.owner}): {pause.reason}; {pause.fix}"
    if pause.kind == "needs_user":
        return f"paused {pause.site} ({pause.owner}): {pause.reason}; {pause.fix}"
    resume = f", resumes at {pause.resume_at.astimezone():%H:%M:%S}" if pause.resume_at else ""
    return f"throttled by {pause.site} ({pause.owner}{resume}): {pause.reason}"


def _to_do(report: StatusSummary) -> str:
    unknown = f" (+{report.todo_unknown} of unknown length)" if report.todo_unknown else ""
    line = f"to do: {report.todo_audio_seconds / 3600:.2f} h of audio{unknown}"
    if report.recent_rate:
        line += f"; last hour {report.recent_rate:.1f}x realtime"
    if report.eta_s is not None:
        line += f"; about {clock(report.eta_s)} left"
    return line


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many chunks to show.")] = 10,
    mode: Annotated[
        str, typer.Option(help="hybrid (meaning and words), vector (meaning) or text (words).")
    ] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    speaker: Annotated[str | None, typer.Option(help="Only chunks of this speaker.")] = None,
    channel: Annotated[str | None, typer.Option(help="Only videos of this channel.")] = None,
    source: Annotated[str | None, typer.Option(help="Only videos this source lists.")] = None,
    video: Annotated[str | None, typer.Option(help="Only this video (its id).")] = None,
    after: Annotated[datetime | None, typer.Option(help="Uploaded on or after (UTC).")] = None,
    before: Annotated[datetime | None, typer.Option(help="Uploaded before (UTC).")] = None,
    one_per_video: Annotated[
        bool, typer.Option("--one-per-video", help="Only the best chunk of each video.")
    ] = False,
    embedding_model: Annotated[
        str | None, typer.Option(help="The corpus's embedding model.")
    ] = None,
) -> None:
    """The chunks that best match QUERY, with a link to the second each starts."""
    with _usage_errors():
        settings = _settings(ctx, embedding_model=embedding_model)
        options = search_options(
            k=k, mode=mode, speaker=speaker, channel=channel, source=source, video=video,
            after=after, before=before, one_per_video=one_per_video,
        )  # fmt: skip
        results = _run(run_search(query, settings, options))
    if as_json:
        out.print_json(json.dumps([r.as_json() for r in results]))
        return
    for r in results:
        out.print(_describe(r), highlight=False)


def _describe(result: Result) -> Text:
    """A result for a terminal: where it is, then its snippet with the matching words bold."""
    hit = result.hit
    speaker = f" [{hit.speaker}]" if hit.speaker else ""
    if len(hit.speakers) > 1:  # a short turn of another joined to the chunk
        speaker = f" [speakers: {', '.join(hit.speakers)}]"
    source = f"  ({hit.transcript_source})" if hit.transcript_source else ""
    line = Text(
        f"{hit.score:.3f}  {hit.title or hit.video_id}{speaker}  "
        f"{clock(hit.start_s)}-{clock(hit.end_s)}  {result.link}{source}\n    "
    )
    # ts_headline marks the matches with ** (odd pieces are matches).
    for i, piece in enumerate(hit.snippet.split("**")):
        line.append(piece, style="bold" if i % 2 else "")
    return line


@app.command()
def serve(
    ctx: typer.Context,
    addr: Annotated[str | None, typer.Option(help="host:port to listen on.")] = None,
    embedding_model: Annotated[
        str | None, typer.Option(help="The corpus's embedding model.")
    ] = None,
) -> None:
    """A read-only HTTP API: GET /search (the options of `search`), /status and /health."""
    with _usage_errors():
        settings = _settings(ctx, serve_addr=addr, embedding_model=embedding_model)
        run_serve(settings)


@app.command()
def enroll(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The speaker's name, as search and labels show it.")],
    sources: Annotated[list[str], typer.Argument(help="Audio files or URLs, one voice.")],
    voice_model: Annotated[str | None, typer.Option(help="speechbrain hub id or folder.")] = None,
) -> None:
    """Build (or add to) the voice profile NAME from audio of that speaker alone.

    Exit status: 0 stored, 1 an input was unusable (nothing stored), 2 usage or setup error.
    """
    with _usage_errors():
        settings = _settings(ctx, voice_model=voice_model)
        try:
            result = _run(run_enroll(name, sources, settings))
        except EnrollError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    profile = result.profile
    out.print(
        f"{profile.name}: {result.added_windows} windows added, {profile.windows} in all",
        markup=False,
        highlight=False,
    )


@app.command()
def speakers(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the enrolled voice profiles."""
    with _usage_errors():
        settings = _settings(ctx)
        stored = _run(run_profiles(settings))
    rows = [
        {"name": p.name, "windows": p.windows, "model": p.model, "updated_at": str(p.updated_at)}
        for p in stored
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for row in rows:
        out.print(
            f"{row['name']}  {row['windows']} windows  {row['model']}  {row['updated_at']}",
            markup=False,
            highlight=False,
        )


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    skip_models: Annotated[
        bool, typer.Option(help="Do not load the models (the slow part).")
    ] = False,
) -> None:
    """Check the set-up before a long run, and say how to fix each problem.

    Exit status: 0 when nothing fails (warnings allowed), 1 otherwise.
    """
    try:
        settings = _settings(ctx)
    except ConfigError as exc:
        checks = [checkup.fail("settings", str(exc), "fix it in the environment, .env or flags")]
    else:
        checks = _run(checkup.diagnose(settings, load_models=not skip_models))
    if as_json:
        out.print_json(json.dumps(checkup.records(checks)))
    else:
        for line in checkup.lines(checks):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if checkup.failed(checks) else 0)


def main() -> None:
    code: int | str | None = 0
    try:
        app()
    except SystemExit as done:  # how typer ends every command
        code = done.code
    exit_process(code)
