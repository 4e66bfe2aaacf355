"""Flush rules of the cross-video embedding batcher, and the stage on the real MiniLM."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import anyio
import asyncpg
import numpy as np
import numpy.typing as npt
import pytest

from ingest.embed import BatchRules, EmbeddedBatch, PendingBatch, embed_stage
from ingest.ledger import Ledger
from ingest.messages import TranscribedVideo, VideoJob
from ingest.retry import Database
from tests.conftest import ModelPaths
from workers.chunking import Chunk
from workers.embedder import EmbedderOptions, TextEmbedder
from workers.speakers import Decision

pytestmark = pytest.mark.anyio


def video(video_id: str, n_chunks: int) -> TranscribedVideo:
    chunks = tuple(Chunk(i, i, i + 1, f"{video_id} sentence {i}") for i in range(n_chunks))
    job = VideoJob(video_id, f"http://x/{video_id}")
    return TranscribedVideo(job, n_chunks, chunks, "m", (), Decision("off"))


def test_empty_batch_waits_for_nothing() -> None:
    assert PendingBatch(BatchRules(10, 2.0)).seconds_until_due(now=100.0) is None


def test_due_when_enough_chunks_wait() -> None:
    batch = PendingBatch(BatchRules(max_chunks=10, max_wait_s=5.0))
    batch.add(video("a", 6), now=0.0)
    assert batch.seconds_until_due(now=0.0) == 5.0
    batch.add(video("b", 4), now=1.0)
    assert batch.seconds_until_due(now=1.0) == 0.0


def test_due_when_the_oldest_video_has_waited_long_enough() -> None:
    batch = PendingBatch(BatchRules(max_chunks=1000, max_wait_s=2.0))
    batch.add(video("a", 1), now=10.0)
    batch.add(video("b", 1), now=11.5)  # a later arrival does not postpone the first
    assert batch.seconds_until_due(now=11.5) == pytest.approx(0.5)
    assert batch.seconds_until_due(now=12.5) == 0.0


def test_take_empties_the_batch_in_arrival_order() -> None:
    batch = PendingBatch(BatchRules(10, 1.0))
    batch.add(video("a", 2), now=0.0)
    batch.add(video("b", 0), now=0.0)
    assert [v.job.video_id for v in batch.take()] == ["a", "b"]
    assert batch.chunks == 0 and batch.seconds_until_due(now=5.0) is None


@pytest.fixture(scope="module")
def embedder(models: ModelPaths) -> TextEmbedder:
    return TextEmbedder(EmbedderOptions(str(models.embedding)))


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> Ledger:
    return Ledger(Database(pool), total=0)


async def run_stage(
    videos: Sequence[TranscribedVideo], embedder: TextEmbedder, rules: BatchRules, ledger: Ledger
) -> list[EmbeddedBatch]:
    send, receive = anyio.create_memory_object_stream[TranscribedVideo](100)
    out_send, out_receive = anyio.create_memory_object_stream[EmbeddedBatch](100)
    async with send:
        for v in videos:
            await send.send(v)
    await embed_stage(receive, out_send, embedder=embedder, rules=rules, ledger=ledger)
    async with out_receive:
        return [batch async for batch in out_receive]


async def test_batches_across_videos_by_chunk_count(embedder: TextEmbedder, ledger: Ledger) -> None:
    videos = [video(f"v{i}", 3) for i in range(5)]
    batches = await run_stage(videos, embedder, BatchRules(max_chunks=6, max_wait_s=60), ledger)
    assert [[e.video.job.video_id for e in b] for b in batches] == [
        ["v0", "v1"],
        ["v2", "v3"],
        ["v4"],  # the rest is flushed at end of input
    ]
    for batch in batches:
        for embedded in batch:
            assert embedded.embeddings.shape == (3, embedder.dimension) == (3, 384)
            norms = np.linalg.norm(embedded.embeddings, axis=1)
            assert np.allclose(norms, 1.0, atol=1e-5)


async def test_vectors_match_their_own_chunks(embedder: TextEmbedder, ledger: Ledger) -> None:
    videos = [video("a", 2), video("b", 3)]
    (batch,) = await run_stage(videos, embedder, BatchRules(1000, 60), ledger)
    for embedded in batch:
        alone = embedder.encode([c.text for c in embedded.video.chunks])
        assert np.allclose(alone, embedded.embeddings, atol=1e-4)


async def test_a_lone_video_is_flushed_after_the_wait(
    embedder: TextEmbedder, ledger: Ledger
) -> None:
    send, receive = anyio.create_memory_object_stream[TranscribedVideo](10)
    out_send, out_receive = anyio.create_memory_object_stream[EmbeddedBatch](10)
    rules = BatchRules(max_chunks=1000, max_wait_s=0.2)
    async with asyncio.TaskGroup() as tg:
        stage = tg.create_task(
            embed_stage(receive, out_send, embedder=embedder, rules=rules, ledger=ledger)
        )
        await send.send(video("lonely", 2))
        with anyio.fail_after(10):
            batch = await out_receive.receive()  # the input stays open: only the timer flushes
        assert [e.video.job.video_id for e in batch] == ["lonely"]
        assert not stage.done()
        await send.aclose()
    await out_receive.aclose()


class BrokenEmbedder(TextEmbedder):
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if any("poison" in t for t in texts):
            raise RuntimeError("encoder exploded")
        return super().encode(texts)


async def test_a_failing_batch_fails_its_videos_and_the_stage_goes_on(
    models: ModelPaths, pool: asyncpg.Pool, ledger: Ledger
) -> None:
    broken = BrokenEmbedder(EmbedderOptions(str(models.embedding)))
    poisoned = TranscribedVideo(
        VideoJob("bad", "http://x/bad"), 1, (Chunk(0, 0, 1, "poison"),), "m", (), Decision("off")
    )
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO videos (id, url) VALUES ('bad', 'http://x/bad')")
    rules = BatchRules(max_chunks=1, max_wait_s=60)
    batches = await run_stage([poisoned, video("good", 1)], broken, rules, ledger)
    assert [[e.video.job.video_id for e in b] for b in batches] == [["good"]]
    assert ledger.failures == [("bad", "embed: encoder exploded")]
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, error FROM videos WHERE id = 'bad'")
    assert (row["status"], row["error"]) == ("failed", "embed: encoder exploded")
