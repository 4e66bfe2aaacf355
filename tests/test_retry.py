"""Retry policies, and what is known to be permanent before any download."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from db.videos import DiscoveredVideo, mark_skipped, record_discovered
from ingest.infrastructure.retry import Database, RetryPolicy, retry_transient
from ingest.sites.errors import is_transient
from ingest.stages.download import (
    Downloader,
    DownloadOptions,
    NotYetAvailable,
    PermanentDownloadError,
)

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
