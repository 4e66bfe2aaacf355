"""One-shot backfill: list the sources, process every video not yet done, build the index."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog

from db import videos
from db.corpus import ensure_embedding_model, ensure_search_index
from ingest.config import Settings
from ingest.database import open_database
from ingest.ledger import Ledger, describe_error
from ingest.messages import VideoJob
from ingest.models import load_models
from ingest.observe import observed
from ingest.pipeline import Pipeline, PipelineOptions
from ingest.sources import ListedVideo, SourceError, list_source
from ingest.speakers import load_profiles

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class SourceFailure:
    source: str
    error: str


@dataclass(frozen=True, slots=True)
class BackfillResult:
    total: int
    done: int
    failed: int
    audio_seconds: float
    chunks: int
    elapsed_s: float
    failures: tuple[tuple[str, str], ...]  # (video id, error)
    source_failures: tuple[SourceFailure, ...]

    @property
    def exit_code(self) -> int:
        """0 when every selected video is done and every source listed, else 1."""
        return 0 if self.done == self.total and not self.source_failures else 1


class Display(Protocol):
    def __call__(self, ledger: Ledger, pipeline: Pipeline) -> AbstractContextManager[object]: ...


async def backfill(
    sources: Sequence[str],
    settings: Settings,
    *,
    limit: int | None = None,
    reprocess: bool = False,
    display: Display | None = None,
) -> BackfillResult:
    started = time.perf_counter()
    async with open_database(settings) as pool, observed(settings, pool) as metrics:
        listed, source_failures = await discover(sources, settings, pool)
        async with pool.acquire() as conn:
            ids = await videos.select_to_process(
                conn, [v.record.id for v in listed], limit=limit, reprocess=reprocess
            )
        jobs_by_id = {v.record.id: v.job for v in listed}
        ledger = Ledger(pool, total=len(ids), metrics=metrics)
        if ids:
            await _process(pool, settings, ledger, [jobs_by_id[i] for i in ids], display)
        async with pool.acquire() as conn:
            await ensure_search_index(conn)
    counters = ledger.counters
    return BackfillResult(
        total=counters.total,
        done=counters.done,
        failed=counters.failed,
        audio_seconds=counters.audio_seconds,
        chunks=counters.chunks,
        elapsed_s=time.perf_counter() - started,
        failures=tuple(ledger.failures),
        source_failures=tuple(source_failures),
    )


async def discover(
    sources: Sequence[str], settings: Settings, pool: asyncpg.Pool
) -> tuple[list[ListedVideo], list[SourceFailure]]:
    """Lists every source (concurrently) and records its videos; a failing source is reported."""
    results = await asyncio.gather(
        *(_list(source, settings.download_socket_timeout) for source in sources)
    )
    listed: dict[str, ListedVideo] = {}
    failures: list[SourceFailure] = []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, SourceFailure):
            failures.append(result)
            continue
        for video in result:
            listed.setdefault(video.record.id, video)
        log.info("source_listed", source=source, videos=len(result))
    async with pool.acquire() as conn:
        await videos.record_discovered(conn, [v.record for v in listed.values()])
    return list(listed.values()), failures


async def _list(source: str, socket_timeout: float) -> list[ListedVideo] | SourceFailure:
    try:
        return await asyncio.to_thread(list_source, source, socket_timeout=socket_timeout)
    except SourceError as exc:
        log.error("source_failed", source=source, error=str(exc))
        return SourceFailure(source, str(exc))
    except Exception as exc:  # one bad source never stops the others
        log.error("source_failed", source=source, error=describe_error(exc))
        return SourceFailure(source, f"{source}: {describe_error(exc)}")


async def _process(
    pool: asyncpg.Pool,
    settings: Settings,
    ledger: Ledger,
    jobs: list[VideoJob],
    display: Display | None,
) -> None:
    async with pool.acquire() as conn:
        profiles = await load_profiles(conn, settings.voice_model)
    models = await asyncio.to_thread(load_models, settings, profiles)
    ledger.metrics.describe_models(
        asr_model=settings.resolved_asr_model(),
        embedding_model=settings.embedding_model,
        voice_model=settings.voice_model,
        diarization_model=settings.diarization_model,
        device=settings.resolved_device(),
    )
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, models.embedder.name, models.embedder.dimension)
    pipeline = Pipeline(
        PipelineOptions.from_settings(settings), pool=pool, models=models, ledger=ledger
    )
    with display(ledger, pipeline) if display else nullcontext():
        await pipeline.run(jobs)
