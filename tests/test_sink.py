"""The sink on a real PostgreSQL: idempotent upserts, atomic replacement, all-or-nothing."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest

from db.corpus import EmbeddingModelMismatch, ensure_embedding_model, ensure_search_index
from db.sink import ChunkRow, FinishedVideo, write_finished

pytestmark = pytest.mark.anyio
DIM = 8


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def finished(video_id: str, texts: list[str], seed: int = 0) -> FinishedVideo:
    chunks = [
        ChunkRow(i, i * 10.0, i * 10.0 + 9, None, text, vector(seed + i))
        for i, text in enumerate(texts)
    ]
    return FinishedVideo(video_id, 100.0, "asr", "emb", chunks, {"asr": 1.5})


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
