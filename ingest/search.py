"""Searching the corpus by meaning, with links to the second a chunk starts."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from db.corpus import recorded_embedding_model
from db.search import SearchHit, search_chunks
from ingest.config import ConfigError, Settings
from ingest.database import open_database
from ingest.models import load_embedder


@dataclass(frozen=True, slots=True)
class Result:
    hit: SearchHit
    link: str

    def as_json(self) -> dict[str, Any]:
        published = self.hit.published_at
        return {
            **asdict(self.hit),
            "published_at": published.isoformat() if published else None,
            "link": self.link,
        }


def link_to(hit: SearchHit) -> str:
    second = int(hit.start_s)
    if hit.extractor == "Youtube":
        return f"https://youtu.be/{hit.video_id}?t={second}"
    # A media fragment: browsers and players start file and HTTP audio at that second.
    return f"{hit.url}#t={second}"


async def search(
    query: str, settings: Settings, *, k: int, speaker: str | None = None
) -> list[Result]:
    async with open_database(settings) as pool:
        async with pool.acquire() as conn:
            recorded = await recorded_embedding_model(conn)
        if recorded is None:
            return []
        if recorded != settings.embedding_model:
            raise ConfigError(
                f"the corpus was embedded with {recorded}, but INGEST_EMBEDDING_MODEL is "
                f"{settings.embedding_model}; search with the corpus's model"
            )
        embedder = await asyncio.to_thread(load_embedder, settings)
        vector = (await asyncio.to_thread(embedder.encode, [query]))[0]
        async with pool.acquire() as conn:
            hits = await search_chunks(conn, vector, k=k, speaker=speaker)
    return [Result(hit, link_to(hit)) for hit in hits]
