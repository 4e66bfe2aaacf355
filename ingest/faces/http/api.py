"""The JSON endpoints: GET /search takes the options of `ingest search` as query parameters and
answers the same JSON as `ingest search --json`, less the server's own paths; GET /status sums up
the corpus; GET /health says whether the database answers."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import asyncpg
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db.corpus import SEARCH_INDEX
from db.search import pgvector_version, search_language
from db.videos import status_summary
from ingest.faces.http.params import BadRequest, json_error, parse_search
from ingest.infrastructure.config import ConfigError
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import DATABASE_ERRORS
from ingest.orchestration.search import Result, Searcher

log = structlog.get_logger()
UNAVAILABLE = "database unavailable; try again shortly"
RETRY_SOON = {"Retry-After": "1"}


def public_result(result: Result) -> dict[str, Any]:
    """A result as `--json` shows it, except that a local file is not shown by its place on the
    server: no path, URL or link, only its title and times."""
    shown = result.as_json()
    if str(shown["url"]).startswith("file:"):
        shown.update(path=None, url=None, link=None)
    return shown


def public_model(model: str | None) -> str | None:
    """A model by its hub id, or by its folder's name alone when it is a folder of the server."""
    if model is not None and model.startswith(("/", "~", ".")):
        return PurePath(model).name
    return model


async def search_endpoint(request: Request) -> JSONResponse:
    try:
        query, options = parse_search(request.query_params)
    except BadRequest as exc:
        return json_error(400, str(exc))
    searcher: Searcher = request.app.state.searcher
    try:
        results = await searcher.search(query, options)
    except ConfigError as exc:
        # The corpus and the configured model disagree: the server's set-up, not the request.
        log.error("search_unavailable", error=str(exc))
        message = "search unavailable: the server's set-up does not fit the corpus"
        return json_error(503, message, RETRY_SOON)
    return JSONResponse([public_result(r) for r in results])


async def status_endpoint(request: Request) -> JSONResponse:
    searcher: Searcher = request.app.state.searcher
    async with searcher.pool.acquire() as conn:
        report = await status_summary(conn, errors=0)
        search = await _search_status(conn)
    return JSONResponse(
        {
            "videos": report.counts,
            "chunks": report.chunks,
            "audio_hours": report.audio_seconds / 3600,
            "todo_audio_hours": report.todo_audio_seconds / 3600,
            "search": search,
        }
    )


async def _search_status(conn: asyncpg.Connection) -> dict[str, Any]:
    valid = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", SEARCH_INDEX
    )
    index = "none" if valid is None else "built" if valid else "building"
    return {
        "language": await search_language(conn),
        "vector_index": index,
        "pgvector": ".".join(map(str, await pgvector_version(conn))),
        "embedding_model": public_model(await conn.fetchval("SELECT embedding_model FROM corpus")),
    }


async def health_endpoint(request: Request) -> JSONResponse:
    searcher: Searcher = request.app.state.searcher
    try:
        async with searcher.pool.acquire(timeout=5) as conn:
            await conn.fetchval("SELECT 1")
    except (TimeoutError, *DATABASE_ERRORS) as exc:
        log.warning("database_unavailable", error=describe_error(exc))
        return json_error(503, UNAVAILABLE, RETRY_SOON)
    return JSONResponse({"ok": True})


routes = [
    Route("/search", search_endpoint, methods=["GET"]),
    Route("/status", status_endpoint, methods=["GET"]),
    Route("/health", health_endpoint, methods=["GET"]),
]
