"""Running the pipeline on claimed videos, shared by `backfill` and `daemon`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import structlog

from db.corpus import ensure_embedding_model
from ingest.infrastructure.config import Settings
from ingest.infrastructure.models import load_models
from ingest.infrastructure.retry import Database
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration.claims import Claims, audio_dir_of
from ingest.orchestration.pipeline import Pipeline, PipelineOptions
from ingest.orchestration.speakers import load_profiles
from ingest.sites.errors import site_of
from ingest.sites.throttle import Governor
from ingest.stages.ledger import Ledger
from ingest.stages.messages import VideoJob

log = structlog.get_logger()


async def _tracked(
    feed: AsyncIterator[VideoJob], ledger: Ledger, governor: Governor
) -> AsyncIterator[VideoJob]:
    """Claimed videos are in flight (their leases renewed) until the ledger records an end. A
    video of a paused site waits here until the site reopens: one lease held, no request."""
    async for job in feed:
        ledger.took(job)
        await governor.reopened(site_of(job.url))
        yield job


Display = Callable[[Ledger, Pipeline], AbstractContextManager[object]]


@dataclass(frozen=True, slots=True)
class Session:
    settings: Settings
    db: Database
    claims: Claims
    shutdown: Shutdown
    governor: Governor


async def run_jobs(
    session: Session,
    ledger: Ledger,
    feed: AsyncIterator[VideoJob],
    display: Display | None = None,
) -> None:
    """Loads the models, then runs the pipeline on `feed` until it ends or the run is stopped;
    whatever this process still holds is handed back."""
    settings, db, claims = session.settings, session.db, session.claims
    profiles = await db.run(lambda conn: load_profiles(conn, settings.voice_model))
    models = await asyncio.to_thread(load_models, settings, profiles)
    ledger.metrics.describe_models(
        asr_model=settings.resolved_asr_model(),
        embedding_model=settings.embedding_model,
        voice_model=settings.voice_model,
        diarization_model=(
            settings.diarization_model
            if models.diarizer.kind == "pyannote"
            else models.diarizer.kind
        ),
        device=settings.resolved_device(),
    )
    embedder = models.embedder
    await db.run(lambda conn: ensure_embedding_model(conn, embedder.name, embedder.dimension))
    await claims.remove_dead_audio(settings.audio_dir)
    options = PipelineOptions.from_settings(settings)
    audio_dir = audio_dir_of(settings.audio_dir, claims.owner)
    options = replace(options, download=replace(options.download, audio_dir=audio_dir))
    pipeline = Pipeline(options, db=db, models=models, ledger=ledger, governor=session.governor)
    ledger.start_clock()
    session.shutdown.on_request(pipeline.stop_downloads)
    try:
        with display(ledger, pipeline) if display else nullcontext():
            async with asyncio.TaskGroup() as tg:
                renewal = tg.create_task(claims.renew_forever(ledger.in_flight))
                await session.shutdown.run(pipeline.run(_tracked(feed, ledger, session.governor)))
                renewal.cancel()
    finally:
        await claims.hand_back_all()
        shutil.rmtree(audio_dir, ignore_errors=True)
