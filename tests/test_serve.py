"""`ingest serve` against a real database with real MiniLM embeddings: the same results as the
command line, 400s for what it cannot use, and a server that listens on localhost."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from db.embedded import start_embedded, stop_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.faces.http.app import create_app
from ingest.faces.http.params import MAX_K, MAX_QUERY_CHARS
from ingest.infrastructure.config import Settings, load_settings
from tests.conftest import create_database, pg_folder
from tests.observing import start
from tests.test_search import MODEL, corpus_texts, fill
from workers.embedder import EmbedderOptions, TextEmbedder


async def prepare(database_url: str) -> None:
    chunks = corpus_texts()
    vectors = TextEmbedder(EmbedderOptions(MODEL)).encode([c.text for c in chunks])
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await fill(conn, chunks, vectors)
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def corpus_url(pg_uri: str) -> str:
    url = asyncio.run(create_database(pg_uri))
    asyncio.run(prepare(url))
    return url


@pytest.fixture(scope="module")
def client(corpus_url: str) -> Iterator[TestClient]:
    settings = load_settings(database_url=corpus_url, embedding_model=MODEL, device="cpu")
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        yield client


def search(client: TestClient, **params: Any) -> tuple[int, Any]:
    answer = client.get("/search", params=params)
    return answer.status_code, answer.json()


def test_health(client: TestClient) -> None:
    answer = client.get("/health")
    assert (answer.status_code, answer.json()) == (200, {"ok": True})


def test_search_answers_what_the_command_line_answers(client: TestClient) -> None:
    status, results = search(client, q="CVE-2024-3094", k=3)
    assert status == 200
    first = results[0]
    assert (first["video_id"], first["link"]) == ("v15", "https://youtu.be/v15?t=210")
    assert first["text_rank"] == 1 and "**" in first["snippet"]
    assert first["speakers"] == ["Host", "Guest"]


def test_search_takes_the_filters_as_parameters(client: TestClient) -> None:
    narrow = search(client, q="a memory leak", k=10, mode="vector", speaker="Rare")[1]
    assert len(narrow) == 10 and {r["speaker"] for r in narrow} == {"Rare"}
    dated = search(client, q="a bug", k=50, after="2024-01-11", before="2024-01-13")[1]
    assert {r["video_id"] for r in dated} == {"v10", "v11"}
    single = search(client, q="a bug", k=5, one_per_video="true")[1]
    assert len({r["video_id"] for r in single}) == 5
    assert {r["video_id"] for r in search(client, q="a bug", video="v03")[1]} == {"v03"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "q, the words to look for, is missing"),
        ({"q": "  "}, "is missing"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"longer than {MAX_QUERY_CHARS}"),
        ({"q": "bug", "k": "0"}, f"from 1 to {MAX_K}"),
        ({"q": "bug", "k": str(MAX_K + 1)}, f"from 1 to {MAX_K}"),
        ({"q": "bug", "k": "ten"}, f"from 1 to {MAX_K}"),
        ({"q": "bug", "mode": "fuzzy"}, "invalid mode"),
        ({"q": "bug", "after": "last tuesday"}, "ISO 8601"),
        ({"q": "bug", "one_per_video": "maybe"}, "true or false"),
        ({"q": "bug", "limit": "3"}, "unknown parameter 'limit'"),
    ],
)
def test_bad_parameters_are_400_with_a_message(
    client: TestClient, params: dict[str, str], message: str
) -> None:
    status, answer = search(client, **params)
    assert status == 400
    assert message in answer["error"]


def test_the_api_is_read_only(client: TestClient) -> None:
    assert client.post("/search", params={"q": "bug"}).status_code == 405


def test_status(client: TestClient) -> None:
    status = client.get("/status").json()
    assert status["chunks"] == 300 and status["videos"]["done"] == 30
    assert status["search"]["language"] == "english"
    assert status["search"]["vector_index"] == "none"  # below INGEST_HNSW_MIN_CHUNKS
    # The model is a folder of the server's here: shown by its name, not by where it is.
    assert status["search"]["embedding_model"] == PurePath(MODEL).name != MODEL


def test_the_command_serves_on_localhost(corpus_url: str, ingest_env: dict[str, str]) -> None:
    assert str(Settings.model_fields["serve_addr"].default).startswith("127.0.0.1:")
    env = {**ingest_env, "DATABASE_URL": corpus_url, "INGEST_EMBEDDING_MODEL": MODEL}
    server = start(env, "serve", "--addr", "127.0.0.1:0")
    try:
        port = server.wait_for_event("api_serving")["port"]
        answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
        assert answer.json() == {"ok": True}
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    # uvicorn shuts down cleanly, then ends by the signal it caught, as a service manager expects.
    assert server.returncode == -signal.SIGTERM and "Traceback" not in err, err


def test_a_busy_address_is_one_clear_line(ingest_env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "ingest", "serve", "--addr", addr],
            env=ingest_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {addr}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_a_503_with_a_json_error_until_it_is_back() -> None:
    """What a load balancer or a client sees while the database is away: every endpoint
    answers 503 as JSON (not a hang, not a crash, and not the server's socket path), and once
    the database is back the same server answers health and searches again, without a restart."""
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    settings = load_settings(database_url=uri, embedding_model=MODEL, device="cpu")
    try:
        app = create_app(settings)
        with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
            assert client.get("/health").json() == {"ok": True}
            stop_embedded(pgdata)  # this test process holds the server's only handle
            for path in ("/health", "/status", "/search?q=a+bug"):
                down = client.get(path)
                assert down.status_code == 503, (path, down.text)
                assert down.headers["content-type"] == "application/json"
                assert down.json() == {"error": "database unavailable; try again shortly"}
                assert down.headers["retry-after"] == "1"
            assert start_embedded(pgdata) == uri
            up = client.get("/health")
            assert (up.status_code, up.json()) == (200, {"ok": True})
            assert search(client, q="a bug") == (200, [])  # an empty corpus, searched
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(pgdata.parent, ignore_errors=True)
