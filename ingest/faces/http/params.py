"""The parameters of a request, parsed and checked: a BadRequest says what is wrong with one.

Whatever a client sends ends here as a 400 with a short message, never as an error of the
server: values are bounded in length, a NUL (which PostgreSQL's text cannot hold) is refused,
numbers are read only when short, dates only when PostgreSQL can hold them in UTC, and a
source is matched as stored without looking at the server's file system.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime

from starlette.responses import JSONResponse

from db.search import MODES
from ingest.infrastructure.config import ConfigError
from ingest.orchestration.search import SearchOptions, search_options

# Limits per request: the work of a search grows with k, and an embedding model reads only its
# first few hundred tokens anyway.
MAX_K = 100
MAX_QUERY_CHARS = 500
# Any other value: a speaker's or channel's name, a video id, a source's URL or path.
MAX_VALUE_CHARS = 1000
# An error quotes at most this much of what the client sent.
SHOWN_CHARS = 40
_PARAMS = frozenset(
    {"q", "k", "mode", "speaker", "channel", "source", "video", "after", "before", "one_per_video"}
)
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})


class BadRequest(Exception):
    """A parameter the API cannot use; its message goes back to the client."""


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Every error the server answers: {"error": message}, short and free of the server's paths."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def shown(value: str) -> str:
    """A client's value as an error message quotes it: no more than SHOWN_CHARS of it."""
    return repr(value if len(value) <= SHOWN_CHARS else f"{value[:SHOWN_CHARS]}…")


def checked(params: Mapping[str, str], known: frozenset[str]) -> Mapping[str, str]:
    """`params`, once every name is known and every value short and free of NUL characters."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadRequest(
            f"unknown parameter {shown(unknown[0])}; known: {', '.join(sorted(known))}"
        )
    for name, value in params.items():
        if "\x00" in value:
            raise BadRequest(f"{name} holds a NUL character")
        if len(value) > MAX_VALUE_CHARS:
            raise BadRequest(f"{name} is longer than {MAX_VALUE_CHARS} characters")
    return params


def date_param(params: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 date or time, in UTC (without a zone, it is UTC)."""
    value = params.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time, not {shown(value)}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # the first or last day of year 1 or 9999, in a far zone
        raise BadRequest(f"{name} is out of range: {shown(value)}") from None


def int_param(params: Mapping[str, str], name: str, default: int, most: int) -> int:
    """A whole number from 1 to `most`; read only when it has as few digits as `most`."""
    value = params.get(name, str(default))
    digits = len(str(most))
    if not (
        value.isascii() and value.isdigit() and len(value) <= digits and 1 <= int(value) <= most
    ):
        raise BadRequest(f"{name} must be a whole number from 1 to {most}, not {shown(value)}")
    return int(value)


def flag_param(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").lower()
    if value not in _TRUE | _FALSE:
        raise BadRequest(f"{name} must be true or false, not {shown(value)}")
    return value in _TRUE


def parse_search(params: Mapping[str, str]) -> tuple[str, SearchOptions]:
    """The query and options of GET /search. `source` is matched as stored, a URL as given and a
    local folder or file by its absolute path: the server's file system is none of a client's
    business."""
    params = checked(params, _PARAMS)
    query = params.get("q", "").strip()
    if not query:
        raise BadRequest("q, the words to look for, is missing")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"q is longer than {MAX_QUERY_CHARS} characters")
    mode = params.get("mode", "hybrid")
    if mode not in MODES:
        raise BadRequest(f"invalid mode {shown(mode)}: use one of {', '.join(MODES)}")
    try:
        options = search_options(
            k=int_param(params, "k", 10, MAX_K), mode=mode, speaker=params.get("speaker"),
            channel=params.get("channel"), video=params.get("video"),
            after=date_param(params, "after"), before=date_param(params, "before"),
            one_per_video=flag_param(params, "one_per_video"),
        )  # fmt: skip
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None
    filters = dataclasses.replace(options.filters, source=params.get("source"))
    return query, dataclasses.replace(options, filters=filters)
