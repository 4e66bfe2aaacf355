"""`ingest status`: videos per status, chunks stored, and the most recent errors."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from db.reembed import reembedding_status
from db.sites import SitePause
from db.videos import FailedSummary, RecentError, StatusSummary, status_summary
from db.workers import Replica
from ingest.faces.cli.app import _run, _settings, _usage_errors, app, out
from ingest.infrastructure.database import open_database
from ingest.orchestration.progress import clock


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
                return await status_summary(conn), await reembedding_status(conn)

        report, reembedding = _run(go())
    if as_json:
        data = asdict(report)
        data["reembedding"] = asdict(reembedding) if reembedding else None
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
    if reembedding:
        out.print(reembedding.summary, markup=False, highlight=False, soft_wrap=True)
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
