"""Stored transcripts as the faces show them: a video's chunks in order with a link to the
second each starts, the videos by filters, and the corpus's size. The command line, the HTTP
service, its pages and the MCP server all read transcripts through here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urlparse

import asyncpg

from db.transcripts import (
    VideoFilters,
    fetch_chunks,
    fetch_corpus_facts,
    fetch_video,
    fetch_videos,
)

__all__ = [
    "CorpusFacts",
    "Transcript",
    "TranscriptChunk",
    "VideoFilters",
    "VideoInfo",
    "corpus_facts",
    "get_transcript",
    "link_at",
    "list_videos",
]


@dataclass(frozen=True, slots=True)
class VideoInfo:
    id: str
    url: str
    title: str | None
    channel: str | None
    extractor: str | None
    published_at: datetime | None
    duration_s: float | None
    status: str
    transcript_source: str | None
    asr_model: str | None
    embedding_model: str | None
    chunk_count: int | None
    done_at: datetime | None
    link: str  # opens the media at 0 s
    path: str | None  # the local file, for files


@dataclass(frozen=True, slots=True)
class TranscriptChunk:
    seg_index: int
    start_s: float
    end_s: float
    speaker: str | None  # the one heard most
    speakers: tuple[str, ...]  # everyone heard in the chunk, `speaker` first
    text: str
    link: str  # opens the media at the chunk's start


@dataclass(frozen=True, slots=True)
class Transcript:
    video: VideoInfo
    chunks: tuple[TranscriptChunk, ...]


@dataclass(frozen=True, slots=True)
class CorpusFacts:
    videos: int  # done
    chunks: int
    audio_seconds: float  # of the done videos
    last_update: datetime | None  # when the last video was done


def link_at(
    extractor: str | None, video_id: str, url: str, second: float
) -> tuple[str, str | None]:
    """A link that opens the media at `second`, and the local file's path for a file."""
    at = int(second)
    if extractor == "Youtube":
        return f"https://youtu.be/{video_id}?t={at}", None
    # A media fragment: browsers start HTTP audio, and a local file, at that second; for a
    # local file the plain path is given too, for players that take no URL.
    path = unquote(urlparse(url).path) if url.startswith("file:") else None
    return f"{url}#t={at}", path


async def get_transcript(
    conn: asyncpg.Connection,
    video_id: str,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Transcript | None:
    """The video's chunks in order (with a range, those overlapping [start_s, end_s]); None for
    a video the database does not know. A video not done yet has no chunks."""
    row = await fetch_video(conn, video_id)
    if row is None:
        return None
    video = video_info(row)
    chunks = await fetch_chunks(conn, video_id, start_s, end_s)
    return Transcript(video, tuple(_chunk(video, c) for c in chunks))


async def list_videos(
    conn: asyncpg.Connection, filters: VideoFilters, limit: int, offset: int
) -> list[VideoInfo]:
    """Newest first (undated last), then by id: stable pages of `limit` from `offset`. A source
    is matched as stored (`source_key`): a server never looks up a client's path."""
    return [video_info(r) for r in await fetch_videos(conn, filters, limit, offset)]


async def corpus_facts(conn: asyncpg.Connection) -> CorpusFacts:
    row = await fetch_corpus_facts(conn)
    return CorpusFacts(
        row["videos"], row["chunks"], float(row["audio_seconds"]), row["last_update"]
    )


def video_info(row: asyncpg.Record) -> VideoInfo:
    """A row of `db.transcripts`' video columns, with its link."""
    link, path = link_at(row["extractor"], row["id"], row["url"], 0)
    return VideoInfo(**dict(row), link=link, path=path)


def _chunk(video: VideoInfo, row: asyncpg.Record) -> TranscriptChunk:
    link, _ = link_at(video.extractor, video.id, video.url, row["start_s"])
    return TranscriptChunk(
        row["seg_index"], row["start_s"], row["end_s"], row["speaker"], tuple(row["speakers"]),
        row["text"], link,
    )  # fmt: skip
