"""Sink stage: writes embedded batches to PostgreSQL, marking each video done with its chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from db.sink import (
    ChunkRow,
    CorpusModelChanged,
    FinishedVideo,
    SpeakerPath,
    WriteResult,
    write_finished,
)
from ingest.infrastructure.models import EmbedderSlot
from ingest.infrastructure.retry import Database
from ingest.stages.embed import EmbeddedBatch, split_vectors
from ingest.stages.ledger import Ledger
from ingest.stages.messages import EmbeddedVideo

log = structlog.get_logger()


async def sink_stage(
    inbox: MemoryObjectReceiveStream[EmbeddedBatch],
    *,
    db: Database,
    ledger: Ledger,
    embedder: EmbedderSlot | None = None,
) -> None:
    """Writes each batch in one transaction; while the database is away, it waits and retries
    the whole batch (nothing held in memory is dropped). A batch whose vectors the corpus no
    longer uses (it switched models meanwhile) is embedded again with the corpus's model, loaded
    into `embedder`; without one, that is an error."""
    async with inbox:
        async for batch in inbox:
            await _write_following(batch, db, ledger, embedder)


async def _write_following(
    batch: EmbeddedBatch, db: Database, ledger: Ledger, embedder: EmbedderSlot | None
) -> None:
    while True:
        try:
            await _write(batch, db, ledger)
            return
        except CorpusModelChanged as changed:
            if embedder is None:
                raise
            batch = await _embedded_again(batch, embedder, changed.model)


async def _embedded_again(batch: EmbeddedBatch, slot: EmbedderSlot, model: str) -> EmbeddedBatch:
    log.warning("corpus_model_changed", model=model, videos=len(batch))
    embedder = await slot.follow(model)
    videos = [video.video for video in batch]
    texts = [chunk.text for video in videos for chunk in video.chunks]
    vectors = await asyncio.to_thread(embedder.encode, texts)
    return tuple(split_vectors(videos, vectors, embedder.name))


async def _write(batch: EmbeddedBatch, db: Database, ledger: Ledger) -> None:
    finished = [_finished(video) for video in batch]
    metrics = ledger.metrics
    started = time.perf_counter()
    try:
        with metrics.in_flight.labels("store").track_inprogress():
            result = await db.run(lambda conn: write_finished(conn, finished))
    except asyncpg.DataError:
        # Some video's content was refused: write them one by one so only that one fails.
        for video in batch:
            await _write_alone(video, db, ledger)
        return
    log.debug("flushed", videos=result.videos, chunks=result.chunks, written=result.rows_written)
    metrics.flush_latency.observe(time.perf_counter() - started)
    metrics.flush_rows.inc(result.chunks)
    metrics.chunks.inc(result.chunks)
    metrics.items.labels("store", "ok").inc(result.videos)
    _record(batch, result, ledger)


def _record(batch: Sequence[EmbeddedVideo], result: WriteResult, ledger: Ledger) -> None:
    lost = set(result.lost)
    for video in batch:
        if video.video.job.video_id in lost:
            ledger.lost(video.video.job, "done")
    ledger.done([video.video for video in batch if video.video.job.video_id not in lost])


async def _write_alone(video: EmbeddedVideo, db: Database, ledger: Ledger) -> None:
    finished = [_finished(video)]
    try:
        result = await db.run(lambda conn: write_finished(conn, finished))
    except asyncpg.DataError as exc:
        await ledger.failed(video.video.job, "store", exc)
        return
    ledger.metrics.chunks.inc(result.chunks)
    ledger.metrics.items.labels("store", "ok").inc(result.videos)
    _record([video], result, ledger)


def _finished(video: EmbeddedVideo) -> FinishedVideo:
    transcript = video.video
    decision = transcript.speakers
    return FinishedVideo(
        video_id=transcript.job.video_id,
        duration_s=transcript.duration_s,
        asr_model=transcript.asr_model,
        embedding_model=video.model,
        chunks=[
            ChunkRow(
                c.seg_index,
                c.start_s,
                c.end_s,
                c.speaker,
                c.text,
                vector,
                c.confidence,
                c.speakers,
            )
            for c, vector in zip(transcript.chunks, video.embeddings, strict=True)
        ],
        timings=dict(transcript.timings),
        transcript_source=transcript.transcript_source,
        lease=transcript.job.lease,
        speakers=SpeakerPath(
            path=decision.path,
            similarity=decision.similarity,
            spread=decision.spread,
            reason=decision.reason,
        ),
    )
