"""The sink on a real PostgreSQL: idempotent upserts, atomic replacement, all-or-nothing."""

from __future__ import annotations

import anyio
import asyncpg
import numpy as np
import pytest

from db.corpus import EmbeddingModelMismatch, ensure_embedding_model, ensure_search_index
from db.sink import ChunkRow, FinishedVideo, write_finished
from ingest.infrastructure.retry import Database
from ingest.stages.embed import EmbeddedBatch
from ingest.stages.ledger import Ledger
from ingest.stages.messages import EmbeddedVideo, TranscribedVideo, VideoJob
from ingest.stages.sink import sink_stage
from workers.chunking import ChunkingOptions, Segment, chunk_segments
from workers.speakers import Decision

pytestmark = pytest.mark.anyio
DIM = 8


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def finished(
    video_id: str, texts: list[str], seed: int = 0, lease: int | None = None
) -> FinishedVideo:
    chunks = [
        ChunkRow(i, i * 10.0, i * 10.0 + 9, None, text, vector(seed + i))
        for i, text in enumerate(texts)
    ]
    return FinishedVideo(video_id, 100.0, "asr", "emb", chunks, {"asr": 1.5}, lease=lease)


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> asyncpg.Connection:
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
        await conn.executemany(
            "INSERT INTO videos (id, url, status) VALUES ($1, $2, 'processing')",
            [("a", "http://x/a"), ("b", "http://x/b")],
        )
        yield conn


async def rows(conn: asyncpg.Connection, video_id: str) -> list[asyncpg.Record]:
    found: list[asyncpg.Record] = await conn.fetch(
        "SELECT seg_index, text, embedding, xmin FROM segments WHERE video_id = $1"
        " ORDER BY seg_index",
        video_id,
    )
    return found


async def test_writes_chunks_and_marks_videos_done(conn: asyncpg.Connection) -> None:
    result = await write_finished(conn, [finished("a", ["x", "y"]), finished("b", ["z"])])
    assert (result.videos, result.chunks, result.rows_written) == (2, 3, 3)
    assert [r["text"] for r in await rows(conn, "a")] == ["x", "y"]
    video = await conn.fetchrow("SELECT * FROM videos WHERE id = 'a'")
    assert (video["status"], video["chunk_count"], video["asr_model"]) == ("done", 2, "asr")
    assert video["done_at"] is not None
    stored = (await rows(conn, "a"))[1]["embedding"].to_numpy()
    assert np.allclose(stored, vector(1))


async def test_unchanged_rows_are_not_rewritten(conn: asyncpg.Connection) -> None:
    await write_finished(conn, [finished("a", ["x", "y", "z"])])
    before = await rows(conn, "a")
    again = await write_finished(conn, [finished("a", ["x", "y", "z"])])
    assert again.rows_written == 0
    assert [r["xmin"] for r in await rows(conn, "a")] == [r["xmin"] for r in before]


async def test_only_changed_rows_are_rewritten(conn: asyncpg.Connection) -> None:
    await write_finished(conn, [finished("a", ["x", "y", "z"])])
    before = await rows(conn, "a")
    result = await write_finished(conn, [finished("a", ["x", "CHANGED", "z"])])
    after = await rows(conn, "a")
    assert result.rows_written == 1
    assert [r["text"] for r in after] == ["x", "CHANGED", "z"]
    assert after[0]["xmin"] == before[0]["xmin"] and after[2]["xmin"] == before[2]["xmin"]


async def test_reprocessing_with_fewer_chunks_removes_the_stale_ones(
    conn: asyncpg.Connection,
) -> None:
    await write_finished(conn, [finished("a", ["1", "2", "3", "4"]), finished("b", ["b"])])
    result = await write_finished(conn, [finished("a", ["one", "two"], seed=50)])
    assert result.rows_deleted == 2
    assert [r["text"] for r in await rows(conn, "a")] == ["one", "two"]
    assert [r["text"] for r in await rows(conn, "b")] == ["b"]  # other videos untouched
    assert await conn.fetchval("SELECT chunk_count FROM videos WHERE id = 'a'") == 2


async def test_a_video_with_no_speech_is_done_with_no_chunks(conn: asyncpg.Connection) -> None:
    await write_finished(conn, [finished("a", ["old"])])
    await write_finished(conn, [finished("a", [])])
    assert await rows(conn, "a") == []
    assert await conn.fetchval("SELECT status FROM videos WHERE id = 'a'") == "done"


async def test_a_refused_batch_writes_nothing(conn: asyncpg.Connection) -> None:
    bad = finished("b", ["contains a NUL \x00 byte"])
    with pytest.raises(asyncpg.exceptions.CharacterNotInRepertoireError):
        await write_finished(conn, [finished("a", ["fine"]), bad])
    assert await rows(conn, "a") == []
    assert await conn.fetchval("SELECT status FROM videos WHERE id = 'a'") == "processing"


async def test_another_embedding_model_is_refused(conn: asyncpg.Connection) -> None:
    await ensure_embedding_model(conn, "emb", DIM)  # the same model again is fine
    with pytest.raises(EmbeddingModelMismatch, match="8-d embeddings of emb"):
        await ensure_embedding_model(conn, "other", 1024)


async def test_search_index_is_built_on_the_typed_column(conn: asyncpg.Connection) -> None:
    await write_finished(conn, [finished("a", ["x", "y"])])
    await ensure_search_index(conn)
    await ensure_search_index(conn)
    index = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'segments_embedding_hnsw'"
    )
    assert "hnsw" in index and "vector_cosine_ops" in index


LONG = "What the host has to say about it, at some length and in whole sentences. " * 2


async def sink_transcript(pool: asyncpg.Pool, segments: list[Segment]) -> None:
    """The video `a` as the pipeline stores it: chunked, embedded, through the sink stage."""
    chunks = tuple(chunk_segments(segments, ChunkingOptions(target_chars=200)))
    job = VideoJob("a", "http://x/a")
    video = TranscribedVideo(job, 20.0, chunks, "asr", (), Decision("full"))
    vectors = np.stack([vector(c.seg_index) for c in chunks])
    send, receive = anyio.create_memory_object_stream[EmbeddedBatch](1)
    async with send:
        await send.send((EmbeddedVideo(video, vectors, "emb"),))
    await sink_stage(receive, db=Database(pool), ledger=Ledger(Database(pool), total=1))


async def test_every_speaker_of_a_chunk_is_stored_the_main_one_first(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    segments = [
        Segment(0, 10, LONG, "A"),
        Segment(10.5, 11, "Yes.", "B"),  # a short turn, joined to the nearer chunk after it
        Segment(11, 20, LONG, "A"),
    ]
    query = "SELECT speaker, speakers, xmin FROM segments WHERE video_id = 'a' ORDER BY seg_index"
    await sink_transcript(pool, segments)
    first = await conn.fetch(query)
    assert [(r["speaker"], r["speakers"]) for r in first] == [("A", ["A"]), ("A", ["A", "B"])]
    # Reprocessed, the short turn is heard as someone else: only that chunk is rewritten.
    await sink_transcript(pool, [segments[0], Segment(10.5, 11, "Yes.", "C"), segments[2]])
    again = await conn.fetch(query)
    assert [r["speakers"] for r in again] == [["A"], ["A", "C"]]
    assert again[0]["xmin"] == first[0]["xmin"] and again[1]["xmin"] != first[1]["xmin"]
