"""The MCP tools through the SDK's own client, on a real corpus with real MiniLM embeddings:
`ingest mcp` on stdin/stdout, /mcp of `ingest serve` over Streamable HTTP, and in-process for
what a caller gets wrong and a database that goes away."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from db.pool import create_pool
from db.search import SearchHit
from ingest.faces.mcp import create_server, found, transcript_part
from ingest.infrastructure.config import load_settings
from ingest.orchestration.search import Searcher, link_to
from ingest.orchestration.transcripts import Transcript, TranscriptChunk, VideoInfo, link_at
from tests.conftest import create_database
from tests.faultproxy import FaultProxy, postgres_address
from tests.observing import start
from tests.test_search import MODEL
from tests.test_serve import prepare

pytestmark = pytest.mark.anyio
TOOLS = {"search", "get_transcript", "list_videos"}
RARE_LINK = "https://youtu.be/v15?t=210"  # the chunk naming CVE-2024-3094 starts at 210.5 s
TOKEN = "a-token-for-the-test"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ACCEPT = {"Accept": "application/json, text/event-stream"}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


@pytest.fixture(scope="module")
def corpus_url(pg_uri: str) -> str:
    url = asyncio.run(create_database(pg_uri))
    asyncio.run(prepare(url))
    return url


@pytest.fixture
def env(corpus_url: str, ingest_env: dict[str, str]) -> dict[str, str]:
    return {**ingest_env, "DATABASE_URL": corpus_url, "INGEST_EMBEDDING_MODEL": MODEL}


async def call(session: ClientSession | Client, tool: str, **arguments: Any) -> Any:
    """A tool's structured answer; a tool error fails the test with its message."""
    result = await session.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return (
        result.structured_content["result"]
        if tool != "get_transcript"
        else result.structured_content
    )


def text(result: object) -> str:
    assert isinstance(result, CallToolResult)
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def check_the_tools(session: ClientSession) -> None:
    """What an assistant does with the corpus: find a rare word, read around it, page the list."""
    listed = await session.list_tools()
    assert {t.name for t in listed.tools} == TOOLS
    assert all(t.output_schema and t.description for t in listed.tools)

    found = await call(session, "search", q="CVE-2024-3094", k=3)
    first = found[0]
    assert (first["video_id"], first["link"], first["text_rank"]) == ("v15", RARE_LINK, 1)
    assert first["speakers"] == ["Host", "Guest"] and "**" in first["snippet"]
    assert "path" not in first and len(found) == 3

    whole = await call(session, "get_transcript", video_id="v15")
    assert whole["video"]["id"] == "v15" and whole["video"]["title"] == "Talk 15"
    assert [c["seg_index"] for c in whole["chunks"]] == list(range(10))
    starts = [c["start_s"] for c in whole["chunks"]]
    assert starts == sorted(starts)
    assert whole["chunks"][7]["link"] == RARE_LINK and "CVE-2024-3094" in whole["chunks"][7]["text"]
    part = await call(session, "get_transcript", video_id="v15", start_s=200, end_s=250)
    assert [c["seg_index"] for c in part["chunks"]] == [6, 7, 8]

    page = await call(session, "list_videos", limit=5)
    after = await call(session, "list_videos", limit=5, offset=5)
    assert [v["id"] for v in page + after] == [f"v{n:02d}" for n in range(29, 19, -1)]
    assert page[0]["link"] == "https://youtu.be/v29?t=0" and "path" not in page[0]


async def test_ingest_mcp_serves_the_tools_on_stdin_and_stdout(
    env: dict[str, str], tmp_path: Path
) -> None:
    server = StdioServerParameters(
        command=str(Path(sys.executable).parent / "ingest"), args=["mcp"], env=env
    )
    unreadable: list[object] = []  # anything on stdout that is not the protocol

    async def on_message(message: object) -> None:
        if isinstance(message, Exception):
            unreadable.append(message)

    log = tmp_path / "stderr.log"
    with log.open("w") as errlog, anyio.fail_after(240):
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            await session.initialize()
            await check_the_tools(session)
            refused = await session.call_tool("get_transcript", {"video_id": "nope"})
            assert refused.is_error and "no video 'nope'" in text(refused)
    assert not unreadable
    logged = log.read_text()
    assert '"event": "model_loaded"' in logged and "Traceback" not in logged, logged


async def test_ingest_serve_answers_the_tools_at_mcp_behind_its_guard(env: dict[str, str]) -> None:
    server = start({**env, "INGEST_SERVE_TOKEN": TOKEN}, "serve", "--addr", "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.wait_for_event('api_serving')['port']}"
        with anyio.fail_after(240):
            async with (
                httpx2.AsyncClient(headers=BEARER, timeout=120) as client,
                streamable_http_client(f"{url}/mcp", http_client=client) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                await check_the_tools(session)
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                answer = await http.get(
                    "/search", params={"q": "CVE-2024-3094", "k": 1}, headers=BEARER
                )
                anonymous = await http.post("/mcp", json=LIST_TOOLS, headers=ACCEPT)
                elsewhere = await http.post(
                    "/mcp", json=LIST_TOOLS, headers={**ACCEPT, **BEARER, "Host": "evil.example"}
                )
        assert answer.json()[0]["link"] == RARE_LINK
        assert (anonymous.status_code, elsewhere.status_code) == (401, 421)
        # One Searcher behind /search and /mcp: the model is loaded once.
        assert len(server.events("model_loading")) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == -signal.SIGTERM and "Traceback" not in err, err


@pytest.fixture
async def tools(corpus_url: str) -> AsyncIterator[Client]:
    """The tools in-process, over a Searcher on the corpus."""
    pool = await create_pool(corpus_url)
    settings = load_settings(database_url=corpus_url, embedding_model=MODEL, device="cpu")
    searcher = Searcher(pool, settings)
    try:
        async with Client(create_server(lambda: searcher, public=False)) as client:
            yield client
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("search", {"q": "bug", "k": 101}, "k must be a whole number from 1 to 100, not '101'"),
        ("search", {"q": "bug", "k": 0}, "k must be a whole number from 1 to 100"),
        ("search", {"q": "  "}, "q, the words to look for, is missing"),
        ("search", {"q": "x" * 501}, "q is longer than 500 characters"),
        ("search", {"q": "bug", "mode": "fuzzy"}, "invalid mode 'fuzzy'"),
        ("search", {"q": "bug", "after": "last tuesday"}, "after must be an ISO 8601 date"),
        ("search", {"q": "bug\x00"}, "q holds a NUL character"),
        ("search", {"q": "bug", "speaker": "A\x00"}, "speaker holds a NUL character"),
        ("get_transcript", {"video_id": "v99"}, "no video 'v99' in the corpus"),
        ("get_transcript", {"video_id": "v\x0015"}, "video_id holds a NUL character"),
        ("get_transcript", {"video_id": "v15", "start_s": -1}, "start_s must be a number of"),
        ("list_videos", {"limit": 101}, "limit must be a whole number from 1 to 100, not 101"),
        ("list_videos", {"offset": -1}, "offset must be 0 or more"),
        ("list_videos", {"before": "2024-13-01"}, "before must be an ISO 8601 date or time"),
        ("list_videos", {"channel": "\x00"}, "channel holds a NUL character"),
        ("list_videos", {"source": "s" * 1001}, "source is longer than 1000 characters"),
    ],
)
async def test_bad_arguments_are_a_tool_error_of_one_line(
    tools: Client, tool: str, arguments: dict[str, Any], message: str
) -> None:
    result = await tools.call_tool(tool, arguments)
    assert result.is_error and message in text(result)
    assert "\n" not in text(result) and "Traceback" not in text(result)


async def test_filters_are_those_of_search_and_of_the_list(tools: Client) -> None:
    rare = await call(tools, "search", q="a memory leak", k=10, mode="vector", speaker="Rare")
    assert len(rare) == 10 and {r["speaker"] for r in rare} == {"Rare"}
    dated = await call(tools, "search", q="a bug", k=50, after="2024-01-11", before="2024-01-13")
    assert {r["video_id"] for r in dated} == {"v10", "v11"}
    single = await call(tools, "search", q="a bug", k=5, one_per_video=True)
    assert len({r["video_id"] for r in single}) == 5
    listed = await call(tools, "list_videos", source="listing-a")
    assert [v["id"] for v in listed] == ["v02", "v01", "v00"]
    even = await call(tools, "list_videos", channel="even", after="2024-01-25", limit=100)
    assert [v["id"] for v in even] == ["v28", "v26", "v24"]
    assert await call(tools, "list_videos", offset=30) == []


async def test_an_unreachable_database_is_a_tool_error_saying_so(corpus_url: str) -> None:
    settings = load_settings(database_url=corpus_url, embedding_model=MODEL, device="cpu")
    with FaultProxy(postgres_address(corpus_url)) as proxy:
        pool = await create_pool(proxy.url(corpus_url))
    # The proxy is gone: the pool's connections are cut and new ones refused.
    searcher = Searcher(pool, settings)
    try:
        async with Client(create_server(lambda: searcher, public=False)) as client:
            for tool, arguments in [
                ("search", {"q": "a bug", "mode": "text"}),
                ("get_transcript", {"video_id": "v15"}),
                ("list_videos", {}),
            ]:
                result = await client.call_tool(tool, arguments)
                assert result.is_error and "database unavailable" in text(result), text(result)
                assert str(proxy.port) not in text(result)  # where the database is stays unsaid
    finally:
        pool.terminate()


def test_over_http_a_local_file_is_not_shown_by_its_place_on_the_server() -> None:
    url = "file:///srv/talks/secret%20plans.wav"
    link, path = link_at(None, "f1", url, 0)
    info = VideoInfo(
        "f1", url, "Plans", None, None, None, 60.0, "done", "asr", None, MODEL, 1, None, link, path
    )
    chunk = TranscriptChunk(
        0, 12.5, 30.0, "Host", ("Host",), "Hello.", link_at(None, "f1", url, 12.5)[0]
    )
    local = transcript_part(Transcript(info, (chunk,)), public=False)
    assert (local.video.link, local.chunks[0].link) == (f"{url}#t=0", f"{url}#t=12")
    public = transcript_part(Transcript(info, (chunk,)), public=True)
    assert (public.video.url, public.video.link, public.chunks[0].link) == (None, None, None)
    assert public.video.title == "Plans" and public.chunks[0].text == "Hello."
    assert (local.video.embedding_model, public.video.embedding_model) == (MODEL, Path(MODEL).name)
    hit = SearchHit("f1", "Plans", url, None, 0, 12.5, 30.0, "Host", ("Host",), "Hi.", "Hi.", 1.0,
                    0.9, 1, 1)  # fmt: skip
    assert found(link_to(hit), public=False).link == f"{url}#t=12"
    assert (found(link_to(hit), public=True).link, found(link_to(hit), public=True).url) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("public", "message"),
    [(False, "the corpus was embedded with"), (True, "search unavailable: the server's set-up")],
)
async def test_a_corpus_of_another_model_is_a_tool_error(
    corpus_url: str, public: bool, message: str
) -> None:
    settings = load_settings(database_url=corpus_url, embedding_model="other/model", device="cpu")
    pool = await create_pool(corpus_url)
    searcher = Searcher(pool, settings)
    try:
        async with Client(create_server(lambda: searcher, public=public)) as client:
            result = await client.call_tool("search", {"q": "a bug"})
    finally:
        await pool.close()
    assert result.is_error and message in text(result)
    assert (MODEL in text(result)) is not public  # the server's model folder, only to its user
