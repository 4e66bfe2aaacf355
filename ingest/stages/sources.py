"""Listing sources into videos: anything yt-dlp can list flat, plus local files and folders."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db.videos import DiscoveredVideo
from ingest.sites.errors import attach_warnings
from ingest.sites.ytdlp_log import YtDlpLog
from ingest.stages.messages import VideoJob
from workers.audio import stated_duration

AUDIO_SUFFIXES = frozenset(
    [
        ".wav",
        ".mp3",
        ".m4a",
        ".aac",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".wma",
        ".webm",
        ".mp4",
        ".mkv",
        ".mov",
        ".avi",
        ".m4v",
    ]
)
# A bare channel URL lists its tabs (Videos, Shorts, Live) as nested playlists.
_MAX_NESTING = 3


class SourceError(Exception):
    """A source that cannot be listed; the other sources go on."""


@dataclass(frozen=True, slots=True)
class ListedVideo:
    record: DiscoveredVideo
    job: VideoJob


def source_key(source: str) -> str:
    """How a source's listing is stored: a local path made absolute (the same folder named
    from elsewhere is the same source), anything else as given."""
    path = local_path(source)
    return str(path.resolve()) if path is not None else source


def local_path(source: str) -> Path | None:
    """The existing file or folder a source names, or None: a `~user` that does not exist or a
    name too long for the file system names no file either."""
    try:
        path = Path(source).expanduser()
        return path if path.exists() else None
    except (RuntimeError, OSError, ValueError):
        return None


def list_source(
    source: str,
    *,
    socket_timeout: float = 30.0,
    ytdlp: Mapping[str, Any] | None = None,
    first: int | None = None,
) -> list[ListedVideo]:
    """Blocking: every video of one source (or of a URL's, only the `first` few: yt-dlp then
    fetches only the pages it needs), without duplicates, in the source's order. `ytdlp`: yt-dlp
    options of the user's (cookies, pacing, extractor arguments)."""
    path = local_path(source)
    if path is not None:
        videos = list(_list_local(path))
    elif "://" in source:
        options = {**(ytdlp or {}), **({"playlist_items": f"1:{first}"} if first else {})}
        videos = list(_list_url(source, socket_timeout, options))
    else:
        raise SourceError(f"{source}: neither an existing file or folder nor a URL")
    return _unique(videos)


def _unique(videos: Sequence[ListedVideo]) -> list[ListedVideo]:
    seen: dict[str, ListedVideo] = {}
    for video in videos:
        seen.setdefault(video.record.id, video)
    return list(seen.values())


def _list_local(path: Path) -> Iterator[ListedVideo]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file.suffix.lower() in AUDIO_SUFFIXES or file == path:
            yield _local_video(file.resolve())


def _local_video(file: Path) -> ListedVideo:
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:16]
    record = DiscoveredVideo(
        id=f"file:{digest}",
        url=file.as_uri(),
        title=file.stem,
        extractor="file",
        duration_s=_header_duration(file),
    )
    return ListedVideo(record, VideoJob(record.id, record.url, record.title, local_path=file))


def _header_duration(file: Path) -> float | None:
    """For the run's estimate only: a file that cannot be read fails later, at decode."""
    try:
        return stated_duration(file)
    except Exception:
        return None


def _list_url(url: str, socket_timeout: float, ytdlp: Mapping[str, Any]) -> Iterator[ListedVideo]:
    import yt_dlp

    logger = YtDlpLog()
    options = {
        "socket_timeout": socket_timeout,  # the user's --socket-timeout wins
        **ytdlp,
        "extract_flat": "in_playlist",
        "quiet": True,
        "no_warnings": True,
        "logger": logger,
    }
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=False)
            yield from _entries(ydl, info, url, depth=0)
    except yt_dlp.utils.DownloadError as exc:
        attach_warnings(exc, logger.warnings)  # a 429 may be only in them (ingest.sites.errors)
        raise SourceError(f"{url}: {_clean_message(exc)}") from exc


def _entries(ydl: Any, info: Mapping[str, Any], url: str, depth: int) -> Iterator[ListedVideo]:
    kind = info.get("_type", "video")
    if kind != "playlist":
        if kind in ("url", "url_transparent") and _is_playlist_url(info) and depth < _MAX_NESTING:
            nested = ydl.extract_info(info["url"], download=False)
            yield from _entries(ydl, nested, info["url"], depth + 1)
        else:
            yield _remote_video(info, url)
        return
    for entry in info.get("entries") or []:
        if entry:
            yield from _entries(ydl, entry, entry.get("url") or url, depth)


def _is_playlist_url(entry: Mapping[str, Any]) -> bool:
    return entry.get("ie_key") == "YoutubeTab" or "list=" in str(entry.get("url", ""))


def _remote_video(info: Mapping[str, Any], fallback_url: str) -> ListedVideo:
    from yt_dlp.utils import unsmuggle_url

    # The generic extractor passes an RSS item's guid along inside the URL.
    url, smuggled = unsmuggle_url(
        str(info.get("webpage_url") or info.get("url") or fallback_url), {}
    )
    extractor = str(info.get("ie_key") or info.get("extractor_key") or "generic")
    raw_id = str(info.get("id") or smuggled.get("force_videoid") or "")
    if extractor == "Youtube" and raw_id:
        video_id, url = raw_id, f"https://www.youtube.com/watch?v={raw_id}"
    else:
        video_id = f"{extractor.lower()}:{raw_id or hashlib.sha256(url.encode()).hexdigest()[:16]}"
    record = describe(info, video_id, url, extractor)
    return ListedVideo(record, VideoJob(record.id, url, record.title))


def describe(
    info: Mapping[str, Any], video_id: str, url: str, extractor: str | None
) -> DiscoveredVideo:
    """A video's record from what yt-dlp says of it, in a listing or a full extraction."""
    return DiscoveredVideo(
        id=video_id,
        url=url,
        title=info.get("title"),
        channel=info.get("channel") or info.get("uploader"),
        extractor=extractor,
        published_at=published_at(info),
        duration_s=info.get("duration"),
        live_status=info.get("live_status"),
    )


def published_at(info: Mapping[str, Any]) -> datetime | None:
    """When yt-dlp says the video was published: its timestamp, else its upload date."""
    timestamp = info.get("timestamp") or info.get("release_timestamp")
    if timestamp:
        return datetime.fromtimestamp(timestamp, UTC)
    day = str(info.get("upload_date") or "")
    return datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) if len(day) == 8 else None


def _clean_message(exc: Exception) -> str:
    return str(exc).removeprefix("ERROR: ").strip()
