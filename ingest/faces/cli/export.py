"""`ingest export`: transcripts as subtitles, text or JSON, one file per video; or the whole
corpus as one JSON Lines or Parquet file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ingest.faces.cli.app import _run, _settings, _usage_errors, app, err, out
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.database import open_database
from ingest.orchestration.export import (
    CorpusFormat,
    CorpusOptions,
    NoTranscript,
    all_video_ids,
    count_corpus,
    export_filters,
    export_transcript,
    write_corpus,
)
from ingest.orchestration.subtitles import Format
from ingest.orchestration.transcripts import VideoFilters

DEFAULT_FOLDER = Path("export")


class ExportFormat(StrEnum):
    srt = "srt"
    vtt = "vtt"
    txt = "txt"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


_PER_VIDEO: dict[ExportFormat, Format] = {
    ExportFormat.srt: "srt", ExportFormat.vtt: "vtt", ExportFormat.txt: "txt",
    ExportFormat.json: "json",
}  # fmt: skip
_CORPUS: dict[ExportFormat, CorpusFormat] = {
    ExportFormat.jsonl: "jsonl", ExportFormat.parquet: "parquet",
}  # fmt: skip


@app.command()
def export(
    ctx: typer.Context,
    video_ids: Annotated[
        list[str] | None, typer.Argument(help="The videos to export (their ids).")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every video done (narrowed by the filters).")
    ] = False,
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="srt, vtt, txt, json (a file per video); jsonl, parquet."),
    ] = ExportFormat.srt,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for per-video files; the file for jsonl and parquet."),
    ] = None,
    embeddings: Annotated[
        bool, typer.Option(help="jsonl and parquet: each chunk's embedding too.")
    ] = False,
    channel: Annotated[str | None, typer.Option(help="--all: only this channel.")] = None,
    source: Annotated[
        str | None, typer.Option(help="--all: only videos this source lists.")
    ] = None,
    after: Annotated[
        datetime | None, typer.Option(help="--all: uploaded on or after (UTC).")
    ] = None,
    before: Annotated[datetime | None, typer.Option(help="--all: uploaded before (UTC).")] = None,
) -> None:
    """Export transcripts: VIDEO_IDS or --all as srt, vtt, txt or json, one file per video in
    the folder --out (default ./export); or every stored chunk with its video's metadata as one
    jsonl or parquet file (default ./export/corpus.jsonl or .parquet).

    Exit status: 0 when everything asked for was exported; 1 when a video is unknown or has no
    transcript yet (the others are still exported); 2 on a usage error.
    """
    with _usage_errors():
        filtered = any(f is not None for f in (channel, source, after, before))
        _check(video_ids or [], every, fmt, embeddings, filtered)
        settings = _settings(ctx)
        filters = export_filters(
            channel=channel, source=source, after=after, before=before,
            done_only=fmt not in _CORPUS,
        )  # fmt: skip
        if fmt in _CORPUS:
            path = out_path or DEFAULT_FOLDER / f"corpus.{fmt.value}"
            options = CorpusOptions(filters, embeddings)
            written = _run(_corpus(settings, path, _CORPUS[fmt], options))
            out.print(f"wrote {written} chunks to {path}", markup=False, highlight=False)
            return
        folder = out_path or DEFAULT_FOLDER
        chosen = None if every else video_ids or []
        done, failed = _run(_videos(settings, chosen, filters, _PER_VIDEO[fmt], folder))
    out.print(f"exported {done} videos to {folder}", markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)


def _check(
    video_ids: list[str], every: bool, fmt: ExportFormat, embeddings: bool, filtered: bool
) -> None:
    if fmt in _CORPUS and video_ids:
        raise ConfigError(f"{fmt.value} exports the whole corpus: use --all, not video ids")
    if fmt in _PER_VIDEO and every == bool(video_ids):
        raise ConfigError("name the videos to export, or give --all (not both)")
    if embeddings and fmt not in _CORPUS:
        raise ConfigError("--embeddings goes with --format jsonl or parquet")
    if filtered and video_ids:
        raise ConfigError("--channel, --source, --after and --before go with --all")


async def _corpus(settings: Settings, path: Path, fmt: CorpusFormat, options: CorpusOptions) -> int:
    async with open_database(settings) as pool, pool.acquire() as conn:
        with _progress("chunks", await count_corpus(conn, options)) as advance:
            return await write_corpus(conn, path, fmt, options, advance)


async def _videos(
    settings: Settings, chosen: list[str] | None, filters: VideoFilters, fmt: Format, folder: Path
) -> tuple[int, int]:
    """Exports each video (`chosen`, or all that `filters` select), going on past one that
    cannot be; returns how many were exported and how many could not be."""
    async with open_database(settings) as pool, pool.acquire() as conn:
        if chosen is not None:
            return await _each(conn, chosen, fmt, folder, lambda n: None)
        ids = await all_video_ids(conn, filters)
        with _progress("videos", len(ids)) as advance:
            return await _each(conn, ids, fmt, folder, advance)


async def _each(
    conn: asyncpg.Connection,
    video_ids: list[str],
    fmt: Format,
    folder: Path,
    advance: Callable[[int], None],
) -> tuple[int, int]:
    done = failed = 0
    for video_id in video_ids:
        try:
            await export_transcript(conn, video_id, fmt, folder)
            done += 1
        except (NoTranscript, OSError) as exc:
            err.print(f"error: {video_id}: {exc}", markup=False, highlight=False, soft_wrap=True)
            failed += 1
        advance(1)
    return done, failed


@contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; `advance(n)` counts n more done."""
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)
