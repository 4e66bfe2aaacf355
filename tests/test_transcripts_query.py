"""Reading stored transcripts back on a real PostgreSQL: a video's chunks in order, a time
range, unknown videos, listing videos by filters in stable pages, and the corpus's size."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from db.corpus import ensure_embedding_model
from db.sink import ChunkRow, FinishedVideo, write_finished
from ingest.orchestration.transcripts import (
    VideoFilters,
    corpus_facts,
    get_transcript,
    link_at,
    list_videos,
)

pytestmark = pytest.mark.anyio
START = datetime(2024, 1, 1, tzinfo=UTC)


async def add_video(
    conn: asyncpg.Connection,
    video_id: str,
    *,
    chunks: int = 0,
    channel: str = "main",
    published: datetime | None = START,
    url: str | None = None,
    extractor: str = "Youtube",
) -> None:
    """A video with `chunks` chunks of 10 s from 0 s, written in reverse order (so that order
    comes from the query, not the insert); a video without chunks stays discovered."""
    await conn.execute(
        "INSERT INTO videos (id, url, title, channel, extractor, published_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        video_id, url or f"https://www.youtube.com/watch?v={video_id}", f"Title {video_id}",
        channel, extractor, published,
    )  # fmt: skip
    if not chunks:
        return
    vector = np.ones(4, np.float32)
    rows = [
        ChunkRow(i, i * 10.0, i * 10.0 + 9.5, "Host" if i % 2 else "Guest", f"chunk {i}", vector,
                 None, ("Guest", "Host") if i == 1 else None)
        for i in reversed(range(chunks))
    ]  # fmt: skip
    source = "speech recognition (base)"
    finished = FinishedVideo(
        video_id, chunks * 10.0, "base", "model", rows, transcript_source=source
    )
    await write_finished(conn, [finished])


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "model", 4)
        yield conn


async def test_a_transcript_is_its_chunks_in_order_with_links(conn: asyncpg.Connection) -> None:
    await add_video(conn, "abc", chunks=12)
    transcript = await get_transcript(conn, "abc")
    assert transcript is not None
    assert [c.seg_index for c in transcript.chunks] == list(range(12))
    assert [c.text for c in transcript.chunks[:3]] == ["chunk 0", "chunk 1", "chunk 2"]
    first, second = transcript.chunks[:2]
    assert (first.speaker, first.speakers) == ("Guest", ("Guest",))
    assert (second.speaker, second.speakers) == ("Host", ("Guest", "Host"))
    assert transcript.chunks[5].link == "https://youtu.be/abc?t=50"
    video = transcript.video
    assert (video.id, video.title, video.status, video.chunk_count) == (
        "abc",
        "Title abc",
        "done",
        12,
    )
    assert (video.link, video.path, video.duration_s) == ("https://youtu.be/abc?t=0", None, 120.0)
    assert (video.asr_model, video.embedding_model) == ("base", "model")
    assert video.transcript_source == "speech recognition (base)" and video.done_at is not None


async def test_a_time_range_selects_the_chunks_overlapping_it(conn: asyncpg.Connection) -> None:
    await add_video(conn, "abc", chunks=12)

    async def within(start: float | None, end: float | None) -> list[int]:
        transcript = await get_transcript(conn, "abc", start, end)
        assert transcript is not None
        return [c.seg_index for c in transcript.chunks]

    # Chunk i spans [10 i, 10 i + 9.5]: 25..41 touches chunks 2, 3 and 4.
    assert await within(25, 41) == [2, 3, 4]
    assert await within(19.7, 20) == [2]  # in the gap after chunk 1, up to chunk 2's start
    assert await within(9.5, 9.5) == [0]  # an end is inside
    assert await within(None, 15) == [0, 1]
    assert await within(100, None) == [10, 11]
    assert await within(500, 600) == []
    assert await within(30, 20) == []  # an empty range


async def test_an_unknown_video_is_none_and_one_not_done_has_no_chunks(
    conn: asyncpg.Connection,
) -> None:
    assert await get_transcript(conn, "nope") is None
    await add_video(conn, "waiting")
    transcript = await get_transcript(conn, "waiting")
    assert transcript is not None
    assert (transcript.video.status, transcript.chunks) == ("discovered", ())


async def test_a_local_file_links_to_its_url_and_gives_its_path(conn: asyncpg.Connection) -> None:
    await add_video(conn, "f1", chunks=3, url="file:///talks/my%20talk.mp3", extractor="file")
    transcript = await get_transcript(conn, "f1")
    assert transcript is not None
    assert transcript.video.link == "file:///talks/my%20talk.mp3#t=0"
    assert transcript.video.path == "/talks/my talk.mp3"
    assert transcript.chunks[2].link == "file:///talks/my%20talk.mp3#t=20"
    http = link_at("generic", "x", "https://example.org/a.mp3", 61.9)
    assert http == ("https://example.org/a.mp3#t=61", None)


async def test_videos_are_listed_newest_first_in_stable_pages(conn: asyncpg.Connection) -> None:
    # Five share a date, so only the id orders them; two are undated and come last.
    dates = [START + timedelta(days=n % 4) for n in range(10)] + [None, None]
    for n, date in enumerate(dates):
        await add_video(conn, f"v{n:02d}", chunks=1, published=date)
    everything = await list_videos(conn, VideoFilters(), 100, 0)
    expected = sorted(
        (f"v{n:02d}" for n in range(12)),
        key=lambda v: (dates[int(v[1:])] is None, -(dates[int(v[1:])] or START).timestamp(), v),
    )
    assert [v.id for v in everything] == expected
    pages = [await list_videos(conn, VideoFilters(), 5, offset) for offset in (0, 5, 10, 15)]
    assert [v.id for page in pages for v in page] == expected
    assert [len(page) for page in pages] == [5, 5, 2, 0]


async def test_videos_are_listed_by_channel_source_date_and_state(
    conn: asyncpg.Connection,
) -> None:
    for n in range(6):
        await add_video(
            conn, f"v{n}", chunks=1, channel="even" if n % 2 == 0 else "odd",
            published=START + timedelta(days=n),
        )  # fmt: skip
    await add_video(conn, "todo", channel="even", published=None)
    await conn.executemany(
        "INSERT INTO listings (source, position, video_id) VALUES ($1, $2, $3)",
        [("https://example.org/feed", n, f"v{n}") for n in (1, 2)],
    )

    async def listed(filters: VideoFilters) -> list[str]:
        return [v.id for v in await list_videos(conn, filters, 50, 0)]

    assert await listed(VideoFilters(channel="even")) == ["v4", "v2", "v0"]
    assert await listed(VideoFilters(channel="even", status=None)) == ["v4", "v2", "v0", "todo"]
    assert await listed(VideoFilters(status="discovered")) == ["todo"]
    assert await listed(VideoFilters(source="https://example.org/feed")) == ["v2", "v1"]
    after, before = START + timedelta(days=2), START + timedelta(days=4)
    dated = VideoFilters(published_after=after, published_before=before)
    assert await listed(dated) == ["v3", "v2"]
    assert await listed(VideoFilters(channel="nobody")) == []


async def test_corpus_facts_count_the_done_videos(conn: asyncpg.Connection) -> None:
    empty = await corpus_facts(conn)
    assert (empty.videos, empty.chunks, empty.audio_seconds, empty.last_update) == (0, 0, 0.0, None)
    await add_video(conn, "a", chunks=3)
    await add_video(conn, "b", chunks=4)
    await add_video(conn, "todo")
    facts = await corpus_facts(conn)
    assert (facts.videos, facts.chunks, facts.audio_seconds) == (2, 7, 70.0)
    done_at = await conn.fetchval("SELECT max(done_at) FROM videos")
    assert facts.last_update == done_at
