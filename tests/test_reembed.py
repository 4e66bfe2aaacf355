"""`ingest reembed`: switching a corpus to another embedding model (of another dimension) while
writers and searches go on, resuming an interrupted run, and refusing what cannot be done."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from db.corpus import (
    SEARCH_INDEX,
    EmbeddingModelMismatch,
    ensure_embedding_model,
    ensure_search_index,
)
from db.reembed import RUN_LOCK, reembedding
from db.sink import ChunkRow, CorpusModelChanged, FinishedVideo, write_finished
from ingest.faces.cli import app
from ingest.faces.doctor.database import check_database
from ingest.infrastructure.config import Settings, load_settings
from ingest.infrastructure.models import EmbedderSlot, ModelLoadError
from ingest.infrastructure.retry import Database
from ingest.orchestration.reembed import ReembedProgress, ReembedRefused, reembed
from ingest.orchestration.search import Searcher, SearchOptions
from ingest.stages.embed import EmbeddedBatch, split_vectors
from ingest.stages.ledger import Ledger
from ingest.stages.messages import TranscribedVideo, VideoJob
from ingest.stages.sink import sink_stage
from tests import standins
from workers.chunking import Chunk
from workers.embedder import EmbedderOptions, TextEmbedder
from workers.speakers import Decision

pytestmark = pytest.mark.anyio
OLD = str(standins.minilm_path())
TOPICS = (
    "the backup of the database failed overnight", "a new release of the compiler shipped",
    "the budget for the garden was approved", "the concert moved to the larger hall",
    "our team fixed a memory leak in the parser", "rain is expected for the whole weekend",
)  # fmt: skip
RARE = "We patched CVE-2024-3094 on every server the same afternoon."


def write_minilm_256(folder: Path) -> Path:
    """MiniLM with a fixed random projection to 256 dimensions before its normalisation: a
    second real model, of another dimension, that ranks much as MiniLM does."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    minilm = list(SentenceTransformer(OLD, device="cpu"))
    torch.manual_seed(0)
    dense = models.Dense(384, 256, bias=False, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[*minilm[:2], dense, *minilm[2:]], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def old() -> TextEmbedder:
    return TextEmbedder(EmbedderOptions(OLD))


@pytest.fixture(scope="module")
def new(tmp_path_factory: pytest.TempPathFactory) -> TextEmbedder:
    folder = write_minilm_256(tmp_path_factory.mktemp("models") / "minilm-256")
    return TextEmbedder(EmbedderOptions(str(folder)))


def settings(database_url: str, model: str = OLD) -> Settings:
    return load_settings(database_url=database_url, embedding_model=model, device="cpu")


def transcribed(video_id: str, texts: list[str]) -> TranscribedVideo:
    chunks = tuple(Chunk(i, i * 10.0, i * 10.0 + 9, text) for i, text in enumerate(texts))
    return TranscribedVideo(VideoJob(video_id, f"http://x/{video_id}"), 60.0, chunks, "asr", (),
                            Decision("off"))  # fmt: skip


def texts_of(n: int) -> list[str]:
    return [f"{TOPICS[(n + i) % len(TOPICS)]}, said speaker {n}-{i}." for i in range(4)]


async def store(pool: asyncpg.Pool, videos: list[TranscribedVideo], embedder: TextEmbedder) -> None:
    """The videos as the pipeline's sink writes them, with `embedder`'s vectors."""
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO videos (id, url, extractor, status)"
            " VALUES ($1, $2, 'Youtube', 'processing') ON CONFLICT DO NOTHING",
            [(v.job.video_id, v.job.url) for v in videos],
        )
    vectors = embedder.encode([c.text for v in videos for c in v.chunks])
    finished = [
        FinishedVideo(e.video.job.video_id, 60.0, "asr", e.model, [
            ChunkRow(c.seg_index, c.start_s, c.end_s, None, c.text, vector)
            for c, vector in zip(e.video.chunks, e.embeddings, strict=True)
        ])
        for e in split_vectors(videos, vectors, embedder.name)
    ]  # fmt: skip
    async with pool.acquire() as conn:
        await write_finished(conn, finished)


@pytest.fixture
async def corpus(pool: asyncpg.Pool, old: TextEmbedder) -> asyncpg.Pool:
    """40 chunks of 10 videos, and the rare one, embedded with MiniLM. No search index: its
    approximate answers over so many near-duplicates could miss the rare chunk."""
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, OLD, old.dimension)
    videos = [transcribed(f"v{n:02d}", texts_of(n)) for n in range(10)]
    await store(pool, [*videos, transcribed("rare", [RARE])], old)
    return pool


@pytest.fixture
async def indexed(corpus: asyncpg.Pool) -> asyncpg.Pool:
    async with corpus.acquire() as conn:
        await ensure_search_index(conn)
    return corpus


class Watched(ReembedProgress):
    """Progress that says when the run has embedded `after` chunks."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.reached = asyncio.Event()

    def advance(self, chunks: int) -> None:
        super().advance(chunks)
        if self.embedded >= self.after:
            self.reached.set()


async def cancel_after(database_url: str, new: TextEmbedder, chunks: int, batch_size: int) -> None:
    """A run to `new`, cancelled once it has embedded `chunks`; its cancellation propagates."""
    progress = Watched(chunks)
    run = asyncio.create_task(reembed(settings(database_url), new.name, batch_size, progress))
    await progress.reached.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def assert_every_vector_is_of(pool: asyncpg.Pool, embedder: TextEmbedder) -> None:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT text, embedding FROM segments ORDER BY video_id, seg_index")
        model, dim = await conn.fetchrow("SELECT embedding_model, embedding_dim FROM corpus")
        strays = await conn.fetchval(
            "SELECT count(*) FROM videos WHERE embedding_model IS DISTINCT FROM $1", model
        )
    assert (model, dim, strays) == (embedder.name, embedder.dimension, 0)
    stored = np.stack([row["embedding"].to_numpy() for row in rows])
    expected = embedder.encode([row["text"] for row in rows])
    assert np.min(np.sum(stored * expected, axis=1)) > 0.999


async def test_the_corpus_switches_dimension_while_a_writer_and_searches_go_on(
    corpus: asyncpg.Pool, database_url: str, old: TextEmbedder, new: TextEmbedder
) -> None:
    searcher = Searcher(corpus, settings(database_url))
    slot = EmbedderSlot(old)  # a daemon started before the switch, holding MiniLM
    ledger = Ledger(Database(corpus), total=0)
    finished = asyncio.Event()
    flushed_with: list[str] = []
    answers: list[str] = []

    async def writer() -> None:
        n = 100
        while not (finished.is_set() and flushed_with and flushed_with[-1] == new.name):
            video = transcribed(f"w{n}", texts_of(n))
            async with corpus.acquire() as conn:
                await conn.execute(
                    "INSERT INTO videos (id, url, status) VALUES ($1, $2, 'processing')",
                    video.job.video_id, video.job.url,
                )  # fmt: skip
            embedder = slot.current
            batch = tuple(split_vectors([video], embedder.encode(texts_of(n)), embedder.name))
            send, receive = anyio.create_memory_object_stream[EmbeddedBatch](1)
            async with send:
                await send.send(batch)
            await sink_stage(receive, db=Database(corpus), ledger=ledger, embedder=slot)
            flushed_with.append(slot.current.name)
            n += 1
            await asyncio.sleep(0.05)

    async def searches() -> None:
        while not finished.is_set():
            results = await searcher.search(
                "CVE-2024-3094 patch", SearchOptions(k=3, mode="vector")
            )
            answers.append(results[0].hit.video_id)
            await asyncio.sleep(0.02)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer())
        tg.create_task(searches())
        result = await reembed(settings(database_url), new.name, batch_size=2)
        finished.set()
    assert result.previous == OLD and result.embedded >= 41
    # Some flushes came before the switch with MiniLM, and the writer followed after it.
    assert flushed_with[0] == OLD and flushed_with[-1] == new.name and slot.current is not old
    assert len(answers) > 3 and set(answers) == {"rare"}
    await assert_every_vector_is_of(corpus, new)
    after = await searcher.search("CVE-2024-3094 patch", SearchOptions(k=1, mode="vector"))
    assert after[0].hit.video_id == "rare"
    assert after[0].hit.similarity == pytest.approx(
        float(new.encode(["CVE-2024-3094 patch"])[0] @ new.encode([RARE])[0]), abs=1e-4
    )
    async with corpus.acquire() as conn:
        assert await reembedding(conn) is None


async def test_the_search_index_is_built_before_and_kept_after_the_switch(
    indexed: asyncpg.Pool, database_url: str, new: TextEmbedder
) -> None:
    await reembed(settings(database_url), new.name, batch_size=100)
    async with indexed.acquire() as conn:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'segments'"
            " AND indexdef LIKE '%embedding%'"
        )
        nullable = await conn.fetchval(
            "SELECT is_nullable FROM information_schema.columns"
            " WHERE table_name = 'segments' AND column_name = 'embedding'"
        )
        constraints = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'segments'::regclass"
            " AND contype = 'c' AND conname LIKE '%embedding%'"
        )
        assert await ensure_search_index(conn) is False  # valid: nothing to build again
    assert [r["indexname"] for r in indexes] == [SEARCH_INDEX]
    assert "hnsw (embedding vector_cosine_ops)" in indexes[0]["indexdef"]
    assert (nullable, constraints) == ("NO", 0)
    await assert_every_vector_is_of(indexed, new)


async def test_a_writer_holding_the_old_model_after_the_switch_stores_nothing_of_it(
    corpus: asyncpg.Pool, database_url: str, old: TextEmbedder, new: TextEmbedder
) -> None:
    await reembed(settings(database_url), new.name, batch_size=100)
    video = transcribed("late", texts_of(7))
    with pytest.raises(CorpusModelChanged, match="now uses"):
        await store(corpus, [video], old)
    batch = tuple(split_vectors([video], old.encode(texts_of(7)), old.name))
    send, receive = anyio.create_memory_object_stream[EmbeddedBatch](1)
    async with send:
        await send.send(batch)
    ledger = Ledger(Database(corpus), total=0)
    with pytest.raises(CorpusModelChanged):  # no model to follow with: refused, not stored
        await sink_stage(receive, db=Database(corpus), ledger=ledger)
    async with corpus.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM segments WHERE video_id = 'late'") == 0
    # A writer started afterwards with the old model is told what to set; a search follows.
    async with corpus.acquire() as conn:
        with pytest.raises(EmbeddingModelMismatch, match=f"INGEST_EMBEDDING_MODEL={new.name}"):
            await ensure_embedding_model(conn, OLD, old.dimension)
    results = await Searcher(corpus, settings(database_url)).search(RARE, SearchOptions(k=1))
    assert results[0].hit.video_id == "rare"
    assert results[0].hit.similarity == pytest.approx(1.0, abs=1e-4)


async def test_a_cancelled_run_goes_on_where_it_stopped(
    corpus: asyncpg.Pool, database_url: str, old: TextEmbedder, new: TextEmbedder
) -> None:
    await cancel_after(database_url, new, chunks=10, batch_size=2)
    async with corpus.acquire() as conn:
        done = await conn.fetchval("SELECT count(next_embedding) FROM segments")
        assert await conn.fetchval("SELECT embedding_model FROM corpus") == OLD
    assert 10 <= done < 41  # `rare` and v00 first, in key order
    # Meanwhile v00 is transcribed again, its words changed: its next vectors are stale.
    await store(corpus, [transcribed("v00", [f"{t} Again." for t in texts_of(0)])], old)
    again = ReembedProgress()
    result = await reembed(settings(database_url), new.name, 2, again)
    assert result.embedded == 41 - done + 4  # the finished batches were not done again
    await assert_every_vector_is_of(corpus, new)


async def test_a_killed_run_goes_on_where_it_stopped(
    corpus: asyncpg.Pool, database_url: str, new: TextEmbedder, tmp_path: Path
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "INGEST_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingest", "reembed", "--model", new.name, "--batch-size", "1",
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while await next_vectors(corpus) == 0:
            assert process.returncode is None, "the run ended before it was killed"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    result = await reembed(settings(database_url), new.name, 100)
    assert 0 < result.embedded < 41
    await assert_every_vector_is_of(corpus, new)


async def next_vectors(pool: asyncpg.Pool) -> int:
    """How many chunks have a next vector (0 before the run added the column)."""
    async with pool.acquire() as conn:
        try:
            found: int = await conn.fetchval(
                "SELECT count(next_embedding) FROM segments WHERE EXISTS (SELECT FROM reembedding)"
            )
        except asyncpg.UndefinedColumnError:
            return 0
    return found


async def test_a_second_run_or_another_target_is_refused(
    corpus: asyncpg.Pool, database_url: str, old: TextEmbedder, new: TextEmbedder
) -> None:
    async with corpus.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", RUN_LOCK)  # a run under way
        with pytest.raises(ReembedRefused, match="another `ingest reembed` is running"):
            await reembed(settings(database_url), new.name, 10)
        await holder.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK)
    await cancel_after(database_url, new, chunks=2, batch_size=1)
    # Half-way to the 256-d model, another target waits until that one is finished.
    with pytest.raises(ReembedRefused, match=f"with {new.name} is under way"):
        await reembed(settings(database_url), OLD + "-other", 10)
    env = {"DATABASE_URL": database_url}
    shown = await asyncio.to_thread(CliRunner().invoke, app, ["status"], env=env)
    assert f"re-embedding with {new.name} since" in shown.output
    assert re.search(r"since .*: ([2-9]|\d\d)/41 chunks done", shown.output), shown.output
    # Search goes on with MiniLM meanwhile.
    results = await Searcher(corpus, settings(database_url)).search("CVE", SearchOptions(k=1))
    assert results[0].hit.video_id == "rare"
    await doctor_sees_the_run(corpus, database_url, new)


async def doctor_sees_the_run(corpus: asyncpg.Pool, database_url: str, new: TextEmbedder) -> None:
    """`doctor` tells a run going on (its lock held) from one stopped half-way."""
    (stopped,) = [
        c for c in await check_database(settings(database_url)) if c.name == "reembedding"
    ]
    assert stopped.status == "warn" and f"ingest reembed --model {new.name}" in stopped.fix
    async with corpus.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", RUN_LOCK)
        checks = await check_database(settings(database_url))
        await holder.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK)
    (going,) = [c for c in checks if c.name == "reembedding"]
    assert going.status == "ok" and going.detail.startswith(f"re-embedding with {new.name}")


async def test_the_command_line_says_what_it_did(
    corpus: asyncpg.Pool, database_url: str, new: TextEmbedder, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": database_url, "INGEST_DEVICE": "cpu"}

    def ingest(*args: str) -> Result:
        # In a thread: the command runs its own event loop.
        return CliRunner().invoke(app, ["reembed", *args], env=env)

    same = await asyncio.to_thread(ingest, "--model", OLD)
    assert same.exit_code == 0 and "already uses" in same.output
    missing = await asyncio.to_thread(ingest, "--model", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "cannot load embedding model" in missing.output
    switched = await asyncio.to_thread(ingest, "--model", new.name, "--batch-size", "7")
    assert switched.exit_code == 0, switched.output
    assert "re-embedded 41 of 41 chunks" in switched.output
    assert f"set INGEST_EMBEDDING_MODEL={new.name}" in switched.output


async def test_a_model_that_cannot_be_loaded_changes_nothing(
    corpus: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError):
        await reembed(settings(database_url), str(tmp_path / "nothing"), 10)
    async with corpus.acquire() as conn:
        assert await reembedding(conn) is None
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'segments'"
        )
    assert "next_embedding" not in {c["column_name"] for c in columns}
