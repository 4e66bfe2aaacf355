"""The corpus in a browser: a search page whose address carries its query, and a transcript page
per video, rendered on the server from the same search and transcript functions the JSON API and
the command line use. Every text from the corpus goes through Jinja's autoescaping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import jinja2
import structlog
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from db.search import MODES
from ingest.faces.http.api import UNAVAILABLE, public_model
from ingest.faces.http.params import MAX_VALUE_CHARS, BadRequest, parse_search, shown
from ingest.infrastructure.config import ConfigError
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import CONNECTION_ERRORS
from ingest.orchestration.search import Searcher
from ingest.orchestration.transcripts import CorpusFacts, VideoInfo, corpus_facts, get_transcript

HERE = Path(__file__).parent
DOWNLOADS = ("srt", "vtt", "txt", "json")
# The database is away (or has no connection left to give): the visitor may try again shortly.
_AWAY = (TimeoutError, asyncpg.TooManyConnectionsError, *CONNECTION_ERRORS)
log = structlog.get_logger()


def clock(seconds: float) -> str:
    """A second of the media as a player shows it: 3:05, or 1:02:05 past the hour."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def marked(snippet: str) -> Markup:
    """A snippet's matching words (between ** and **, as the search marks them) in <mark>,
    everything else escaped: the text itself never becomes markup."""
    # Adjacent matches (a word the parser split, CVE-2024-3094) as one mark.
    parts = snippet.replace("****", "").split("**")
    if len(parts) % 2 == 0:  # an unpaired ** belongs to the text
        parts[-2:] = ["**".join(parts[-2:])]
    return Markup("").join(
        Markup("<mark>{}</mark>").format(part) if i % 2 else escape(part)
        for i, part in enumerate(parts)
    )


def transcript_href(video_id: str, seg_index: int | None = None) -> str:
    path = f"/videos/{quote(video_id, safe='')}"
    return path if seg_index is None else f"{path}#chunk-{seg_index}"


def download_href(video_id: str, extension: str) -> str:
    return f"{transcript_href(video_id)}/transcript.{extension}"


def playable(link: str) -> str | None:
    """A link a visitor may follow; None for a local file, which the server does not show by its
    place on the server (as the JSON API does not), and which no browser opens from a web page."""
    return None if link.startswith("file:") else link


def origin(video: VideoInfo) -> str:
    """Where a transcript came from, a speech model of the server's own by its folder's name."""
    model = video.asr_model
    if video.transcript_source and not (model and model in video.transcript_source):
        return video.transcript_source
    return f"speech recognition ({public_model(model)})" if model else "not recorded"


def moment(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(clock=clock, marked=marked, moment=moment, playable=playable)
    env.globals.update(
        transcript_href=transcript_href, download_href=download_href, downloads=DOWNLOADS,
        origin=origin,
    )  # fmt: skip
    return env


templates = Jinja2Templates(env=_environment())


@dataclass(frozen=True, slots=True)
class SearchForm:
    """What the form shows: the request's own values, so a search's page repeats its query."""

    q: str = ""
    mode: str = "hybrid"
    k: str = "10"
    channel: str = ""
    speaker: str = ""
    after: str = ""
    before: str = ""
    one_per_video: bool = False

    @classmethod
    def of(cls, params: Mapping[str, str]) -> SearchForm:
        def value(name: str, default: str = "") -> str:
            # Shown back even when refused: without NULs, and no longer than a value may be.
            return params.get(name, default).replace("\x00", "")[:MAX_VALUE_CHARS]

        return cls(
            q=value("q"), mode=value("mode", "hybrid"), k=value("k", "10"),
            channel=value("channel"), speaker=value("speaker"),
            after=value("after"), before=value("before"),
            one_per_video=value("one_per_video").lower() in {"1", "true", "yes"},
        )  # fmt: skip


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status)


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    page = _page(request, "error.html", {"title": title, "message": message}, status)
    if status == 503:
        page.headers["Retry-After"] = "1"
    return page


async def _guarded(request: Request, render: Callable[[], Awaitable[Response]]) -> Response:
    """The page, or a 503 page, in the words of the JSON API's errors, while the database cannot
    be reached, a statement runs too long, or the corpus does not fit the server's settings: none
    is the visitor's doing. What went wrong goes to the log, not to the visitor."""
    try:
        return await render()
    except _AWAY as exc:
        log.warning("database_unavailable", path=request.url.path, error=describe_error(exc))
        return _error_page(request, 503, "Database unavailable", UNAVAILABLE)
    except asyncpg.QueryCanceledError as exc:
        log.warning("statement_timeout", path=request.url.path, error=describe_error(exc))
        message = "the query took too long; narrow it or try again later"
        return _error_page(request, 503, "Search took too long", message)
    except ConfigError as exc:
        log.error("search_unavailable", error=str(exc))
        message = "search unavailable: the server's set-up does not fit the corpus"
        return _error_page(request, 503, "Search unavailable", message)


async def _facts(searcher: Searcher) -> CorpusFacts:
    async with searcher.pool.acquire() as conn:
        return await corpus_facts(conn)


async def search_page(request: Request) -> Response:
    # An empty field of the form is no filter: the form sends every field, filled or not.
    params = {k: v for k, v in request.query_params.items() if v.strip()}
    return await _guarded(request, lambda: _search(request, params))


async def _search(request: Request, params: dict[str, str]) -> Response:
    searcher: Searcher = request.app.state.searcher
    facts = await _facts(searcher)
    page: dict[str, Any] = {
        "form": SearchForm.of(params), "facts": facts, "modes": MODES,
        "results": None, "error": None, "api": None,
    }  # fmt: skip
    if "q" not in params:
        return _page(request, "search.html", page)
    try:
        query, options = parse_search(params)
    except BadRequest as exc:
        return _page(request, "search.html", {**page, "error": str(exc)}, 400)
    results = await searcher.search(query, options)
    api = f"/search?{urlencode(params)}"  # the same search, answered as JSON
    return _page(request, "search.html", {**page, "results": results, "api": api})


async def transcript_page(request: Request) -> Response:
    return await _guarded(request, lambda: _transcript(request))


async def _transcript(request: Request) -> Response:
    searcher: Searcher = request.app.state.searcher
    video_id = request.path_params["video_id"]
    # An id no video can have (PostgreSQL's text holds no NUL) is unknown, not an error.
    known = "\x00" not in video_id and len(video_id) <= MAX_VALUE_CHARS
    async with searcher.pool.acquire() as conn:
        transcript = await get_transcript(conn, video_id) if known else None
        facts = await corpus_facts(conn)
    if transcript is None:
        return _error_page(request, 404, "No such video", f"no video {shown(video_id)} here")
    return _page(request, "transcript.html", {"transcript": transcript, "facts": facts})


routes: list[BaseRoute] = [
    Route("/", search_page, methods=["GET"], name="search_page"),
    Route("/videos/{video_id}", transcript_page, methods=["GET"], name="transcript_page"),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]
