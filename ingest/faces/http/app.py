"""`ingest serve`: a small read-only HTTP server over the corpus.

The endpoints live in modules of their own, each with a `routes` list (ROUTE_MODULES); the MCP
tools are mounted at /mcp. Around all of them sits the Guard (ingest.faces.http.guard): who may
read, and how much one request may ask. Every database statement of the server ends within
INGEST_SERVE_STATEMENT_TIMEOUT_S. Every error is JSON, {"error": "..."}, short and without the
server's paths: 400 for a bad parameter, 503 (with Retry-After) while the database cannot be
reached or a statement ran too long, 500 for anything else (its details only in the log).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from ingest.faces.http import api, downloads, pages
from ingest.faces.http.api import RETRY_SOON, UNAVAILABLE
from ingest.faces.http.guard import Guard, GuardOptions
from ingest.faces.http.params import json_error
from ingest.faces.mcp import HttpEndpoint
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import CONNECTION_ERRORS
from ingest.orchestration.search import open_searcher

log = structlog.get_logger()
Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

# Every module of endpoints has a `routes` list; the server serves them all, in this order.
ROUTE_MODULES = (api, pages, downloads)
# The database is away (or has no connection left to give): the client may retry shortly.
_AWAY = (TimeoutError, asyncpg.TooManyConnectionsError, *CONNECTION_ERRORS)


def routes(settings: Settings, mcp: HttpEndpoint) -> list[BaseRoute]:
    """The routes of every module of endpoints, then what is mounted below a path."""
    found: list[BaseRoute] = [route for module in ROUTE_MODULES for route in module.routes]
    return [*found, *mounts(mcp)]


def mounts(mcp: HttpEndpoint) -> Sequence[BaseRoute]:
    """Applications mounted below a path of their own: the MCP tools at /mcp."""
    return mcp.routes


def create_app(settings: Settings) -> Starlette:
    mcp = HttpEndpoint()
    timeout_ms = max(1, round(settings.serve_statement_timeout_s * 1000))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        statements = {"statement_timeout": str(timeout_ms)}
        async with open_searcher(settings, statements) as searcher, mcp.serving(searcher):
            app.state.searcher = searcher
            yield

    app = Starlette(
        routes=routes(settings, mcp),
        lifespan=lifespan,
        middleware=[Middleware(Guard, options=guard_options(settings))],
        exception_handlers=_handlers(),
    )
    app.state.settings = settings
    return app


def guard_options(settings: Settings) -> GuardOptions:
    token = settings.serve_token.get_secret_value() if settings.serve_token else None
    return GuardOptions(
        token=token.encode() if token else None,
        loopback=is_loopback(serve_host(settings.serve_addr)),
        max_body_bytes=settings.serve_max_body_bytes,
        max_concurrent=settings.serve_max_concurrent,
    )


def _handlers() -> dict[Any, Handler]:
    handlers: dict[Any, Handler] = dict.fromkeys(_AWAY, _database_unavailable)
    handlers[asyncpg.QueryCanceledError] = _too_slow
    handlers[Exception] = _internal_error
    return handlers


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """Any endpoint, while the database cannot be reached: a 503 the client may retry."""
    log.warning("database_unavailable", path=request.url.path, error=describe_error(exc))
    return json_error(503, UNAVAILABLE, RETRY_SOON)


async def _too_slow(request: Request, exc: Exception) -> Response:
    """A statement ran past INGEST_SERVE_STATEMENT_TIMEOUT_S (and was cancelled by the server)."""
    log.warning("statement_timeout", path=request.url.path, error=describe_error(exc))
    return json_error(503, "the query took too long; narrow it or try again later", RETRY_SOON)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("request_failed", path=request.url.path, exc_info=exc)
    return json_error(500, "internal error; the server's log says more")


def serve(settings: Settings) -> None:
    import uvicorn

    check_exposure(settings)
    listening = _listen(settings.serve_addr)
    host, port = listening.getsockname()[:2]
    auth = "token" if settings.serve_token else "none"
    log.info("api_serving", addr=f"{host}:{port}", port=port, auth=auth)
    config = uvicorn.Config(create_app(settings), log_level="warning")
    uvicorn.Server(config).run(sockets=[listening])


def check_exposure(settings: Settings) -> None:
    """Beyond loopback, anyone who reaches the address may read the corpus: only with a token,
    or when asked for in so many words (--public, INGEST_SERVE_PUBLIC)."""
    addr = settings.serve_addr
    if is_loopback(serve_host(addr)) or settings.serve_token or settings.serve_public:
        return
    raise ConfigError(
        f"{addr} is reachable beyond this machine: set INGEST_SERVE_TOKEN, or pass --public "
        "to let anyone who reaches it read the corpus"
    )


def serve_host(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"invalid INGEST_SERVE_ADDR {addr!r}: use host:port")
    return host.strip("[]")


def is_loopback(host: str) -> bool:
    """Whether a bound address is reachable from this machine only (a name other than
    localhost may resolve anywhere, so it is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(addr: str) -> socket.socket:
    """The API's socket, bound here rather than by uvicorn so that the port the system chose
    for port 0 is known (and logged) and a busy address is a clear error."""
    host, port = serve_host(addr), int(addr.rpartition(":")[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc
