"""`/metrics` and `/healthz` over HTTP, served from a thread while a run goes on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import asyncpg
from prometheus_client import make_wsgi_app

from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.metrics import Metrics

HealthCheck = Callable[[], tuple[bool, str]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the service's own log


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def health_check(pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop) -> HealthCheck:
    """Healthy when the event loop answers within 2 s and the database answers a query: one
    probe run on the loop checks both."""

    async def probe() -> None:
        async with pool.acquire(timeout=1.5) as conn:
            await conn.fetchval("SELECT 1", timeout=1.5)

    def check() -> tuple[bool, str]:
        future = asyncio.run_coroutine_threadsafe(probe(), loop)
        try:
            future.result(timeout=2.0)
        except TimeoutError:
            future.cancel()
            return False, "event loop or database not answering within 2 s"
        except Exception as exc:
            return False, f"database unreachable: {describe_error(exc)}"
        return True, "ok"

    return check


class Endpoints:
    """Serves the registry at /metrics and the health check at /healthz until closed."""

    def __init__(self, addr: str, metrics: Metrics, health: HealthCheck) -> None:
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok, detail = health()
                start(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [f"{detail}\n".encode()]
            return metrics_app(environ, start)  # type: ignore[no-any-return]

        host, port = parse_addr(addr)
        self._server = make_server(host, port, app, _Server, _QuietHandler)
        self.port = self._server.server_port
        self.addr = f"{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
