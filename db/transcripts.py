"""Reading stored transcripts: a video's chunks in order, the videos by filters, and the
corpus's size."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from db.search_filters import Params, video_conditions

_VIDEO_COLUMNS = """v.id, v.url, v.title, v.channel, v.extractor, v.published_at, v.duration_s,
    v.status, v.transcript_source, v.asr_model, v.embedding_model, v.chunk_count, v.done_at"""

_CHUNKS = """
    SELECT seg_index, start_s, end_s, speaker,
           coalesce(speakers, array_remove(ARRAY[speaker], NULL)) AS speakers, text
    FROM segments
    WHERE video_id = $1
      AND ($2::float8 IS NULL OR end_s >= $2) AND ($3::float8 IS NULL OR start_s <= $3)
    ORDER BY seg_index
"""

_FACTS = """
    SELECT count(*) AS videos, coalesce(sum(duration_s), 0) AS audio_seconds,
           max(done_at) AS last_update,
           (SELECT count(*) FROM segments) AS chunks
    FROM videos WHERE status = 'done'
"""


@dataclass(frozen=True, slots=True)
class VideoFilters:
    channel: str | None = None
    source: str | None = None  # a source as given to `backfill`: listed by it
    published_after: datetime | None = None  # inclusive
    published_before: datetime | None = None  # exclusive
    status: str | None = "done"  # None: videos in any state


async def fetch_video(conn: asyncpg.Connection, video_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_VIDEO_COLUMNS} FROM videos v WHERE v.id = $1",  # noqa: S608 - constant
        video_id,
    )
    return row


async def fetch_chunks(
    conn: asyncpg.Connection, video_id: str, start_s: float | None, end_s: float | None
) -> list[asyncpg.Record]:
    """The video's chunks in order; with a range, those overlapping [start_s, end_s]."""
    rows: list[asyncpg.Record] = await conn.fetch(_CHUNKS, video_id, start_s, end_s)
    return rows


async def fetch_videos(
    conn: asyncpg.Connection, filters: VideoFilters, limit: int, offset: int
) -> list[asyncpg.Record]:
    """Newest first; the id breaks ties so that pages neither repeat nor skip a video."""
    p = Params()
    where = video_clause(filters, p)
    sql = f"""SELECT {_VIDEO_COLUMNS} FROM videos v WHERE {where}
              ORDER BY v.published_at DESC NULLS LAST, v.id
              LIMIT {p(limit, "::bigint")} OFFSET {p(offset, "::bigint")}"""  # noqa: S608
    rows: list[asyncpg.Record] = await conn.fetch(sql, *p.values)
    return rows


def video_clause(filters: VideoFilters, p: Params) -> str:
    """The filters as SQL over `videos v`, every value a parameter."""
    clauses = ["true"]
    if filters.status is not None:
        clauses.append(f"v.status = {p(filters.status)}")
    clauses += video_conditions(
        p, "v.id", filters.channel, filters.source,
        filters.published_after, filters.published_before,
    )  # fmt: skip
    return " AND ".join(clauses)


async def fetch_corpus_facts(conn: asyncpg.Connection) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(_FACTS)
    return row
