"""The `videos` table: discovery, selection and status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from db.sites import SitePause, current_pauses
from db.workers import Replica, replicas

STATUSES = ("discovered", "processing", "done", "failed", "skipped")


@dataclass(frozen=True, slots=True)
class DiscoveredVideo:
    id: str
    url: str
    title: str | None = None
    channel: str | None = None
    extractor: str | None = None
    published_at: datetime | None = None
    duration_s: float | None = None
    live_status: str | None = None  # yt-dlp's: is_live, is_upcoming, was_live, not_live, ...


@dataclass(frozen=True, slots=True)
class RecentError:
    video_id: str
    title: str | None
    error: str
    attempts: int
    updated_at: datetime
    failure_class: str | None = None
    retry_at: datetime | None = None  # when it is tried again; None: not by itself


@dataclass(frozen=True, slots=True)
class FailedSummary:
    """The failed videos by what happens to them next."""

    waiting: int = 0  # to be tried again on the schedule
    next_retry_at: datetime | None = None
    gave_up: int = 0  # may have healed, but their tries ran out
    needs_cookies: int = 0  # age-restricted or members-only: tried again when cookies change
    needs_location: int = 0  # geo-blocked: tried again when the proxy changes
    for_good: int = 0  # permanent: private, removed, not audio, too long...


@dataclass(frozen=True, slots=True)
class StatusSummary:
    counts: dict[str, int]
    chunks: int
    audio_seconds: float
    recent_errors: list[RecentError]
    todo_audio_seconds: float = 0.0  # discovered or in progress, as the listings state it
    todo_unknown: int = 0  # of those, videos whose listing stated no length
    recent_rate: float | None = None  # audio seconds per second done over the last hour
    paused_sites: list[SitePause] = field(default_factory=list)
    transcripts: dict[str, int] = field(default_factory=dict)  # done videos by transcript kind
    failed: FailedSummary = field(default_factory=FailedSummary)
    replicas: list[Replica] = field(default_factory=list)  # processes by their heartbeats

    @property
    def eta_s(self) -> float | None:
        """Time left for what is to do at the last hour's rate."""
        if not self.recent_rate or not self.todo_audio_seconds:
            return None
        return self.todo_audio_seconds / self.recent_rate


# Over the last hour: audio done ÷ time since the first of those videos finished (at least a
# minute, so that one video done a second ago does not promise an absurd rate).
_RECENT_RATE = """
    SELECT sum(duration_s) / greatest(extract(epoch FROM now() - min(done_at)), 60)
    FROM videos WHERE status = 'done' AND done_at > now() - interval '1 hour'
"""
# "speech recognition (base)", "creator captions (en)", "subtitle file (a.vtt)": by kind.
_TRANSCRIPTS = """
    SELECT coalesce(split_part(transcript_source, ' (', 1), 'unrecorded') AS kind, count(*) AS n
    FROM videos WHERE status = 'done' GROUP BY 1 ORDER BY 2 DESC
"""
_TODO = """
    SELECT coalesce(sum(duration_s), 0) AS audio_s, count(*) - count(duration_s) AS unknown
    FROM videos WHERE status IN ('discovered', 'processing')
"""


async def record_discovered(conn: asyncpg.Connection, videos: Sequence[DiscoveredVideo]) -> None:
    """Adds new videos as `discovered` (live and upcoming streams as `skipped`, with the reason);
    refreshes metadata of known ones, keeping their status, except that a skipped stream the
    listing no longer shows as live or upcoming becomes `discovered` again. A feed's listing
    cannot tell a stream at all, so its skipped streams are checked again at each listing."""
    await conn.executemany(
        """
        INSERT INTO videos AS v
            (id, url, title, channel, extractor, published_at, duration_s, live_status,
             status, error)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                CASE WHEN $8 IN ('is_live', 'is_upcoming') THEN 'skipped' ELSE 'discovered' END,
                CASE WHEN $8 IN ('is_live', 'is_upcoming') THEN 'skipped: ' || $8 END)
        ON CONFLICT (id) DO UPDATE SET
            url = EXCLUDED.url,
            title = COALESCE(EXCLUDED.title, v.title),
            channel = COALESCE(EXCLUDED.channel, v.channel),
            extractor = COALESCE(EXCLUDED.extractor, v.extractor),
            published_at = COALESCE(EXCLUDED.published_at, v.published_at),
            live_status = EXCLUDED.live_status,
            status = CASE
                WHEN v.status = 'skipped' AND EXCLUDED.status = 'discovered' THEN 'discovered'
                WHEN v.status = 'discovered' AND EXCLUDED.status = 'skipped' THEN 'skipped'
                ELSE v.status END,
            error = CASE
                WHEN v.status = 'skipped' AND EXCLUDED.status = 'discovered' THEN NULL
                WHEN v.status = 'discovered' AND EXCLUDED.status = 'skipped' THEN EXCLUDED.error
                ELSE v.error END,
            updated_at = now()
        WHERE (v.status = 'skipped' AND EXCLUDED.status = 'discovered')
           OR (v.url, v.title, v.channel, v.extractor, v.published_at, v.live_status)
              IS DISTINCT FROM (EXCLUDED.url, COALESCE(EXCLUDED.title, v.title),
                                COALESCE(EXCLUDED.channel, v.channel),
                                COALESCE(EXCLUDED.extractor, v.extractor),
                                COALESCE(EXCLUDED.published_at, v.published_at),
                                EXCLUDED.live_status)
        """,
        [
            (
                v.id,
                v.url,
                v.title,
                v.channel,
                v.extractor,
                v.published_at,
                v.duration_s,
                v.live_status,
            )
            for v in videos
        ],
    )


def _fenced(update: str, status: str) -> str:
    """`update` (of video $1) made only while claim $3 holds the video (a NULL claim: a caller
    that writes without claiming, as tests and benchmarks do). True when it was made, now or
    by an attempt whose reply was lost: the claim's token is still on the row, in `status`."""
    return f"""
        WITH written AS (
            {update}
            WHERE id = $1 AND ($3::bigint IS NULL OR (lease_token = $3 AND status = 'processing'))
            RETURNING 1
        )
        SELECT EXISTS (SELECT 1 FROM written) OR EXISTS (
            SELECT 1 FROM videos WHERE id = $1 AND lease_token = $3 AND status = '{status}')
    """  # noqa: S608 - constant fragments; every value is a parameter


_SKIPPED = _fenced(
    "UPDATE videos SET status = 'skipped', error = $2, lease_owner = NULL,"
    " lease_expires_at = NULL, attempts = greatest(attempts - 1, 0), updated_at = now()",
    "skipped",
)
# A failure that may heal ($5: the schedule's first delay, NULL for one that never heals) is
# due again after a delay that doubles with each attempt, up to $6, until the video has had $7.
_FAILED = _fenced(
    """UPDATE videos SET status = 'failed', error = $2, failure_class = $4,
    retry_at = CASE WHEN $5::float8 IS NOT NULL AND attempts < $7 THEN now() + make_interval(
        secs => least($5 * power(2, greatest(attempts - 1, 0)), $6)) END,
    failed_identity = $8, lease_owner = NULL, lease_expires_at = NULL, failed_at = now(),
    updated_at = now()""",
    "failed",
)
# What a full extraction adds to a listing's record: a flat listing may lack dates and lengths.
_METADATA = _fenced(
    """UPDATE videos SET title = COALESCE(title, $2), channel = COALESCE(channel, $4),
    extractor = COALESCE(extractor, $5), published_at = COALESCE(published_at, $6),
    duration_s = COALESCE(duration_s, $7), updated_at = now()""",
    "processing",
)


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When a failure that may heal is tried again: `first_s` after it, then twice as long after
    each further failure, at most `max_s` apart, until a video has had `tries` attempts."""

    first_s: float = 120.0
    max_s: float = 86400.0
    tries: int = 12


# Classes of failure that may heal by themselves, tried again on the schedule.
HEALING = ("transient", "decode", "extractor_broken", "needs_user")
# Per-video conditions, tried again when the cookies or proxy settings change.
SET_ASIDE = ("needs_cookies", "needs_location")
_SET_ASIDE_LIST = ", ".join(f"'{name}'" for name in SET_ASIDE)
# What happens next to a failed video, as SQL conditions on its row (db.leases counts a run's
# videos by them too).
FAILED_WAITING = "status = 'failed' AND retry_at IS NOT NULL"
FAILED_SET_ASIDE = f"status = 'failed' AND failure_class IN ({_SET_ASIDE_LIST})"
FAILED_FOR_GOOD = (
    "status = 'failed' AND retry_at IS NULL"
    f" AND coalesce(failure_class, 'permanent') NOT IN ({_SET_ASIDE_LIST})"
)
_FAILED_SUMMARY = f"""
    SELECT count(*) FILTER (WHERE {FAILED_WAITING}) AS waiting,
        min(retry_at) AS next_retry_at,
        count(*) FILTER (WHERE {FAILED_FOR_GOOD} AND failure_class = ANY($1::text[])) AS gave_up,
        count(*) FILTER (WHERE failure_class = 'needs_cookies') AS needs_cookies,
        count(*) FILTER (WHERE failure_class = 'needs_location') AS needs_location,
        count(*) FILTER (WHERE {FAILED_FOR_GOOD}
            AND coalesce(failure_class, 'permanent') <> ALL($1::text[])) AS for_good
    FROM videos WHERE status = 'failed'
"""  # noqa: S608 - constant fragments; every value is a parameter


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """What a failed video's row says about its failure."""

    error: str
    failure_class: str = "permanent"  # see HEALING and SET_ASIDE; anything else never heals
    identity: str | None = None  # the cookies and proxy settings' fingerprint, for SET_ASIDE


async def mark_skipped(
    conn: asyncpg.Connection, video_id: str, reason: str, lease: int | None = None
) -> bool:
    """False when the claim `lease` no longer holds the video: nothing is written."""
    return bool(await conn.fetchval(_SKIPPED, video_id, f"skipped: {reason}", lease))


async def update_metadata(
    conn: asyncpg.Connection, video: DiscoveredVideo, lease: int | None = None
) -> bool:
    """What a full extraction adds to a listing's record: a flat listing may lack dates and
    lengths. What the listing said is kept (a feed's item title beats a file's name). False
    when the claim `lease` no longer holds the video: nothing is written."""
    written = await conn.fetchval(
        _METADATA, video.id, video.title, lease, video.channel, video.extractor,
        video.published_at, video.duration_s,
    )  # fmt: skip
    return bool(written)


async def mark_failed(
    conn: asyncpg.Connection,
    video_id: str,
    failure: FailureRecord,
    lease: int | None = None,
    schedule: RetrySchedule | None = None,
) -> bool:
    """Records a failure, and when it is tried again if its class may heal; False when the
    claim `lease` no longer holds the video: nothing is written."""
    schedule = schedule or RetrySchedule()
    first = schedule.first_s if failure.failure_class in HEALING else None
    written = await conn.fetchval(
        _FAILED, video_id, failure.error, lease, failure.failure_class, first,
        schedule.max_s, schedule.tries, failure.identity,
    )  # fmt: skip
    return bool(written)


async def count_by_status(conn: asyncpg.Connection) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for row in await conn.fetch("SELECT status, count(*) AS n FROM videos GROUP BY status"):
        counts[row["status"]] = row["n"]
    return counts


async def status_summary(conn: asyncpg.Connection, *, errors: int = 10) -> StatusSummary:
    counts = await count_by_status(conn)
    chunks = await conn.fetchval("SELECT count(*) FROM segments")
    audio = await conn.fetchval(
        "SELECT coalesce(sum(duration_s), 0) FROM videos WHERE status = 'done'"
    )
    rows = await conn.fetch(
        "SELECT id AS video_id, title, coalesce(error, '') AS error, attempts, updated_at,"
        " failure_class, retry_at FROM videos"
        " WHERE status = 'failed' ORDER BY updated_at DESC LIMIT $1",
        errors,
    )
    recent = [RecentError(**dict(r)) for r in rows]
    failed = await conn.fetchrow(_FAILED_SUMMARY, list(HEALING))
    todo = await conn.fetchrow(_TODO)
    rate = await conn.fetchval(_RECENT_RATE)
    return StatusSummary(
        counts=counts,
        chunks=chunks,
        audio_seconds=float(audio),
        recent_errors=recent,
        todo_audio_seconds=float(todo["audio_s"]),
        todo_unknown=todo["unknown"],
        recent_rate=None if rate is None else float(rate),
        paused_sites=await current_pauses(conn),
        transcripts={row["kind"]: row["n"] for row in await conn.fetch(_TRANSCRIPTS)},
        failed=FailedSummary(**dict(failed)),
        replicas=await replicas(conn),
    )
