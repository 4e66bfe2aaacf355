"""Claims against listings of growing size: the next video to do must not cost more as the
channel grows. Also the time to record a listing through the real discovery path."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bench.database import fresh_database
from bench.results import Figure
from db.leases import ClaimRules, claim_next, record_listing
from db.migrate import apply_migrations
from db.pool import create_pool
from db.videos import DiscoveredVideo, record_discovered

SOURCE = "https://example.org/@channel/videos"
CLAIMS = 500


def claims(server_uri: str, quick: bool) -> list[Figure]:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    rates = {size: asyncio.run(_claim_rate(server_uri, size)) for size in sizes}
    listing = 10_000 if quick else 100_000
    recorded_s = asyncio.run(_record_time(server_uri, listing))
    smallest, largest = sizes[0], sizes[-1]
    return [
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


async def _fill(conn: asyncpg.Connection, size: int) -> None:
    """`size` videos, the first half done, and their listing: set up with COPY, not measured."""
    rows = [(f"v{i}", f"https://example.org/{i}", "done" if i < size // 2 else "discovered")
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
