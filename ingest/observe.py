"""What a run exposes while it goes on: metrics, the health check, background samplers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import structlog

from db.videos import count_by_status
from ingest.config import ConfigError, Settings
from ingest.endpoints import Endpoints, health_check
from ingest.gpu import GpuSampler
from ingest.metrics import Metrics

log = structlog.get_logger()


async def sample_videos(pool: asyncpg.Pool, metrics: Metrics, interval_s: float) -> None:
    """Videos by status, from the database (other replicas' work included), until cancelled.
    Only the per-status counts: counting every chunk each few seconds would scan `segments`."""
    while True:
        try:
            async with pool.acquire() as conn:
                counts = await count_by_status(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("status_sample_failed", error=str(exc))
        else:
            for status, count in counts.items():
                metrics.videos.labels(status).set(count)
        await asyncio.sleep(interval_s)


@asynccontextmanager
async def observed(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Metrics]:
    """Serves /metrics and /healthz at INGEST_METRICS_ADDR (unless empty) and samples the GPUs
    and the videos table in the background while the body runs."""
    metrics = Metrics()
    endpoints = None
    if settings.metrics_addr:
        health = health_check(pool, asyncio.get_running_loop())
        try:
            endpoints = Endpoints(settings.metrics_addr, metrics, health)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot serve metrics at {settings.metrics_addr!r} ({exc}); "
                "set INGEST_METRICS_ADDR to a free address, or empty to disable"
            ) from exc
        log.info("metrics_serving", addr=settings.metrics_addr, port=endpoints.port)
    gpus = GpuSampler(metrics)
    try:
        async with asyncio.TaskGroup() as tg:
            samplers = [
                tg.create_task(gpus.run(settings.metrics_sample_seconds)),
                tg.create_task(sample_videos(pool, metrics, settings.metrics_sample_seconds)),
            ]
            try:
                yield metrics
            finally:
                for sampler in samplers:
                    sampler.cancel()
    finally:
        if endpoints is not None:
            endpoints.close()
