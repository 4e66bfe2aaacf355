"""Exporting transcripts: a video's as subtitles, text or JSON (ingest.orchestration.subtitles),
and the whole corpus, every chunk with its video's metadata, as JSON Lines or Parquet.

The corpus is read through a server-side cursor a batch at a time and each batch is written
before the next is read (Parquet: a row group every few batches), so memory stays the same
however many chunks there are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from db.export import chunk_batches, count_chunks
from db.transcripts import VideoFilters
from ingest.orchestration.subtitles import Format, is_local, render, safe_filename
from ingest.orchestration.transcripts import Transcript, get_transcript, link_at, list_videos
from ingest.stages.sources import source_key

CorpusFormat = Literal["jsonl", "parquet"]
BATCH_ROWS = 2000
# A row group of 20,000 chunks: large enough for Parquet's column compression to pay, small
# enough (about 30 MB with 384-d embeddings) that the writer's buffer stays modest.
ROW_GROUP_BATCHES = 10
_PAGE = 500

SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("title", pa.string()),
        ("channel", pa.string()),
        ("url", pa.string()),
        ("published_at", pa.timestamp("us", tz="UTC")),
        ("seg_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("speaker", pa.string()),
        ("speakers", pa.list_(pa.string())),
        ("text", pa.string()),
        ("transcript_source", pa.string()),
        ("link", pa.string()),
    ]
)
EMBEDDING = pa.field("embedding", pa.list_(pa.float32()))


class NoTranscript(Exception):
    """A video the database does not know, or one without a transcript yet."""


@dataclass(frozen=True, slots=True)
class CorpusOptions:
    # Every stored chunk by default, whatever its video's state.
    filters: VideoFilters = field(default_factory=lambda: VideoFilters(status=None))
    embeddings: bool = False
    batch_rows: int = BATCH_ROWS
    # For readers on other machines: a local file's chunks without its URL and link, which
    # would say where it lies on this one.
    public: bool = False


def export_filters(
    *,
    channel: str | None = None,
    source: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    done_only: bool = True,
) -> VideoFilters:
    """The videos an export of all takes, as the command line and the API name them: dates
    without a zone are UTC; `done_only` False takes every stored chunk, whatever the state of
    its video (one being processed again still has its former chunks)."""
    return VideoFilters(
        channel=channel,
        source=source_key(source) if source is not None else None,
        published_after=_utc(after),
        published_before=_utc(before),
        status="done" if done_only else None,
    )


async def load_transcript(conn: asyncpg.Connection, video_id: str) -> Transcript:
    """A video's whole transcript; NoTranscript when there is none."""
    transcript = await get_transcript(conn, video_id)
    if transcript is None:
        raise NoTranscript(f"no video {video_id!r} in the database")
    if not transcript.chunks and transcript.video.status != "done":
        raise NoTranscript(f"video {video_id!r} has no transcript yet ({transcript.video.status})")
    return transcript


async def export_transcript(
    conn: asyncpg.Connection, video_id: str, fmt: Format, folder: Path
) -> Path:
    """Writes the transcript to FOLDER/<safe id>.<fmt>; returns the file."""
    rendered = render(await load_transcript(conn, video_id), fmt)
    path = folder / f"{safe_filename(video_id)}.{fmt}"
    await asyncio.to_thread(_write_text, path, rendered)
    return path


async def all_video_ids(conn: asyncpg.Connection, filters: VideoFilters) -> list[str]:
    """The ids of the done videos `filters` select, newest first, read page by page in one
    snapshot: a video finishing meanwhile must not shift the pages (listed twice, or one
    skipped). Ids only, so even a channel of 100,000 videos is a few MB."""
    ids: list[str] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        while page := await list_videos(conn, filters, _PAGE, len(ids)):
            ids.extend(video.id for video in page)
    return ids


async def count_corpus(conn: asyncpg.Connection, options: CorpusOptions) -> int:
    return await count_chunks(conn, options.filters)


async def jsonl_stream(conn: asyncpg.Connection, options: CorpusOptions) -> AsyncIterator[bytes]:
    """The corpus as JSON Lines, one batch of chunks per piece, encoded in a thread."""
    async with _batches(conn, options) as batches:
        async for rows in batches:
            yield await asyncio.to_thread(jsonl_lines, rows, options)


async def write_corpus(
    conn: asyncpg.Connection,
    path: Path,
    fmt: CorpusFormat,
    options: CorpusOptions,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Writes the corpus to PATH as `fmt`; returns the chunks written. `progress` is told the
    chunks of each batch as it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        return await _write_jsonl(conn, path, options, progress)
    return await _write_parquet(conn, path, options, progress)


async def _write_jsonl(
    conn: asyncpg.Connection,
    path: Path,
    options: CorpusOptions,
    progress: Callable[[int], None] | None,
) -> int:
    written = 0
    with path.open("wb") as out:
        async with _batches(conn, options) as batches:
            async for rows in batches:
                await asyncio.to_thread(_encode_into, out, rows, options)
                written += _tell(progress, len(rows))
    return written


async def _write_parquet(
    conn: asyncpg.Connection,
    path: Path,
    options: CorpusOptions,
    progress: Callable[[int], None] | None,
) -> int:
    schema = corpus_schema(options.embeddings)
    written = 0
    pending: list[pa.RecordBatch] = []
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        async with _batches(conn, options) as batches:
            async for rows in batches:
                pending.append(await asyncio.to_thread(record_batch, rows, options))
                if len(pending) == ROW_GROUP_BATCHES:
                    await asyncio.to_thread(_write_group, writer, pending)
                    pending = []
                written += _tell(progress, len(rows))
        if pending:
            await asyncio.to_thread(_write_group, writer, pending)
    return written


def _batches(
    conn: asyncpg.Connection, options: CorpusOptions
) -> aclosing[AsyncGenerator[list[asyncpg.Record], None]]:
    """The cursor's batches, closed (its transaction ended) on leaving the block, even when an
    error or a cancellation leaves them half read."""
    return aclosing(chunk_batches(conn, options.filters, options.embeddings, options.batch_rows))


def corpus_schema(embeddings: bool) -> pa.Schema:
    return SCHEMA.append(EMBEDDING) if embeddings else SCHEMA


def record_batch(rows: Sequence[asyncpg.Record], options: CorpusOptions) -> pa.RecordBatch:
    """A batch of chunk rows as Arrow columns, each with its link."""
    places = [_place(r, options.public) for r in rows]
    computed = {"url": [url for url, _ in places], "link": [link for _, link in places]}
    columns: list[pa.Array] = [
        pa.array(computed[f.name] if f.name in computed else [r[f.name] for r in rows], f.type)
        for f in SCHEMA
    ]
    if options.embeddings:
        columns.append(_vectors(rows))
    return pa.RecordBatch.from_arrays(columns, schema=corpus_schema(options.embeddings))


def jsonl_lines(rows: Sequence[asyncpg.Record], options: CorpusOptions) -> bytes:
    lines = [json.dumps(_row_json(r, options), ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _row_json(row: asyncpg.Record, options: CorpusOptions) -> dict[str, Any]:
    found = {f.name: row[f.name] for f in SCHEMA if f.name != "link"}
    published = found["published_at"]
    url, link = _place(row, options.public)
    found.update(
        url=url,
        published_at=published.isoformat() if published else None,
        speakers=list(found["speakers"]),
        link=link,
    )
    if options.embeddings:
        found["embedding"] = row["embedding"].to_list()
    return found


def _vectors(rows: Sequence[asyncpg.Record]) -> pa.Array:
    vectors = [r["embedding"].to_numpy() for r in rows]
    offsets = np.zeros(len(vectors) + 1, np.int32)
    np.cumsum([len(v) for v in vectors], out=offsets[1:])
    values = np.concatenate(vectors) if vectors else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))


def _place(row: asyncpg.Record, public: bool) -> tuple[str | None, str | None]:
    """The chunk's URL and link; neither for a local file when `public`."""
    url: str = row["url"]
    if public and is_local(url):
        return None, None
    return url, link_at(row["extractor"], row["video_id"], url, row["start_s"])[0]


def _encode_into(out: BinaryIO, rows: Sequence[asyncpg.Record], options: CorpusOptions) -> None:
    out.write(jsonl_lines(rows, options))


def _write_group(writer: pq.ParquetWriter, batches: list[pa.RecordBatch]) -> None:
    writer.write_table(pa.Table.from_batches(batches), row_group_size=sum(map(len, batches)))


def _tell(progress: Callable[[int], None] | None, rows: int) -> int:
    if progress is not None:
        progress(rows)
    return rows


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _write_text(path: Path, rendered: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rendered, encoding="utf-8")
