"""Embedding stage: batches chunks across videos so the encoder sees ~INGEST_EMBED_BATCH at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import numpy as np
import numpy.typing as npt
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.models import EmbedderSlot
from ingest.stages.ledger import Ledger
from ingest.stages.messages import EmbeddedVideo, TranscribedVideo
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

    @property
    def full(self) -> bool:
        return self.chunks >= self.rules.max_chunks

    def add(self, video: TranscribedVideo, now: float) -> None:
        if self._oldest is None:
            self._oldest = now
        self.videos.append(video)
        self.chunks += len(video.chunks)

    def seconds_until_due(self, now: float) -> float | None:
        """None while empty (nothing to wait for), 0 when due."""
        if self._oldest is None:
            return None
        if self.full:
            return 0.0
        return max(0.0, self._oldest + self.rules.max_wait_s - now)

    def take(self) -> list[TranscribedVideo]:
        videos, self.videos, self.chunks, self._oldest = self.videos, [], 0, None
        return videos


class Handoff:
    """The batch being collected, taken by the encoder when it is free and the batch is due.

    The collector goes on filling it while the encoder works, so under load a batch holds what
    arrived during the previous encode (up to `max_chunks`, overshot by at most one video), not
    just what arrived within `max_wait_s`. A full batch stops the collector: upstream waits.
    """

    def __init__(self, rules: BatchRules) -> None:
        self.pending = PendingBatch(rules)
        self.ended = False
        self._added = asyncio.Event()
        self._taken = asyncio.Event()

    async def room(self) -> None:
        while self.pending.full:
            self._taken.clear()
            await self._taken.wait()

    def add(self, video: TranscribedVideo) -> None:
        self.pending.add(video, time.monotonic())
        self._added.set()

    def end(self) -> None:
        self.ended = True
        self._added.set()

    async def next_batch(self) -> list[TranscribedVideo] | None:
        """The batch once it is due (the rest at end of input); None when nothing is left."""
        while True:
            due = self.pending.seconds_until_due(time.monotonic())
            if due == 0.0 or (self.ended and self.pending.videos):
                self._taken.set()
                return self.pending.take()
            if self.ended:
                return None
            self._added.clear()
            try:
                async with asyncio.timeout(due):
                    await self._added.wait()
            except TimeoutError:
                pass


async def embed_stage(
    inbox: MemoryObjectReceiveStream[TranscribedVideo],
    outbox: MemoryObjectSendStream[EmbeddedBatch],
    *,
    embedder: TextEmbedder | EmbedderSlot,
    rules: BatchRules,
    ledger: Ledger,
) -> None:
    """Collects the next batch while the current one is being encoded, with the slot's current
    model (a model alone: that one throughout)."""
    slot = embedder if isinstance(embedder, EmbedderSlot) else EmbedderSlot(embedder)
    handoff = Handoff(rules)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_collect(inbox, handoff))
        tg.create_task(_encode(handoff, outbox, slot, ledger))


async def _collect(inbox: MemoryObjectReceiveStream[TranscribedVideo], handoff: Handoff) -> None:
    async with inbox:
        try:
            while True:
                await handoff.room()  # before receiving, so a full batch holds upstream back
                try:
                    video = await inbox.receive()
                except anyio.EndOfStream:
                    return
                handoff.add(video)
        finally:
            handoff.end()


async def _encode(
    handoff: Handoff,
    outbox: MemoryObjectSendStream[EmbeddedBatch],
    slot: EmbedderSlot,
    ledger: Ledger,
) -> None:
    async with outbox:
        while (videos := await handoff.next_batch()) is not None:
            await _flush(videos, outbox, slot.current, ledger)


async def _flush(
    videos: list[TranscribedVideo],
    outbox: MemoryObjectSendStream[EmbeddedBatch],
    embedder: TextEmbedder,
    ledger: Ledger,
) -> None:
    in_flight = ledger.metrics.in_flight.labels("embed")
    in_flight.inc(len(videos))
    try:
        embedded = await _isolating(videos, embedder, ledger)
    finally:
        in_flight.dec(len(videos))
    if embedded:
        await outbox.send(tuple(embedded))


async def _isolating(
    videos: list[TranscribedVideo], embedder: TextEmbedder, ledger: Ledger
) -> list[EmbeddedVideo]:
    """The videos embedded, in order. A batch the model rejects is split in halves until the
    videos it rejects alone are found: only those fail, at about twice one batch's work for one
    bad video, instead of one bad chunk failing every video that happened to share its batch."""
    try:
        return await _encode_batch(videos, embedder, ledger)
    except Exception as exc:
        if len(videos) == 1:
            await ledger.failed(videos[0].job, "embed", exc)
            return []
        log.warning("embed_batch_failed", videos=len(videos), error=describe_error(exc))
    half = len(videos) // 2
    first = await _isolating(videos[:half], embedder, ledger)
    return first + await _isolating(videos[half:], embedder, ledger)


async def _encode_batch(
    videos: list[TranscribedVideo], embedder: TextEmbedder, ledger: Ledger
) -> list[EmbeddedVideo]:
    texts = [chunk.text for video in videos for chunk in video.chunks]
    metrics = ledger.metrics
    started = time.perf_counter()
    vectors = await asyncio.to_thread(embedder.encode, texts)
    metrics.latency.labels("embed").observe(time.perf_counter() - started)
    metrics.embed_batch.observe(len(texts))
    metrics.items.labels("embed", "ok").inc(len(videos))
    log.debug("embedded", videos=len(videos), chunks=len(texts))
    return split_vectors(videos, vectors, embedder.name)


def split_vectors(
    videos: Sequence[TranscribedVideo], vectors: npt.NDArray[np.float32], model: str
) -> list[EmbeddedVideo]:
    """Each video with its rows of `vectors` (its chunks', in order), made by `model`."""
    embedded: list[EmbeddedVideo] = []
    offset = 0
    for video in videos:
        rows = vectors[offset : offset + len(video.chunks)]
        rows.setflags(write=False)
        offset += len(video.chunks)
        embedded.append(EmbeddedVideo(video, rows, model))
    return embedded
