"""Searching the corpus by meaning and by words, with links to the second a chunk starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from db.corpus import CorpusModel, ensure_search_index, pinned_corpus_model
from db.search import MODES, Mode, SearchHit, SearchQuery, search_chunks
from db.search import ensure_search_language as _ensure_language
from db.search_filters import SearchFilters
from ingest.infrastructure.config import ConfigError, Settings
from ingest.infrastructure.database import open_database
from ingest.infrastructure.models import load_embedder
from ingest.orchestration.transcripts import link_at
from ingest.stages.sources import source_key
from workers.embedder import TextEmbedder

log = structlog.get_logger()
# A query embedded just before a switch of models is embedded again; a second switch within
# one query is not worth waiting out.
_SWITCHES = 3


@dataclass(frozen=True, slots=True)
class SearchOptions:
    k: int = 10
    mode: Mode = "hybrid"
    filters: SearchFilters = field(default_factory=SearchFilters)
    one_per_video: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    hit: SearchHit
    link: str  # opens the media at the chunk's second
    path: str | None = None  # the local file, for files

    def as_json(self) -> dict[str, Any]:
        """One result in a fixed shape: the same keys, in the same order, every time."""
        h = self.hit
        return {
            "video_id": h.video_id,
            "seg_index": h.seg_index,
            "title": h.title,
            "channel": h.channel,
            "published_at": h.published_at.isoformat() if h.published_at else None,
            "speaker": h.speaker,
            "speakers": list(h.speakers),
            "start_s": h.start_s,
            "end_s": h.end_s,
            "link": self.link,
            "path": self.path,
            "url": h.url,
            "score": h.score,
            "similarity": h.similarity,
            "vector_rank": h.vector_rank,
            "text_rank": h.text_rank,
            "snippet": h.snippet,
            "text": h.text,
            "transcript_source": h.transcript_source,
        }


def link_to(hit: SearchHit) -> Result:
    link, path = link_at(hit.extractor, hit.video_id, hit.url, hit.start_s)
    return Result(hit, link, path)


class Searcher:
    """The corpus's pool and embedding model, loaded once: for one query of the command line
    or the many of `ingest serve`. When the corpus is re-embedded with another model while it
    runs (`ingest reembed`), it follows: queries are embedded with the new model from then on."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self._model = settings.embedding_model  # what queries are embedded with
        self._embedder: TextEmbedder | None = None
        self._lock = asyncio.Lock()

    async def search(self, text: str, options: SearchOptions) -> list[Result]:
        if not text.strip():
            raise ConfigError("the query is empty: give some words to look for")
        for _ in range(_SWITCHES):
            corpus = await self._corpus()
            if corpus is None:
                return []
            vector = None
            if options.mode != "text":
                embedder = await self._embedder_of(corpus)
                vector = (await asyncio.to_thread(embedder.encode, [text]))[0]
            query = SearchQuery(
                text, vector, options.k, options.mode, options.filters, options.one_per_video,
                self.settings.hnsw_ef_search,
            )  # fmt: skip
            async with self.pool.acquire() as conn, conn.transaction(readonly=True):
                # The vector is of the model read above only if the corpus has not switched
                # since; pinned, it cannot switch while the query reads it.
                if await pinned_corpus_model(conn) == corpus:
                    hits = await search_chunks(conn, query)
                    return [link_to(hit) for hit in hits]
        raise ConfigError("the corpus's embedding model changed during the query; search again")

    async def _corpus(self) -> CorpusModel | None:
        """The corpus's model, None for an empty corpus; an error where its vectors are not of
        the configured model (or the one a re-embedding replaced it with): comparing them with
        the query would rank nonsense."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT embedding_model, embedding_dim, previous_model,"
                " (SELECT embedding_model FROM videos WHERE chunk_count > 0"
                "  AND embedding_model IS DISTINCT FROM c.embedding_model LIMIT 1) AS stray"
                " FROM corpus c"
            )
        if row is None:
            return None
        corpus = CorpusModel(row["embedding_model"], row["embedding_dim"], row["previous_model"])
        if corpus.model != self._model and corpus.previous == self._model:
            log.info("search_model_followed", model=corpus.model, previous=self._model)
            self._model = corpus.model
        for recorded in (corpus.model, row["stray"]):
            if recorded is not None and recorded != self._model:
                raise ConfigError(
                    f"the corpus was embedded with {recorded}, but INGEST_EMBEDDING_MODEL is "
                    f"{self._model}; search with the corpus's model"
                )
        return corpus

    async def _embedder_of(self, corpus: CorpusModel) -> TextEmbedder:
        async with self._lock:
            if self._embedder is None or self._embedder.name != corpus.model:
                self._embedder = None  # the model replaced is not kept beside the new one
                settings = self.settings.model_copy(update={"embedding_model": corpus.model})
                self._embedder = await asyncio.to_thread(load_embedder, settings)
        if self._embedder.dimension != corpus.dim:
            raise ConfigError(
                f"the corpus holds {corpus.dim}-d embeddings, but {corpus.model} "
                f"makes {self._embedder.dimension}-d ones; search with the corpus's model"
            )
        return self._embedder


@asynccontextmanager
async def open_searcher(
    settings: Settings, server_settings: Mapping[str, str] | None = None
) -> AsyncIterator[Searcher]:
    async with open_database(settings, server_settings) as pool:
        yield Searcher(pool, settings)


async def search(query: str, settings: Settings, options: SearchOptions) -> list[Result]:
    async with open_searcher(settings) as searcher:
        return await searcher.search(query, options)


def search_upkeep(settings: Settings) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    """What the writers run at the end of a backfill and on each daemon poll: the configured
    text search language, and the vector index once the corpus is large enough for it."""

    async def upkeep(conn: asyncpg.Connection) -> None:
        try:
            if await _ensure_language(conn, settings.search_language):
                log.info("search_language_changed", language=settings.search_language)
        except asyncpg.UndefinedObjectError as exc:
            # Not worth failing a run that has done its work: search still uses the old one.
            log.error("search_language_invalid", language=settings.search_language, error=str(exc))
        try:
            if await ensure_search_index(conn, settings.hnsw_min_chunks):
                log.info("search_index_built")
        except asyncpg.PostgresError as exc:
            # Search stays exact without it, and the next upkeep builds it again.
            log.error("search_index_failed", error=str(exc))

    return upkeep


def search_options(
    *,
    k: int = 10,
    mode: str = "hybrid",
    speaker: str | None = None,
    channel: str | None = None,
    source: str | None = None,
    video: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    one_per_video: bool = False,
) -> SearchOptions:
    """Options as the command line and the API take them; dates without a zone are UTC."""
    if mode not in MODES:
        raise ConfigError(f"invalid mode {mode!r}: use one of {', '.join(MODES)}")
    if k < 1:
        raise ConfigError(f"invalid k {k}: ask for at least one result")
    filters = SearchFilters(
        speaker=speaker,
        channel=channel,
        source=source_key(source) if source is not None else None,
        video_id=video,
        published_after=_utc(after),
        published_before=_utc(before),
    )
    return SearchOptions(k, mode, filters, one_per_video)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
