"""One-shot backfill: list the sources, process every video not yet done, build the index."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from db import leases, sites
from db.leases import Claimable, ClaimRules, Outcome
from db.sites import SitePause
from db.videos import RetrySchedule
from ingest.infrastructure.config import Settings, parse_interval
from ingest.infrastructure.database import open_database
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.observe import observed
from ingest.infrastructure.retry import Database
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration.claims import Claims, RunningLock, new_owner
from ingest.orchestration.discovery import ListingPlan, SourceFailure, discover
from ingest.orchestration.runner import Display, Session, run_jobs
from ingest.orchestration.search import search_upkeep
from ingest.sites.errors import site_of
from ingest.sites.identity import identity
from ingest.sites.throttle import Governor, SiteStatus, ThrottleOptions
from ingest.stages.ledger import Ledger

log = structlog.get_logger()


# Exit statuses of a backfill, beside 0 (all done) and 2 (a usage or setup error).
EXIT_FAILED = 1  # a video failed for good or was set aside, a source failed, a site needs you
EXIT_THROTTLED = 3  # a site stayed throttled past INGEST_MAX_THROTTLE_WAIT: the rest left to do
EXIT_RETRY_LATER = 4  # videos wait for a scheduled retry beyond INGEST_BACKFILL_RETRY_WAIT


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
    # Where the videos the run set out to do stand at its end.
    outcome: Outcome = field(default_factory=Outcome)
    gave_up_on: tuple[str, ...] = ()  # sites throttled past INGEST_MAX_THROTTLE_WAIT

    @property
    def blocked(self) -> tuple[SiteStatus, ...]:
        """Sites that wait for the user: their videos are still to do."""
        return tuple(site for site in self.sites if site.blocked)

    @property
    def exit_code(self) -> int:
        """0 only when every video the run set out to do is done or failed for good (then 1),
        or a signal stopped it; see the EXIT_ statuses."""
        o = self.outcome
        if self.gave_up_on:
            return EXIT_THROTTLED
        if self.stopped:
            return EXIT_FAILED if o.failed_for_good or o.set_aside else 0
        if o.failed_for_good or o.set_aside or self.source_failures or self.blocked:
            return EXIT_FAILED
        if o.waiting_retry:
            return EXIT_RETRY_LATER
        return EXIT_FAILED if o.left else 0


async def publish_pause(db: Database, owner: str, status: SiteStatus) -> None:
    """A site's pause, where `ingest status` of any machine sees it; gone when it resumes."""
    if not status.paused:
        await db.run(lambda conn: sites.clear_pause(conn, owner, status.site))
        return
    pause = SitePause(status.site, owner, status.kind, status.reason, status.fix or None, None,
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
        claims = Claims(db, new_owner(), replace(rules(now), identity=identity(settings)))
        running = await asyncio.to_thread(RunningLock, settings.running_dir, claims.owner)
        await claims.beat()
        await claims.bury(await asyncio.to_thread(running.dead_beside))
        await claims.tidy()
        publish = functools.partial(publish_pause, db, claims.owner)
        governor = Governor(throttle_options(settings), metrics, publish=publish)
        await db.run(sites.forget_needs_user)
        try:
            async with asyncio.TaskGroup() as tg:
                heartbeat = tg.create_task(claims.beat_forever())
                yield Session(settings, db, claims, shutdown, governor), metrics
                heartbeat.cancel()
        finally:
            await db.run(lambda conn: sites.end_throttling(conn, claims.owner))
            await claims.retire()
            running.release()


def new_ledger(run: Session, total: int, metrics: Metrics, keep: int | None = None) -> Ledger:
    s = run.settings
    schedule = RetrySchedule(s.retry_later_seconds, s.retry_later_max_seconds, s.retry_later_tries)
    return Ledger(run.db, total, metrics, keep, schedule, run.claims.rules.identity)


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

    gave_up: list[str] = []
    async with session(settings, rules, shutdown) as (run, metrics):
        listed, source_failures = await discover(sources, run, ListingPlan(want=limit))
        todo = await run.claims.count(listed)
        planned = await run.db.run(lambda c: leases.planned_ids(c, listed, run.claims.rules))
        # What it sets out to do: all claimable now and those waiting for a retry, or N of them.
        total = len(planned) if limit is None else min(todo.videos, limit)
        ledger = new_ledger(run, total, metrics)
        ledger.counters.planned_audio_s = todo.audio_of(total)
        announce(todo, total)
        retries = RetryWait(run, ledger, listed, planned if limit is None else None)
        if todo.videos or (limit is None and (await retries.soon() or await retries.busy())):
            await _run(run, ledger, retries, limit, display, gave_up)
        if not shutdown.requested.is_set():
            await run.db.run(search_upkeep(settings))
        ids = planned if limit is None else sorted(ledger.claimed)
        outcome = await run.db.run(lambda c: leases.outcome(c, ids, run.claims.owner))
    return _result(ledger, outcome, source_failures, run, started, tuple(gave_up))


async def _run(
    run: Session,
    ledger: Ledger,
    retries: RetryWait,
    limit: int | None,
    display: Display | None,
    gave_up: list[str],
) -> None:
    """Claims and runs the videos; while a site is throttled, waits (up to
    INGEST_MAX_THROTTLE_WAIT); when nothing else is left, waits for retries due soon."""
    stop, listed = run.shutdown.requested, retries.listed
    feed = run.claims.jobs(listed, stop, limit, ledger.returned, closed(run.governor), retries)
    max_wait = parse_interval(run.settings.max_throttle_wait)
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(watch_throttling(run, max_wait, gave_up))
        try:
            await run_jobs(run, ledger, feed, display)
        finally:
            watch.cancel()


@dataclass
class RetryWait:
    """After the walk found nothing and nothing is in flight: how many videos may be claimed
    again, after waiting for the videos of the plan under way in other replicas to end, and
    for the next scheduled retry when it is due within INGEST_BACKFILL_RETRY_WAIT; 0 ends the
    run. Only retries of sources that may be claimed from count, and a wake-up after which
    nothing could be claimed ends the waiting, so that a video the walk cannot take never spins
    the run."""

    run: Session
    ledger: Ledger
    listed: Sequence[str]
    planned: Sequence[str] | None = None  # what the run set out to do (None: `--limit`)
    claims_at_wake: int | None = None

    async def __call__(self) -> int:
        run, ledger = self.run, self.ledger
        came_back = await ledger.settle(run.shutdown.requested)
        if came_back or run.shutdown.requested.is_set():
            return came_back
        if self.claims_at_wake is not None and ledger.claims == self.claims_at_wake:
            return 0
        freed = await self._wait_for_others() or await self._wait_for_due()
        self.claims_at_wake = ledger.claims if freed else None
        return freed

    async def busy(self) -> bool:
        """Whether videos of the plan are under way in other replicas: to be waited for."""
        outcome = await self._outcome()
        return outcome is not None and outcome.elsewhere > 0

    async def _outcome(self) -> leases.Outcome | None:
        """Where the planned videos stand; None for a run with no plan (`--limit`)."""
        if self.planned is None:
            return None
        where = functools.partial(leases.outcome, ids=self.planned, owner=self.run.claims.owner)
        return await self.run.db.run(where)

    async def _wait_for_others(self) -> int:
        """While videos of the plan are under way in other replicas: waits until some come back
        (handed back, or their owner's heartbeat stopped and they were handed back for it) and
        returns how many, or until none is left elsewhere. A backfill's exit 0 says the work is
        done, not that someone else was doing it."""
        run, stop = self.run, self.run.shutdown.requested
        waited = False
        while not stop.is_set():
            await run.claims.tidy()  # a dead replica's videos back on the walk, to be claimed
            outcome = await self._outcome()
            if outcome is None:
                return 0
            if waited and outcome.left:
                return outcome.left
            if not outcome.elsewhere:
                return 0
            waited = True
            log.info("waiting_for_other_replicas", videos=outcome.elsewhere)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), run.claims.rules.ttl_s / 3)
        return 0

    async def soon(self) -> bool:
        """Whether a retry falls due within the window: worth loading the models for."""
        retry = await self._next_retry()
        return retry.next_in_s is not None and retry.next_in_s <= self._window_s

    @property
    def _window_s(self) -> float:
        return parse_interval(self.run.settings.backfill_retry_wait, allow_zero=True)

    async def _next_retry(self) -> leases.NextRetry:
        sources = open_sources(self.run.governor, self.listed)
        return await self.run.db.run(functools.partial(leases.next_retry, sources=sources))

    async def _wait_for_due(self) -> int:
        stop = self.run.shutdown.requested
        while not stop.is_set():
            retry = await self._next_retry()
            if retry.due:
                return retry.due
            if retry.next_in_s is None or retry.next_in_s > self._window_s:
                return 0
            log.info("waiting_for_retry", next_in_s=round(retry.next_in_s, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry.next_in_s + 0.5)
        return 0


async def watch_throttling(run: Session, max_wait_s: float, gave_up: list[str]) -> None:
    """Stops the run when a site has been throttled without a break for longer than
    `max_wait_s`: the videos are handed back for a later run, and the exit status says so."""
    while True:
        await asyncio.sleep(1.0)
        over = [
            s.site
            for s in run.governor.status()
            if s.kind == "throttled" and s.paused and s.paused_s > max_wait_s
        ]
        if over:
            gave_up.extend(over)
            log.error("gave_up_waiting", sites=over, waited_s=round(max_wait_s))
            run.shutdown.request(f"throttled past INGEST_MAX_THROTTLE_WAIT: {', '.join(over)}")
            return


def _result(
    ledger: Ledger,
    outcome: Outcome,
    source_failures: Sequence[SourceFailure],
    run: Session,
    started: float,
    gave_up: tuple[str, ...],
) -> BackfillResult:
    c = ledger.counters
    return BackfillResult(
        total=c.total,
        done=c.done,
        # Videos failed at the end, not failures on the way: a retry may have healed one.
        failed=outcome.failed_for_good + outcome.set_aside + outcome.waiting_retry,
        skipped=c.skipped,
        handed_back=c.handed_back,
        stopped=run.shutdown.requested.is_set() and not gave_up,
        audio_seconds=c.audio_seconds,
        chunks=c.chunks,
        elapsed_s=time.perf_counter() - started,
        failures=tuple(ledger.failures.items()),
        source_failures=tuple(source_failures),
        sites=tuple(run.governor.status()),
        outcome=outcome,
        gave_up_on=gave_up,
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


def open_sources(governor: Governor, sources: Sequence[str]) -> list[str]:
    """The sources whose videos may be claimed now."""
    return [source for source in sources if not governor.is_blocked(site_of(source))]
