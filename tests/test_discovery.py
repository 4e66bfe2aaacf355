"""Listing only what a run needs: a window of the newest videos for `--limit` and for a daemon's
polls, full listings when they are due, conditional requests for feeds."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from db import listings
from db.leases import ClaimRules
from ingest.infrastructure.config import Settings
from ingest.infrastructure.retry import Database
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration.claims import Claims
from ingest.orchestration.discovery import WINDOW, ListingPlan, discover
from ingest.orchestration.runner import Session
from ingest.sites.throttle import Governor
from tests.feeds import Item, serve, write_feed
from tests.test_claims import claim_all

pytestmark = pytest.mark.anyio

DAILY = ListingPlan(full_every_s=86400)


@dataclass
class FeedRequests:
    """Counts the requests for the feed itself."""

    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: str) -> tuple[int, dict[str, str]] | None:
        with self.lock:
            self.seen[path] += 1
        return None

    def take(self) -> int:
        with self.lock:
            count, self.seen = self.seen["/feed.xml"], Counter()
        return count


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The served folder of a test's feed."""
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


def session(pool: asyncpg.Pool, tmp_path: Path) -> Session:
    settings = Settings(data_dir=tmp_path / "data", ytdlp_sleep_requests=0)
    db = Database(pool)
    return Session(settings, db, Claims(db, "host:1:me", ClaimRules()), Shutdown(1), Governor())


def items(*guids: str) -> list[Item]:
    return [Item(guid, guid, f"{guid}.wav") for guid in guids]


async def stored(pool: asyncpg.Pool, source: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT video_id FROM listings WHERE source = $1 ORDER BY position", source
    )
    return [row["video_id"].removeprefix("generic:") for row in rows]


def touch_later(path: Path) -> None:
    """A new modification time, a whole second later: HTTP dates have no finer unit."""
    later = path.stat().st_mtime + 2
    os.utime(path, (later, later))


async def test_a_daemon_poll_lists_only_what_is_new_and_asks_the_feed_conditionally(
    pool: asyncpg.Pool, tmp_path: Path, site: Path
) -> None:
    requests = FeedRequests()
    run = session(pool, tmp_path)
    with serve(site, gate=requests) as base:
        feed = write_feed(site, base, items("c", "b", "a"))
        assert await discover([feed], run, DAILY) == ([feed], [])  # first poll: in full
        assert await stored(pool, feed) == ["c", "b", "a"]
        requests.take()

        await discover([feed], run, DAILY)  # unchanged: one conditional request, no listing
        assert requests.take() == 1

        write_feed(site, base, items("e", "d", "c", "b", "a"))
        touch_later(site / "feed.xml")
        await discover([feed], run, DAILY)  # the validators saved above tell it changed
        assert await stored(pool, feed) == ["e", "d", "c", "b", "a"]
        assert requests.take() == 2  # the conditional request, then the listing

        await discover([feed], run, DAILY)
        assert requests.take() == 1
    assert await claim_all(run.claims, [feed]) == [f"generic:{i}" for i in "edcba"]


@dataclass
class ListingFails:
    """While armed, lets the feed's first request through (the conditional one) and fails the
    listing's with a server error."""

    armed: bool = False
    seen: int = 0

    def __call__(self, path: str) -> tuple[int, dict[str, str]] | None:
        if path != "/feed.xml" or not self.armed:
            return None
        self.seen += 1
        return None if self.seen == 1 else (404, {})


async def test_a_listing_that_failed_leaves_the_last_validators_so_the_next_poll_lists(
    pool: asyncpg.Pool, tmp_path: Path, site: Path
) -> None:
    fails = ListingFails()
    run = session(pool, tmp_path)
    with serve(site, gate=fails) as base:
        feed = write_feed(site, base, items("a"))
        await discover([feed], run, DAILY)
        async with pool.acquire() as conn:
            saved = await listings.poll_state(conn, feed)
        assert saved.last_modified is not None

        write_feed(site, base, items("b", "a"))
        touch_later(site / "feed.xml")
        fails.armed = True
        _, failed = await discover([feed], run, DAILY)
        assert len(failed) == 1 and fails.seen >= 2  # changed, then the listing failed
        fails.armed = False
        async with pool.acquire() as conn:
            assert (await listings.poll_state(conn, feed)).last_modified == saved.last_modified

        await discover([feed], run, DAILY)  # not "not modified": the new item is found
        assert await stored(pool, feed) == ["b", "a"]


async def test_a_full_listing_is_taken_when_the_last_is_older_than_the_interval(
    pool: asyncpg.Pool, tmp_path: Path, site: Path
) -> None:
    run = session(pool, tmp_path)
    with serve(site) as base:
        feed = write_feed(site, base, items("b", "a"))
        await discover([feed], run, DAILY)
        # One deleted, one added at the end: a window only prepends the new video ...
        write_feed(site, base, items("a", "new"))
        touch_later(site / "feed.xml")
        await discover([feed], run, DAILY)
        assert await stored(pool, feed) == ["new", "b", "a"]
        # ... until the full listing is due, on the database's clock.
        await pool.execute("UPDATE source_polls SET full_listed_at = now() - interval '25 hours'")
        await discover([feed], run, DAILY)
    assert await stored(pool, feed) == ["a", "new"]
    async with pool.acquire() as conn:
        state = await listings.poll_state(conn, feed)
    assert state.full_age_s is not None and state.full_age_s < 60


async def test_a_window_of_nothing_but_new_videos_falls_back_to_a_full_listing(
    pool: asyncpg.Pool, tmp_path: Path, site: Path
) -> None:
    run = session(pool, tmp_path)
    old = [f"old{i}" for i in range(3)]
    new = [f"new{i}" for i in range(WINDOW + 5)]
    with serve(site) as base:
        feed = write_feed(site, base, items(*old))
        await discover([feed], run, DAILY)
        write_feed(site, base, items(*new, *old))
        touch_later(site / "feed.xml")
        await discover([feed], run, DAILY)
    assert await stored(pool, feed) == [*new, *old]


async def recorded(pool: asyncpg.Pool) -> int:
    """How many videos the listings so far have recorded, the measure of their work."""
    count: int = await pool.fetchval("SELECT count(*) FROM videos")
    return count


async def test_limit_lists_a_window_and_widens_it_only_when_needed(
    pool: asyncpg.Pool, tmp_path: Path, site: Path
) -> None:
    requests = FeedRequests()
    run = session(pool, tmp_path)
    guids = [f"v{i}" for i in range(3 * WINDOW)]
    with serve(site, gate=requests) as base:
        feed = write_feed(site, base, items(*guids))
        await discover([feed], run, ListingPlan(want=4))
        # One listing of one window, not widened: the rest of the feed was not looked at.
        assert (requests.take(), await recorded(pool)) == (1, WINDOW)
        assert await stored(pool, feed) == guids[:WINDOW]
        async with pool.acquire() as conn:
            assert (await listings.poll_state(conn, feed)).full_age_s is None  # not a full one

        # The window's videos are all done: the next --limit 4 needs more of the source.
        await pool.execute("UPDATE videos SET status = 'done'")
        await discover([feed], run, ListingPlan(want=4))
        assert await stored(pool, feed) == guids
        assert await recorded(pool) == len(guids)
        requests.take()
        await discover([feed], run)  # a backfill without --limit lists in full
        assert requests.take() == 1
    assert await claim_all(run.claims, [feed], limit=4) == [f"generic:v{i}" for i in range(50, 54)]


async def test_a_source_of_a_site_waiting_for_the_user_is_not_claimed(pool: asyncpg.Pool) -> None:
    from ingest.orchestration.backfill import closed
    from ingest.sites.errors import Failure
    from tests.test_claims import listed

    await listed(pool, "https://a.org/feed", ["a1", "a2"])
    await listed(pool, "https://b.org/feed", ["b1"])
    governor = Governor()
    governor.block("a.org", Failure("needs_user", "sign-in required", "cookies"))
    claims = Claims(Database(pool), "host:1:me", ClaimRules())
    stop = asyncio.Event()
    jobs = claims.jobs(["https://a.org/feed", "https://b.org/feed"], stop, closed=closed(governor))
    assert [job.video_id async for job in jobs] == ["b1"]


async def test_two_replicas_recording_a_new_listing_at_once_do_not_collide(
    pool: asyncpg.Pool,
) -> None:
    from db.videos import DiscoveredVideo, record_discovered

    ids = [f"v{i}" for i in range(2000)]
    async with pool.acquire() as conn:
        await record_discovered(conn, [DiscoveredVideo(i, f"https://x.org/{i}") for i in ids])

    async def record(order: list[str]) -> None:
        async with pool.acquire() as conn:
            await listings.record_listing(conn, "s", order)

    await asyncio.gather(record(ids), record(ids[::-1]))
    assert await stored(pool, "s") in (ids, ids[::-1])
