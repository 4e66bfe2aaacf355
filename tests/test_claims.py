"""Claiming along the stored listings (order, limit, a video in two sources, what this run
handed back, leases that expired behind the walk), and leases that cannot be stolen back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence, Set
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from db import leases
from db.corpus import ensure_embedding_model
from db.leases import ClaimRules
from db.listings import record_listing
from db.sink import write_finished
from db.videos import DiscoveredVideo, record_discovered
from ingest.infrastructure.retry import Database
from ingest.orchestration.claims import Claims
from ingest.stages.ledger import Ledger
from ingest.stages.messages import VideoJob
from tests.test_sink import DIM, finished

pytestmark = pytest.mark.anyio


async def listed(pool: asyncpg.Pool, source: str, ids: Sequence[str]) -> None:
    async with pool.acquire() as conn:
        await record_discovered(conn, [DiscoveredVideo(i, f"https://x.org/{i}") for i in ids])
        await record_listing(conn, source, ids)


async def claim_all(
    claims: Claims,
    sources: Sequence[str],
    limit: int | None = None,
    returned: Set[str] = frozenset(),
) -> list[str]:
    stop = asyncio.Event()
    return [job.video_id async for job in claims.jobs(sources, stop, limit, returned)]


async def test_claims_follow_the_listings_and_take_a_shared_video_once(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["c", "a", "b"])
    await listed(pool, "s2", ["b", "d"])
    claims = Claims(Database(pool), "host:1:first", ClaimRules())
    assert (await claims.count(["s1", "s2"])).videos == 4
    assert await claim_all(claims, ["s1", "s2"]) == ["c", "a", "b", "d"]
    assert await claim_all(Claims(Database(pool), "host:2:other", ClaimRules()), ["s1"]) == []


async def test_limit_takes_the_first_in_listing_order(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", [f"v{i}" for i in range(10)])
    claims = Claims(Database(pool), "host:1:first", ClaimRules())
    assert await claim_all(claims, ["s1"], limit=3) == ["v0", "v1", "v2"]


async def test_a_new_listing_replaces_the_old_order(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    await listed(pool, "s1", ["c", "new", "a"])  # "b" was deleted from the channel
    claims = Claims(Database(pool), "host:1:first", ClaimRules())
    assert await claim_all(claims, ["s1"]) == ["c", "new", "a"]


async def test_videos_handed_back_by_this_run_are_left_alone(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    claims = Claims(Database(pool), "host:1:first", ClaimRules())
    assert await claim_all(claims, ["s1"], returned={"b"}) == ["a", "c"]


async def test_finished_videos_are_skipped_unless_the_rules_say_redo(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    async with pool.acquire() as conn:
        await conn.execute("UPDATE videos SET status = 'done', done_at = now() WHERE id = 'b'")
        await conn.execute("UPDATE videos SET status = 'failed' WHERE id = 'c'")
        cutoff: datetime = await conn.fetchval("SELECT now()")
    claims = Claims(Database(pool), "host:1:first", ClaimRules())
    assert await claim_all(claims, ["s1"]) == ["a"]
    redo = ClaimRules(retry_failed_before=cutoff, reprocess_done_before=cutoff)
    assert await claim_all(Claims(Database(pool), "host:2:x", redo), ["s1"]) == ["b", "c"]
    assert cutoff.tzinfo is not None and cutoff <= datetime.now(UTC)


async def test_a_lease_that_expires_behind_the_walk_is_taken_at_the_end(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    dead = Claims(Database(pool), "host:1:dead", ClaimRules())
    assert await claim_all(dead, ["s1"], limit=1) == ["a"]  # and then it dies
    alive = Claims(Database(pool), "host:2:alive", ClaimRules())
    stop = asyncio.Event()
    walk = alive.jobs(["s1"], stop)
    assert (await anext(walk)).video_id == "b"  # "a" is leased: the walk passes it
    async with pool.acquire() as conn:
        await leases.expire(conn, ["host:1:dead"])
    assert [job.video_id async for job in walk] == ["c", "a"]


async def test_a_replica_whose_lease_was_taken_over_writes_nothing(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c", "d", "e"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    old = Claims(Database(pool), "host:1:old", ClaimRules())
    assert await claim_all(old, ["s1"]) == ["a", "b", "c", "d", "e"]
    async with pool.acquire() as conn:
        await leases.expire(conn, ["host:1:old"])  # it stalled past its lease...
    new = Claims(Database(pool), "host:2:new", ClaimRules())
    assert await claim_all(new, ["s1"], limit=4) == ["a", "b", "c", "d"]  # ...and was taken over

    ledger = Ledger(Database(pool), 5, owner="host:1:old")
    await ledger.failed(VideoJob("a", "x"), "download", RuntimeError("boom"))
    await ledger.skipped(VideoJob("b", "x"), "live stream")
    await ledger.handed_back(VideoJob("c", "x"))
    async with pool.acquire() as conn:
        stale = await write_finished(conn, [finished("d", ["late"]), finished("e", ["mine"])],
                                     "host:1:old")  # fmt: skip
    assert (stale.videos, stale.lost) == (1, ("d",))  # "e" it still holds
    assert ledger.counters.lost == 3 and ledger.counters.failed == ledger.counters.skipped == 0

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, status, lease_owner FROM videos ORDER BY id")
        assert [tuple(r) for r in rows] == [
            *((v, "processing", "host:2:new") for v in "abcd"),
            ("e", "done", None),
        ]
        assert await conn.fetchval("SELECT count(*) FROM segments WHERE video_id = 'd'") == 0
        fresh = await write_finished(conn, [finished("d", ["on time"])], "host:2:new")
    assert (fresh.videos, fresh.lost) == (1, ())


async def test_renewal_extends_only_the_videos_in_flight(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    claims = Claims(Database(pool), "host:1:x", ClaimRules(ttl_s=60))
    assert await claim_all(claims, ["s1"]) == ["a", "b", "c"]
    async with pool.acquire() as conn:
        await conn.execute("UPDATE videos SET lease_expires_at = now()")
        assert await leases.renew(conn, "host:1:x", 60, ["b"]) == 1
        assert await leases.renew(conn, "host:2:other", 60, ["a", "c"]) == 0
        renewed = await conn.fetch(
            "SELECT id FROM videos WHERE lease_expires_at > now() + interval '30 seconds'"
        )
    assert [r["id"] for r in renewed] == ["b"]


class SlowDatabase(Database):
    """Every operation waits a little first, as a loaded database does."""

    async def run(self, op: Any) -> Any:
        await asyncio.sleep(0.2)
        return await super().run(op)


async def test_a_walk_that_ends_while_a_hand_back_is_written_waits_for_it(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s1", ["a"])
    claims = Claims(Database(pool), "host:1:first", ClaimRules())
    assert await claim_all(claims, ["s1"]) == ["a"]
    ledger = Ledger(SlowDatabase(pool), 1, owner=claims.owner)
    ledger.took("a")
    handing_back = asyncio.create_task(ledger.handed_back(VideoJob("a", "x"), again=True))
    await asyncio.sleep(0.05)  # out of flight, its hand-back not yet written
    stop = asyncio.Event()
    # Without the wait the run would end here with the video still to do.
    assert await asyncio.wait_for(ledger.settle(stop), 5) == 1
    await handing_back
    assert await claim_all(claims, ["s1"]) == ["a"]
