"""Pipeline efficiency (throughput ÷ bottleneck capacity) and memory against channel size."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from bench.database import fresh_database
from bench.results import Figure
from bench.synthetic import Costs, SleepingAsr, SleepingDownloader, SleepingEmbedder
from db.corpus import ensure_embedding_model
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.config import Settings
from ingest.download import DownloadOptions
from ingest.embed import BatchRules
from ingest.ledger import Ledger
from ingest.messages import VideoJob
from ingest.models import GpuWorker, Models
from ingest.pipeline import Pipeline, PipelineOptions
from ingest.retry import Database
from workers.chunking import ChunkingOptions
from workers.speakers import SpeakerAttributor, SpeakerOptions

CONFIGS = {
    # 20 workers: 200 videos are 10 full waves, so the stage's rate is its capacity; 2 GPU
    # workers (two decoders) drain the last wave twice as fast.
    "download-bound": Costs(
        download_s=2.0,
        asr_s_per_audio_s=0.004,
        embed_s_per_chunk=0.002,
        download_workers=20,
        asr_workers=2,
    ),
    "gpu-bound": Costs(download_s=0.5, asr_s_per_audio_s=0.01, embed_s_per_chunk=0.002),
    "embed-bound": Costs(download_s=0.5, asr_s_per_audio_s=0.002, embed_s_per_chunk=0.01),
}
FAST = Costs(download_s=0.005, asr_s_per_audio_s=0.0002, embed_s_per_chunk=0.00005)


def write_template(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(int(16000 * seconds)) * 300).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path


async def _jobs(count: int) -> AsyncIterator[VideoJob]:
    for i in range(count):
        yield VideoJob(f"synth-{i}", f"synthetic://{i}")


async def run_synthetic(server_uri: str, costs: Costs, videos: int) -> float:
    """Seconds the real pipeline takes for `videos` synthetic videos into a fresh database."""
    dsn = await fresh_database(server_uri)
    pool = await create_pool(dsn, max_size=8)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await ensure_embedding_model(conn, "synthetic", 384)
            await conn.executemany(
                "INSERT INTO videos (id, url, status) VALUES ($1, $2, 'processing')",
                [(f"synth-{i}", f"synthetic://{i}") for i in range(videos)],
            )
        with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
            work = Path(tmp)
            template = write_template(work / "template.wav", costs.audio_s)
            download = DownloadOptions(work / "audio", workers=costs.download_workers)
            batching = BatchRules(1000, Settings.model_fields["embed_flush_seconds"].default)
            options = PipelineOptions(download, ChunkingOptions(10, 1000), batching)
            speakers = SpeakerAttributor(SpeakerOptions(mode="off"), None, None, [])
            workers = tuple(
                GpuWorker(SleepingAsr(costs), speakers) for _ in range(costs.asr_workers)
            )
            models = Models(workers=workers, embedder=SleepingEmbedder(costs))
            ledger = Ledger(Database(pool), total=videos)
            downloader = SleepingDownloader(download, costs.download_s, template)
            pipeline = Pipeline(
                options, db=Database(pool), models=models, ledger=ledger, downloader=downloader
            )
            started = time.perf_counter()
            await pipeline.run(_jobs(videos))
            elapsed = time.perf_counter() - started
        if ledger.counters.done != videos:
            raise RuntimeError(f"{ledger.counters.done} of {videos} videos done: {ledger.failures}")
        return elapsed
    finally:
        await pool.close()


def efficiency(server_uri: str, videos: int) -> list[Figure]:
    figures = []
    for name, costs in CONFIGS.items():
        elapsed = asyncio.run(run_synthetic(server_uri, costs, videos))
        capacities = costs.capacities()
        bottleneck = min(capacities, key=lambda stage: capacities[stage])
        throughput = videos / elapsed
        figures.append(
            Figure(
                bench="pipeline",
                name=f"efficiency, {name} ({videos} videos)",
                value=throughput / capacities[bottleneck],
                target=0.95,
                detail={
                    "videos_per_s": round(throughput, 3),
                    "bottleneck": bottleneck,
                    **{f"{k}_capacity": round(v, 3) for k, v in capacities.items()},
                },
            )
        )
    return figures


def peak_rss_mb(server_uri: str, videos: int) -> float:
    """Peak resident memory of a fresh process running `videos` fast synthetic videos."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory_probe", server_uri, str(videos)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def memory(server_uri: str, small: int, large: int) -> list[Figure]:
    low, high = peak_rss_mb(server_uri, small), peak_rss_mb(server_uri, large)
    return [
        Figure(
            bench="memory",
            name=f"peak RSS, {large} ÷ {small} videos",
            value=high / low,
            target=1.1,
            compare="<=",
            detail={f"peak_rss_mb_{small}": round(low, 1), f"peak_rss_mb_{large}": round(high, 1)},
        )
    ]
