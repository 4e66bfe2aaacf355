"""Who may read `ingest serve`, and what hostile input gets: the guard around every route on a
small app of its own (token, Host, sizes, concurrency), then the real server on a real database
(statement timeout, hostile parameters, the address it may listen on)."""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from db.search import SearchHit
from ingest.faces.http import guard
from ingest.faces.http.api import public_model, public_result
from ingest.faces.http.app import check_exposure, create_app
from ingest.faces.http.guard import COOKIE, Guard, GuardOptions, is_loopback_host
from ingest.infrastructure.config import ConfigError, Settings, load_settings
from ingest.orchestration.search import link_to
from tests.conftest import create_database
from tests.observing import start
from tests.test_search import MODEL

pytestmark = pytest.mark.anyio
TOKEN = "t0ken-9f2c81d4"


def guarded(options: GuardOptions, release: asyncio.Event | None = None) -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    async def slow(request: Request) -> PlainTextResponse:
        assert release is not None
        await release.wait()
        return PlainTextResponse("slow")

    routes = [
        Route("/", hello),
        Route("/upload", upload, methods=["POST"]),
        Route("/slow", slow),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, options=options)])


def options(**changes: Any) -> GuardOptions:
    given = {"token": None, "loopback": True, "max_body_bytes": 100, "max_concurrent": 4}
    return GuardOptions(**{**given, **changes})


@pytest.fixture
async def client_of() -> AsyncIterator[Callable[[Starlette, str], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(app: Starlette, base: str = "http://localhost:8780") -> httpx.AsyncClient:
        clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def test_a_token_is_needed_and_compared_in_constant_time(
    client_of: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return hmac.compare_digest(given, expected)

    monkeypatch.setattr(guard, "same_secret", spy)
    client = client_of(guarded(options(token=TOKEN.encode())))
    refused = await client.get("/")
    assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
    assert refused.json() == {"error": "a token is needed: send Authorization: Bearer TOKEN"}
    for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        assert (await client.get("/", headers={"Authorization": wrong})).status_code == 401
    right = await client.get("/", headers={"Authorization": f"bearer {TOKEN}"})
    assert (right.status_code, right.text) == (200, "hello")
    assert (TOKEN.encode(), TOKEN.encode()) in compared and (b"nope", TOKEN.encode()) in compared


async def test_a_browser_gives_the_token_once_and_keeps_it_in_a_strict_cookie(
    client_of: Callable[..., httpx.AsyncClient],
) -> None:
    client = client_of(guarded(options(token=TOKEN.encode())))
    assert (await client.get("/", params={"token": "wrong"})).status_code == 401
    assert COOKIE not in client.cookies
    opened = await client.get("/", params={"token": TOKEN, "q": "bug"})
    assert (opened.status_code, opened.headers["location"]) == (303, "/?q=bug")
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert (await client.get("/")).text == "hello"  # the cookie, without a header
    client.cookies.set(COOKIE, "forged")
    assert (await client.get("/")).status_code == 401


async def test_on_loopback_the_host_must_be_a_loopback_name(
    client_of: Callable[..., httpx.AsyncClient],
) -> None:
    app = guarded(options())
    for base in ("http://localhost", "http://127.0.0.1:8780", "http://[::1]:8780"):
        assert (await client_of(app, base).get("/")).status_code == 200, base
    for base in ("http://attacker.example", "http://localhost.attacker.example:8780"):
        answer = await client_of(app, base).get("/")
        assert answer.status_code == 421, base
        assert "answers only to localhost" in answer.json()["error"]
    anywhere = client_of(guarded(options(loopback=False)), "http://corpus.example")
    assert (await anywhere.get("/")).status_code == 200
    assert not is_loopback_host("") and not is_loopback_host("localhost:http")
    assert is_loopback_host("LOCALHOST") and not is_loopback_host("[::1]x")


async def test_long_queries_and_bodies_are_refused(
    client_of: Callable[..., httpx.AsyncClient],
) -> None:
    client = client_of(guarded(options()))
    long = await client.get("/", params={"q": "x" * guard.MAX_QUERY_STRING_BYTES})
    assert long.status_code == 414 and "longer than" in long.json()["error"]
    assert (await client.post("/upload", content=b"x" * 100)).text == "100"
    declared = await client.post("/upload", content=b"x" * 101)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it is read
        for _ in range(5):
            yield b"x" * 40

    streamed = await client.post("/upload", content=chunks())
    assert streamed.status_code == 413
    assert streamed.json() == {"error": "the request body is longer than 100 bytes"}


async def test_requests_over_the_limit_wait_then_get_a_503(
    client_of: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "QUEUE_WAIT_S", 0.2)
    release = asyncio.Event()
    client = client_of(guarded(options(max_concurrent=1), release))
    busy = asyncio.create_task(client.get("/slow"))
    await asyncio.sleep(0.1)  # the slow request holds the one place
    refused = await client.get("/")
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
    assert refused.json() == {"error": "the server is busy; try again shortly"}
    waiting = asyncio.create_task(client.get("/"))
    await asyncio.sleep(0.05)
    release.set()  # within the wait: the waiting request gets the place
    assert ((await busy).text, (await waiting).text) == ("slow", "hello")


# The real server.


@pytest.fixture(scope="module")
def empty_url(pg_uri: str) -> str:
    return asyncio.run(create_database(pg_uri))


def settings_for(url: str, **overrides: Any) -> Settings:
    return load_settings(database_url=url, embedding_model=MODEL, device="cpu", **overrides)


@pytest.fixture(scope="module")
def client(empty_url: str) -> Iterator[TestClient]:
    app = create_app(settings_for(empty_url))
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"q": "bug\x00"}, "q holds a NUL character"),
        ({"q": "bug", "speaker": "\x00"}, "speaker holds a NUL character"),
        ({"q": "bug", "source": "a\x00b"}, "source holds a NUL character"),
        ({"q": "bug", "k": "9" * 5000}, "k is longer than 1000 characters"),
        ({"q": "bug", "k": "9" * 999}, "k must be a whole number from 1 to 100"),
        ({"q": "bug", "k": "0100"}, "k must be a whole number from 1 to 100"),
        ({"q": "bug", "after": "0001-01-01T00:00+14:00"}, "after is out of range"),
        ({"q": "bug", "before": "9999-12-31T23:59:59-14:00"}, "before is out of range"),
        ({"q": "bug", "channel": "c" * 1001}, "channel is longer than 1000 characters"),
        ({"q": "bug", "mode": "m" * 300}, "invalid mode 'mmmm"),
        ({"q": "bug", "w" * 300: "1"}, "unknown parameter 'wwww"),
        ({"q": "bug", "after": "a" * 300}, "after must be an ISO 8601 date or time, not 'aaa"),
    ],
)
def test_hostile_parameters_are_a_short_400(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    answer = client.get("/search", params=params)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error.startswith(message), error
    longest = max(len(value) for pair in params.items() for value in pair)
    assert len(error) < 160 and (longest < 100 or longest > len(error)), error


def test_a_source_is_matched_as_stored_without_touching_the_file_system(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def untouchable(*args: object) -> None:
        raise AssertionError("the server looked at its file system for a client")

    monkeypatch.setattr("pathlib.Path.exists", untouchable)
    monkeypatch.setattr("pathlib.Path.expanduser", untouchable)
    for source in ("~nosuchuser", "/" + "a" * 300, "../../etc", "https://example.com/feed"):
        answer = client.get("/search", params={"q": "bug", "mode": "text", "source": source})
        assert (answer.status_code, answer.json()) == (200, []), source


def test_a_local_file_is_not_shown_by_its_place_on_the_server() -> None:
    hit = SearchHit(
        "f1", "Talk", "file:///srv/ingest/audio/talk.wav", None, 0, 12.5, 40.0, None, (), "text",
        "text", 1.0, None, None, 1,
    )  # fmt: skip
    assert link_to(hit).path == "/srv/ingest/audio/talk.wav"  # what the local command shows
    shown = public_result(link_to(hit))
    assert (shown["path"], shown["url"], shown["link"]) == (None, None, None)
    assert "/srv" not in json.dumps(shown) and shown["title"] == "Talk"
    youtube = replace(hit, url="https://www.youtube.com/watch?v=f1", extractor="Youtube")
    assert public_result(link_to(youtube))["link"] == "https://youtu.be/f1?t=12"
    assert public_model("/srv/models/minilm") == "minilm"
    assert public_model("org/model") == "org/model" and public_model(None) is None


def test_a_statement_past_the_timeout_is_a_503(empty_url: str) -> None:
    """A search waiting on a table another connection holds locked: the server's statement
    timeout ends it, and the client gets a JSON 503, not a 500 or a hang."""
    settings = settings_for(empty_url, serve_statement_timeout_s=0.3)

    async def locked(client: TestClient, path: str) -> tuple[int, str | None, Any]:
        conn = await asyncpg.connect(empty_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE corpus IN ACCESS EXCLUSIVE MODE")
                answer = await asyncio.to_thread(client.get, path)
        finally:
            await conn.close()
        return answer.status_code, answer.headers.get("retry-after"), answer.json()

    too_long = {"error": "the query took too long; narrow it or try again later"}
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for path in ("/search?q=bug&mode=text", "/status"):
            assert asyncio.run(locked(client, path)) == (503, "1", too_long), path
        assert client.get("/search", params={"q": "bug"}).status_code == 200  # not locked


def test_a_token_guards_the_real_server(empty_url: str) -> None:
    settings = settings_for(empty_url, serve_token=TOKEN)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for path in ("/health", "/status", "/search?q=bug", "/mcp"):
            assert client.get(path).status_code == 401, path
        ok = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (ok.status_code, ok.json()) == (200, {"ok": True})
        assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


def test_any_other_host_name_is_refused_by_the_real_server(client: TestClient) -> None:
    answer = client.get("/health", headers={"Host": "rebound.attacker.example:8780"})
    assert answer.status_code == 421
    # No CORS: a script of another origin in a browser may not read an answer.
    other_origin = client.get("/health", headers={"Origin": "https://attacker.example"})
    assert other_origin.status_code == 200
    assert not any(name.startswith("access-control-") for name in other_origin.headers)


def test_listening_beyond_loopback_needs_a_token_or_public() -> None:
    for addr in ("127.0.0.1:0", "localhost:8780", "[::1]:0", "127.0.0.2:8780"):
        check_exposure(load_settings(serve_addr=addr))
    for addr in ("0.0.0.0:8780", "[::]:0", "192.168.1.5:80", "corpus.example:80"):
        with pytest.raises(ConfigError, match="set INGEST_SERVE_TOKEN, or pass --public"):
            check_exposure(load_settings(serve_addr=addr))
        check_exposure(load_settings(serve_addr=addr, serve_token=TOKEN))
        check_exposure(load_settings(serve_addr=addr, serve_public=True))


def test_the_command_refuses_a_public_address_without_a_token(
    ingest_env: dict[str, str],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "serve", "--addr", "0.0.0.0:0"],
        env=ingest_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: 0.0.0.0:0 is reachable beyond this machine: set INGEST_SERVE_TOKEN, or pass "
        "--public to let anyone who reaches it read the corpus"
    ]


def test_the_command_serves_beyond_loopback_when_public(
    empty_url: str, ingest_env: dict[str, str]
) -> None:
    env = {**ingest_env, "DATABASE_URL": empty_url, "INGEST_EMBEDDING_MODEL": MODEL}
    server = start(env, "serve", "--addr", "0.0.0.0:0", "--public")
    try:
        event = server.wait_for_event("api_serving")
        assert event["auth"] == "none"
        # Not bound to loopback: the Host header is not checked (there is no name to check).
        answer = httpx.get(
            f"http://127.0.0.1:{event['port']}/health", headers={"Host": "corpus.lan"}, timeout=30
        )
        assert answer.json() == {"ok": True}
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
