"""Each source's listing, in its order, and what a daemon needs to poll the source cheaply.

A full listing replaces the stored one. A poll between full listings prepends what is new:
channels and feeds list their newest first, so new videos go before the oldest known position
and the order stays the source's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# Positions of prepended videos go below 0, down to this; claims walk from here.
FIRST_POSITION = -(2**31)


# Rows of `source` from position $2 on, with whether each video may be claimed now. Under the
# source's lock, a change of a video's state waits (see migration 012), so `ready` cannot miss one.
INSERT_ROWS = """
INSERT INTO listings (source, position, video_id, ready)
SELECT $1, $2 + t.n - 1, t.id, video_ready(v.status, v.retry_at)
FROM unnest($3::text[]) WITH ORDINALITY AS t(id, n) JOIN videos v ON v.id = t.id
"""


async def record_listing(
    conn: asyncpg.Connection, source: str, ids: Sequence[str], *, full: bool = True
) -> None:
    """`source`'s listing, in its order, replacing the previous one: one statement, however long.
    A `full` one (the whole source, not its newest videos only) is dated, on the database's
    clock, so that a daemon knows when to list the source in full again."""
    async with conn.transaction():
        # One writer per source at a time: two replicas listing a new source together would
        # otherwise both find nothing to delete and collide on its positions.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", source)
        await conn.execute("DELETE FROM listings WHERE source = $1", source)
        await conn.execute(INSERT_ROWS, source, 0, list(ids))
        if full:
            await conn.execute(
                "INSERT INTO source_polls (source, full_listed_at) VALUES ($1, now())"
                " ON CONFLICT (source) DO UPDATE SET full_listed_at = now()",
                source,
            )


async def known(conn: asyncpg.Connection, source: str, ids: Sequence[str]) -> set[str]:
    """Those of `ids` already in `source`'s listing: one index lookup each."""
    rows = await conn.fetch(
        "SELECT video_id FROM listings WHERE source = $1 AND video_id = ANY($2::text[])",
        source,
        list(ids),
    )
    return {row["video_id"] for row in rows}


async def prepend(conn: asyncpg.Connection, source: str, ids: Sequence[str]) -> int:
    """Puts `ids` (newest first) before everything in `source`'s listing, leaving out those
    already in it; returns how many were added."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", source)
        new = [i for i in dict.fromkeys(ids) if i not in await known(conn, source, ids)]
        if not new:
            return 0
        top = await conn.fetchval(
            "SELECT coalesce(min(position), 0) FROM listings WHERE source = $1", source
        )
        start = top - len(new)
        if start < FIRST_POSITION:
            raise ValueError(f"listing of {source} full: list it in full to renumber it")
        await conn.execute(INSERT_ROWS, source, start, new)
        return len(new)


@dataclass(frozen=True, slots=True)
class PollState:
    listed: bool  # a listing of the source is stored
    full_age_s: float | None  # since the last full listing, on the database's clock
    etag: str | None
    last_modified: str | None
    skipped: bool = False  # some of its videos are live or upcoming streams, to look at again


async def poll_state(conn: asyncpg.Connection, source: str) -> PollState:
    row = await conn.fetchrow(
        """
        SELECT EXISTS (SELECT 1 FROM listings WHERE source = $1) AS listed,
               extract(epoch FROM now() - p.full_listed_at)::float8 AS full_age_s,
               p.etag, p.last_modified,
               EXISTS (SELECT 1 FROM videos v WHERE v.status = 'skipped' AND EXISTS (
                   SELECT 1 FROM listings l WHERE l.video_id = v.id AND l.source = $1))
                   AS skipped
        FROM (SELECT 1) AS one LEFT JOIN source_polls p ON p.source = $1
        """,
        source,
    )
    return PollState(**dict(row))


async def save_validators(
    conn: asyncpg.Connection, source: str, etag: str | None, last_modified: str | None
) -> None:
    """The feed's ETag and Last-Modified, for the next poll's conditional request."""
    await conn.execute(
        "INSERT INTO source_polls (source, etag, last_modified) VALUES ($1, $2, $3)"
        " ON CONFLICT (source) DO UPDATE SET etag = $2, last_modified = $3",
        source,
        etag,
        last_modified,
    )
