"""Claiming along the stored listings: order, limit, a video in two sources, what this run
handed back, and videos whose lease expired behind the walk."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence, Set
from datetime import UTC, datetime

import asyncpg
import pytest

from db import leases
from db.leases import ClaimRules, record_listing
from db.videos import DiscoveredVideo, record_discovered
from ingest.claims import Claims
from ingest.retry import Database

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
