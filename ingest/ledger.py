"""What happened to each video of a run: in the database, in the run's counters, in the log."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from db import leases, videos
from ingest.messages import TranscribedVideo, VideoJob
from ingest.metrics import Metrics, error_kind
from ingest.retry import Database

log = structlog.get_logger()


@dataclass
class RunCounters:
    total: int = 0
    done: int = 0
    failed: int = 0
    handed_back: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    chunks: int = 0
    planned_audio_s: float = 0.0  # the audio of the videos to do, as their listings state it

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def eta_s(self, elapsed_s: float) -> float | None:
        """Time left at the rate measured so far (audio seconds per second); None until a video
        with audio is done or when the listings stated no lengths."""
        if self.audio_seconds <= 0 or elapsed_s <= 0 or self.planned_audio_s <= 0:
            return None
        rate = self.audio_seconds / elapsed_s
        return max(0.0, self.planned_audio_s - self.audio_seconds) / rate


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_error(exc: BaseException) -> str:
    """One plain line: the exception's own message, its type when it has none."""
    message = " ".join(_ANSI.sub("", str(exc)).split()).removeprefix("ERROR: ")
    return message or type(exc).__name__


class Ledger:
    def __init__(
        self, db: Database, total: int, metrics: Metrics | None = None, owner: str = ""
    ) -> None:
        self.db = db
        self.owner = owner
        self.counters = RunCounters(total=total)
        self.metrics = metrics or Metrics()
        self.failures: list[tuple[str, str]] = []  # (video id, error), in order of failure
        self.returned: set[str] = set()  # videos handed back, not to be claimed again this run
        self.started = time.monotonic()

    def start_clock(self) -> None:
        """Rates are measured from here: once the models are loaded, the work begins."""
        self.started = time.monotonic()

    def eta_s(self) -> float | None:
        return self.counters.eta_s(time.monotonic() - self.started)

    async def failed(self, job: VideoJob, stage: str, exc: BaseException) -> None:
        error = f"{stage}: {describe_error(exc)}"
        log.error("video_failed", video_id=job.video_id, stage=stage, error=error)
        self.metrics.items.labels(stage, "failed").inc()
        self.metrics.failures.labels(stage, error_kind(exc)).inc()
        await self.db.run(lambda conn: videos.mark_failed(conn, job.video_id, error))
        self.counters.failed += 1
        self.failures.append((job.video_id, error))

    async def skipped(self, job: VideoJob, reason: str) -> None:
        log.info("video_skipped", video_id=job.video_id, reason=reason)
        await self.db.run(lambda conn: videos.mark_skipped(conn, job.video_id, reason))
        self.counters.skipped += 1

    async def handed_back(self, job: VideoJob) -> None:
        """The run is stopping before this video could be done: someone else may take it."""
        log.info("video_handed_back", video_id=job.video_id)
        await self.db.run(lambda conn: leases.hand_back(conn, self.owner, job.video_id))
        self.counters.handed_back += 1
        self.returned.add(job.video_id)

    def done(self, finished: Sequence[TranscribedVideo]) -> None:
        for video in finished:
            log.info(
                "video_done",
                video_id=video.job.video_id,
                chunks=len(video.chunks),
                audio_s=round(video.duration_s, 2),
                speaker_path=video.speakers.path,
                **{f"{stage}_s": round(seconds, 3) for stage, seconds in video.timings},
            )
            self.counters.done += 1
            self.counters.audio_seconds += video.duration_s
            self.counters.chunks += len(video.chunks)
            if (eta := self.eta_s()) is not None:
                log.info("progress", done=self.counters.done, total=self.counters.total,
                         eta_s=round(eta))  # fmt: skip
            self.metrics.audio.inc(video.duration_s)
            self.metrics.speaker_paths.labels(video.speakers.path).inc()
