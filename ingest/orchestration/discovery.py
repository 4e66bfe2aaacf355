"""Listing the sources: in full, or only their newest videos when that is enough.

A full listing of a large channel takes thousands of requests, and one of a 20,000-item feed
costs yt-dlp seconds of processing. So only what the run needs is listed:
- a backfill lists every source in full, unless `--limit` asks for a few videos: then a window of
  the newest is listed, widened until it holds enough videos to do;
- a daemon's poll of a known source lists a window of its newest videos, prepends those not yet
  known, and lists the source in full only when its last full listing is older than
  `full_every_s` (daily by default), to catch reordering and deletions. A feed is first asked
  with a conditional request: unchanged since the last poll, it is not listed at all.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from db import listings, videos
from db.leases import Claimable, count_claimable
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import Database
from ingest.orchestration.runner import Session
from ingest.sites.errors import site_of
from ingest.sites.throttle import SiteBlocked, governed
from ingest.sites.ytdlp_options import ytdlp_params
from ingest.stages.sources import ListedVideo, SourceError, list_source, source_key

log = structlog.get_logger()

# The first look at a source's newest videos: a YouTube page holds 30, a feed is one request.
WINDOW = 50
# A window is widened this many times over until it holds enough videos to do.
WIDEN = 4


@dataclass(frozen=True, slots=True)
class SourceFailure:
    source: str
    error: str


@dataclass(frozen=True, slots=True)
class ListingPlan:
    want: int | None = None  # enough videos to do for `--limit`: a window may do
    full_every_s: float | None = None  # a daemon's polls: window unless the full one is older


async def discover(
    sources: Sequence[str], run: Session, plan: ListingPlan | None = None
) -> tuple[list[str], list[SourceFailure]]:
    """Lists every source (concurrently, each as its site's governor admits) and records its
    videos and its listing; returns the keys of the listings recorded, in the sources' order,
    and the sources that failed."""
    plan = plan or ListingPlan()
    results = await asyncio.gather(*(_refresh(source, run, plan) for source in sources))
    listed: list[str] = []
    failures: list[SourceFailure] = []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, SourceFailure):
            failures.append(result)
        else:
            listed.append(source_key(source))
    return listed, failures


async def _refresh(source: str, run: Session, plan: ListingPlan) -> int | SourceFailure:
    """Lists `source` as the plan says; returns how many videos the listing brought."""
    try:
        return await _list_as_planned(source, run, plan)
    except (SourceError, SiteBlocked) as exc:
        log.error("source_failed", source=source, error=str(exc))
        return SourceFailure(source, str(exc))
    except Exception as exc:  # one bad source never stops the others
        log.error("source_failed", source=source, error=describe_error(exc))
        return SourceFailure(source, f"{source}: {describe_error(exc)}")


async def _list_as_planned(source: str, run: Session, plan: ListingPlan) -> int:
    key = source_key(source)
    local = "://" not in key  # a file or folder: listing it costs nothing
    if local or (plan.want is None and plan.full_every_s is None):
        return await _full(source, key, run)
    state = await run.db.run(lambda conn: listings.poll_state(conn, key))
    if plan.full_every_s is not None:
        stale = state.full_age_s is None or state.full_age_s >= plan.full_every_s
        answer = await _changed(source, state, run)
        if not state.listed or stale:
            count = await _full(source, key, run)
        # A stream skipped as live is looked at again even if the feed did not change.
        elif not answer.changed and not state.skipped:
            log.debug("source_unchanged", source=source)
            return 0
        else:
            count = await _newest(source, key, run)
        # Only now: a listing that failed must be tried again, not answered "not modified".
        await _remember(run, key, answer)
        return count
    assert plan.want is not None
    if state.listed:
        added = await _newest(source, key, run)
        if (await _claimable(run, key)).videos >= plan.want:
            return added
        return await _full(source, key, run)
    return await _widening(source, key, run, plan.want)


async def _full(source: str, key: str, run: Session) -> int:
    listing = await _list(source, run, first=None)
    await _record(run.db, key, listing, full=True)
    log.info("source_listed", source=source, videos=len(listing))
    return len(listing)


async def _newest(source: str, key: str, run: Session) -> int:
    """Prepends the source's newest videos not yet in its listing; a window of nothing but new
    videos may not reach the known ones, so the source is then listed in full."""
    window = await _list(source, run, first=WINDOW)
    ids = [video.record.id for video in window]
    seen = await run.db.run(lambda conn: listings.known(conn, key, ids))
    if len(window) >= WINDOW and not seen:
        return await _full(source, key, run)
    # The whole window is recorded: what it says of known videos (a premiere that started, a
    # stream that ended) is news too.
    records = [video.record for video in window]
    await run.db.run(lambda conn: videos.record_discovered(conn, records))
    new = [record.id for record in records if record.id not in seen]
    if new:
        await run.db.run(lambda conn: listings.prepend(conn, key, new))
    log.info("source_polled", source=source, new=len(new))
    return len(new)


async def _widening(source: str, key: str, run: Session, want: int) -> int:
    """The first videos of a source listed for the first time, in windows growing until they
    hold `want` videos to do (or the whole source)."""
    first = max(WINDOW, 2 * want)
    while True:
        listing = await _list(source, run, first=first)
        whole = len(listing) < first
        await _record(run.db, key, listing, full=whole)
        if whole or (await _claimable(run, key)).videos >= want:
            log.info("source_listed", source=source, videos=len(listing), whole=whole)
            return len(listing)
        first *= WIDEN


async def _claimable(run: Session, key: str) -> Claimable:
    rules = run.claims.rules
    return await run.db.run(lambda conn: count_claimable(conn, [key], rules))


async def _record(db: Database, key: str, listing: Sequence[ListedVideo], full: bool) -> None:
    records = [video.record for video in listing]
    ids = [record.id for record in records]
    await db.run(lambda conn: videos.record_discovered(conn, records))
    await db.run(lambda conn: listings.record_listing(conn, key, ids, full=full))


async def _list(source: str, run: Session, first: int | None) -> list[ListedVideo]:
    timeout, ytdlp = run.settings.download_socket_timeout, ytdlp_params(run.settings)

    async def listing() -> list[ListedVideo]:
        return await asyncio.to_thread(
            list_source, source, socket_timeout=timeout, ytdlp=ytdlp, first=first
        )

    return await governed(run.governor, site_of(source), listing)


@dataclass(frozen=True, slots=True)
class _Answer:
    """A feed's answer to a conditional request, and its validators for the next one."""

    changed: bool
    etag: str | None = None
    last_modified: str | None = None
    fresh: bool = False  # the validators came with this answer


async def _changed(source: str, state: listings.PollState, run: Session) -> _Answer:
    """Whether a feed may have changed since the last poll, by a conditional request (ETag,
    Last-Modified). YouTube answers none, and any doubt (no validators, an error) means yes:
    the listing that follows says what really happened."""
    if site_of(source) == "youtube.com" or urlsplit(source).scheme not in ("http", "https"):
        return _Answer(changed=True)
    timeout = run.settings.download_socket_timeout

    def ask() -> tuple[bool, str | None, str | None]:
        return _conditional_get(source, state.etag, state.last_modified, timeout)

    try:
        changed, etag, modified = await governed(
            run.governor, site_of(source), lambda: asyncio.to_thread(ask)
        )
    except (OSError, ValueError) as exc:
        log.debug("conditional_request_failed", source=source, error=str(exc))
        return _Answer(changed=True)
    return _Answer(changed, etag, modified, fresh=changed)


async def _remember(run: Session, key: str, answer: _Answer) -> None:
    """The validators of a changed feed whose listing was recorded, for the next poll."""
    if answer.fresh:
        etag, modified = answer.etag, answer.last_modified
        await run.db.run(lambda conn: listings.save_validators(conn, key, etag, modified))


def _conditional_get(
    url: str, etag: str | None, modified: str | None, timeout: float
) -> tuple[bool, str | None, str | None]:
    """Blocking: (changed, ETag, Last-Modified) of `url`; the body is not read."""
    headers = {"User-Agent": "ingest"}
    if etag:
        headers["If-None-Match"] = etag
    if modified:
        headers["If-Modified-Since"] = modified
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return True, response.headers.get("ETag"), response.headers.get("Last-Modified")
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return False, etag, modified
        raise
