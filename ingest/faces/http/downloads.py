"""Downloads: GET /videos/{id}/transcript.{srt,vtt,txt,json} (a 404 for a video without a
transcript), and the whole corpus as GET /export.jsonl and /export.parquet, optionally
`embeddings=true` and `channel=`. Every answer is an attachment with a safe file name. As
everywhere on the server, a local file is not shown by its place (no URL, path or link), and a
model in a folder by the folder's name alone.

JSON Lines is streamed a batch at a time as the database's cursor yields it. Parquet's footer
can only be written at the end, so the file is written to a temporary file first (a row group at
a time), then sent and deleted: memory stays bounded either way.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import asyncpg
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from ingest.faces.http.api import public_model
from ingest.faces.http.params import BadRequest, json_error
from ingest.orchestration.export import (
    CorpusOptions,
    NoTranscript,
    export_filters,
    jsonl_stream,
    load_transcript,
    write_corpus,
)
from ingest.orchestration.subtitles import FORMATS, MEDIA_TYPES, render, safe_filename
from ingest.orchestration.transcripts import Transcript

_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})
_CORPUS_PARAMS = frozenset({"embeddings", "channel"})


async def transcript_endpoint(request: Request) -> Response:
    video_id: str = request.path_params["video_id"]
    fmt = next((f for f in FORMATS if f == request.path_params["fmt"]), None)
    if fmt is None:
        return json_error(404, f"no such format: use one of {', '.join(FORMATS)}")
    try:
        async with _pool(request).acquire() as conn:
            transcript = await load_transcript(conn, video_id)
    except NoTranscript as exc:
        return json_error(404, str(exc))
    headers = _attachment(f"{safe_filename(video_id)}.{fmt}")
    rendered = render(_public(transcript), fmt, public=True)
    return Response(rendered, media_type=MEDIA_TYPES[fmt], headers=headers)


async def jsonl_endpoint(request: Request) -> Response:
    try:
        options = _corpus_options(request.query_params)
    except BadRequest as exc:
        return json_error(400, str(exc))
    pieces = _jsonl(_pool(request), options)
    headers = _attachment("corpus.jsonl")
    return StreamingResponse(pieces, media_type="application/x-ndjson", headers=headers)


async def parquet_endpoint(request: Request) -> Response:
    try:
        options = _corpus_options(request.query_params)
    except BadRequest as exc:
        return json_error(400, str(exc))
    path = await asyncio.to_thread(_temporary_file)
    try:
        async with _pool(request).acquire() as conn:
            await write_corpus(conn, path, "parquet", options)
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return FileResponse(
        path,
        media_type="application/vnd.apache.parquet",
        filename="corpus.parquet",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


async def _jsonl(pool: asyncpg.Pool, options: CorpusOptions) -> AsyncIterator[bytes]:
    async with pool.acquire() as conn:
        async for piece in jsonl_stream(conn, options):
            yield piece


def _corpus_options(params: Mapping[str, str]) -> CorpusOptions:
    unknown = set(params) - _CORPUS_PARAMS
    if unknown:
        raise BadRequest(f"unknown parameters: {', '.join(sorted(unknown))}")
    embeddings = params.get("embeddings", "").lower()
    if embeddings not in _TRUE | _FALSE:
        raise BadRequest(f"embeddings must be true or false, not {embeddings!r}")
    filters = export_filters(channel=params.get("channel"), done_only=False)
    return CorpusOptions(filters, embeddings in _TRUE, public=True)


def _public(transcript: Transcript) -> Transcript:
    """Models in folders of the server by the folder's name alone, as GET /status names them."""
    video = transcript.video
    models = public_model(video.asr_model), public_model(video.embedding_model)
    shown = replace(video, asr_model=models[0], embedding_model=models[1])
    return replace(transcript, video=shown)


def _temporary_file() -> Path:
    handle, name = tempfile.mkstemp(prefix="ingest-export-", suffix=".parquet")
    os.close(handle)
    return Path(name)


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.searcher.pool
    return pool


routes = [
    Route("/videos/{video_id}/transcript.{fmt}", transcript_endpoint, methods=["GET"]),
    Route("/export.jsonl", jsonl_endpoint, methods=["GET"]),
    Route("/export.parquet", parquet_endpoint, methods=["GET"]),
]
