"""Claims against listings of growing size: the next video to do must not cost more as the
channel grows. Also the time to record a listing through the real discovery path, a daemon's
poll of a large channel with nothing new, and `--limit 4` of a large feed against a small one."""

from __future__ import annotations

import asyncio
import functools
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

from bench.database import fresh_database
from bench.results import Figure
from db.leases import ClaimRules, claim_next
from db.listings import known, record_listing
from db.migrate import apply_migrations
from db.pool import create_pool
from db.videos import DiscoveredVideo, record_discovered
from ingest.infrastructure.config import Settings
from ingest.infrastructure.retry import Database
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration.claims import Claims
from ingest.orchestration.discovery import ListingPlan, discover
from ingest.orchestration.runner import Session
from ingest.sites.throttle import Governor

SOURCE = "https://example.org/@channel/videos"
CLAIMS = 500


def claims(server_uri: str, quick: bool) -> list[Figure]:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    rates = {size: asyncio.run(_claim_rate(server_uri, size)) for size in sizes}
    listing = 10_000 if quick else 100_000
    recorded_s = asyncio.run(_record_time(server_uri, listing))
    poll_s = asyncio.run(_poll_time(server_uri, listing))
    big_feed = 2_000 if quick else 20_000
    small_s, big_s = (asyncio.run(_limited_listing(server_uri, n)) for n in (4, big_feed))
    smallest, largest = sizes[0], sizes[-1]
    return [
        Figure("claims", f"daemon poll of {listing:,} listed, nothing new (database side)",
               poll_s, "s", target=None if quick else 2.0, compare="<="),
        Figure("claims", "listing for --limit 4 of a 4-entry feed", small_s, "s"),
        Figure("claims", f"listing for --limit 4 of a {big_feed:,}-entry feed", big_s, "s"),
        *(
            Figure("claims", f"claims/s, {size:,} listed", rate, "/s", target=500 if size ==
                   largest and not quick else None)
            for size, rate in rates.items()
        ),
        Figure("claims", f"claim rate, {largest:,} ÷ {smallest:,} listed",
               rates[largest] / rates[smallest], target=None if quick else 0.5),
        Figure("claims", f"record a listing of {listing:,} (videos and listing)", recorded_s,
               "s", target=None if quick else 5.0, compare="<="),
    ]  # fmt: skip


async def _database(server_uri: str) -> asyncpg.Pool:
    pool = await create_pool(await fresh_database(server_uri))
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    return pool


async def _claim_rate(server_uri: str, size: int) -> float:
    """Claims per second, the first `CLAIMS` of a listing of `size` whose first half is done
    (a rerun: the walk must skip what is finished without paying for it each time)."""
    pool = await _database(server_uri)
    try:
        async with pool.acquire() as conn:
            await _fill(conn, size)
            rules, position = ClaimRules(), size // 2
            started = time.perf_counter()
            for _ in range(CLAIMS):
                claimed = await claim_next(conn, "bench:1:x", SOURCE, position, rules)
                assert claimed is not None
                position = claimed.position + 1
            return CLAIMS / (time.perf_counter() - started)
    finally:
        await pool.close()


async def _fill(conn: asyncpg.Connection, size: int, done: int | None = None) -> None:
    """`size` videos, the first `done` (half) done, and their listing: set up with COPY, not
    measured."""
    done = size // 2 if done is None else done
    rows = [(f"v{i}", f"https://example.org/{i}", "done" if i < done else "discovered")
            for i in range(size)]  # fmt: skip
    await conn.copy_records_to_table("videos", records=rows, columns=["id", "url", "status"])
    await record_listing(conn, SOURCE, [row[0] for row in rows])
    await conn.execute("ANALYZE videos; ANALYZE listings")


async def _record_time(server_uri: str, size: int) -> float:
    """Seconds to record a listing of `size` new videos as discovery does."""
    videos = [
        DiscoveredVideo(f"v{i}", f"https://example.org/{i}", f"Video {i}") for i in range(size)
    ]
    pool = await _database(server_uri)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            await record_discovered(conn, videos)
            await record_listing(conn, SOURCE, [v.id for v in videos])
            return time.perf_counter() - started
    finally:
        await pool.close()


async def _poll_time(server_uri: str, size: int) -> float:
    """Seconds of a daemon's poll of a channel of `size` videos, all done, whose newest window
    holds nothing new: the window checked against the listing, then a walk that claims nothing.
    The listing request itself is YouTube's time, not ours."""
    pool = await _database(server_uri)
    try:
        async with pool.acquire() as conn:
            await _fill(conn, size, done=size)
        claims = Claims(Database(pool), "bench:1:x", ClaimRules())
        started = time.perf_counter()
        async with pool.acquire() as conn:
            assert len(await known(conn, SOURCE, [f"v{i}" for i in range(50)])) == 50
        assert [job async for job in claims.jobs([SOURCE], asyncio.Event())] == []
        return time.perf_counter() - started
    finally:
        await pool.close()


async def _limited_listing(server_uri: str, entries: int) -> float:
    """Seconds to list and record what `backfill --limit 4` needs of a feed of `entries` items,
    served over HTTP and read by the real yt-dlp. The rest of such a run (four videos through
    the pipeline) is the same whatever the feed's length."""
    pool = await _database(server_uri)
    try:
        with tempfile.TemporaryDirectory() as folder, _served(Path(folder)) as base:
            feed = _write_feed(Path(folder), base, entries)
            db = Database(pool)
            settings = Settings(data_dir=Path(folder) / "data", ytdlp_sleep_requests=0)
            run = Session(settings, db, Claims(db, "bench:1:x", ClaimRules()), Shutdown(1),
                          Governor())  # fmt: skip
            started = time.perf_counter()
            await discover([feed], run, ListingPlan(want=4))
            return time.perf_counter() - started
    finally:
        await pool.close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _served(folder: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _write_feed(folder: Path, base: str, entries: int) -> str:
    items = "".join(
        f"<item><title>Episode {i}</title><guid>e{i}</guid>"
        f'<enclosure url="{base}/{i}.mp3" type="audio/mpeg" length="1"/></item>'
        for i in range(entries)
    )
    (folder / "feed.xml").write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Bench</title>'
        f"<link>{base}/</link><description>bench</description>{items}</channel></rss>"
    )
    return f"{base}/feed.xml"
