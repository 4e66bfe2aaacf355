"""Pipeline efficiency (throughput ÷ bottleneck capacity) and memory against channel size."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from bench.database import fresh_database
from bench.results import Figure
from bench.synthetic import Costs, SleepingAsr, SleepingDownloader, SleepingEmbedder, all_speech
from db.corpus import ensure_embedding_model
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.infrastructure.config import Settings, load_settings
from ingest.infrastructure.event_loop import loop_factory, resolve
from ingest.infrastructure.models import GpuWorker, Models
from ingest.infrastructure.retry import Database
from ingest.orchestration.pipeline import Pipeline, PipelineOptions
from ingest.stages.download import DownloadOptions
from ingest.stages.embed import BatchRules
from ingest.stages.ledger import Ledger
from ingest.stages.messages import VideoJob
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
T = TypeVar("T")


class MeteredEmbedder(SleepingEmbedder):
    """Keeps the chunks of every encode call and the time spent encoding."""

    def __init__(self, costs: Costs) -> None:
        super().__init__(costs)
        self.batches: list[int] = []
        self.busy_s = 0.0

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        started = time.perf_counter()
        try:
            return super().encode(texts)
        finally:
            self.batches.append(len(texts))
            self.busy_s += time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class SyntheticRun:
    elapsed_s: float
    batch_chunks: tuple[int, ...]  # chunks per encode call, in order
    encode_s: float  # time the embedder spent encoding
    loop_cpu_s: float  # CPU time of the event loop's thread: what the loop itself costs
    videos: int

    def detail(self) -> dict[str, float | str]:
        """Batch sizes (chunks per encode call), how busy the encoder was over the run, and the
        event loop's own CPU time per video."""
        p10, p50, p90 = np.percentile(self.batch_chunks or (0,), [10, 50, 90])
        return {
            "embed_batch_p10": round(float(p10), 1),
            "embed_batch_p50": round(float(p50), 1),
            "embed_batch_p90": round(float(p90), 1),
            "embed_calls": len(self.batch_chunks),
            "embed_busy": round(self.encode_s / self.elapsed_s, 3),
            "loop_cpu_ms_per_video": round(1000 * self.loop_cpu_s / self.videos, 2),
        }


def run_on_configured_loop(coro: Coroutine[Any, Any, T]) -> T:
    """On the loop INGEST_EVENT_LOOP picks, as the service runs."""
    with asyncio.Runner(loop_factory=loop_factory(load_settings().event_loop)) as runner:
        return runner.run(coro)


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


async def run_synthetic(server_uri: str, costs: Costs, videos: int) -> SyntheticRun:
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
                GpuWorker(SleepingAsr(costs), speakers, vad=all_speech)
                for _ in range(costs.asr_workers)
            )
            embedder = MeteredEmbedder(costs)
            models = Models(workers=workers, embedder=embedder)
            ledger = Ledger(Database(pool), total=videos)
            downloader = SleepingDownloader(download, costs.download_s, template)
            pipeline = Pipeline(
                options, db=Database(pool), models=models, ledger=ledger, downloader=downloader
            )
            started, loop_cpu = time.perf_counter(), time.thread_time()
            await pipeline.run(_jobs(videos))
            elapsed, loop_cpu = time.perf_counter() - started, time.thread_time() - loop_cpu
        if ledger.counters.done != videos:
            raise RuntimeError(f"{ledger.counters.done} of {videos} videos done: {ledger.failures}")
        return SyntheticRun(elapsed, tuple(embedder.batches), embedder.busy_s, loop_cpu, videos)
    finally:
        await pool.close()


def efficiency(server_uri: str, videos: int) -> list[Figure]:
    figures = []
    loop = resolve(load_settings().event_loop)
    for name, costs in CONFIGS.items():
        run = run_on_configured_loop(run_synthetic(server_uri, costs, videos))
        capacities = costs.capacities()
        bottleneck = min(capacities, key=lambda stage: capacities[stage])
        throughput = videos / run.elapsed_s
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
                    **run.detail(),
                    "event_loop": loop,
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
