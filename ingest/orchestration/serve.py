"""`ingest serve`: a small read-only HTTP API over the corpus.

GET /search takes the options of `ingest search` as query parameters and answers the same JSON
as `ingest search --json`; GET /status sums up the corpus; GET /health says whether the
database answers. Bad parameters are a 400 with {"error": "..."}; while the database cannot
be reached, every endpoint is a 503 with {"error": "database unavailable: ..."}.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from db.corpus import SEARCH_INDEX
from db.search import pgvector_version, search_language
from db.videos import status_summary
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.retry import CONNECTION_ERRORS, DATABASE_ERRORS
from ingest.orchestration.search import Searcher, SearchOptions, open_searcher, search_options

# Limits per request: the work of a search grows with k, and an embedding model reads only its
# first few hundred tokens anyway.
MAX_K = 100
MAX_QUERY_CHARS = 500
_PARAMS = frozenset(
    {"q", "k", "mode", "speaker", "channel", "source", "video", "after", "before", "one_per_video"}
)
log = structlog.get_logger()
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})


class BadRequest(Exception):
    """A parameter the API cannot use; its message goes back to the client."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _date(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time, not {value!r}") from None


def _k(params: Mapping[str, str]) -> int:
    value = params.get("k", "10")
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_K:
        raise BadRequest(f"k must be a whole number from 1 to {MAX_K}, not {value!r}")
    return int(value)


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").lower()
    if value not in _TRUE | _FALSE:
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value in _TRUE


def parse_search(params: Mapping[str, str]) -> tuple[str, SearchOptions]:
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(_PARAMS))}")
    query = params.get("q", "").strip()
    if not query:
        raise BadRequest("q, the words to look for, is missing")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"q is longer than {MAX_QUERY_CHARS} characters")
    try:
        options = search_options(
            k=_k(params), mode=params.get("mode", "hybrid"), speaker=params.get("speaker"),
            channel=params.get("channel"), source=params.get("source"), video=params.get("video"),
            after=_date(params, "after"), before=_date(params, "before"),
            one_per_video=_flag(params, "one_per_video"),
        )  # fmt: skip
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None
    return query, options


async def search_endpoint(request: Request) -> JSONResponse:
    try:
        query, options = parse_search(request.query_params)
    except BadRequest as exc:
        return _error(400, str(exc))
    searcher: Searcher = request.app.state.searcher
    try:
        results = await searcher.search(query, options)
    except ConfigError as exc:
        # The corpus and the configured model disagree: the server's set-up, not the request.
        return _error(503, str(exc))
    return JSONResponse([r.as_json() for r in results])


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
        "embedding_model": await conn.fetchval("SELECT embedding_model FROM corpus"),
    }


async def health_endpoint(request: Request) -> JSONResponse:
    searcher: Searcher = request.app.state.searcher
    try:
        async with searcher.pool.acquire(timeout=5) as conn:
            await conn.fetchval("SELECT 1")
    except (TimeoutError, *DATABASE_ERRORS) as exc:
        return _error(503, f"database unavailable: {exc}")
    return JSONResponse({"ok": True})


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_searcher(settings) as searcher:
            app.state.searcher = searcher
            yield

    routes = [
        Route("/search", search_endpoint, methods=["GET"]),
        Route("/status", status_endpoint, methods=["GET"]),
        Route("/health", health_endpoint, methods=["GET"]),
    ]
    unavailable = dict.fromkeys((TimeoutError, *CONNECTION_ERRORS), _database_unavailable)
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=unavailable)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Any endpoint, while the database cannot be reached: a 503 the client may retry."""
    return _error(503, f"database unavailable: {exc}")


def serve(settings: Settings) -> None:
    import uvicorn

    listening = _listen(settings.serve_addr)
    host, port = listening.getsockname()[:2]
    log.info("api_serving", addr=f"{host}:{port}", port=port)
    config = uvicorn.Config(create_app(settings), log_level="warning")
    uvicorn.Server(config).run(sockets=[listening])


def _listen(addr: str) -> socket.socket:
    """The API's socket, bound here rather than by uvicorn so that the port the system chose
    for port 0 is known (and logged) and a busy address is a clear error."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"invalid INGEST_SERVE_ADDR {addr!r}: use host:port")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc
