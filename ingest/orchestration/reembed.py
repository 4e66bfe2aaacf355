"""Re-embedding the stored chunks with another model, without transcribing anything again.

The run fills the next vectors batch by batch while search and writers go on with the current
ones, then switches the corpus to them in one transaction (db/reembed.py). Every batch is
committed as it is done: a run stopped any way resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import numpy.typing as npt
import structlog

from db.corpus import CorpusModel, corpus_model
from db.reembed import (
    RUN_LOCK,
    build_next_search_index,
    count_chunks,
    pending_chunks,
    reembedding,
    settle_not_null,
    start_reembedding,
    store_next,
    switch_models,
)
from ingest.infrastructure.config import Settings
from ingest.infrastructure.database import open_database
from ingest.infrastructure.models import load_embedder
from workers.embedder import TextEmbedder

log = structlog.get_logger()


class ReembedRefused(Exception):
    """A re-embedding that cannot be run now; nothing was changed (exit status 2)."""


@dataclass(frozen=True, slots=True)
class ReembedResult:
    model: str
    previous: str | None  # the model replaced; None when nothing was to do
    embedded: int  # chunks this run embedded (a resumed run: those left)
    total: int  # chunks in the corpus at the switch
    elapsed_s: float


# Passes before the switch over the chunks lacking a next vector (writers add more meanwhile).
_PASSES = 3
# How often a run without a terminal logs where it is.
_LOG_EVERY_S = 10.0


@dataclass(slots=True)
class ReembedProgress:
    """Chunks done of all, as the run goes: read by the live display, logged as `progress`."""

    done: int = 0
    total: int = 0
    embedded: int = 0  # by this run, whose pace gives the estimate
    started: float = field(default_factory=time.monotonic)
    _logged: float = 0.0

    def begin(self, left: int, total: int) -> None:
        self.done, self.total, self.started = total - left, total, time.monotonic()

    def advance(self, chunks: int) -> None:
        self.done, self.embedded = self.done + chunks, self.embedded + chunks
        self.total = max(self.total, self.done)  # chunks written meanwhile
        if time.monotonic() - self._logged >= _LOG_EVERY_S:
            self._logged = time.monotonic()
            eta = self.eta_s()
            log.info("progress", done=self.done, total=self.total,
                     eta_s=None if eta is None else round(eta))  # fmt: skip

    def eta_s(self) -> float | None:
        if self.embedded == 0:
            return None
        pace = (time.monotonic() - self.started) / self.embedded
        return max(0, self.total - self.done) * pace


async def reembed(
    settings: Settings, model: str, batch_size: int, progress: ReembedProgress | None = None
) -> ReembedResult:
    """Re-embeds the corpus with `model` and switches it to that model; a corpus that already
    uses it is left as it is. The model is loaded before anything is changed."""
    progress = progress or ReembedProgress()
    started = time.monotonic()
    async with open_database(settings) as pool, pool.acquire() as conn:
        if (corpus := await _to_replace(conn, model)) is None:
            return ReembedResult(model, None, 0, 0, time.monotonic() - started)
        target = settings.model_copy(update={"embedding_model": model})
        embedder = await asyncio.to_thread(load_embedder, target)
        # Released with the connection too: a run killed any way leaves no lock behind.
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK):
            raise ReembedRefused("another `ingest reembed` is running on this corpus")
        try:
            if await _to_replace(conn, model) is None:  # another run finished it meanwhile
                return ReembedResult(model, None, 0, 0, time.monotonic() - started)
            embedded, total = await _run(conn, embedder, batch_size, progress)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK)
    elapsed = time.monotonic() - started
    log.info("reembedded", model=model, previous=corpus.model, chunks=embedded, seconds=elapsed)
    return ReembedResult(model, corpus.model, embedded, total, elapsed)


async def _to_replace(conn: asyncpg.Connection, model: str) -> CorpusModel | None:
    """The corpus's model that `model` is to replace; None where the corpus uses `model`
    already, with no re-embedding under way."""
    corpus = await corpus_model(conn)
    if corpus is None:
        raise ReembedRefused(
            "the corpus holds no embeddings yet: set INGEST_EMBEDDING_MODEL to the model instead"
        )
    under_way = await reembedding(conn)
    if under_way is not None and under_way.model != model:
        raise ReembedRefused(
            f"a re-embedding with {under_way.model} is under way (since "
            f"{under_way.started_at:%Y-%m-%d %H:%M} UTC): finish it with "
            f"`ingest reembed --model {under_way.model}` first"
        )
    if under_way is None and corpus.model == model:
        await settle_not_null(conn)  # a run stopped just after its switch
        return None
    return corpus


async def _run(
    conn: asyncpg.Connection, embedder: TextEmbedder, batch_size: int, progress: ReembedProgress
) -> tuple[int, int]:
    """(chunks embedded, chunks in all)."""
    await start_reembedding(conn, embedder.name, embedder.dimension)
    left, total = await count_chunks(conn)
    progress.begin(left, total)
    log.info("reembedding", model=embedder.name, left=left, total=total)
    await _catch_up(conn, embedder, batch_size, progress)
    if await build_next_search_index(conn):
        log.info("reembedding_index_built")
        await _catch_up(conn, embedder, batch_size, progress)  # chunks written during the build

    async def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(embedder.encode, texts)

    stragglers = await switch_models(conn, encode)
    progress.advance(stragglers)
    await settle_not_null(conn)
    return progress.embedded, progress.total


async def _catch_up(
    conn: asyncpg.Connection, embedder: TextEmbedder, batch_size: int, progress: ReembedProgress
) -> None:
    """Passes over the chunks lacking a next vector until about one batch is left for the
    switch. Writers add chunks meanwhile, so each pass does only those it found at its start,
    and a few passes are all: the switch embeds whatever a fast writer added after them."""
    for _ in range(_PASSES):
        left, total = await count_chunks(conn)
        progress.total = max(progress.total, total)
        if left <= batch_size:
            return
        await _fill(conn, embedder, batch_size, progress, left)


async def _fill(
    conn: asyncpg.Connection,
    embedder: TextEmbedder,
    batch_size: int,
    progress: ReembedProgress,
    at_most: int,
) -> None:
    """One pass, in key order, a batch at a time: the scan goes on after the last batch."""
    after: tuple[str, int] | None = None
    while at_most > 0 and (chunks := await pending_chunks(conn, after, min(batch_size, at_most))):
        vectors = await asyncio.to_thread(embedder.encode, [c.text for c in chunks])
        await store_next(conn, chunks, vectors)
        after = (chunks[-1].video_id, chunks[-1].seg_index)
        at_most -= len(chunks)
        progress.advance(len(chunks))
