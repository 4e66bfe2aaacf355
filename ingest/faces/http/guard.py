"""Who may read, and how much one request may ask: an ASGI middleware around every route of the
server (the JSON API, the pages, the downloads and whatever is mounted below them).

In order, a request is refused
- with 421 when the server listens on loopback and the Host header names another host: a page
  elsewhere cannot reach the server through a name of its own pointed at 127.0.0.1 (DNS
  rebinding);
- with 414 when its query string, or 413 when its body, is longer than the server reads;
- with 401 when the server has a token and the request carries neither `Authorization: Bearer
  TOKEN` nor the cookie that a browser is given, once, for opening a page with `?token=TOKEN`;
- with 503 and Retry-After when the server is already busy with as many requests as it takes at
  once and none finishes within QUEUE_WAIT_S.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.faces.http.params import json_error

# A longest q (500 characters of 4 bytes each, percent-encoded) and the other parameters fit.
MAX_QUERY_STRING_BYTES = 8192
# How long a request waits for one of the server's places before a 503.
QUEUE_WAIT_S = 2.0
COOKIE = "ingest_token"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True, slots=True)
class GuardOptions:
    token: bytes | None  # None: anyone who reaches the server may read
    loopback: bool  # the server listens on loopback only: the Host must be a loopback name
    max_body_bytes: int
    max_concurrent: int


class BodyTooLarge(Exception):
    """A request body grew past the limit while it was read."""


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback: localhost, 127.0.0.1 or [::1], with
    or without a port."""
    name = host.strip().lower()
    if not name.startswith("["):
        name, _, port = name.partition(":")
    else:
        name, _, port = name.partition("]")
        name, port = f"{name}]", port.removeprefix(":")
    return name in LOOPBACK_HOSTS and (port == "" or port.isdigit())


def same_secret(given: bytes, token: bytes) -> bool:
    """Compared in constant time: how long it takes says nothing of how much of it was right."""
    return hmac.compare_digest(given, token)


class Guard:
    def __init__(self, app: ASGIApp, options: GuardOptions) -> None:
        self.app = app
        self.options = options
        self._places = asyncio.Semaphore(options.max_concurrent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the server has no websocket endpoints
            await send({"type": "websocket.close", "code": 1008})
            return
        refusal = self.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._in_turn(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        """The answer to a request that goes no further, or None to serve it."""
        headers = request.headers
        if self.options.loopback and not is_loopback_host(headers.get("host", "")):
            return json_error(421, "this server answers only to localhost, 127.0.0.1 or [::1]")
        if len(request.scope.get("query_string", b"")) > MAX_QUERY_STRING_BYTES:
            return json_error(
                414, f"the query string is longer than {MAX_QUERY_STRING_BYTES} bytes"
            )
        if self._declared_body(headers) > self.options.max_body_bytes:
            return self._too_large()
        if self.options.token is not None:
            return self._unauthorized(request, self.options.token)
        return None

    def _declared_body(self, headers: Headers) -> int:
        length = headers.get("content-length", "0")
        return int(length) if length.isdigit() and len(length) < 20 else 0

    def _too_large(self) -> Response:
        return json_error(
            413, f"the request body is longer than {self.options.max_body_bytes} bytes"
        )

    def _unauthorized(self, request: Request, token: bytes) -> Response | None:
        given = request.query_params.get("token")
        if given is not None and request.method in ("GET", "HEAD"):
            if same_secret(given.encode(), token):
                return _remembered(request, given)
        elif _bearer(request.headers, token) or _cookie(request.cookies, token):
            return None
        return json_error(
            401,
            "a token is needed: send Authorization: Bearer TOKEN",
            {"WWW-Authenticate": "Bearer"},
        )

    async def _in_turn(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with asyncio.timeout(QUEUE_WAIT_S):
                await self._places.acquire()
        except TimeoutError:
            busy = json_error(503, "the server is busy; try again shortly", {"Retry-After": "1"})
            await busy(scope, receive, send)
            return
        try:
            await self._bounded(scope, receive, send)
        finally:
            self._places.release()

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, reading no more of the body than the limit (a body sent in chunks declares
        no length); past it, a 413 if nothing was answered yet."""
        read = 0
        started = False

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.options.max_body_bytes:
                raise BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large()(scope, receive, send)


def _bearer(headers: Headers, token: bytes) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same_secret(given.strip().encode("latin-1"), token)


def _cookie(cookies: Mapping[str, str], token: bytes) -> bool:
    given = cookies.get(COOKIE)
    return given is not None and same_secret(given.encode(), token)


def _remembered(request: Request, token: str) -> Response:
    """A browser that opened a page with the right `?token=` is sent back to it without the
    token in its address, with a cookie that only this server's own pages send back."""
    url = request.url.remove_query_params("token")
    answer = RedirectResponse(f"{url.path}?{url.query}" if url.query else url.path, 303)
    answer.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", secure=url.scheme == "https", path="/"
    )
    return answer
