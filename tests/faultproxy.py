"""A TCP proxy in front of PostgreSQL that injects connection faults on demand.

It runs its own event loop in a daemon thread, so it serves in-process asyncpg pools (whatever
loop the test runs) and `ingest` subprocesses alike. It reads PostgreSQL's wire protocol just
enough to find statements by their SQL text: simple Query ('Q') messages carry the text, and the
extended protocol names a statement in Parse ('P') once, then refers to it by name in every Bind
('B') that runs it. asyncpg caches prepared statements per connection, so only Bind and Query
count as "running" a statement; a Parse alone only prepares it.

    with FaultProxy(postgres_address(database_url)) as proxy:
        pool = await asyncpg.create_pool(proxy.url(database_url))
        proxy.lose_reply("COMMIT")
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

T = TypeVar("T")
Target = str | PathLike[str] | tuple[str, int]

# Startup-phase requests with no type byte, which the proxy answers itself with 'N' ("no
# encryption"): asyncpg's default sslmode "prefer" asks for TLS over TCP first.
_ENCRYPTION_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest
_COPY_IN = re.compile(r"\bCOPY\b.*\bFROM\s+STDIN\b", re.IGNORECASE | re.DOTALL)


def postgres_address(database_uri: str) -> Target:
    """Where the server of a libpq-style URI listens: its unix socket file when `host` is a
    folder (as for the embedded server), else (host, port)."""
    parts = urlsplit(database_uri)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = int(query.get("port", [str(parts.port or 5432)])[0])
    return str(Path(host) / f".s.PGSQL.{port}") if host.startswith("/") else (host, port)


class Kind(Enum):
    LOSE_REPLY = "lose_reply"
    CUT = "cut"


@dataclass
class Fired:
    """How many faults really happened (each counts once the connection was reset for it)."""

    lost_replies: int = 0
    cuts: int = 0
    periodic_resets: int = 0


@dataclass
class _Armed:
    kind: Kind
    pattern: str
    times: int


@dataclass
class _Plan:
    """The fault a link carries out for the statement that is request number `request` on it
    (requests being Sync and Query messages, each answered by one ReadyForQuery)."""

    kind: Kind
    request: int
    copy_in: bool


def _hard_close(writer: asyncio.StreamWriter) -> None:
    """Closes a connection at once; over TCP with an RST (SO_LINGER 0) rather than a FIN, as a
    crashed peer or a dropped NAT entry would."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One typed message: (type byte, whole message including the type and length)."""
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], header + await reader.readexactly(length - 4)


def _cstrings(body: bytes, count: int) -> list[str]:
    return [s.decode("utf-8", "replace") for s in body.split(b"\0", count)[:count]]


class _Link:
    """One client connection and its server connection."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_reader, self.client = client
        self.server_reader, self.server = server
        self.statements: dict[str, str] = {}  # prepared statement name -> SQL
        self.sent = 0  # Sync and Query messages forwarded
        # ReadyForQuery messages received for them: the first one ends the startup instead.
        self.answered = -1
        self.plan: _Plan | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        pumps = [
            asyncio.create_task(self._guarded(self._from_client)),
            asyncio.create_task(self._guarded(self._from_server)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.close()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.client.close()
        self.server.close()

    def reset(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        _hard_close(self.client)
        _hard_close(self.server)

    @staticmethod
    async def _guarded(pump: Callable[[], Awaitable[None]]) -> None:
        # A pump ends when its side closes, cleanly or not: either way the link is over.
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await pump()

    async def _startup(self) -> None:
        # Startup-phase packets have no type byte: int32 length, then int32 code and the rest.
        while True:
            (length,) = struct.unpack("!i", await self.client_reader.readexactly(4))
            body = await self.client_reader.readexactly(length - 4)
            if struct.unpack("!i", body[:4])[0] not in _ENCRYPTION_REQUESTS:
                break
            self.client.write(b"N")
        self.server.write(struct.pack("!i", length) + body)

    async def _from_client(self) -> None:
        await self._startup()
        while True:
            kind, message = await _message(self.client_reader)
            self._inspect(kind, message[5:])
            self.server.write(message)
            await self.server.drain()
            if kind in (b"S", b"Q"):
                self.sent += 1
            if self._cut_now(kind):
                self.proxy.fired.cuts += 1
                self.reset()
                return

    def _inspect(self, kind: bytes, body: bytes) -> None:
        """Remembers prepared statements and arms a fault when a statement to fault runs."""
        if kind == b"P":
            name, sql = _cstrings(body, 2)
            self.statements[name] = sql
            return
        if kind not in (b"B", b"Q") or self.plan is not None:
            return  # one fault per connection: it ends the connection
        if kind == b"Q":
            sql = _cstrings(body, 1)[0]
        else:  # Bind: portal name, then the name of the prepared statement it runs
            sql = self.statements.get(_cstrings(body, 2)[1], "")
        fault = self.proxy._take(sql)
        if fault is not None:
            self.plan = _Plan(fault, self.sent + 1, bool(_COPY_IN.search(sql)))

    def _cut_now(self, kind: bytes) -> bool:
        plan = self.plan
        if plan is None or plan.kind is not Kind.CUT:
            return False
        if plan.copy_in:
            # Mid-COPY: the server has some rows, never CopyDone, and aborts the transaction.
            return kind == b"d"
        return self.sent == plan.request

    async def _from_server(self) -> None:
        while True:
            kind, message = await _message(self.server_reader)
            if not self._muted(kind):
                self.client.write(message)
                await self.client.drain()
            if kind == b"Z":
                self.answered += 1
                if self._lose_now():
                    self.proxy.fired.lost_replies += 1
                    self.reset()
                    return

    def _muted(self, kind: bytes) -> bool:
        """Whether the message answers the faulted statement, which the client must never see;
        save a CopyInResponse, without which the client would send no COPY data."""
        plan = self.plan
        return plan is not None and kind != b"G" and self.answered >= plan.request - 1

    def _lose_now(self) -> bool:
        # The statement ran to completion (committed, outside a transaction) once its Sync or
        # Query is answered with ReadyForQuery.
        plan = self.plan
        return plan is not None and plan.kind is Kind.LOSE_REPLY and self.answered == plan.request


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target` (a unix socket path or a (host, port)) and injects
    faults there when asked; every method is safe to call from any thread."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.port = 0
        self.connections = 0  # client connections accepted
        self.fired = Fired()
        self._armed: list[_Armed] = []
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._lifetime: tuple[float, float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))  # the kernel picks a free port; nothing can take it
        listener.listen(128)
        self.port = listener.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(listener, ready),), daemon=True,
            name=f"faultproxy:{self.port}",
        )  # fmt: skip
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self, listener: socket.socket, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=listener)
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for link in list(self._links):
                link.reset()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    def url(self, database_uri: str) -> str:
        """`database_uri` (user, password, database and other options kept) through the proxy."""
        parts = urlsplit(database_uri)
        user = parts.username or "postgres"  # user and password stay percent-encoded
        password = f":{parts.password}" if parts.password else ""
        database = parts.path.lstrip("/") or user
        query = {k: v for k, v in parse_qs(parts.query).items() if k not in ("host", "port")}
        tail = f"?{urlencode(query, doseq=True)}" if query else ""
        return f"postgresql://{user}{password}@127.0.0.1:{self.port}/{database}{tail}"

    # -- faults ----------------------------------------------------------------------------

    def reset_all(self) -> int:
        """Resets every open connection at once; returns how many there were."""

        def reset() -> int:
            links = list(self._links)
            for link in links:
                link.reset()
            return len(links)

        return self._call(reset)

    def reset_every(self, min_s: float, max_s: float) -> None:
        """From now on each connection, open or yet to come, is reset after a random lifetime
        between `min_s` and `max_s` seconds; reconnecting gives a new lifetime."""

        def start() -> None:
            self._lifetime = (min_s, max_s)
            for link in self._links:
                self._schedule_reset(link)

        self._call(start)

    def stop_resets(self) -> None:
        """Ends `reset_every`: open connections keep going, new ones live on."""

        def stop() -> None:
            self._lifetime = None
            for link in self._links:
                if link.timer is not None:
                    link.timer.cancel()

        self._call(stop)

    def lose_reply(self, pattern: str, times: int = 1) -> None:
        """The next `times` statements whose SQL contains `pattern` run to completion on the
        server, then their reply is dropped and the connection reset: done, but never heard."""
        self._arm(Kind.LOSE_REPLY, pattern, times)

    def reset_during(self, pattern: str, times: int = 1) -> None:
        """The next `times` statements whose SQL contains `pattern` are cut: a COPY FROM STDIN
        after its first CopyData, anything else once sent, before any reply reaches the client."""
        self._arm(Kind.CUT, pattern, times)

    def _arm(self, kind: Kind, pattern: str, times: int) -> None:
        with self._lock:
            self._armed.append(_Armed(kind, pattern, times))

    def _take(self, sql: str) -> Kind | None:
        """The fault armed for `sql`, if any, used up once."""
        with self._lock:
            for armed in self._armed:
                if armed.pattern in sql:
                    armed.times -= 1
                    if armed.times <= 0:
                        self._armed.remove(armed)
                    return armed.kind
        return None

    # -- inside the proxy's loop -----------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Runs `fn` in the proxy's loop and waits for it, so the fault is in place on return."""
        assert self._loop is not None

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)  # so that closing the proxy can wait for every connection
        try:
            server = await self._connect()
        except OSError:
            _hard_close(writer)  # as a server that is down would look to the client
            self._handlers.discard(task)
            return
        link = _Link(self, (reader, writer), server)
        self._links.add(link)
        if self._lifetime is not None:
            self._schedule_reset(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
            self._handlers.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, tuple):
            return await asyncio.open_connection(*self.target)
        return await asyncio.open_unix_connection(self.target)

    def _schedule_reset(self, link: _Link) -> None:
        assert self._lifetime is not None and self._loop is not None
        if link.timer is not None:
            link.timer.cancel()

        def fire() -> None:
            self.fired.periodic_resets += 1
            link.reset()

        link.timer = self._loop.call_later(random.uniform(*self._lifetime), fire)
