"""Semantic search over the chunks by cosine similarity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class SearchHit:
    video_id: str
    title: str | None
    url: str
    extractor: str | None
    seg_index: int
    start_s: float
    end_s: float
    speaker: str | None
    text: str
    score: float  # cosine similarity, 1 = same direction
    transcript_source: str | None = None  # speech recognition, captions or a subtitle file
    channel: str | None = None
    published_at: datetime | None = None


async def search_chunks(
    conn: asyncpg.Connection,
    query: npt.NDArray[np.float32],
    *,
    k: int,
    speaker: str | None = None,
) -> list[SearchHit]:
    rows = await conn.fetch(
        """
        SELECT s.video_id, v.title, v.url, v.extractor, s.seg_index, s.start_s, s.end_s,
               s.speaker, s.text, 1 - (s.embedding <=> $1) AS score, v.transcript_source,
               v.channel, v.published_at
        FROM segments s JOIN videos v ON v.id = s.video_id
        WHERE $3::text IS NULL OR s.speaker = $3
        ORDER BY s.embedding <=> $1
        LIMIT $2
        """,
        query,
        k,
        speaker,
    )
    return [SearchHit(**dict(r)) for r in rows]
