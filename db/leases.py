"""Claiming videos with leases, so that replicas sharing the database never do the same work.

A claim takes one claimable video with `FOR NO KEY UPDATE SKIP LOCKED` (replicas never wait on
each other's claims), leases it until `lease_expires_at` and stores a fencing token drawn from
`lease_tokens`. The token is the claim's: its renewals and every write of its outcome require it
(db.videos, db.sink), so a job that lost its lease writes nothing, even when its own process
holds the video again under a newer claim. The token is chosen before the claim is made, so a
claim retried after its reply was lost finds the video it took instead of taking a second one.

The leases of a process whose heartbeat stopped (db.workers) are handed back by any live one;
a live process hands back its own expired leases that no job holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from db import workers
from db.videos import FAILED_FOR_GOOD, FAILED_SET_ASIDE, FAILED_WAITING, SET_ASIDE

_SET_ASIDE_LIST = ", ".join(f"'{name}'" for name in SET_ASIDE)


@dataclass(frozen=True, slots=True)
class ClaimRules:
    ttl_s: float = 120.0
    retry_failed_before: datetime | None = None  # retry videos that failed before this time
    reprocess_done_before: datetime | None = None  # redo videos done before this time
    identity: str | None = None  # the cookies and proxy in use (ingest.sites.identity)

    @property
    def walks_all(self) -> bool:
        """Whether finished videos may be claimed: then a walk reads every listing row, not only
        those marked ready."""
        return self.retry_failed_before is not None or self.reprocess_done_before is not None


# Whether video `v` may be claimed; $2 and $3 are the rules' cutoffs, {identity} the identity's
# parameter. A failure that may heal is claimable once due; a video that needed other cookies or
# another location (a proxy) once the identity the site sees has changed.
_CLAIMABLE_VIDEO = """(
        v.status = 'discovered'
        OR (v.status = 'processing' AND (v.lease_expires_at IS NULL OR v.lease_expires_at < now()))
        OR ($2::timestamptz IS NOT NULL AND v.status = 'failed' AND v.failed_at < $2)
        OR ($3::timestamptz IS NOT NULL AND v.status = 'done' AND v.done_at < $3)
        OR (v.status = 'failed' AND v.retry_at <= now())
        OR (v.status = 'failed' AND v.failure_class IN ('needs_cookies', 'needs_location')
            AND {identity}::text IS DISTINCT FROM v.failed_identity)
    )"""

# The first claimable video of one source's listing at or after a position: a walk along the
# listing's ready rows ({ready}) in (source, position) order that stops at the first hit. The
# claim takes token $9. A claim retried with the same token finds the video the token took
# (`again`): still held, it is the claim's; handed back since, the token is spent.
_CLAIM_NEXT = """
WITH again AS (
    SELECT v.id, v.url, v.title, v.extractor, coalesce((SELECT min(l.position) FROM listings l
            WHERE l.source = $1 AND l.video_id = v.id), $6) AS position,
        v.lease_owner IS NOT DISTINCT FROM $4 AND v.status = 'processing' AS held
    FROM videos v WHERE v.lease_token = $9
), next AS (
    SELECT v.id, l.position FROM listings l JOIN videos v ON v.id = l.video_id
    WHERE l.source = $1 {ready} AND l.position >= $6 AND NOT v.id = ANY($7::text[])
      -- Its own expired leases (a database outage) are renewed by the owner, not claimed twice.
      AND v.lease_owner IS DISTINCT FROM $4
      AND {claimable}
      AND NOT EXISTS (SELECT 1 FROM again)
    ORDER BY l.position LIMIT 1 FOR NO KEY UPDATE OF v SKIP LOCKED
), claimed AS (
    UPDATE videos AS v SET status = 'processing', lease_owner = $4, lease_token = $9,
        lease_expires_at = now() + make_interval(secs => $5), attempts = v.attempts + 1,
        error = NULL, failure_class = NULL, retry_at = NULL, failed_identity = NULL,
        updated_at = now()
    FROM next WHERE v.id = next.id
    RETURNING v.id, v.url, v.title, v.extractor, next.position, true AS held
)
SELECT * FROM claimed UNION ALL SELECT * FROM again
"""
_CLAIM_READY = _CLAIM_NEXT.format(
    ready="AND l.ready", claimable=_CLAIMABLE_VIDEO.format(identity="$8")
)
_CLAIM_ANY = _CLAIM_NEXT.format(ready="", claimable=_CLAIMABLE_VIDEO.format(identity="$8"))


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    url: str
    title: str | None
    extractor: str | None
    position: int  # in its source's listing
    token: int  # the claim's fencing token


class TokenSpent(Exception):
    """The claim's token took a video that it no longer holds (a lost reply, then a long
    outage): the claim is made again with a new token."""


async def draw_tokens(conn: asyncpg.Connection, count: int) -> list[int]:
    """New fencing tokens, one per claim to come."""
    rows = await conn.fetch("SELECT nextval('lease_tokens') FROM generate_series(1, $1)", count)
    return [row[0] for row in rows]


async def claim_next(
    conn: asyncpg.Connection,
    owner: str,
    source: str,
    start: int,
    rules: ClaimRules,
    token: int,
    excluded: Sequence[str] = (),
) -> Claimed | None:
    """Leases to `owner`, under `token` (from `draw_tokens`, never used by another claim), the
    first claimable video of `source`'s listing from position `start` on, leaving out `excluded`
    (videos this process handed back). Run again with the same token after a lost reply, it
    returns the video the first run took, or raises TokenSpent when that video was handed back
    meanwhile."""
    row = await conn.fetchrow(
        _CLAIM_ANY if rules.walks_all else _CLAIM_READY,
        source,
        rules.retry_failed_before,
        rules.reprocess_done_before,
        owner,
        rules.ttl_s,
        start,
        list(excluded),
        rules.identity,
        token,
    )
    if row is None:
        return None
    found = dict(row)
    if not found.pop("held"):
        raise TokenSpent(f"claim {token} lost {found['id']}")
    return Claimed(**found, token=token)


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


# Renews the claims in flight ($3, $4: video ids and tokens) and hands back the owner's expired
# leases that none of them holds (a claim whose process lost track of it): nothing stays
# `processing` past its lease without someone renewing it.
_RENEW = """
WITH renewed AS (
    UPDATE videos v SET lease_expires_at = now() + make_interval(secs => $2)
    FROM unnest($3::text[], $4::bigint[]) AS held(id, token)
    WHERE v.id = held.id AND v.lease_token = held.token AND v.status = 'processing'
    RETURNING 1
), orphans AS (
    UPDATE videos SET status = 'discovered', lease_owner = NULL, lease_expires_at = NULL,
        updated_at = now()
    WHERE lease_owner = $1 AND status = 'processing' AND lease_expires_at < now()
      AND NOT coalesce(lease_token = ANY($4::bigint[]), false)
    RETURNING id
)
SELECT (SELECT count(*) FROM renewed) AS renewed, array(SELECT id FROM orphans) AS orphans
"""


@dataclass(frozen=True, slots=True)
class Renewal:
    renewed: int  # claims whose lease was extended
    orphans: tuple[str, ...]  # videos handed back: expired, held by no claim of this process


async def renew(
    conn: asyncpg.Connection, owner: str, ttl_s: float, held: Sequence[tuple[str, int]]
) -> Renewal:
    """Extends the leases of `owner`'s claims in flight (video id, token), and of no other: a
    lease it lost, or one of a claim that ended, is not its to extend."""
    row = await conn.fetchrow(
        _RENEW, owner, ttl_s, [video for video, _ in held], [token for _, token in held]
    )
    return Renewal(row["renewed"], tuple(row["orphans"]))


# Whether the claim `token` handed the video back, now or in an attempt whose reply was lost.
_HAND_BACK = """
WITH back AS (
    UPDATE videos SET status = 'discovered', lease_owner = NULL, lease_expires_at = NULL,
        attempts = greatest(attempts - 1, 0), updated_at = now()
    WHERE lease_token = $1 AND status = 'processing'
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM back)
    OR EXISTS (SELECT 1 FROM videos WHERE lease_token = $1 AND status = 'discovered')
"""


async def hand_back(conn: asyncpg.Connection, token: int) -> bool:
    """Returns the video of one claim for anyone to claim again (the attempt does not count);
    False when the claim no longer held it."""
    return bool(await conn.fetchval(_HAND_BACK, token))


async def hand_back_all(conn: asyncpg.Connection, owner: str) -> int:
    """Returns every video `owner` still holds: the process ends."""
    status = await conn.execute(
        "UPDATE videos SET status = 'discovered', lease_owner = NULL, lease_expires_at = NULL,"
        " attempts = greatest(attempts - 1, 0), updated_at = now()"
        " WHERE lease_owner = $1 AND status = 'processing'",
        owner,
    )
    return int(status.split()[-1])


_HAND_BACK_DEAD = f"""
UPDATE videos SET status = 'discovered', lease_owner = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE status = 'processing' AND lease_owner IS DISTINCT FROM $1
  AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.owner = videos.lease_owner AND {workers.ALIVE})
"""  # noqa: S608 - a constant fragment


async def hand_back_dead(conn: asyncpg.Connection, caller: str) -> int:
    """Returns the videos of owners whose heartbeat stopped (db.workers), for anyone to take.
    The caller's own are never among them: it is alive, whatever its heartbeat says (a stall, an
    outage), and its renewals keep or hand back its own."""
    status = await conn.execute(_HAND_BACK_DEAD, caller)
    return int(status.split()[-1])


# Listing rows that became claimable by time or for this process: a retry fell due, or a video
# set aside for cookies or a location was failed under another identity than $1.
_MARK_READY = f"""
UPDATE listings SET ready = true
WHERE NOT ready AND video_id IN (
    SELECT id FROM videos WHERE status = 'failed' AND retry_at <= now()
    UNION ALL
    SELECT id FROM videos
    WHERE status = 'failed' AND failure_class IN ({_SET_ASIDE_LIST})
      AND failed_identity IS DISTINCT FROM $1::text
)
"""  # noqa: S608 - constant fragments; every value is a parameter


async def mark_ready(conn: asyncpg.Connection, identity: str | None) -> int:
    """Marks the listing rows of videos that may be claimed now that were not (see above)."""
    status = await conn.execute(_MARK_READY, identity)
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class NextRetry:
    """The scheduled retries among some videos: how many are due now, and when the next is."""

    due: int
    next_in_s: float | None  # None: none scheduled


async def next_retry(conn: asyncpg.Connection, sources: Sequence[str] | None) -> NextRetry:
    """The retries scheduled among the videos of the sources' listings (None: of all): read from
    the scheduled videos, never from the listings in full."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE v.retry_at <= now()) AS due,"
        " extract(epoch FROM min(v.retry_at) - now())::float8 AS next_in_s"
        " FROM videos v WHERE v.status = 'failed' AND v.retry_at IS NOT NULL AND ($1::text[]"
        " IS NULL OR EXISTS (SELECT 1 FROM listings l"
        " WHERE l.video_id = v.id AND l.source = ANY($1::text[])))",
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
    elsewhere: int = 0  # under way in another replica (its lease or its heartbeat is alive)


# Held by another replica: its lease is alive, or its owner's heartbeat is, whose next renewal
# hands back what it let expire. Until then the video is not on a walk's ready rows, so a run
# that counted it as left to do would find nothing to claim and end with it undone.
_ELSEWHERE = f"""status = 'processing' AND lease_owner <> $2 AND (lease_expires_at > now()
    OR EXISTS (SELECT 1 FROM workers w WHERE w.owner = videos.lease_owner AND {workers.ALIVE}))"""  # noqa: S608

_OUTCOME = f"""
    SELECT count(*) FILTER (WHERE status IN ('done', 'skipped')) AS finished,
        count(*) FILTER (WHERE {FAILED_FOR_GOOD}) AS failed_for_good,
        count(*) FILTER (WHERE {FAILED_SET_ASIDE}) AS set_aside,
        count(*) FILTER (WHERE {FAILED_WAITING}) AS waiting_retry,
        count(*) FILTER (WHERE status = 'discovered'
            OR (status = 'processing' AND NOT coalesce({_ELSEWHERE}, false))) AS left,
        count(*) FILTER (WHERE {_ELSEWHERE}) AS elsewhere
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
    UNION SELECT v.id FROM videos v WHERE ({FAILED_WAITING} OR v.status = 'processing')
      AND v.id IN (SELECT video_id FROM listings WHERE source = ANY($1::text[]))
"""  # noqa: S608 - constant fragments; every value is a parameter


async def planned_ids(
    conn: asyncpg.Connection, sources: Sequence[str], rules: ClaimRules
) -> list[str]:
    """The videos a run sets out to see done: those of the sources' listings it may claim now,
    those waiting for a scheduled retry, and those under way (in another replica, or in one
    that died and is taken over once its heartbeat is known to have stopped)."""
    rows = await conn.fetch(
        _PLANNED,
        list(sources),
        rules.retry_failed_before,
        rules.reprocess_done_before,
        rules.identity,
    )
    return [row["id"] for row in rows]
