"""What happened to each video of a run: in the database, in the run's counters, in the log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from db import videos
from ingest.messages import TranscribedVideo, VideoJob
from ingest.metrics import Metrics, error_kind

log = structlog.get_logger()


@dataclass
class RunCounters:
    total: int = 0
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    chunks: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_error(exc: BaseException) -> str:
    """One plain line: the exception's own message, its type when it has none."""
    message = " ".join(_ANSI.sub("", str(exc)).split()).removeprefix("ERROR: ")
    return message or type(exc).__name__


class Ledger:
    def __init__(self, pool: asyncpg.Pool, total: int, metrics: Metrics | None = None) -> None:
        self._pool = pool
        self.counters = RunCounters(total=total)
        self.metrics = metrics or Metrics()
        self.failures: list[tuple[str, str]] = []  # (video id, error), in order of failure

    async def started(self, job: VideoJob) -> None:
        async with self._pool.acquire() as conn:
            await videos.mark_processing(conn, job.video_id)

    async def failed(self, job: VideoJob, stage: str, exc: BaseException) -> None:
        error = f"{stage}: {describe_error(exc)}"
        log.error("video_failed", video_id=job.video_id, stage=stage, error=error)
        self.metrics.items.labels(stage, "failed").inc()
        self.metrics.failures.labels(stage, error_kind(exc)).inc()
        async with self._pool.acquire() as conn:
            await videos.mark_failed(conn, job.video_id, error)
        self.counters.failed += 1
        self.failures.append((job.video_id, error))

    def done(self, finished: Sequence[TranscribedVideo]) -> None:
        for video in finished:
            log.info(
                "video_done",
                video_id=video.job.video_id,
                chunks=len(video.chunks),
                audio_s=round(video.duration_s, 2),
                **{f"{stage}_s": round(seconds, 3) for stage, seconds in video.timings},
            )
            self.counters.done += 1
            self.counters.audio_seconds += video.duration_s
            self.metrics.audio.inc(video.duration_s)
            self.metrics.speaker_paths.labels(video.speakers.path).inc()
            self.counters.chunks += len(video.chunks)
