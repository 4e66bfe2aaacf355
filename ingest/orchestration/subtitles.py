"""A transcript as SubRip (.srt), WebVTT (.vtt), plain text and JSON, each chunk with its
speaker and times.

A chunk is one cue. Its text is put on one line (a blank line would end the cue early) and an
arrow `-->` in it is shortened to `->` (a player would read it as a cue's timing line). WebVTT
escapes `&`, `<` and `>`, and names the speaker in a voice tag; SubRip has no escapes, so its
text is as spoken, with the speaker before it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any, Literal

from ingest.orchestration.transcripts import Transcript, TranscriptChunk, VideoInfo

Format = Literal["srt", "vtt", "txt", "json"]
FORMATS: tuple[Format, ...] = ("srt", "vtt", "txt", "json")
MEDIA_TYPES: dict[Format, str] = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
}
_ARROW = re.compile(r"--+>")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Well under every file system's limit on a name, with room for the hash and the suffix.
_MAX_NAME = 120


def render(transcript: Transcript, fmt: Format, public: bool = False) -> str:
    """The transcript as `fmt`. `public`: for readers on other machines, who are not shown where
    a local file lies on this one (no URL, link or path in the text and JSON)."""
    hidden = public and is_local(transcript.video.url)
    if fmt == "txt":
        return text(transcript, hidden)
    if fmt == "json":
        return as_json(transcript, hidden)
    return srt(transcript) if fmt == "srt" else vtt(transcript)


def is_local(url: str) -> bool:
    return url.startswith("file:")


def srt(transcript: Transcript) -> str:
    cues = [
        f"{n}\n{_timing(c, ',')}\n{_said(c, one_line(c.text))}\n"
        for n, c in enumerate(transcript.chunks, start=1)
    ]
    return "\n".join(cues)


def vtt(transcript: Transcript) -> str:
    cues = [f"{_timing(c, '.')}\n{_voiced(c)}\n" for c in transcript.chunks]
    return "\n".join(["WEBVTT\n", *cues])


def text(transcript: Transcript, hidden: bool = False) -> str:
    """A header naming the video (and its URL unless `hidden`), then a line per chunk: its
    start, speaker and words."""
    video = transcript.video
    lines = [video.title or video.id, *([] if hidden else [video.url]), ""]
    lines += [
        f"[{timestamp(c.start_s, '.')[:8]}] {_said(c, one_line(c.text))}" for c in transcript.chunks
    ]
    return "\n".join(lines) + "\n"


def as_json(transcript: Transcript, hidden: bool = False) -> str:
    """`hidden`: without the video's URL, path and links."""
    document = {
        "video": video_json(transcript.video, hidden),
        "chunks": [chunk_json(c, hidden) for c in transcript.chunks],
    }
    return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def video_json(video: VideoInfo, hidden: bool = False) -> dict[str, Any]:
    shown = not hidden
    return {
        "id": video.id, "url": video.url if shown else None, "title": video.title,
        "channel": video.channel, "extractor": video.extractor,
        "published_at": _iso(video.published_at), "duration_s": video.duration_s,
        "status": video.status,
        "transcript_source": video.transcript_source, "asr_model": video.asr_model,
        "embedding_model": video.embedding_model, "chunk_count": video.chunk_count,
        "done_at": _iso(video.done_at), "link": video.link if shown else None,
        "path": video.path if shown else None,
    }  # fmt: skip


def chunk_json(chunk: TranscriptChunk, hidden: bool = False) -> dict[str, Any]:
    return {
        "seg_index": chunk.seg_index, "start_s": chunk.start_s, "end_s": chunk.end_s,
        "speaker": chunk.speaker, "speakers": list(chunk.speakers), "text": chunk.text,
        "link": None if hidden else chunk.link,
    }  # fmt: skip


def timestamp(seconds: float, separator: str) -> str:
    """00:01:02,345 (SubRip) or 00:01:02.345 (WebVTT); hours go past 99 if they must."""
    millis = max(round(seconds * 1000), 0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def one_line(words: str) -> str:
    """Words as one line of a cue: no line breaks, no arrow a parser would take for a timing."""
    return _ARROW.sub("->", " ".join(words.split()))


def safe_filename(video_id: str) -> str:
    """A file name stem for any video id: ids that are not plain letters, digits, `-` and `_`
    (URLs, paths) are made so and take a hash of the id, so that two never share a name."""
    if not _UNSAFE.search(video_id) and 0 < len(video_id) <= _MAX_NAME:
        return video_id
    digest = hashlib.sha256(video_id.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', video_id)[:_MAX_NAME]}-{digest}"


def _timing(chunk: TranscriptChunk, separator: str) -> str:
    # A cue must not end before it starts; a chunk's times come from word timings, so this
    # guards only against rounding.
    end = max(chunk.end_s, chunk.start_s)
    return f"{timestamp(chunk.start_s, separator)} --> {timestamp(end, separator)}"


def _said(chunk: TranscriptChunk, words: str) -> str:
    return f"{one_line(chunk.speaker)}: {words}" if chunk.speaker else words


def _voiced(chunk: TranscriptChunk) -> str:
    words = _escape(one_line(chunk.text))
    if not chunk.speaker:
        return words
    return f"<v {_escape(one_line(chunk.speaker))}>{words}</v>"


def _escape(words: str) -> str:
    # Escaping `>` also takes every `-->` out of the text.
    return words.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
