"""What happened to each video of a run: in the database, in the run's counters, in the log."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import structlog

from db import leases, videos
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.metrics import Metrics, error_kind
from ingest.infrastructure.retry import Database
from ingest.sites.errors import caused_by, classify
from ingest.stages.messages import TranscribedVideo, VideoJob

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
    lost: int = 0  # results dropped because another replica had taken the video over

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


class Ledger:
    """Every outcome is written only while the job's claim still holds the video (its `lease`;
    None for jobs processed without claiming): a result for a video another replica has taken
    over, or that a newer claim of this process holds, is dropped, logged (`lease_lost`) and
    counted."""

    def __init__(
        self,
        db: Database,
        total: int,
        metrics: Metrics | None = None,
        keep_failures: int | None = None,
        schedule: videos.RetrySchedule | None = None,
        identity: str | None = None,
    ) -> None:
        self.db = db
        self.schedule = schedule or videos.RetrySchedule()
        self.identity = identity  # the cookies and proxy in use: recorded with set-aside videos
        # Claimed and not yet finished: the leases to renew. Jobs, not video ids: a stale claim
        # of a video ending must not end a newer claim of the same video.
        self.in_flight: set[VideoJob] = set()
        self.counters = RunCounters(total=total)
        self.metrics = metrics or Metrics()
        # The latest error of each video that failed and was not done since, oldest first: a
        # retry that heals a video takes it off. A daemon keeps the latest `keep_failures`
        # only: it runs for months, and the database has them all.
        self.failures: dict[str, str] = {}
        self._keep_failures = keep_failures
        self.returned: set[str] = set()  # videos handed back, not to be claimed again this run
        # Every video this run took; a daemon's ledger (`keep_failures` set: it runs for
        # months) keeps no such per-video memory.
        self.claimed: set[str] = set()
        self._remember_claims = keep_failures is None
        self.claims = 0  # how many times it took one (a video retried counts each time)
        self._came_back = 0  # videos handed back to be claimed again, since the last `settle`
        self._landed = asyncio.Event()  # a video left flight
        self._unwritten = 0  # ends of videos not yet written
        self.started = time.monotonic()
        # Something to claim may have appeared: a retry scheduled, a video come back to be claimed.
        self.wake = asyncio.Event()

    def start_clock(self) -> None:
        """Rates are measured from here: once the models are loaded, the work begins."""
        self.started = time.monotonic()

    def eta_s(self) -> float | None:
        return self.counters.eta_s(time.monotonic() - self.started)

    def lease_lost(self, video_id: str, outcome: str) -> None:
        log.warning("lease_lost", video_id=video_id, outcome=outcome)
        self.metrics.leases_lost.labels(outcome).inc()
        self.counters.lost += 1

    def lost(self, job: VideoJob, outcome: str) -> None:
        """The job's claim no longer holds its video: what it did is dropped."""
        self.ended(job)
        self.lease_lost(job.video_id, outcome)

    async def failed(self, job: VideoJob, stage: str, exc: BaseException) -> None:
        error = f"{stage}: {describe_error(exc)}"
        self.ended(job)
        record = videos.FailureRecord(error, failure_class(stage, exc, job), self.identity)
        schedule = self.schedule
        async with self._writing():
            if not await self.db.run(
                lambda c: videos.mark_failed(c, job.video_id, record, job.lease, schedule)
            ):
                self.lease_lost(job.video_id, "failed")
                return
        if record.failure_class in videos.HEALING:
            self.wake.set()
        log.error("video_failed", video_id=job.video_id, stage=stage, error=error,
                  failure_class=record.failure_class)  # fmt: skip
        self.metrics.items.labels(stage, "failed").inc()
        self.metrics.failures.labels(stage, error_kind(exc)).inc()
        self.counters.failed += 1
        self._remember_failure(job.video_id, error)
        self._log_progress()

    def _remember_failure(self, video_id: str, error: str) -> None:
        self.failures.pop(video_id, None)
        self.failures[video_id] = error
        if self._keep_failures is not None and len(self.failures) > self._keep_failures:
            del self.failures[next(iter(self.failures))]

    async def skipped(self, job: VideoJob, reason: str) -> None:
        self.ended(job)
        if not await self.db.run(lambda c: videos.mark_skipped(c, job.video_id, reason, job.lease)):
            self.lease_lost(job.video_id, "skipped")
            return
        log.info("video_skipped", video_id=job.video_id, reason=reason)
        self.counters.skipped += 1

    async def handed_back(self, job: VideoJob, again: bool = False) -> None:
        """The run is stopping before this video could be done, or its site waits for the
        user: someone else may take it. `again`: its site paused, and this run claims it again
        when the site reopens (or another replica does first)."""
        self.ended(job)
        if not again:
            self.returned.add(job.video_id)
        async with self._writing():
            if job.lease is not None and not await self._hand_back(job.lease):
                self.lease_lost(job.video_id, "handed_back")
                return
            log.info("video_handed_back", video_id=job.video_id, again=again)
            if again:
                self._came_back += 1
                self.wake.set()
            else:
                self.counters.handed_back += 1

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """Around the write of a video's end: until it is written (and counted), a walk that
        finds nothing to claim (the row is still ours) must not take the empty flight for the
        end of the run."""
        self._unwritten += 1
        try:
            yield
        finally:
            self._unwritten -= 1
            self._landed.set()

    async def _hand_back(self, lease: int) -> bool:
        return await self.db.run(lambda c: leases.hand_back(c, lease))

    def took(self, job: VideoJob) -> None:
        """`job` is claimed: in flight (its lease renewed) until it ends."""
        self.in_flight.add(job)
        self.claims += 1
        if self._remember_claims:
            self.claimed.add(job.video_id)

    def ended(self, job: VideoJob) -> None:
        """`job` is no longer in flight: done, failed, skipped, handed back or lost."""
        self.in_flight.discard(job)
        self._landed.set()

    async def settle(self, stop: asyncio.Event) -> int:
        """Waits until no video of this run is in flight, or one came back to be claimed
        again; returns how many came back since the last call."""
        while (self.in_flight or self._unwritten) and not self._came_back and not stop.is_set():
            self._landed.clear()
            waits = {asyncio.ensure_future(self._landed.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        came_back, self._came_back = self._came_back, 0
        return came_back

    def done(self, finished: Sequence[TranscribedVideo]) -> None:
        for video in finished:
            self.ended(video.job)
            self.failures.pop(video.job.video_id, None)
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
            self._log_progress()
            self.metrics.audio.inc(video.duration_s)
            self.metrics.speaker_paths.labels(video.speakers.path).inc()

    def _log_progress(self) -> None:
        """As each video ends, done or failed: the estimate, for a run without a terminal."""
        if (eta := self.eta_s()) is not None:
            log.info("progress", done=self.counters.done, failed=self.counters.failed,
                     total=self.counters.total, eta_s=round(eta))  # fmt: skip


def failure_class(stage: str, exc: BaseException, job: VideoJob) -> str:
    """What kind of failure a video's is, for the schedule of tries (db.videos.HEALING) and for
    `ingest status`. A download that was cut short (its audio ends before its header says), or
    that does not decode, may heal with a new download; a user's own file will not change by
    itself, and a file too long stays too long."""
    failure = classify(exc)
    cut = caused_by(exc, "TruncatedAudio")
    if job.local_path is None and (cut or (stage == "decode" and failure.reason != "too long")):
        return "decode"
    if failure.kind == "video_needs_user":
        return "needs_location" if failure.needs == "location" else "needs_cookies"
    if failure.kind in ("transient", "throttled"):
        return "transient"
    if failure.kind in ("needs_user", "extractor_broken"):
        return failure.kind
    return "permanent"
