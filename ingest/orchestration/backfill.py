"""One-shot backfill: list the sources, process every video not yet done, build the index."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import structlog

from db import sites
from db.leases import Claimable, ClaimRules
from db.sites import SitePause
from ingest.infrastructure.config import Settings
from ingest.infrastructure.database import open_database
from ingest.infrastructure.errors import site_of
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.observe import observed
from ingest.infrastructure.retry import Database
from ingest.infrastructure.shutdown import Shutdown
from ingest.infrastructure.throttle import Governor, SiteStatus, ThrottleOptions
from ingest.orchestration.claims import Claims, new_owner
from ingest.orchestration.discovery import ListingPlan, SourceFailure, discover
from ingest.orchestration.runner import Display, Session, run_jobs
from ingest.orchestration.search import search_upkeep
from ingest.stages.ledger import Ledger

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class BackfillResult:
    total: int
    done: int
    failed: int
    skipped: int
    handed_back: int
    stopped: bool  # by a signal, before the end
    audio_seconds: float
    chunks: int
    elapsed_s: float
    failures: tuple[tuple[str, str], ...]  # (video id, error)
    source_failures: tuple[SourceFailure, ...]
    sites: tuple[SiteStatus, ...] = ()  # sites paused during the run

    @property
    def blocked(self) -> tuple[SiteStatus, ...]:
        """Sites that wait for the user: their videos are still to do."""
        return tuple(site for site in self.sites if site.blocked)

    @property
    def exit_code(self) -> int:
        """1 when a video or a source failed, or a site needs the user; a graceful stop, or a
        throttled site that let the run finish, is not a failure."""
        return 1 if self.failed or self.source_failures or self.blocked else 0


async def publish_pause(db: Database, owner: str, status: SiteStatus) -> None:
    """A site's pause, where `ingest status` of any machine sees it; gone when it resumes."""
    if not status.paused:
        await db.run(lambda conn: sites.clear_pause(conn, owner, status.site))
        return
    kind = "needs_user" if status.blocked else "throttled"
    pause = SitePause(status.site, owner, kind, status.reason, status.fix or None, None,
                      status.pauses)  # fmt: skip
    resume_in = None if status.blocked else status.resume_in_s
    await db.run(lambda conn: sites.record_pause(conn, owner, pause, resume_in))


def throttle_options(settings: Settings) -> ThrottleOptions:
    return ThrottleOptions(
        settings.throttle_initial_seconds,
        settings.throttle_max_seconds,
        videos_per_hour=settings.max_videos_per_hour,
    )


@asynccontextmanager
async def session(
    settings: Settings, rules: Callable[[datetime], ClaimRules], shutdown: Shutdown
) -> AsyncIterator[tuple[Session, Metrics]]:
    """The database with the schema up to date, metrics served, a lease owner for this process."""
    async with open_database(settings) as pool, observed(settings, pool) as metrics:
        db = Database(pool, settings.db_outage_seconds)
        # Cutoffs ("failed before this run") are the database's time: clients' clocks drift.
        now: datetime = await db.run(lambda conn: conn.fetchval("SELECT now()"))
        claims = Claims(db, new_owner(), rules(now))
        await claims.take_over_dead()
        publish = functools.partial(publish_pause, db, claims.owner)
        governor = Governor(throttle_options(settings), metrics, publish=publish)
        await db.run(sites.forget_needs_user)
        try:
            yield Session(settings, db, claims, shutdown, governor), metrics
        finally:
            await db.run(lambda conn: sites.end_throttling(conn, claims.owner))


async def backfill(
    sources: Sequence[str],
    settings: Settings,
    *,
    limit: int | None = None,
    reprocess: bool = False,
    retry_failed: bool = False,
    display: Display | None = None,
    shutdown: Shutdown | None = None,
) -> BackfillResult:
    started = time.perf_counter()
    shutdown = shutdown or Shutdown(settings.shutdown_grace_seconds)

    def rules(now: datetime) -> ClaimRules:
        return ClaimRules(
            ttl_s=settings.lease_seconds,
            retry_failed_before=now if retry_failed else None,
            reprocess_done_before=now if reprocess else None,
        )

    async with session(settings, rules, shutdown) as (run, metrics):
        listed, source_failures = await discover(sources, run, ListingPlan(want=limit))
        todo = await run.claims.count(listed)
        total = min(todo.videos, limit or todo.videos)
        ledger = Ledger(run.db, total, metrics, run.claims.owner)
        ledger.counters.planned_audio_s = todo.audio_of(total)
        announce(todo, total)
        if total:
            settle = functools.partial(ledger.settle, shutdown.requested)
            feed = run.claims.jobs(
                listed, shutdown.requested, limit, ledger.returned, closed(run.governor), settle
            )
            await run_jobs(run, ledger, feed, display)
        if not shutdown.requested.is_set():
            await run.db.run(search_upkeep(settings))
    c = ledger.counters
    return BackfillResult(
        total=c.total,
        done=c.done,
        failed=c.failed,
        skipped=c.skipped,
        handed_back=c.handed_back,
        stopped=shutdown.requested.is_set(),
        audio_seconds=c.audio_seconds,
        chunks=c.chunks,
        elapsed_s=time.perf_counter() - started,
        failures=tuple(ledger.failures),
        source_failures=tuple(source_failures),
        sites=tuple(run.governor.status()),
    )


def announce(todo: Claimable, total: int) -> None:
    """What the run is about to do, before models load: the user sees the size of the job."""
    log.info(
        "backfill_planned",
        videos=total,
        not_yet_done=todo.videos,
        audio_hours=round(todo.audio_of(total) / 3600, 2),
        unknown_length=todo.unknown,
    )


def closed(governor: Governor) -> Callable[[str], bool]:
    """Whether a source's site waits for the user, so that its videos are not claimed."""
    return lambda source: governor.is_blocked(site_of(source))
