"""What a run exposes while it goes on: metrics, the health check, background samplers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import structlog

from db.videos import count_by_status
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.endpoints import Endpoints, HealthCheck, health_check, parse_addr
from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.retry import DATABASE_ERRORS

log = structlog.get_logger()
FALLBACK_PORTS = 16  # after a busy default port: room for a replica per GPU of a large host


async def sample_videos(pool: asyncpg.Pool, metrics: Metrics, interval_s: float) -> None:
    """Videos by status, from the database (other replicas' work included), until cancelled.
    Only the per-status counts: counting every chunk each few seconds would scan `segments`."""
    while True:
        try:
            async with pool.acquire() as conn:
                counts = await count_by_status(conn)
        except DATABASE_ERRORS as exc:
            log.warning("status_sample_failed", error=str(exc))
        else:
            for status, count in counts.items():
                metrics.videos.labels(status).set(count)
        await asyncio.sleep(interval_s)


def serve_endpoints(settings: Settings, metrics: Metrics, health: HealthCheck) -> Endpoints:
    """At INGEST_METRICS_ADDR. Several runs on one machine all start with the default address:
    when it is taken, the next free port after it is used (the warning says which); an address
    the user chose is theirs, and its being taken is a set-up error."""
    addr = settings.metrics_addr
    try:
        return Endpoints(addr, metrics, health)
    except (OSError, ValueError) as exc:
        if not (settings.is_default("metrics_addr") and isinstance(exc, OSError)):
            raise ConfigError(
                f"cannot serve metrics at {addr!r} ({exc}); "
                "set INGEST_METRICS_ADDR to a free address, or empty to disable"
            ) from exc
        busy = exc
    endpoints = _next_free(addr, metrics, health)
    log.warning("metrics_port_busy", wanted=addr, serving=endpoints.addr, error=str(busy))
    return endpoints


def _next_free(addr: str, metrics: Metrics, health: HealthCheck) -> Endpoints:
    host, port = parse_addr(addr)
    for candidate in range(port + 1, port + 1 + FALLBACK_PORTS):
        with contextlib.suppress(OSError):
            return Endpoints(f"{host}:{candidate}", metrics, health)
    return Endpoints(f"{host}:0", metrics, health)  # any free port the system gives


@asynccontextmanager
async def observed(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Metrics]:
    """Serves /metrics and /healthz at INGEST_METRICS_ADDR (unless empty) and samples the GPUs
    and the videos table in the background while the body runs."""
    metrics = Metrics()
    endpoints = None
    if settings.metrics_addr:
        health = health_check(pool, asyncio.get_running_loop())
        endpoints = serve_endpoints(settings, metrics, health)
        log.info("metrics_serving", addr=endpoints.addr, port=endpoints.port)
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
