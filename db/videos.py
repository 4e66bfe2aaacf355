"""The `videos` table: discovery, selection and status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

STATUSES = ("discovered", "processing", "done", "failed")


@dataclass(frozen=True, slots=True)
class DiscoveredVideo:
    id: str
    url: str
    title: str | None = None
    channel: str | None = None
    extractor: str | None = None
    published_at: datetime | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class RecentError:
    video_id: str
    title: str | None
    error: str
    attempts: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StatusSummary:
    counts: dict[str, int]
    chunks: int
    audio_seconds: float
    recent_errors: list[RecentError]


async def record_discovered(conn: asyncpg.Connection, videos: Sequence[DiscoveredVideo]) -> None:
    """Adds new videos as `discovered`; refreshes metadata of known ones, keeping their status."""
    await conn.executemany(
        """
        INSERT INTO videos AS v (id, url, title, channel, extractor, published_at, duration_s)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (id) DO UPDATE SET
            url = EXCLUDED.url,
            title = COALESCE(EXCLUDED.title, v.title),
            channel = COALESCE(EXCLUDED.channel, v.channel),
            extractor = COALESCE(EXCLUDED.extractor, v.extractor),
            published_at = COALESCE(EXCLUDED.published_at, v.published_at),
            updated_at = now()
        WHERE (v.url, v.title, v.channel, v.extractor, v.published_at)
              IS DISTINCT FROM (EXCLUDED.url, COALESCE(EXCLUDED.title, v.title),
                                COALESCE(EXCLUDED.channel, v.channel),
                                COALESCE(EXCLUDED.extractor, v.extractor),
                                COALESCE(EXCLUDED.published_at, v.published_at))
        """,
        [
            (v.id, v.url, v.title, v.channel, v.extractor, v.published_at, v.duration_s)
            for v in videos
        ],
    )


async def select_to_process(
    conn: asyncpg.Connection, ids: Sequence[str], *, limit: int | None, reprocess: bool
) -> list[str]:
    """The given videos that still need work (all of them with `reprocess`), in the given order."""
    rows = await conn.fetch(
        """
        SELECT id FROM videos
        WHERE id = ANY($1::text[]) AND ($2 OR status <> 'done')
        ORDER BY array_position($1::text[], id)
        LIMIT $3
        """,
        list(ids),
        reprocess,
        limit,
    )
    return [r["id"] for r in rows]


async def mark_processing(conn: asyncpg.Connection, video_id: str) -> None:
    await conn.execute(
        "UPDATE videos SET status = 'processing', attempts = attempts + 1, error = NULL,"
        " updated_at = now() WHERE id = $1",
        video_id,
    )


async def mark_failed(conn: asyncpg.Connection, video_id: str, error: str) -> None:
    await conn.execute(
        "UPDATE videos SET status = 'failed', error = $2, updated_at = now() WHERE id = $1",
        video_id,
        error,
    )


async def status_summary(conn: asyncpg.Connection, *, errors: int = 10) -> StatusSummary:
    counts = dict.fromkeys(STATUSES, 0)
    for row in await conn.fetch("SELECT status, count(*) AS n FROM videos GROUP BY status"):
        counts[row["status"]] = row["n"]
    chunks = await conn.fetchval("SELECT count(*) FROM segments")
    audio = await conn.fetchval(
        "SELECT coalesce(sum(duration_s), 0) FROM videos WHERE status = 'done'"
    )
    rows = await conn.fetch(
        "SELECT id, title, error, attempts, updated_at FROM videos WHERE status = 'failed'"
        " ORDER BY updated_at DESC LIMIT $1",
        errors,
    )
    recent = [
        RecentError(r["id"], r["title"], r["error"] or "", r["attempts"], r["updated_at"])
        for r in rows
    ]
    return StatusSummary(
        counts=counts, chunks=chunks, audio_seconds=float(audio), recent_errors=recent
    )
