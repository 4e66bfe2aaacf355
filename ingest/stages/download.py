"""Download stage: many concurrent yt-dlp downloads into 16 kHz mono WAV files."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from db.videos import DiscoveredVideo, update_metadata
from ingest.infrastructure.config import CaptionsMode
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import RetryPolicy, retry_transient
from ingest.sites.errors import attach_warnings, classify, is_transient, site_of
from ingest.sites.throttle import (
    Governor,
    SiteBlocked,
    SitePaused,
    ThrottleStopped,
    governed,
)
from ingest.sites.ytdlp_log import YtDlpLog
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, Captions, VideoJob
from ingest.stages.sources import describe
from workers.audio import too_long
from workers.captions import CaptionError, caption_file_for, parse_captions, read_caption_file

log = structlog.get_logger()


class PermanentDownloadError(Exception):
    """The video can never be ingested as it is (too long): no retry."""


class NotYetAvailable(Exception):
    """A live or upcoming stream: skipped for now, taken when a later listing shows it ended."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one download brought: the audio (unless captions made it unnecessary), the captions
    to use as the transcript, and the video's metadata as the extractor gave it."""

    path: Path | None
    captions: Captions | None
    metadata: DiscoveredVideo


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    audio_dir: Path
    workers: int = 24
    socket_timeout: float = 30.0
    retries: int = 3  # yt-dlp's own, within one attempt
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_duration_s: float | None = None
    ytdlp: Mapping[str, Any] = field(default_factory=dict)  # the user's (ytdlp_options)
    captions: CaptionsMode = "off"  # use the site's captions: creator's (manual), any (auto)
    captions_language: str | None = None  # None: the language spoken in the video
    audio_needed: bool = True  # False: speakers are off, so captions make the audio unnecessary


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

    def download(self, job: VideoJob) -> Fetched:
        """Downloads one video's captions when wanted and its audio as `<stem>.wav` when needed;
        removes partial files on failure. A failure carries what yt-dlp warned of on the way
        (`attach_warnings`): it often tells more than its final error, for `classify`."""
        stem = audio_stem(job.video_id)
        ydl = self._ydl()
        ytdlp_log = YtDlpLog.of(ydl)
        ytdlp_log.warnings.clear()
        ydl.params["outtmpl"] = {"default": str(self.options.audio_dir / f"{stem}.%(ext)s")}
        try:
            info = ydl.extract_info(job.url, download=False)
            self._check(info)
            captions = self._captions(ydl, info)
            if captions is not None and not self.options.audio_needed:
                return Fetched(None, captions, metadata(info, job))
            info = ydl.process_ie_result(info, download=True)
            path = Path(info["requested_downloads"][0]["filepath"])
            return Fetched(path, captions, metadata(info, job))
        except BaseException as exc:
            remove_partial_files(self.options.audio_dir, stem)
            attach_warnings(exc, ytdlp_log.warnings)
            raise

    def _captions(self, ydl: Any, info: Mapping[str, Any]) -> Captions | None:
        """The first usable track: the creator's, then (in auto mode) the site's automatic ones,
        in the configured language or else the one spoken (see `_track`). Fetched through
        yt-dlp, so cookies, proxies and throttling apply as to any request."""
        mode, wanted = self.options.captions, self.options.captions_language
        kinds = {"manual": ("subtitles",), "auto": ("subtitles", "automatic_captions")}
        spoken = spoken_language(info)
        for key in kinds.get(mode, ()):
            track = _track(info.get(key) or {}, wanted, spoken)
            if track is None:
                continue
            text = self._caption_text(ydl, track)
            if text is None:
                return None
            try:
                segments = parse_captions(text, "vtt")
            except CaptionError as exc:  # the audio is still there: speech recognition it is
                log.warning("captions_unreadable", error=str(exc))
                continue
            if segments:
                kind = "creator captions" if key == "subtitles" else "automatic captions"
                return Captions(tuple(segments), f"{kind} ({track.describe()})")
        return None

    def _caption_text(self, ydl: Any, track: CaptionTrack) -> str | None:
        """The track's text, or None (logged) when it cannot be had: the audio is still there,
        so a caption server's failure costs speech recognition, never the video."""
        if pause := ydl.params.get("sleep_interval_subtitles"):
            time.sleep(pause)
        self._check_cancelled({})
        try:
            return str(ydl.urlopen(track.url).read().decode("utf-8", "replace"))
        except Exception as exc:
            from yt_dlp.utils import DownloadCancelled

            if self.cancelled or isinstance(exc, DownloadCancelled):
                raise
            log.warning("captions_unavailable", language=track.language, error=describe_error(exc))
            return None

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

        from ingest.stages.extract_audio import FFmpegCompleteAudioPP

        # The user's options win over the defaults before them, not over what follows them,
        # which the downloader cannot work without (`ytdlp_params` refuses options fighting it).
        user = self.options.ytdlp
        ydl = yt_dlp.YoutubeDL(
            {
                "format": "bestaudio/best",
                "socket_timeout": self.options.socket_timeout,
                "retries": self.options.retries,
                "fragment_retries": self.options.retries,
                **user,
                "noplaylist": True,
                "quiet": True,
                "no_warnings": True,
                "noprogress": True,
                "logger": YtDlpLog(),
                "progress_hooks": [self._check_cancelled],
                "postprocessor_args": {
                    "completeaudio": ["-ar", "16000", "-ac", "1"],
                    **user.get("postprocessor_args", {}),
                },
            }
        )
        ydl.add_post_processor(FFmpegCompleteAudioPP(ydl, preferredcodec="wav"))
        return ydl

    def _check_cancelled(self, _status: dict[str, Any]) -> None:
        if self._cancelled.is_set():
            from yt_dlp.utils import DownloadCancelled

            raise DownloadCancelled("download cancelled")


async def _not_downloaded(
    job: VideoJob, exc: Exception, downloader: Downloader, ledger: Ledger
) -> None:
    if downloader.cancelled:
        await ledger.handed_back(job)
    elif (failure := classify(exc)).kind == "not_yet":  # ours, or yt-dlp's word for a premiere
        await ledger.skipped(job, failure.reason)
    else:
        await ledger.failed(job, "download", exc)


# yt-dlp lists YouTube's automatic track in the language spoken twice: as `de` and `de-orig`.
_ORIGINAL = "-orig"


@dataclass(frozen=True, slots=True)
class CaptionTrack:
    url: str  # of its WebVTT format
    language: str  # of its text, as the site tags it
    translated_from: str | None = None  # set for a machine translation (YouTube's `tlang`)

    def describe(self) -> str:
        if self.translated_from is None:
            return self.language
        return f"{self.language}, translated from {self.translated_from}"


def spoken_language(info: Mapping[str, Any]) -> str | None:
    """The language spoken in the video, when known: as the extractor says, else that of
    YouTube's original automatic captions (the YouTube extractor sets no `language`)."""
    if language := info.get("language"):
        return str(language)
    automatic = info.get("automatic_captions") or {}
    originals = sorted(name for name in automatic if name.endswith(_ORIGINAL))
    return originals[0].removesuffix(_ORIGINAL) if originals else None


def _track(
    by_language: Mapping[str, Any], wanted: str | None, spoken: str | None
) -> CaptionTrack | None:
    """The track to read, from a `subtitles` or `automatic_captions` listing.

    Without a wanted language: the untranslated track in the spoken language (or a regional
    variant of it); when the spoken language is unknown, the only untranslated track, and none
    when there are several, as any of them could be a translation. With one: its untranslated
    track (or a regional variant's), else a machine translation into it, as it was asked for.
    """
    originals = _originals(by_language)
    if wanted is None:
        return _spoken_track(originals, spoken)
    if names := _variants(originals, wanted):
        return originals[names[0]]
    return _translation(by_language, wanted)


def _originals(by_language: Mapping[str, Any]) -> dict[str, CaptionTrack]:
    """Each language's untranslated WebVTT track."""
    found: dict[str, CaptionTrack] = {}
    for name in sorted(by_language):
        url = _vtt_url(by_language[name])
        if url is not None and "tlang" not in _query(url):
            language = name.removesuffix(_ORIGINAL)
            found.setdefault(language, CaptionTrack(url, language))
    return found


def _spoken_track(originals: Mapping[str, CaptionTrack], spoken: str | None) -> CaptionTrack | None:
    if spoken is None:
        return next(iter(originals.values())) if len(originals) == 1 else None
    names = _variants(originals, spoken) or _variants(originals, spoken.split("-")[0])
    return originals[names[0]] if names else None


def _translation(by_language: Mapping[str, Any], wanted: str) -> CaptionTrack | None:
    for name in _variants(by_language, wanted):
        if (url := _vtt_url(by_language[name])) is not None:
            source = _query(url).get("lang", ["another language"])[0]
            return CaptionTrack(url, name, translated_from=source)
    return None


def _variants(names: Mapping[str, Any], language: str) -> list[str]:
    """`language` and its regional variants (`en-GB` for `en`) among `names`, in that order."""
    variants = sorted(name for name in names if name.startswith(f"{language}-"))
    return [language, *variants] if language in names else variants


def _vtt_url(formats: Any) -> str | None:
    return next(
        (str(f["url"]) for f in formats or [] if f.get("ext") == "vtt" and f.get("url")), None
    )


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def metadata(info: Mapping[str, Any], job: VideoJob) -> DiscoveredVideo:
    """What the full extraction knows of a video that a flat listing may not have had."""
    return describe(info, job.video_id, job.url, info.get("extractor_key"))


def remove_partial_files(directory: Path, stem: str) -> None:
    for leftover in directory.glob(f"{stem}.*"):
        leftover.unlink(missing_ok=True)


async def download_stage(
    inbox: MemoryObjectReceiveStream[VideoJob],
    outbox: MemoryObjectSendStream[AudioFile],
    *,
    downloader: Downloader,
    ledger: Ledger,
    governor: Governor,
) -> None:
    """Runs `downloader.options.workers` downloads at once; a failed video is recorded and skipped.

    Workers block on a full outbox, so disk use is bounded by the audio queue's size. Once the
    downloader is cancelled (a graceful stop), waiting and interrupted videos are handed back.
    """
    downloader.options.audio_dir.mkdir(parents=True, exist_ok=True)
    try:
        async with inbox, outbox, asyncio.TaskGroup() as tg:
            for _ in range(downloader.options.workers):
                tg.create_task(_worker(inbox.clone(), outbox.clone(), downloader, ledger, governor))
    finally:
        downloader.cancel()


async def _worker(
    inbox: MemoryObjectReceiveStream[VideoJob],
    outbox: MemoryObjectSendStream[AudioFile],
    downloader: Downloader,
    ledger: Ledger,
    governor: Governor,
) -> None:
    async with inbox, outbox:
        async for job in inbox:
            with (
                structlog.contextvars.bound_contextvars(video_id=job.video_id, stage="download"),
                ledger.metrics.in_flight.labels("download").track_inprogress(),
            ):
                audio = await _fetch(job, downloader, ledger, governor)
            if audio is not None:
                await outbox.send(audio)


async def _fetch(
    job: VideoJob, downloader: Downloader, ledger: Ledger, governor: Governor
) -> AudioFile | None:
    if downloader.cancelled:
        await ledger.handed_back(job)
        return None
    if job.local_path is not None:
        return _local(job, job.local_path, downloader.options)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()

    site = site_of(job.url)

    async def attempt() -> Fetched:
        try:
            return await loop.run_in_executor(downloader.executor, downloader.download, job)
        except Exception as exc:
            if classify(exc).kind == "transient" and not downloader.cancelled:
                governor.check_burst(site, exc)
            raise

    async def tries() -> Fetched:
        return await retry_transient(downloader.options.retry, "download", attempt, is_transient)

    try:
        await governor.pace(site)
        fetched = await governed(governor, site, tries, hand_back=True)
    except SitePaused:  # claimed again once the site reopens, its attempt not spent
        await ledger.handed_back(job, again=True)
        return None
    except (SiteBlocked, ThrottleStopped):  # the video stays to do, its attempt not spent
        await ledger.handed_back(job)
        return None
    except Exception as exc:  # one video's failure never stops the others
        await _not_downloaded(job, exc, downloader, ledger)
        return None
    elapsed = time.perf_counter() - started
    log.debug("downloaded", path=str(fetched.path), captions=fetched.captions is not None)
    ledger.metrics.latency.labels("download").observe(elapsed)
    ledger.metrics.items.labels("download", "ok").inc()
    if not await ledger.db.run(lambda conn: update_metadata(conn, fetched.metadata, job.lease)):
        # Another replica took the video over meanwhile: its work, not ours.
        ledger.lost(job, "metadata")
        if fetched.path is not None:
            fetched.path.unlink(missing_ok=True)
        return None
    return AudioFile(
        job, fetched.path, True, elapsed, fetched.captions, fetched.metadata.duration_s
    )


def _local(job: VideoJob, path: Path, options: DownloadOptions) -> AudioFile:
    """A user's own file, with the subtitle file beside it when there is one (and it reads)."""
    found = caption_file_for(path, options.captions_language) if options.captions != "off" else None
    if found is None:
        return AudioFile(job, path, owned=False, download_s=0.0)
    try:
        captions = Captions(tuple(read_caption_file(found)), f"subtitle file ({found.name})")
    except CaptionError as exc:  # the audio is still there: speech recognition it is
        log.warning("captions_unreadable", error=str(exc))
        return AudioFile(job, path, owned=False, download_s=0.0)
    return AudioFile(job, path, owned=False, download_s=0.0, captions=captions)
