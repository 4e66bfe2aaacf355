"""Download stage: many concurrent yt-dlp downloads into 16 kHz mono WAV files."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.ledger import Ledger
from ingest.messages import AudioFile, VideoJob
from ingest.retry import RetryPolicy, retry_transient
from workers.audio import too_long

log = structlog.get_logger()


class PermanentDownloadError(Exception):
    """The video can never be ingested as it is (too long): no retry."""


class NotYetAvailable(Exception):
    """A live or upcoming stream: skipped for now, taken when a later listing shows it ended."""


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    audio_dir: Path
    workers: int = 24
    socket_timeout: float = 30.0
    retries: int = 3  # yt-dlp's own, within one attempt
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_duration_s: float | None = None


def audio_stem(video_id: str) -> str:
    """A file name safe on any filesystem, unique per id, never derived from a title."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", video_id)[:48]
    return f"{readable}-{hashlib.sha256(video_id.encode()).hexdigest()[:12]}"


class Downloader:
    """Blocking downloads on a dedicated pool, one reused YoutubeDL per thread.

    Creating a YoutubeDL registers every extractor (~100 ms of CPU), so each thread keeps one.
    """

    def __init__(self, options: DownloadOptions) -> None:
        self.options = options
        self.executor = ThreadPoolExecutor(options.workers, thread_name_prefix="download")
        self._local = threading.local()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stops running downloads at their next progress report (yt-dlp checks its hooks)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        self.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def download(self, job: VideoJob) -> Path:
        """Downloads one video's audio as `<stem>.wav`; removes partial files on failure."""
        stem = audio_stem(job.video_id)
        ydl = self._ydl()
        ydl.params["outtmpl"] = {"default": str(self.options.audio_dir / f"{stem}.%(ext)s")}
        try:
            info = ydl.extract_info(job.url, download=False)
            self._check(info)
            info = ydl.process_ie_result(info, download=True)
            return Path(info["requested_downloads"][0]["filepath"])
        except BaseException:
            remove_partial_files(self.options.audio_dir, stem)
            raise

    def _check(self, info: dict[str, Any]) -> None:
        """Refuses, before downloading, what can never be ingested."""
        live = info.get("live_status")
        if live in ("is_live", "is_upcoming") or info.get("is_live"):
            raise NotYetAvailable(f"{'upcoming' if live == 'is_upcoming' else 'live'} stream")
        if reason := too_long(info.get("duration"), self.options.max_duration_s):
            raise PermanentDownloadError(reason)

    def _ydl(self) -> Any:
        ydl = getattr(self._local, "ydl", None)
        if ydl is None:
            ydl = self._local.ydl = self._new_ydl()
        return ydl

    def _new_ydl(self) -> Any:
        import yt_dlp

        from ingest.extract_audio import FFmpegCompleteAudioPP

        ydl = yt_dlp.YoutubeDL(
            {
                "format": "bestaudio/best",
                "noplaylist": True,
                "quiet": True,
                "no_warnings": True,
                "noprogress": True,
                "logger": _YtDlpLog(),
                "socket_timeout": self.options.socket_timeout,
                "retries": self.options.retries,
                "fragment_retries": self.options.retries,
                "progress_hooks": [self._check_cancelled],
                "postprocessor_args": {"completeaudio": ["-ar", "16000", "-ac", "1"]},
            }
        )
        ydl.add_post_processor(FFmpegCompleteAudioPP(ydl, preferredcodec="wav"))
        return ydl

    def _check_cancelled(self, _status: dict[str, Any]) -> None:
        if self._cancelled.is_set():
            from yt_dlp.utils import DownloadCancelled

            raise DownloadCancelled("download cancelled")


def remove_partial_files(directory: Path, stem: str) -> None:
    for leftover in directory.glob(f"{stem}.*"):
        leftover.unlink(missing_ok=True)


class _YtDlpLog:
    """Routes yt-dlp's own messages to our log; failures reach us as exceptions as well."""

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        log.debug("yt_dlp_warning", message=msg)

    def error(self, msg: str) -> None:
        log.debug("yt_dlp_error", message=msg)


async def download_stage(
    inbox: MemoryObjectReceiveStream[VideoJob],
    outbox: MemoryObjectSendStream[AudioFile],
    *,
    downloader: Downloader,
    ledger: Ledger,
) -> None:
    """Runs `downloader.options.workers` downloads at once; a failed video is recorded and skipped.

    Workers block on a full outbox, so disk use is bounded by the audio queue's size. Once the
    downloader is cancelled (a graceful stop), waiting and interrupted videos are handed back.
    """
    downloader.options.audio_dir.mkdir(parents=True, exist_ok=True)
    try:
        async with inbox, outbox, asyncio.TaskGroup() as tg:
            for _ in range(downloader.options.workers):
                tg.create_task(_worker(inbox.clone(), outbox.clone(), downloader, ledger))
    finally:
        downloader.cancel()


async def _worker(
    inbox: MemoryObjectReceiveStream[VideoJob],
    outbox: MemoryObjectSendStream[AudioFile],
    downloader: Downloader,
    ledger: Ledger,
) -> None:
    async with inbox, outbox:
        async for job in inbox:
            with (
                structlog.contextvars.bound_contextvars(video_id=job.video_id, stage="download"),
                ledger.metrics.in_flight.labels("download").track_inprogress(),
            ):
                audio = await _fetch(job, downloader, ledger)
            if audio is not None:
                await outbox.send(audio)


async def _fetch(job: VideoJob, downloader: Downloader, ledger: Ledger) -> AudioFile | None:
    if downloader.cancelled:
        await ledger.handed_back(job)
        return None
    if job.local_path is not None:
        return AudioFile(job, job.local_path, owned=False, download_s=0.0)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()

    def attempt() -> asyncio.Future[Path]:
        return loop.run_in_executor(downloader.executor, downloader.download, job)

    try:
        path = await retry_transient(downloader.options.retry, "download", attempt)
    except NotYetAvailable as exc:
        await ledger.skipped(job, str(exc))
        return None
    except Exception as exc:  # one video's failure never stops the others
        if downloader.cancelled:
            await ledger.handed_back(job)
        else:
            await ledger.failed(job, "download", exc)
        return None
    elapsed = time.perf_counter() - started
    log.debug("downloaded", path=str(path))
    ledger.metrics.latency.labels("download").observe(elapsed)
    ledger.metrics.items.labels("download", "ok").inc()
    return AudioFile(job, path, owned=True, download_s=elapsed)
