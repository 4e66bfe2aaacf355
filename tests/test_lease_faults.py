"""Leases under connection faults, through a proxy that loses replies after the server committed
and cuts connections mid-statement: nothing orphaned, nothing written twice, counters right."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import anyio
import asyncpg
import numpy as np
import pytest

from db.corpus import ensure_embedding_model
from db.leases import ClaimRules
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.infrastructure.retry import Database
from ingest.orchestration.claims import Claims
from ingest.stages.embed import EmbeddedBatch
from ingest.stages.ledger import Ledger
from ingest.stages.messages import EmbeddedVideo, TranscribedVideo, VideoJob
from ingest.stages.sink import sink_stage
from tests.conftest import Speech
from tests.faultproxy import FaultProxy, postgres_address
from tests.feeds import fill, serve, write_feed
from tests.observing import start
from tests.test_claims import listed
from tests.test_sink import DIM
from workers.chunking import Chunk
from workers.speakers import Decision

pytestmark = pytest.mark.anyio


@pytest.fixture
def proxy(database_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(postgres_address(database_url)) as proxy:
        yield proxy


@pytest.fixture
async def faulty(
    pool: asyncpg.Pool, proxy: FaultProxy, database_url: str
) -> AsyncIterator[Database]:
    """The service's database access, through the proxy (the `pool` fixture migrated it)."""
    through = await create_pool(proxy.url(database_url))
    try:
        yield Database(through)
    finally:
        await through.close()


async def claimed(pool: asyncpg.Pool) -> dict[str, tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT id, lease_owner, lease_token FROM videos WHERE status = 'processing'"
    )
    return {row["id"]: (row["lease_owner"], row["lease_token"]) for row in rows}


async def test_a_claim_whose_reply_is_lost_keeps_the_video_it_took(
    pool: asyncpg.Pool, proxy: FaultProxy, faulty: Database
) -> None:
    await listed(pool, "s", ["a", "b", "c", "d"])
    claims = Claims(faulty, "host:1:me", ClaimRules())
    await claims.beat()
    proxy.lose_reply("WITH again AS", times=2)
    jobs = [job async for job in claims.jobs(["s"], asyncio.Event(), limit=3)]
    assert proxy.fired.lost_replies == 2
    assert [job.video_id for job in jobs] == ["a", "b", "c"]
    # Exactly the videos the walk yielded are held, each under the token its job carries.
    assert await claimed(pool) == {job.video_id: ("host:1:me", job.lease) for job in jobs}
    assert await pool.fetchval("SELECT sum(attempts) FROM videos") == 3


async def test_outcomes_whose_replies_are_lost_are_written_and_counted_once(
    pool: asyncpg.Pool, proxy: FaultProxy, faulty: Database
) -> None:
    await listed(pool, "s", ["a", "b", "c"])
    claims = Claims(faulty, "host:1:me", ClaimRules())
    await claims.beat()
    jobs = {job.video_id: job async for job in claims.jobs(["s"], asyncio.Event())}
    ledger = Ledger(faulty, 3)
    for job in jobs.values():
        ledger.took(job)
    proxy.lose_reply("status = 'failed'")
    await ledger.failed(jobs["a"], "download", RuntimeError("boom"))
    proxy.lose_reply("status = 'skipped'")
    await ledger.skipped(jobs["b"], "live stream")
    proxy.lose_reply("WITH back AS")
    await ledger.handed_back(jobs["c"], again=True)
    assert proxy.fired.lost_replies == 3
    c = ledger.counters
    assert (c.failed, c.skipped, c.lost) == (1, 1, 0)
    assert await ledger.settle(asyncio.Event()) == 1  # "c" came back, to be claimed again
    rows = await pool.fetch("SELECT id, status FROM videos ORDER BY id")
    assert [tuple(r) for r in rows] == [("a", "failed"), ("b", "skipped"), ("c", "discovered")]


def embedded(job: VideoJob, texts: list[str]) -> EmbeddedVideo:
    chunks = tuple(Chunk(i, i * 5.0, i * 5.0 + 4, text) for i, text in enumerate(texts))
    rng = np.random.default_rng(len(texts))
    vectors = rng.standard_normal((len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    video = TranscribedVideo(job, 20.0, chunks, "asr", (), Decision("off"))
    return EmbeddedVideo(video, vectors, "emb")


async def sink(db: Database, ledger: Ledger, batch: EmbeddedBatch) -> None:
    send, receive = anyio.create_memory_object_stream[EmbeddedBatch](1)
    async with send:
        await send.send(batch)
    await sink_stage(receive, db=db, ledger=ledger)


@pytest.mark.parametrize("fault", ["lose the COMMIT's reply", "cut the COPY"])
async def test_a_flush_cut_or_unheard_writes_each_chunk_once_and_counts_each_video_once(
    pool: asyncpg.Pool, proxy: FaultProxy, faulty: Database, fault: str
) -> None:
    await listed(pool, "s", ["a", "b"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    claims = Claims(faulty, "host:1:me", ClaimRules())
    await claims.beat()
    jobs = [job async for job in claims.jobs(["s"], asyncio.Event())]
    ledger = Ledger(faulty, 2)
    for job in jobs:
        ledger.took(job)
    if fault == "cut the COPY":
        proxy.reset_during("COPY")
    else:
        proxy.lose_reply("COMMIT")
    await sink(faulty, ledger, (embedded(jobs[0], ["one", "two"]), embedded(jobs[1], ["three"])))
    assert proxy.fired.lost_replies + proxy.fired.cuts == 1
    assert (ledger.counters.done, ledger.counters.lost, ledger.counters.chunks) == (2, 0, 3)
    assert not ledger.in_flight
    rows = await pool.fetch(
        "SELECT v.id, v.status, count(s.seg_index) AS chunks FROM videos v"
        " LEFT JOIN segments s ON s.video_id = v.id GROUP BY v.id ORDER BY v.id"
    )
    assert [tuple(r) for r in rows] == [("a", "done", 2), ("b", "done", 1)]


async def past(pool: asyncpg.Pool, moment: datetime) -> None:
    """Until `moment` has passed on the database's clock, the one leases are measured by."""
    for _ in range(600):
        if await pool.fetchval("SELECT now() > $1", moment):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the database's clock never passed {moment}")


@pytest.mark.timing
async def test_a_renewal_whose_reply_is_lost_keeps_every_lease(
    pool: asyncpg.Pool, proxy: FaultProxy, faulty: Database
) -> None:
    await listed(pool, "s", ["a", "b"])
    claims = Claims(faulty, "host:1:me", ClaimRules(ttl_s=3.0))
    await claims.beat()
    jobs = {job async for job in claims.jobs(["s"], asyncio.Event())}
    claimed_until = await pool.fetchval("SELECT max(lease_expires_at) FROM videos")
    proxy.lose_reply("WITH renewed AS", times=3)
    renewal = asyncio.create_task(claims.renew_forever(jobs))
    try:
        for _ in range(600):  # the renewals, every second, three of them retried
            if proxy.fired.lost_replies == 3:
                break
            await asyncio.sleep(0.1)
        assert proxy.fired.lost_replies == 3
        await past(pool, claimed_until)  # the leases as claimed are over: only renewals count
    finally:
        renewal.cancel()
    held = await claimed(pool)
    assert held == {job.video_id: ("host:1:me", job.lease) for job in jobs}
    assert await pool.fetchval("SELECT bool_and(lease_expires_at > now()) FROM videos")


REPLICA_VIDEOS = 18


@pytest.mark.timing
@pytest.mark.timeout(900)
def test_three_replicas_whose_connections_keep_resetting_do_every_video_once(
    ingest_env: dict[str, str], database_url: str, speech: Speech, tmp_path: Path
) -> None:
    """Every database connection of three backfills of one feed is reset every one to three
    seconds: each video is done exactly once, each replica did some, and each exits 0."""
    site = tmp_path / "site"
    site.mkdir()
    items = fill(site, (speech.short, speech.medium), REPLICA_VIDEOS)
    asyncio.run(_migrated(database_url))
    with FaultProxy(postgres_address(database_url)) as proxy, serve(site, 100_000) as base:
        feed = write_feed(site, base, items)
        proxy.reset_every(1.0, 3.0)
        # One slow download at a time each: no replica can take the whole feed before the
        # others have loaded their models.
        env = {**ingest_env, "DATABASE_URL": proxy.url(database_url),
               "INGEST_LEASE_SECONDS": "30", "INGEST_DOWNLOAD_WORKERS": "1"}  # fmt: skip
        replicas = [
            start({**env, "INGEST_DATA_DIR": str(tmp_path / f"replica{i}")}, "backfill", feed)
            for i in range(3)
        ]
        outputs = [p.communicate(timeout=840) for p in replicas]
        assert proxy.fired.periodic_resets >= 10
    assert [p.returncode for p in replicas] == [0, 0, 0], [err[-3000:] for _, err in outputs]
    done = [int(out.split(" done,")[0].split()[-1]) for out, _ in outputs]
    assert sum(done) == REPLICA_VIDEOS and min(done) >= 1, done
    rows = asyncio.run(_final(database_url))
    assert rows == sorted((f"generic:v{i}", "done", 1, True) for i in range(REPLICA_VIDEOS))


async def _migrated(database_url: str) -> None:
    """The schema in place before the faults begin: starting is not what this test is about."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


async def _final(database_url: str) -> list[tuple[object, ...]]:
    """Each video: status, attempts, and whether its chunks were written once (as counted)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT v.id, v.status, v.attempts, v.chunk_count = count(s.seg_index) AS once"
            " FROM videos v LEFT JOIN segments s ON s.video_id = v.id"
            " GROUP BY v.id ORDER BY v.id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]
