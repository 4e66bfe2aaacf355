"""What a search may be narrowed to, as SQL over `segments s JOIN videos v`, every value a
numbered parameter."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class SearchFilters:
    speaker: str | None = None
    channel: str | None = None
    source: str | None = None  # a source as stored (`ingest.stages.sources.source_key`)
    video_id: str | None = None
    published_after: datetime | None = None  # inclusive
    published_before: datetime | None = None  # exclusive

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


class Params:
    """Numbered placeholders for the values a query uses, in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def filter_clause(filters: SearchFilters, p: Params) -> str:
    clauses = ["true"]
    if filters.speaker is not None:
        clauses.append(f"s.speaker = {p(filters.speaker)}")
    if filters.video_id is not None:
        clauses.append(f"s.video_id = {p(filters.video_id)}")
    clauses += video_conditions(
        p, "s.video_id", filters.channel, filters.source,
        filters.published_after, filters.published_before,
    )  # fmt: skip
    return " AND ".join(clauses)


def video_conditions(
    p: Params,
    video_id: str,
    channel: str | None,
    source: str | None,
    published_after: datetime | None,
    published_before: datetime | None,
) -> list[str]:
    """Conditions on a video's own facts over `videos v`, the video's id being the column
    `video_id`: the same for a search of chunks as for a listing of videos."""
    clauses = []
    if channel is not None:
        clauses.append(f"v.channel = {p(channel)}")
    if source is not None:
        listed = f"SELECT 1 FROM listings l WHERE l.source = {p(source)}"  # noqa: S608
        clauses.append(f"EXISTS ({listed} AND l.video_id = {video_id})")
    if published_after is not None:
        clauses.append(f"v.published_at >= {p(published_after, '::timestamptz')}")
    if published_before is not None:
        clauses.append(f"v.published_at < {p(published_before, '::timestamptz')}")
    return clauses
