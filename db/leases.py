"""Claiming videos with leases, so that replicas sharing the database never do the same work.

A claim takes one claimable video with `FOR UPDATE SKIP LOCKED` (replicas never wait on each
other's claims) and leases it until `lease_expires_at`; the holder renews its leases while it
works and clears them when the video ends. An expired lease belongs to a dead replica and is
taken over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from db.videos import FAILED_FOR_GOOD, FAILED_SET_ASIDE, FAILED_WAITING


@dataclass(frozen=True, slots=True)
class ClaimRules:
    ttl_s: float = 120.0
    retry_failed_before: datetime | None = None  # retry videos that failed before this time
    reprocess_done_before: datetime | None = None  # redo videos done before this time
    identity: str | None = None  # the cookies and proxy in use (ingest.sites.identity)


# Whether video `v` may be claimed; $2 and $3 are the rules' cutoffs, {identity} the identity's
# parameter. A failure that may heal is claimable once due; a video that needed other cookies or
# another location (a proxy) once the identity the site sees has changed.
_CLAIMABLE_VIDEO = """(
        v.status = 'discovered'
        OR (v.status = 'processing' AND (v.lease_expires_at IS NULL OR v.lease_expires_at < now()))
        OR ($2::timestamptz IS NOT NULL AND v.status = 'failed' AND v.updated_at < $2)
        OR ($3::timestamptz IS NOT NULL AND v.status = 'done' AND v.done_at < $3)
        OR (v.status = 'failed' AND v.retry_at <= now())
        OR (v.status = 'failed' AND v.failure_class IN ('needs_cookies', 'needs_location')
            AND {identity}::text IS DISTINCT FROM v.failed_identity)
    )"""

# The first claimable video of one source's listing at or after a position: an index walk along
# (source, position) that stops at the first hit, however long the listing.
_CLAIM_NEXT = f"""
WITH next AS (
    SELECT v.id, l.position FROM listings l JOIN videos v ON v.id = l.video_id
    WHERE l.source = $1 AND l.position >= $6 AND NOT v.id = ANY($7::text[])
      -- Its own expired leases (a database outage) are renewed by the owner, not claimed twice.
      AND v.lease_owner IS DISTINCT FROM $4
      AND {_CLAIMABLE_VIDEO.format(identity="$8")}
    ORDER BY l.position LIMIT 1 FOR UPDATE OF v SKIP LOCKED
)
UPDATE videos AS v SET status = 'processing', lease_owner = $4,
    lease_expires_at = now() + make_interval(secs => $5), attempts = v.attempts + 1,
    error = NULL, failure_class = NULL, retry_at = NULL, failed_identity = NULL,
    updated_at = now()
FROM next WHERE v.id = next.id
RETURNING v.id, v.url, v.title, v.extractor, next.position
"""  # noqa: S608 - constant fragments; every value is a parameter


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    url: str
    title: str | None
    extractor: str | None
    position: int  # in its source's listing


async def claim_next(
    conn: asyncpg.Connection,
    owner: str,
    source: str,
    start: int,
    rules: ClaimRules,
    excluded: Sequence[str] = (),
) -> Claimed | None:
    """Leases to `owner` the first claimable video of `source`'s listing from position `start`
    on, leaving out `excluded` (videos this process handed back)."""
    row = await conn.fetchrow(
        _CLAIM_NEXT,
        source,
        rules.retry_failed_before,
        rules.reprocess_done_before,
        owner,
        rules.ttl_s,
        start,
        list(excluded),
        rules.identity,
    )
    return None if row is None else Claimed(**dict(row))


# The claimable videos of the sources' listings ($1), under the rules' cutoffs and identity.
_CLAIMABLE_OF_SOURCES = f"""
    FROM videos v
    WHERE v.id IN (SELECT video_id FROM listings WHERE source = ANY($1::text[]))
      AND {_CLAIMABLE_VIDEO.format(identity="$4")}
"""  # noqa: S608 - a constant fragment; every value is a parameter
_COUNT_CLAIMABLE = f"""
    SELECT count(*) AS videos, coalesce(sum(v.duration_s), 0) AS audio_s,
        count(*) - count(v.duration_s) AS unknown
    {_CLAIMABLE_OF_SOURCES}
"""


@dataclass(frozen=True, slots=True)
class Claimable:
    """What is left to do among some videos: how many, and their audio as listed."""

    videos: int
    audio_s: float  # of the videos whose listing stated a length
    unknown: int  # videos whose listing stated no length

    def audio_of(self, count: int) -> float:
        """Audio of `count` of these videos, the unknown ones taken at the mean known length."""
        known = self.videos - self.unknown
        if not known:
            return 0.0
        return self.audio_s / known * min(count, self.videos)


async def count_claimable(
    conn: asyncpg.Connection, sources: Sequence[str], rules: ClaimRules
) -> Claimable:
    """What is left to do among the videos of the sources' listings (each video once)."""
    row = await conn.fetchrow(
        _COUNT_CLAIMABLE,
        list(sources),
        rules.retry_failed_before,
        rules.reprocess_done_before,
        rules.identity,
    )
    return Claimable(row["videos"], float(row["audio_s"]), row["unknown"])


async def renew(
    conn: asyncpg.Connection, owner: str, ttl_s: float, in_flight: Sequence[str]
) -> int:
    """Extends the leases of the videos `owner` is working on, and of no other: a lease it
    lost, or one of a video it has let go, is not its to extend."""
    status = await conn.execute(
        "UPDATE videos SET lease_expires_at = now() + make_interval(secs => $2)"
        " WHERE id = ANY($3::text[]) AND lease_owner = $1 AND status = 'processing'",
        owner,
        ttl_s,
        list(in_flight),
    )
    return int(status.split()[-1])


async def hand_back(conn: asyncpg.Connection, owner: str, video_id: str | None = None) -> int:
    """Returns unfinished work (one video, or all of `owner`'s) for anyone to claim again; the
    attempt does not count."""
    status = await conn.execute(
        "UPDATE videos SET status = 'discovered', lease_owner = NULL, lease_expires_at = NULL,"
        " attempts = greatest(attempts - 1, 0), updated_at = now()"
        " WHERE lease_owner = $1 AND status = 'processing' AND ($2::text IS NULL OR id = $2)",
        owner,
        video_id,
    )
    return int(status.split()[-1])


async def lease_owners(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT lease_owner FROM videos"
        " WHERE status = 'processing' AND lease_owner IS NOT NULL"
    )
    return [r["lease_owner"] for r in rows]


async def expire(conn: asyncpg.Connection, owners: Sequence[str]) -> int:
    """Ends the leases of owners known to be dead, so their videos can be taken over now."""
    status = await conn.execute(
        "UPDATE videos SET lease_expires_at = now() - interval '1 second'"
        " WHERE lease_owner = ANY($1::text[]) AND status = 'processing'",
        list(owners),
    )
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class NextRetry:
    """The scheduled retries among some videos: how many are due now, and when the next is."""

    due: int
    next_in_s: float | None  # None: none scheduled


async def next_retry(conn: asyncpg.Connection, sources: Sequence[str] | None) -> NextRetry:
    """The retries scheduled among the videos of the sources' listings (None: of all)."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE v.retry_at <= now()) AS due,"
        " extract(epoch FROM min(v.retry_at) - now())::float8 AS next_in_s"
        " FROM videos v WHERE v.status = 'failed' AND v.retry_at IS NOT NULL AND ($1::text[]"
        " IS NULL OR v.id IN (SELECT video_id FROM listings WHERE source = ANY($1::text[])))",
        None if sources is None else list(sources),
    )
    next_in = row["next_in_s"]
    return NextRetry(row["due"], None if next_in is None else max(0.0, next_in))


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where some videos stand, by what it means for a run that set out to do them."""

    finished: int = 0  # done or skipped
    failed_for_good: int = 0  # permanent, or their tries ran out
    set_aside: int = 0  # wait for other cookies or another location
    waiting_retry: int = 0  # failed, to be tried again on the schedule
    left: int = 0  # still to do, or held by a lease that expired
    elsewhere: int = 0  # under way in another replica (its lease is alive)


_OUTCOME = f"""
    SELECT count(*) FILTER (WHERE status IN ('done', 'skipped')) AS finished,
        count(*) FILTER (WHERE {FAILED_FOR_GOOD}) AS failed_for_good,
        count(*) FILTER (WHERE {FAILED_SET_ASIDE}) AS set_aside,
        count(*) FILTER (WHERE {FAILED_WAITING}) AS waiting_retry,
        count(*) FILTER (WHERE status = 'discovered' OR (status = 'processing'
            AND NOT coalesce(lease_owner <> $2 AND lease_expires_at > now(), false)))
            AS left,
        count(*) FILTER (WHERE status = 'processing' AND lease_owner <> $2
            AND lease_expires_at > now()) AS elsewhere
    FROM videos WHERE id = ANY($1::text[])
"""  # noqa: S608 - constant fragments; every value is a parameter


async def outcome(conn: asyncpg.Connection, ids: Sequence[str], owner: str) -> Outcome:
    """Where the videos `ids` stand, seen by `owner` (whose own leases are not elsewhere)."""
    row = await conn.fetchrow(
        _OUTCOME,
        list(ids),
        owner,
    )
    return Outcome(**dict(row))


_PLANNED = f"""
    SELECT v.id {_CLAIMABLE_OF_SOURCES}
    UNION SELECT v.id FROM videos v WHERE {FAILED_WAITING}
      AND v.id IN (SELECT video_id FROM listings WHERE source = ANY($1::text[]))
"""  # noqa: S608 - constant fragments; every value is a parameter


async def planned_ids(
    conn: asyncpg.Connection, sources: Sequence[str], rules: ClaimRules
) -> list[str]:
    """The videos a run sets out to do: those of the sources' listings it may claim now, and
    those waiting for a scheduled retry."""
    rows = await conn.fetch(
        _PLANNED,
        list(sources),
        rules.retry_failed_before,
        rules.reprocess_done_before,
        rules.identity,
    )
    return [row["id"] for row in rows]
