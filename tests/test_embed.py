"""Flush rules of the cross-video embedding batcher, and the stage on the real MiniLM."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence

import anyio
import asyncpg
import numpy as np
import numpy.typing as npt
import pytest

from ingest.infrastructure.retry import Database
from ingest.stages.embed import BatchRules, EmbeddedBatch, PendingBatch, embed_stage
from ingest.stages.ledger import Ledger
from ingest.stages.messages import TranscribedVideo, VideoJob
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


class Refusing(TextEmbedder):
    """The real MiniLM, except that a batch holding the `poison` text makes it raise; it keeps
    the size of every batch it is given. Once `hold()` is called, each encode waits for a
    `release()`, as a busy device keeps a batch waiting for as long as the test says."""

    def __init__(self, inner: TextEmbedder, poison: str = "poison") -> None:
        self.options, self.dimension = inner.options, inner.dimension
        self.inner, self.poison = inner, poison
        self.sizes: list[int] = []
        self._held = False
        self._permits = threading.Semaphore(0)
        self._begun = threading.Semaphore(0)

    def hold(self) -> None:
        self._held = True

    def release(self, encodes: int = 1) -> None:
        self._permits.release(encodes)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.sizes.append(len(texts))
        self._begun.release()
        if self._held:
            assert self._permits.acquire(timeout=60), "the test never let this encode go"
        if self.poison in texts:
            raise RuntimeError("encoder exploded")
        return self.inner.encode(texts)

    async def begun(self) -> None:
        """Until one more encode has begun."""
        assert await asyncio.to_thread(self._begun.acquire, timeout=60), "no encode began"


def poisoned(video_id: str) -> TranscribedVideo:
    chunks = (Chunk(0, 0, 1, f"{video_id} is fine here"), Chunk(1, 1, 2, "poison"))
    return TranscribedVideo(
        VideoJob(video_id, f"http://x/{video_id}"), 2, chunks, "m", (), Decision("off")
    )


async def insert_videos(pool: asyncpg.Pool, *ids: str) -> None:
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO videos (id, url) VALUES ($1, $2)", [(i, f"http://x/{i}") for i in ids]
        )


async def video_status(pool: asyncpg.Pool, video_id: str) -> tuple[str, str | None]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, error FROM videos WHERE id = $1", video_id)
    return row["status"], row["error"]


async def test_a_failing_batch_fails_its_videos_and_the_stage_goes_on(
    embedder: TextEmbedder, pool: asyncpg.Pool, ledger: Ledger
) -> None:
    await insert_videos(pool, "bad")
    rules = BatchRules(max_chunks=1, max_wait_s=60)
    batches = await run_stage(
        [poisoned("bad"), video("good", 1)], Refusing(embedder), rules, ledger
    )
    assert [[e.video.job.video_id for e in b] for b in batches] == [["good"]]
    assert list(ledger.failures.items()) == [("bad", "embed: encoder exploded")]
    assert await video_status(pool, "bad") == ("failed", "embed: encoder exploded")


async def test_only_the_video_the_model_refuses_fails_its_batch(
    embedder: TextEmbedder, pool: asyncpg.Pool, ledger: Ledger
) -> None:
    await insert_videos(pool, "bad")
    videos = [video("a", 2), video("b", 3), poisoned("bad"), video("d", 1), video("e", 2)]
    refusing = Refusing(embedder)
    (batch,) = await run_stage(videos, refusing, BatchRules(1000, 60), ledger)
    assert [e.video.job.video_id for e in batch] == ["a", "b", "d", "e"]
    for embedded in batch:
        alone = embedder.encode([c.text for c in embedded.video.chunks])
        assert np.allclose(alone, embedded.embeddings, atol=1e-4)
    assert list(ledger.failures.items()) == [("bad", "embed: encoder exploded")]
    assert await video_status(pool, "bad") == ("failed", "embed: encoder exploded")
    assert ledger.counters.failed == 1
    assert len(refusing.sizes) <= 2 * math.ceil(math.log2(len(videos))) + 1  # bisected


async def test_every_refused_video_fails_and_the_rest_arrive(
    embedder: TextEmbedder, pool: asyncpg.Pool, ledger: Ledger
) -> None:
    await insert_videos(pool, "bad1", "bad2")
    videos = [poisoned("bad1"), video("a", 1), video("b", 2), poisoned("bad2"), video("c", 1)]
    batches = await run_stage(videos, Refusing(embedder), BatchRules(1000, 60), ledger)
    assert [[e.video.job.video_id for e in b] for b in batches] == [["a", "b", "c"]]
    assert list(ledger.failures) == ["bad1", "bad2"]
    for bad in ("bad1", "bad2"):
        assert await video_status(pool, bad) == ("failed", "embed: encoder exploded")


async def test_a_batch_of_only_refused_videos_sends_nothing(
    embedder: TextEmbedder, pool: asyncpg.Pool, ledger: Ledger
) -> None:
    await insert_videos(pool, "bad1", "bad2")
    batches = await run_stage(
        [poisoned("bad1"), poisoned("bad2")], Refusing(embedder), BatchRules(1000, 60), ledger
    )
    assert batches == []
    assert list(ledger.failures) == ["bad1", "bad2"]


async def test_batches_stay_full_while_the_encoder_is_slow(
    embedder: TextEmbedder, ledger: Ledger
) -> None:
    """Videos arrive faster than the encoder takes them: each batch is what arrived during the
    previous encode, up to the limit, not what arrived within the short wait."""
    slow = Refusing(embedder)
    slow.hold()
    rules = BatchRules(max_chunks=30, max_wait_s=0.02)
    send, receive = anyio.create_memory_object_stream[TranscribedVideo](100)
    out_send, out_receive = anyio.create_memory_object_stream[EmbeddedBatch](100)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(embed_stage(receive, out_send, embedder=slow, rules=rules, ledger=ledger))
        # The first batch is flushed by the timer while the encoder is idle, as it should be.
        await send.send(video("v0", 3))
        await slow.begun()
        async with send:
            for i in range(1, 31):
                await send.send(video(f"v{i}", 3))
        for _ in range(3):
            # Everything that could be collected during the encode has been: then it ends.
            await anyio.wait_all_tasks_blocked()
            slow.release()
            await slow.begun()
        slow.release()
    async with out_receive:
        arrived = [e.video.job.video_id async for b in out_receive for e in b]
    assert arrived == [f"v{i}" for i in range(31)]
    assert slow.sizes == [3, 30, 30, 30]


async def test_a_full_batch_waiting_for_the_encoder_holds_upstream_back(
    embedder: TextEmbedder, ledger: Ledger
) -> None:
    stuck = Refusing(embedder)
    stuck.hold()
    send, receive = anyio.create_memory_object_stream[TranscribedVideo](10)
    out_send, out_receive = anyio.create_memory_object_stream[EmbeddedBatch](10)
    async with send:
        for i in range(10):
            send.send_nowait(video(f"v{i}", 3))
    rules = BatchRules(max_chunks=3, max_wait_s=60)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(embed_stage(receive, out_send, embedder=stuck, rules=rules, ledger=ledger))
        await stuck.begun()
        await anyio.wait_all_tasks_blocked()  # the stage has taken all it will meanwhile
        # v0 is being encoded and v1 fills the next batch: the other eight stay upstream.
        assert receive.statistics().current_buffer_used == 8
        stuck.release(10)
    async with out_receive:
        assert [[e.video.job.video_id for e in b] async for b in out_receive] == [
            [f"v{i}"] for i in range(10)
        ]
