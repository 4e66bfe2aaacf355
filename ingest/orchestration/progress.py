"""The live progress display of a backfill, and its final summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

from ingest.orchestration.backfill import BackfillResult
from ingest.orchestration.pipeline import Pipeline
from ingest.sites.throttle import SiteStatus
from ingest.stages.ledger import Ledger


@contextmanager
def live_progress(ledger: Ledger, pipeline: Pipeline, console: Console) -> Iterator[None]:
    """Redraws twice a second on the console; log lines written meanwhile appear above it."""
    started = time.monotonic()

    def render() -> RenderableType:
        return progress_view(ledger, pipeline, time.monotonic() - started)

    with Live(get_renderable=render, console=console, refresh_per_second=2, transient=True):
        yield


def progress_view(ledger: Ledger, pipeline: Pipeline, elapsed_s: float) -> RenderableType:
    c = ledger.counters
    bar = ProgressBar(total=max(c.total, 1), completed=c.finished, width=40)
    depths = "  ".join(f"{name} {depth}" for name, depth in pipeline.depths().items())
    line = Text.assemble(
        (f" videos {c.finished}/{c.total}", "bold"),
        f"  done {c.done}  ",
        (f"failed {c.failed}", "red" if c.failed else ""),
        f"  audio {audio_done(c.audio_seconds, c.planned_audio_s)}  chunks {c.chunks}",
        f"  queues: {depths}  {clock(elapsed_s)}",
        f"  {time_left(ledger.eta_s())}",
    )
    sites = [Text(site_line(site), style="yellow") for site in pipeline.governor.status()]
    return Group(bar, line, *(site for site in sites if site.plain))


def site_line(site: SiteStatus) -> str:
    """What a paused site means for the run, or nothing once it resumed."""
    if site.blocked:
        return f" {site.site} needs you: {site.reason}; {site.fix}"
    if site.paused:
        return f" throttled by {site.site}, next try in {clock(site.resume_in_s)}"
    return ""


def audio_done(done_s: float, planned_s: float) -> str:
    if planned_s <= 0:
        return f"{done_s / 3600:.2f} h"
    return f"{done_s / 3600:.2f}/{planned_s / 3600:.2f} h"


def time_left(eta_s: float | None) -> str:
    return "left: measuring" if eta_s is None else f"left ~{clock(eta_s)}"


def summary(result: BackfillResult) -> str:
    lines = [
        f"{result.done} done, {result.failed} failed of {result.total} videos; "
        f"{result.audio_seconds / 3600:.2f} h of audio, {result.chunks} chunks, "
        f"{clock(result.elapsed_s)}"
    ]
    if result.skipped:
        lines.append(f"{result.skipped} skipped (live or upcoming streams)")
    if result.stopped:
        lines.append(f"stopped early: {result.handed_back} videos handed back for a later run")
    lines += [f"failed {video_id}: {error}" for video_id, error in result.failures]
    lines += [f"source failed: {f.error}" for f in result.source_failures]
    lines += [
        f"{site.site} paused, its videos left to do: {site.reason}; {site.fix}"
        for site in result.blocked
    ]
    throttled = [f"{s.site} ({s.pauses} pauses)" for s in result.sites if not s.blocked]
    if throttled:
        lines.append(f"throttled by {', '.join(throttled)}: requests waited for the pauses")
    return "\n".join(lines + outcome_lines(result))


def outcome_lines(result: BackfillResult) -> list[str]:
    """What is left of the work, and how it will get done."""
    o, lines = result.outcome, []
    if result.gave_up_on:
        lines.append(
            f"gave up waiting for {', '.join(result.gave_up_on)}: throttled for longer than "
            f"INGEST_MAX_THROTTLE_WAIT; {o.left + o.waiting_retry} videos left to do: run the "
            "same command again later to resume"
        )
    if o.waiting_retry:
        lines.append(
            f"{o.waiting_retry} failed but may heal: tried again on a schedule that grows "
            "(`ingest status` says when); `ingest daemon` or a later backfill does it"
        )
    if o.set_aside:
        lines.append(
            f"{o.set_aside} set aside (age-restricted, members-only or geo-blocked): tried "
            "again when the cookies or proxy settings change"
        )
    if o.elsewhere:
        lines.append(f"{o.elsewhere} under way in another replica")
    if o.left and not (result.stopped or result.gave_up_on or result.blocked):
        lines.append(f"{o.left} videos left undone: run the same command again")
    return lines


def clock(seconds: float) -> str:
    """H:MM:SS."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{secs:02d}"
