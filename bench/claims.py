"""Claims against listings of growing size: the next video to do must not cost more as the
channel grows, nor as its backlog thins out. Each claim's latency (p99, on one connection) for an
idle source beside a busy one and for a sparse backlog; the database side of a daemon's idle poll
of a large channel. Also the time to record a listing through the real discovery path, and
`--limit 4` of a large feed against a small one."""

from __future__ import annotations

import asyncio
import functools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

from bench.database import fresh_database
from bench.results import Figure
from db.leases import Claimed, ClaimRules, claim_next, draw_tokens, next_retry
from db.listings import FIRST_POSITION, known, poll_state, record_listing
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
IDLE = "https://example.org/@idle/videos"
OWNER = "bench:1:x"
CLAIMS = 500
SPARSE_EVERY = 1_000  # one video to do in so many listed
POLLS = 5


def claims(server_uri: str, quick: bool) -> list[Figure]:
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    rates = {size: asyncio.run(_claim_rate(server_uri, size)) for size in sizes}
    listing = 10_000 if quick else 100_000
    recorded_s = asyncio.run(_record_time(server_uri, listing))
    idle_ms, busy_ms = asyncio.run(_idle_beside_busy(server_uri, listing))
    sparse = 20_000 if quick else 200_000
    sparse_ms = asyncio.run(_sparse(server_uri, sparse))
    polled = 100_000 if quick else 1_000_000
    poll_ms = asyncio.run(_poll_time(server_uri, polled))
    big_feed = 2_000 if quick else 20_000
    small_s, big_s = (asyncio.run(_limited_listing(server_uri, n)) for n in (4, big_feed))
    smallest, largest = sizes[0], sizes[-1]
    return [
        Figure("claims", f"daemon poll of {polled:,} listed, all done, nothing new (database "
               f"side, median of {POLLS})", poll_ms, "ms", target=50.0, compare="<="),
        Figure("claims", f"claim p99, idle source of {listing:,} (all done) beside a busy one",
               idle_ms, "ms", target=5.0, compare="<="),
        Figure("claims", f"claim p99, busy source of {listing:,} to do beside an idle one",
               busy_ms, "ms", target=5.0, compare="<="),
        Figure("claims", f"claim p99, sparse: 1 in {SPARSE_EVERY:,} of {sparse:,} to do",
               sparse_ms, "ms", target=5.0, compare="<="),
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
            await _fill(conn, size, todo=lambda i: i >= size // 2)
            rules, position = ClaimRules(), size // 2
            tokens = await draw_tokens(conn, CLAIMS)
            started = time.perf_counter()
            for token in tokens:
                claimed = await claim_next(conn, OWNER, SOURCE, position, rules, token)
                assert claimed is not None
                position = claimed.position + 1
            return CLAIMS / (time.perf_counter() - started)
    finally:
        await pool.close()


async def _fill(
    conn: asyncpg.Connection, size: int, todo: Callable[[int], bool], source: str = SOURCE
) -> None:
    """`size` videos, those `todo` picks to do and the rest done, and `source`'s listing of them:
    set up with COPY, not measured. Each source's videos are its own (ids named after it)."""
    tag = "i" if source == IDLE else "v"
    rows = [(f"{tag}{i}", f"https://example.org/{tag}{i}", "discovered" if todo(i) else "done")
            for i in range(size)]  # fmt: skip
    await conn.copy_records_to_table("videos", records=rows, columns=["id", "url", "status"])
    await record_listing(conn, source, [row[0] for row in rows])
    await conn.execute("ANALYZE videos; ANALYZE listings")


async def _timed_claim(
    conn: asyncpg.Connection, source: str, start: int, token: int
) -> tuple[Claimed | None, float]:
    """One claim, and its milliseconds as the client sees them (one round trip)."""
    started = time.perf_counter()
    claimed = await claim_next(conn, OWNER, source, start, ClaimRules(), token)
    return claimed, (time.perf_counter() - started) * 1000


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def _idle_beside_busy(server_uri: str, size: int) -> tuple[float, float]:
    """p99 milliseconds of a claim against a source whose `size` videos are all done, and of
    one against a source of `size` to do, taken in turn as a walk over both does. The idle
    source is walked from its start each time, as a walk that restarts does."""
    pool = await _database(server_uri)
    try:
        async with pool.acquire() as conn:
            await _fill(conn, size, todo=lambda _: False, source=IDLE)
            await _fill(conn, size, todo=lambda _: True)
            idle, busy, position = [], [], FIRST_POSITION
            # A claim that finds nothing spends no token: each idle claim's serves the busy one's.
            for token in await draw_tokens(conn, CLAIMS):
                nothing, ms = await _timed_claim(conn, IDLE, FIRST_POSITION, token)
                assert nothing is None
                idle.append(ms)
                claimed, ms = await _timed_claim(conn, SOURCE, position, token)
                assert claimed is not None
                busy.append(ms)
                position = claimed.position + 1
            return _p99(idle), _p99(busy)
    finally:
        await pool.close()


async def _sparse(server_uri: str, size: int) -> float:
    """p99 milliseconds of the claims of a walk, with a cursor as `Claims.jobs` keeps, along a
    listing of `size` with one video in `SPARSE_EVERY` to do: each claim passes the done videos
    before its own, and the last finds nothing after the last one."""
    pool = await _database(server_uri)
    try:
        async with pool.acquire() as conn:
            await _fill(conn, size, todo=lambda i: i % SPARSE_EVERY == SPARSE_EVERY - 1)
            tokens = iter(await draw_tokens(conn, size // SPARSE_EVERY + 1))
            latencies, position = [], FIRST_POSITION
            while True:
                claimed, ms = await _timed_claim(conn, SOURCE, position, next(tokens))
                latencies.append(ms)
                if claimed is None:
                    break
                position = claimed.position + 1
            assert len(latencies) == size // SPARSE_EVERY + 1
            return _p99(latencies)
    finally:
        await pool.close()


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
    """Median milliseconds of a daemon's poll of a channel of `size` videos, all done, whose
    newest window holds nothing new: its poll state, the window checked against the listing, a
    walk that claims nothing (after `tidy`), and the next scheduled retry. The listing request
    itself is YouTube's time, not ours."""
    pool = await _database(server_uri)
    try:
        async with pool.acquire() as conn:
            await _fill(conn, size, todo=lambda _: False)
        claims = Claims(Database(pool), OWNER, ClaimRules())
        return statistics.median([await _poll_once(pool, claims) for _ in range(POLLS)])
    finally:
        await pool.close()


async def _poll_once(pool: asyncpg.Pool, claims: Claims) -> float:
    """Milliseconds of one poll, in the order of a daemon's: discovery, the walk, the rest."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        assert (await poll_state(conn, SOURCE)).listed
        assert len(await known(conn, SOURCE, [f"v{i}" for i in range(50)])) == 50
    assert [job async for job in claims.jobs([SOURCE], asyncio.Event())] == []
    async with pool.acquire() as conn:
        assert (await next_retry(conn, [SOURCE])).due == 0
    return (time.perf_counter() - started) * 1000


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
            run = Session(settings, db, Claims(db, OWNER, ClaimRules()), Shutdown(1),
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
