"""Long-running mode: poll the sources on an interval and ingest new videos as they appear."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import structlog

from db import leases
from db.leases import ClaimRules
from ingest.infrastructure.config import Settings, parse_interval
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration.backfill import closed, new_ledger, open_sources, session
from ingest.orchestration.discovery import ListingPlan, discover
from ingest.orchestration.runner import Session, run_jobs
from ingest.orchestration.search import search_upkeep
from ingest.stages.ledger import Ledger
from ingest.stages.messages import VideoJob
from ingest.stages.sources import source_key

log = structlog.get_logger()


async def poll(
    sources: Sequence[str], run: Session, interval_s: float, ledger: Ledger
) -> AsyncIterator[VideoJob]:
    """Lists the sources, yields every claimable video, waits, and again, until stopped. Between
    listings it wakes for the scheduled retries of failures that may heal. Videos this process
    handed back (their site waited for the user) are left to others until the next listing; a
    blocked site is probed again once its block is due."""
    stop = run.shutdown.requested
    # A source that fails to list this time keeps its last listing: its videos still get done.
    keys = [source_key(source) for source in sources]
    plan = ListingPlan(full_every_s=parse_interval(run.settings.full_listing_interval))
    next_listing = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_listing:
            await discover(sources, run, plan)
            next_listing = time.monotonic() + interval_s
            ledger.returned.clear()
        await run.claims.remove_dead_audio(run.settings.audio_dir)
        took = 0
        async for job in run.claims.jobs(
            keys, stop, returned=ledger.returned, closed=closed(run.governor)
        ):
            took += 1
            yield job
        # Caught up: the vector index is built (concurrently) once the corpus is big enough.
        await run.db.run(search_upkeep(run.settings))
        await _rest(run, keys, next_listing, ledger.wake, took)


async def _rest(
    run: Session, keys: Sequence[str], next_listing: float, wake: asyncio.Event, took: int
) -> None:
    """Until the next listing, the next scheduled retry, or `wake` (a video in flight failed
    and scheduled a retry, or came back to be claimed again). A retry that is due but was not
    claimed (its site is blocked) is looked at again in a minute, not at once."""
    wake.clear()
    open_keys = open_sources(run.governor, keys)
    retry = await run.db.run(functools.partial(leases.next_retry, sources=open_keys))
    wait_s = max(0.0, next_listing - time.monotonic())
    if retry.next_in_s is not None:
        wait_s = min(wait_s, retry.next_in_s + 0.5 if took or not retry.due else 60.0)
    log.info("poll_done", sources=len(keys), next_in_s=round(wait_s, 1))
    waits = {
        asyncio.ensure_future(run.shutdown.requested.wait()),
        asyncio.ensure_future(wake.wait()),
    }
    try:
        await asyncio.wait(waits, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def daemon(
    sources: Sequence[str],
    settings: Settings,
    *,
    poll_interval_s: float,
    retry_failed: bool = False,
    shutdown: Shutdown | None = None,
) -> Ledger:
    """Runs until SIGTERM/SIGINT; returns the ledger of what it did."""
    shutdown = shutdown or Shutdown(settings.shutdown_grace_seconds)

    def rules(now: datetime) -> ClaimRules:
        return ClaimRules(settings.lease_seconds, retry_failed_before=now if retry_failed else None)

    async with session(settings, rules, shutdown) as (run, metrics):
        ledger = new_ledger(run, 0, metrics, keep=1000)
        await run_jobs(run, ledger, poll(sources, run, poll_interval_s, ledger))
    return ledger
