"""The corpus for assistants, over the Model Context Protocol: three read-only tools that search
it, read a video's transcript and list its videos.

`ingest mcp` serves them on stdin/stdout; `ingest serve` at /mcp (Streamable HTTP). Either way
one Searcher (pool and embedding model) answers every call, the same search as the command line
and the HTTP API. A bad argument, or a database that cannot be reached, is a tool error of one
line. Over HTTP a local file is not shown by its place on the server (as at GET /search); on
stdin/stdout, the assistant's own machine, its link opens it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.routing import BaseRoute

import ingest
from db.search import MODES
from ingest.faces.http.api import UNAVAILABLE, public_model, public_result
from ingest.faces.http.params import (
    MAX_K,
    MAX_QUERY_CHARS,
    BadRequest,
    checked,
    date_param,
    parse_search,
)
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import CONNECTION_ERRORS
from ingest.orchestration.search import Result, Searcher, open_searcher
from ingest.orchestration.transcripts import (
    Transcript,
    TranscriptChunk,
    VideoFilters,
    VideoInfo,
    get_transcript,
    list_videos,
)

log = structlog.get_logger()
PATH = "/mcp"
MAX_LIMIT = 100
_INSTRUCTIONS = (
    "A corpus of transcribed videos and audio, each chunk with its speaker and a link that "
    "opens the media at the second it starts. `search` finds chunks by meaning and by words; "
    "`get_transcript` reads a video (or part of it) in order; `list_videos` pages through the "
    "videos. Quote the links so that a reader can listen for themselves."
)
_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
_AWAY = (TimeoutError, asyncpg.TooManyConnectionsError, *CONNECTION_ERRORS)


@dataclass(frozen=True, slots=True)
class Found:
    """A search result: `ingest search --json`'s object without `path`."""

    video_id: str
    seg_index: int
    title: str | None
    channel: str | None
    published_at: str | None
    speaker: str | None
    speakers: list[str]
    start_s: float
    end_s: float
    link: str | None  # None: a local file, over HTTP
    url: str | None
    score: float
    similarity: float | None
    vector_rank: int | None
    text_rank: int | None
    snippet: str
    text: str
    transcript_source: str | None


@dataclass(frozen=True, slots=True)
class Video:
    """A video's metadata; `link` opens it at 0 s."""

    id: str
    url: str | None  # None (and no link): a local file, over HTTP
    link: str | None
    title: str | None
    channel: str | None
    published_at: datetime | None
    duration_s: float | None
    status: str
    transcript_source: str | None
    asr_model: str | None
    embedding_model: str | None
    chunk_count: int | None
    done_at: datetime | None


@dataclass(frozen=True, slots=True)
class Chunk:
    seg_index: int
    start_s: float
    end_s: float
    speaker: str | None  # the one heard most
    speakers: list[str]  # everyone heard in the chunk, `speaker` first
    text: str
    link: str | None  # opens the media at start_s


# Without slots, unlike every other record here: the SDK derives a tool's output schema from
# the class attributes of the dataclass it returns, which slots turn into descriptors.
@dataclass(frozen=True)
class TranscriptPart:
    """A video and its chunks in order (those of the range asked for)."""

    video: Video
    chunks: list[Chunk]


def found(result: Result, public: bool) -> Found:
    values = public_result(result) if public else result.as_json()
    del values["path"]
    return Found(**values)


def video(info: VideoInfo, public: bool) -> Video:
    """The video's facts by name, less what a client has no use for (its extractor, its path);
    over HTTP, a local file without its place and a model folder by its name alone."""
    shown = not (public and info.url.startswith("file:"))
    model = public_model if public else lambda name: name
    facts = {field.name: getattr(info, field.name) for field in fields(Video)}
    return Video(**{
        **facts, "url": info.url if shown else None, "link": info.link if shown else None,
        "asr_model": model(info.asr_model), "embedding_model": model(info.embedding_model),
    })  # fmt: skip


def transcript_part(transcript: Transcript, public: bool) -> TranscriptPart:
    shown = video(transcript.video, public)
    return TranscriptPart(shown, [chunk(c, shown.link is not None) for c in transcript.chunks])


def chunk(c: TranscriptChunk, linked: bool) -> Chunk:
    link = c.link if linked else None
    return Chunk(c.seg_index, c.start_s, c.end_s, c.speaker, list(c.speakers), c.text, link)


@contextmanager
def _tool_errors(tool: str, public: bool) -> Iterator[None]:
    """What went wrong in one call, as a tool error of one line; the details of what the caller
    cannot act on go to the log."""
    try:
        yield
    except ToolError:
        raise
    except BadRequest as exc:
        raise ToolError(str(exc)) from None
    except ConfigError as exc:  # the corpus and the configured model disagree
        log.error("search_unavailable", tool=tool, error=str(exc))
        hidden = "search unavailable: the server's set-up does not fit the corpus"
        raise ToolError(hidden if public else str(exc)) from None
    except asyncpg.QueryCanceledError:  # before _AWAY, which holds its base class
        raise ToolError("the query took too long; narrow it or try again later") from None
    except _AWAY as exc:
        log.warning("database_unavailable", tool=tool, error=describe_error(exc))
        raise ToolError(UNAVAILABLE) from None
    except Exception:  # one call: the next one may well succeed
        log.error("mcp_tool_failed", tool=tool, exc_info=True)
        raise ToolError("internal error; the server's log says more") from None


def _texts(**values: str | None) -> Mapping[str, str]:
    """The text arguments given, checked by the rules of the HTTP parameters: short, no NUL."""
    return checked({k: v for k, v in values.items() if v is not None}, frozenset(values))


def _seconds(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not 0 <= value < float("inf"):
            raise ToolError(f"{name} must be a number of seconds from 0, not {value!r}")


def _search_params(q: str, k: int, one_per_video: bool, **text: str | None) -> dict[str, str]:
    """The arguments as GET /search takes them, so that both are checked by the same rules."""
    given = {name: value for name, value in text.items() if value is not None}
    return {**given, "q": q, "k": str(k), "one_per_video": str(one_per_video).lower()}


def _bounded(description: str, low: int, high: int | None = None) -> Any:
    """An integer argument's description, its range in the schema (checked by the tool itself,
    for a message of one line)."""
    limits: dict[str, Any] = {"minimum": low} if high is None else {"minimum": low, "maximum": high}
    return Field(description=description, json_schema_extra=limits)


Query = Annotated[
    str,
    Field(
        description="What to look for: words, a question, a name, an exact phrase in "
        f'"quotes", -word to exclude. At most {MAX_QUERY_CHARS} characters.'
    ),
]
Mode = Annotated[
    str,
    Field(
        description="hybrid: by meaning and words; vector: by meaning; text: by words.",
        json_schema_extra={"enum": list(MODES)},
    ),
]
Speaker = Annotated[str | None, Field(description="Only chunks of this speaker.")]
Channel = Annotated[str | None, Field(description="Only videos of this channel.")]
Source = Annotated[str | None, Field(description="Only videos this source (as ingested) lists.")]
VideoId = Annotated[str | None, Field(description="Only this video (its id).")]
Date = Annotated[
    str | None, Field(description="ISO 8601 date or time, e.g. 2024-01-31 (UTC without a zone).")
]
Second = Annotated[float | None, Field(description="A time in the video, in seconds.")]


class CorpusTools:
    """The tools, over the Searcher that `searcher()` gives: the one the server holds. `public`:
    callers elsewhere, who are not shown where local files lie."""

    def __init__(self, searcher: Callable[[], Searcher], public: bool) -> None:
        self._searcher = searcher
        self._public = public

    async def search(
        self,
        q: Query,
        k: Annotated[int, _bounded(f"How many chunks, 1 to {MAX_K}.", 1, MAX_K)] = 10,
        mode: Mode = "hybrid",
        speaker: Speaker = None,
        channel: Channel = None,
        source: Source = None,
        video: VideoId = None,
        after: Date = None,
        before: Date = None,
        one_per_video: Annotated[bool, Field(description="The best chunk of each video.")] = False,
    ) -> list[Found]:
        """The chunks of the corpus that best match `q`, best first: each with its video, speaker,
        time range, a snippet with the matching words between ** and **, the whole text, and a
        link that opens the media at the second the chunk starts. after/before: upload date."""
        text = {"mode": mode, "speaker": speaker, "channel": channel, "source": source}
        text |= {"video": video, "after": after, "before": before}
        with _tool_errors("search", self._public):
            query, options = parse_search(_search_params(q, k, one_per_video, **text))
            results = await self._searcher().search(query, options)
        return [found(r, self._public) for r in results]

    async def get_transcript(
        self,
        video_id: Annotated[str, Field(description="The video's id, as search gives it.")],
        start_s: Second = None,
        end_s: Second = None,
    ) -> TranscriptPart:
        """A video's metadata and its transcript in order: chunks with speaker, start and end
        (seconds) and text, each with a link to its second. With start_s and/or end_s, only the
        chunks that overlap that part."""
        _seconds(start_s=start_s, end_s=end_s)
        with _tool_errors("get_transcript", self._public):
            _texts(video_id=video_id)
            async with self._searcher().pool.acquire() as conn:
                transcript = await get_transcript(conn, video_id, start_s, end_s)
        if transcript is None:
            raise ToolError(f"no video {video_id!r} in the corpus; list_videos gives the ids")
        return transcript_part(transcript, self._public)

    async def list_videos(
        self,
        channel: Channel = None,
        source: Source = None,
        after: Date = None,
        before: Date = None,
        limit: Annotated[int, _bounded(f"How many videos, 1 to {MAX_LIMIT}.", 1, MAX_LIMIT)] = 20,
        offset: Annotated[
            int, _bounded("How many to skip: the next page is offset + limit.", 0)
        ] = 0,
    ) -> list[Video]:
        """The transcribed videos, newest first, with their metadata: a page of `limit` from
        `offset`. after/before: upload date."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ToolError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit}")
        if offset < 0:
            raise ToolError(f"offset must be 0 or more, not {offset}")
        with _tool_errors("list_videos", self._public):
            given = _texts(channel=channel, source=source, after=after, before=before)
            filters = VideoFilters(
                channel, source, date_param(given, "after"), date_param(given, "before")
            )
            async with self._searcher().pool.acquire() as conn:
                videos = await list_videos(conn, filters, limit, offset)
        return [video(v, self._public) for v in videos]


def create_server(searcher: Callable[[], Searcher], public: bool) -> MCPServer[Any]:
    """An MCP server with the corpus's tools, each call answered by `searcher()`."""
    # The SDK configures the root logger (on stderr) when a server is made; at WARNING, the
    # calls it refuses stay out of the log.
    server: MCPServer[Any] = MCPServer(
        "ingest", version=ingest.__version__, instructions=_INSTRUCTIONS, log_level="WARNING"
    )
    tools = CorpusTools(searcher, public)
    for tool in (tools.search, tools.get_transcript, tools.list_videos):
        server.add_tool(tool, annotations=_READ_ONLY, structured_output=True)
    return server


async def serve_stdio(settings: Settings) -> None:
    """`ingest mcp`: the tools on stdin/stdout until the client closes them."""
    async with open_searcher(settings) as searcher:
        log.info("mcp_serving", transport="stdio")
        await create_server(lambda: searcher, public=False).run_stdio_async()


class HttpEndpoint:
    """/mcp of `ingest serve`: the tools over Streamable HTTP, answered by the app's Searcher
    once `serving` is entered in the app's lifespan."""

    def __init__(self) -> None:
        self._searcher: Searcher | None = None
        self._server = create_server(self._current, public=True)
        app = self._server.streamable_http_app(
            streamable_http_path=PATH,
            # Each call a request of its own, answered with plain JSON: the tools send nothing
            # unasked, so no session is kept and no stream stays open, holding one of the
            # server's places for requests.
            stateless_http=True,
            json_response=True,
            # The app's own middleware checks Host (and the token) on every path, /mcp included.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.routes: list[BaseRoute] = list(app.routes)

    def _current(self) -> Searcher:
        if self._searcher is None:
            raise ToolError("the server is not serving")
        return self._searcher

    @asynccontextmanager
    async def serving(self, searcher: Searcher) -> AsyncIterator[None]:
        self._searcher = searcher
        try:
            async with self._server.session_manager.run():
                yield
        finally:
            self._searcher = None
