"""One-shot backfill: list the sources, process every video not yet done, build the index."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import structlog

from db import sites, videos
from db.corpus import ensure_search_index
from db.leases import Claimable, ClaimRules, record_listing
from db.sites import SitePause
from ingest.claims import Claims, new_owner
from ingest.config import Settings
from ingest.database import open_database
from ingest.errors import site_of
from ingest.ledger import Ledger, describe_error
from ingest.metrics import Metrics
from ingest.observe import observed
from ingest.retry import Database
from ingest.runner import Display, Session, run_jobs
from ingest.shutdown import Shutdown
from ingest.sources import ListedVideo, SourceError, list_source, source_key
from ingest.throttle import Governor, SiteBlocked, SiteStatus, ThrottleOptions, governed
from ingest.ytdlp_options import ytdlp_params

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class SourceFailure:
    source: str
    error: str


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
        listed, source_failures = await discover(sources, run)
        todo = await run.claims.count(listed)
        total = min(todo.videos, limit or todo.videos)
        ledger = Ledger(run.db, total, metrics, run.claims.owner)
        ledger.counters.planned_audio_s = todo.audio_of(total)
        announce(todo, total)
        if total:
            feed = run.claims.jobs(listed, shutdown.requested, limit, ledger.returned)
            await run_jobs(run, ledger, feed, display)
        if not shutdown.requested.is_set():
            await run.db.run(ensure_search_index)
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


async def discover(sources: Sequence[str], run: Session) -> tuple[list[str], list[SourceFailure]]:
    """Lists every source (concurrently, each as its site's governor admits) and records its
    videos and its listing; returns the keys of the listings recorded, in the sources' order,
    and the sources that failed."""
    results = await asyncio.gather(*(_list(source, run) for source in sources))
    listed: list[str] = []
    failures: list[SourceFailure] = []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, SourceFailure):
            failures.append(result)
            continue
        key = source_key(source)
        await record(run.db, key, result)
        log.info("source_listed", source=source, videos=len(result))
        listed.append(key)
    return listed, failures


async def record(db: Database, source: str, listing: Sequence[ListedVideo]) -> None:
    records = [video.record for video in listing]
    ids = [record.id for record in records]
    await db.run(lambda conn: videos.record_discovered(conn, records))
    await db.run(lambda conn: record_listing(conn, source, ids))


async def _list(source: str, run: Session) -> list[ListedVideo] | SourceFailure:
    timeout, ytdlp = run.settings.download_socket_timeout, ytdlp_params(run.settings)

    async def listing() -> list[ListedVideo]:
        return await asyncio.to_thread(list_source, source, socket_timeout=timeout, ytdlp=ytdlp)

    try:
        return await governed(run.governor, site_of(source), listing)
    except (SourceError, SiteBlocked) as exc:
        log.error("source_failed", source=source, error=str(exc))
        return SourceFailure(source, str(exc))
    except Exception as exc:  # one bad source never stops the others
        log.error("source_failed", source=source, error=describe_error(exc))
        return SourceFailure(source, f"{source}: {describe_error(exc)}")
