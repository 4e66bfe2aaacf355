"""Retry policies, and what is known to be permanent before any download."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from db.embedded import start_embedded, stop_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from db.videos import DiscoveredVideo, count_by_status, mark_skipped, record_discovered
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.observe import sample_videos
from ingest.infrastructure.retry import Database, RetryPolicy, is_worth_retrying, retry_transient
from ingest.sites.errors import is_transient
from ingest.stages.download import (
    Downloader,
    DownloadOptions,
    NotYetAvailable,
    PermanentDownloadError,
)
from tests.conftest import pg_folder

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        (
            "ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable",
            True,
        ),
        # Throttling pauses the site (tests/test_throttling.py) rather than being retried.
        ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", False),
        ("ERROR: [Errno 111] Connection refused", True),
        ("ERROR: Read timed out.", True),
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", False),
        ("ERROR: [youtube] abc: Join this channel to get access to members-only content", False),
        ("ERROR: Unable to download webpage: HTTP Error 404: Not Found", False),
        ("ERROR: Unsupported URL: http://example.org/page.html", False),
        ("Invalid data found when processing input", False),
        ("something nobody has seen before", False),
    ],
)
def test_transient_and_permanent_failures(message: str, transient: bool) -> None:
    assert is_transient(RuntimeError(message)) is transient


async def test_transient_failures_are_retried_a_bounded_number_of_times() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("HTTP Error 503: Service Unavailable")
        return "ok"

    assert await retry_transient(RetryPolicy(3, 0.01, 0.05), "test", flaky, is_transient) == "ok"
    assert len(calls) == 3

    calls.clear()

    async def always_down() -> str:
        calls.append(1)
        raise RuntimeError("HTTP Error 502: Bad Gateway")

    with pytest.raises(RuntimeError, match="502"):
        await retry_transient(RetryPolicy(4, 0.01, 0.05), "test", always_down, is_transient)
    assert len(calls) == 4


async def test_permanent_failures_are_not_retried() -> None:
    calls: list[int] = []

    async def gone() -> str:
        calls.append(1)
        raise RuntimeError("HTTP Error 404: Not Found")

    with pytest.raises(RuntimeError, match="404"):
        await retry_transient(RetryPolicy(5, 0.01, 0.05), "test", gone, is_transient)
    assert len(calls) == 1


async def test_database_operations_wait_for_the_connection(pool: asyncpg.Pool) -> None:
    calls: list[int] = []

    async def op(conn: asyncpg.Connection) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("server closed the connection")
        value: int = await conn.fetchval("SELECT 41 + 1")
        return value

    assert await Database(pool, outage_s=30).run(op) == 42
    assert len(calls) == 3


async def test_live_and_upcoming_streams_are_skipped_until_they_end(pool: asyncpg.Pool) -> None:
    live = DiscoveredVideo("s1", "https://youtu.be/s1", "Live now", live_status="is_live")
    upcoming = DiscoveredVideo("s2", "https://youtu.be/s2", "Soon", live_status="is_upcoming")
    async with pool.acquire() as conn:
        await record_discovered(conn, [live, upcoming])
        rows = await conn.fetch("SELECT id, status, error FROM videos ORDER BY id")
        assert [tuple(r) for r in rows] == [
            ("s1", "skipped", "skipped: is_live"),
            ("s2", "skipped", "skipped: is_upcoming"),
        ]
        ended = DiscoveredVideo("s1", "https://youtu.be/s1", "Live now", live_status="was_live")
        await record_discovered(conn, [ended])
        row = await conn.fetchrow("SELECT status, error FROM videos WHERE id = 's1'")
        assert (row["status"], row["error"]) == ("discovered", None)
        await record_discovered(conn, [upcoming])
        assert await conn.fetchval("SELECT status FROM videos WHERE id = 's2'") == "skipped"

        # A feed lists no live status; the download found the stream live and skipped it.
        fed = DiscoveredVideo("f1", "http://example.test/live.m3u8", "Feed stream")
        await record_discovered(conn, [fed])
        await mark_skipped(conn, "f1", "live stream")
        await record_discovered(conn, [fed])
        assert await conn.fetchval("SELECT status FROM videos WHERE id = 'f1'") == "discovered"


def test_streams_and_overlong_videos_are_refused_before_downloading(tmp_path: Path) -> None:
    downloader = Downloader(DownloadOptions(tmp_path, workers=1, max_duration_s=3600))
    try:
        with pytest.raises(NotYetAvailable, match="upcoming stream"):
            downloader._check({"live_status": "is_upcoming"})
        with pytest.raises(PermanentDownloadError, match="too long: 7200 s"):
            downloader._check({"duration": 7200})
        downloader._check({"duration": 600, "live_status": "was_live"})
    finally:
        downloader.close()


async def _ask_until(stop: asyncio.Event, database: Database) -> int:
    answers = 0
    while not stop.is_set():
        await database.run(count_by_status)
        answers += 1
    return answers


async def test_a_server_restarting_under_busy_connections_is_waited_for() -> None:
    """A private server is stopped and started five times under four loops of queries and the
    status sampler: every operation ends with an answer and the sampler keeps going, whatever the
    connections die of (a reset, a refused connect, or asyncpg's protocol left mid-error)."""
    pgdata = pg_folder() / "pgdata"
    uri = await asyncio.to_thread(start_embedded, pgdata)
    pool = await create_pool(uri, max_size=8)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        stop, database = asyncio.Event(), Database(pool, outage_s=120)
        sampler = asyncio.create_task(sample_videos(pool, Metrics(), 0.01))
        askers = [asyncio.create_task(_ask_until(stop, database)) for _ in range(4)]
        for _ in range(5):
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stop_embedded, pgdata)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(start_embedded, pgdata)
        stop.set()
        assert all(answers > 0 for answers in await asyncio.gather(*askers))
        assert not sampler.done(), sampler.exception()
        sampler.cancel()
    finally:
        await pool.close()
        await asyncio.to_thread(stop_embedded, pgdata)
        shutil.rmtree(pgdata.parent, ignore_errors=True)


def test_a_protocol_left_mid_error_counts_as_a_lost_connection() -> None:
    refused = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert is_worth_retrying(refused)
    assert not is_worth_retrying(asyncpg.exceptions.UniqueViolationError("duplicate key"))
