"""Long-running mode: poll the sources on an interval and ingest new videos as they appear."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime

import structlog

from db.leases import ClaimRules
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration.backfill import closed, session
from ingest.orchestration.discovery import ListingPlan, discover
from ingest.orchestration.runner import Session, run_jobs
from ingest.orchestration.search import search_upkeep
from ingest.stages.ledger import Ledger
from ingest.stages.messages import VideoJob
from ingest.stages.sources import source_key

log = structlog.get_logger()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `1d` → seconds."""
    match = _DURATION.match(text.lower())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"invalid interval {text!r}: use e.g. 90s, 15m, 1h")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


async def poll(
    sources: Sequence[str], run: Session, interval_s: float, returned: Collection[str] = ()
) -> AsyncIterator[VideoJob]:
    """Lists the sources, yields every claimable video, waits, and again, until stopped. Videos
    this process handed back (`returned`: their site waits for the user) are left to others."""
    stop = run.shutdown.requested
    # A source that fails to list this time keeps its last listing: its videos still get done.
    keys = [source_key(source) for source in sources]
    plan = ListingPlan(full_every_s=parse_interval(run.settings.full_listing_interval))
    while not stop.is_set():
        await discover(sources, run, plan)
        await run.claims.take_over_dead()
        async for job in run.claims.jobs(
            keys, stop, returned=returned, closed=closed(run.governor)
        ):
            yield job
        # Caught up: the vector index is built (concurrently) once the corpus is big enough.
        await run.db.run(search_upkeep(run.settings))
        log.info("poll_done", sources=len(keys), next_in_s=interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


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
        ledger = Ledger(run.db, 0, metrics, run.claims.owner, keep_failures=1000)
        await run_jobs(run, ledger, poll(sources, run, poll_interval_s, ledger.returned))
    return ledger
