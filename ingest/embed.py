"""Embedding stage: batches chunks across videos so the encoder sees ~INGEST_EMBED_BATCH at once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.ledger import Ledger
from ingest.messages import EmbeddedVideo, TranscribedVideo
from workers.embedder import TextEmbedder

log = structlog.get_logger()

EmbeddedBatch = tuple[EmbeddedVideo, ...]


@dataclass(frozen=True, slots=True)
class BatchRules:
    max_chunks: int = 1000
    max_wait_s: float = 2.0  # how long the oldest waiting video may wait for company


class PendingBatch:
    """Videos waiting to be embedded together, and when they are due.

    Due when `max_chunks` chunks wait, or when the oldest video has waited `max_wait_s`: a lone
    video in a quiet daemon is not held back, and a steady trickle cannot postpone it forever.
    """

    def __init__(self, rules: BatchRules) -> None:
        self.rules = rules
        self.videos: list[TranscribedVideo] = []
        self.chunks = 0
        self._oldest: float | None = None

    def add(self, video: TranscribedVideo, now: float) -> None:
        if self._oldest is None:
            self._oldest = now
        self.videos.append(video)
        self.chunks += len(video.chunks)

    def seconds_until_due(self, now: float) -> float | None:
        """None while empty (nothing to wait for), 0 when due."""
        if self._oldest is None:
            return None
        if self.chunks >= self.rules.max_chunks:
            return 0.0
        return max(0.0, self._oldest + self.rules.max_wait_s - now)

    def take(self) -> list[TranscribedVideo]:
        videos, self.videos, self.chunks, self._oldest = self.videos, [], 0, None
        return videos


async def embed_stage(
    inbox: MemoryObjectReceiveStream[TranscribedVideo],
    outbox: MemoryObjectSendStream[EmbeddedBatch],
    *,
    embedder: TextEmbedder,
    rules: BatchRules,
    ledger: Ledger,
) -> None:
    """Collects the next batch while the current one is being encoded."""
    send, receive = anyio.create_memory_object_stream[list[TranscribedVideo]]()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_collect(inbox, send, rules))
        tg.create_task(_encode(receive, outbox, embedder, ledger))


async def _collect(
    inbox: MemoryObjectReceiveStream[TranscribedVideo],
    outbox: MemoryObjectSendStream[list[TranscribedVideo]],
    rules: BatchRules,
) -> None:
    pending = PendingBatch(rules)
    receiving: asyncio.Task[TranscribedVideo] | None = None
    async with inbox, outbox:
        try:
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(inbox.receive())
                # asyncio.wait leaves the receive running on timeout, so no item can be lost.
                await asyncio.wait({receiving}, timeout=pending.seconds_until_due(time.monotonic()))
                if receiving.done():
                    try:
                        pending.add(receiving.result(), time.monotonic())
                    except anyio.EndOfStream:
                        break
                    finally:
                        receiving = None
                if pending.seconds_until_due(time.monotonic()) == 0.0:
                    await outbox.send(pending.take())
            if pending.videos:
                await outbox.send(pending.take())
        finally:
            if receiving is not None:
                receiving.cancel()


async def _encode(
    inbox: MemoryObjectReceiveStream[list[TranscribedVideo]],
    outbox: MemoryObjectSendStream[EmbeddedBatch],
    embedder: TextEmbedder,
    ledger: Ledger,
) -> None:
    async with inbox, outbox:
        async for videos in inbox:
            await _flush(videos, outbox, embedder, ledger)


async def _flush(
    videos: list[TranscribedVideo],
    outbox: MemoryObjectSendStream[EmbeddedBatch],
    embedder: TextEmbedder,
    ledger: Ledger,
) -> None:
    texts = [chunk.text for video in videos for chunk in video.chunks]
    metrics = ledger.metrics
    in_flight = metrics.in_flight.labels("embed")
    started = time.perf_counter()
    in_flight.inc(len(videos))
    try:
        vectors = await asyncio.to_thread(embedder.encode, texts)
    except Exception as exc:  # the batch is the item here: its videos fail, later ones go on
        for video in videos:
            await ledger.failed(video.job, "embed", exc)
        return
    finally:
        in_flight.dec(len(videos))
    metrics.latency.labels("embed").observe(time.perf_counter() - started)
    metrics.embed_batch.observe(len(texts))
    metrics.items.labels("embed", "ok").inc(len(videos))
    log.debug("embedded", videos=len(videos), chunks=len(texts))
    batch: list[EmbeddedVideo] = []
    offset = 0
    for video in videos:
        rows = vectors[offset : offset + len(video.chunks)]
        rows.setflags(write=False)
        offset += len(video.chunks)
        batch.append(EmbeddedVideo(video, rows))
    await outbox.send(tuple(batch))
