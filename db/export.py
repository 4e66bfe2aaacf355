"""Reading every stored chunk with its video's metadata, in batches through a server-side
cursor, so that exporting a corpus of millions of chunks holds one batch at a time."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import asyncpg

from db.search_filters import Params
from db.transcripts import VideoFilters, video_clause


def _chunks_sql(filters: VideoFilters, embeddings: bool, p: Params) -> str:
    vector = ", s.embedding" if embeddings else ""
    return f"""
        SELECT s.video_id, v.title, v.channel, v.url, v.extractor, v.published_at,
               s.seg_index, s.start_s, s.end_s, s.speaker,
               coalesce(s.speakers, array_remove(ARRAY[s.speaker], NULL)) AS speakers,
               s.text, v.transcript_source{vector}
        FROM segments s JOIN videos v ON v.id = s.video_id
        WHERE {video_clause(filters, p)}
        ORDER BY s.video_id, s.seg_index
    """  # noqa: S608 - constant fragments; every value is a parameter


async def count_chunks(conn: asyncpg.Connection, filters: VideoFilters) -> int:
    p = Params()
    where = video_clause(filters, p)
    sql = f"SELECT count(*) FROM segments s JOIN videos v ON v.id = s.video_id WHERE {where}"  # noqa: S608
    found: int = await conn.fetchval(sql, *p.values)
    return found


async def chunk_batches(
    conn: asyncpg.Connection, filters: VideoFilters, embeddings: bool, batch: int
) -> AsyncGenerator[list[asyncpg.Record], None]:
    """The chunks of the videos `filters` select, by video and position, `batch` at a time, all
    from one snapshot: a video finished meanwhile is exported whole or not at all."""
    p = Params()
    sql = _chunks_sql(filters, embeddings, p)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(sql, *p.values)
        while rows := await cursor.fetch(batch):
            yield rows
