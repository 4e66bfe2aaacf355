"""Search over the chunks: by meaning (cosine similarity of embeddings), by words (full-text
search), or both fused by reciprocal rank fusion, with filters that never cost results."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import asyncpg
import numpy as np
import numpy.typing as npt

from db.search_filters import Params, SearchFilters, filter_clause
from db.text_ranking import RankedChunk, rank_by_words

Mode = Literal["hybrid", "vector", "text"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "text")
# The constant of reciprocal rank fusion (Cormack et al.): damps the weight of the very top
# ranks so that agreement between the two lists counts more than either list's first place.
RRF_K = 60
# pgvector's HNSW scan returns at most hnsw.ef_search rows, and ef_search is at most 1000.
MAX_CANDIDATES = 1000
# Iterative index scans, which keep scanning until enough rows pass a filter.
ITERATIVE_SCAN_SINCE = (0, 8)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    vector: npt.NDArray[np.float32] | None  # None in text mode
    k: int
    mode: Mode = "hybrid"
    filters: SearchFilters = field(default_factory=SearchFilters)
    one_per_video: bool = False
    ef_search: int = 40
    # Score every chunk that matches the words: what the ranking by counts is checked against.
    exhaustive_text: bool = False

    @property
    def candidates(self) -> int:
        """Rows each ranking contributes to the fusion: enough that a chunk ranked well by one
        list and poorly by the other still competes, more when most will share a video."""
        wanted = max(self.k * 5, 50) * (5 if self.one_per_video else 1)
        return min(wanted, MAX_CANDIDATES)


@dataclass(frozen=True, slots=True)
class SearchHit:
    video_id: str
    title: str | None
    url: str
    extractor: str | None
    seg_index: int
    start_s: float
    end_s: float
    speaker: str | None  # the one heard most: what the speaker filter matches
    speakers: tuple[str, ...]  # everyone heard in the chunk, `speaker` first
    text: str
    snippet: str  # the best passages, matching words between ** and **
    # hybrid: fused reciprocal rank; vector: cosine similarity; text: how often the
    # query's words occur (db/text_ranking.py).
    score: float
    similarity: float | None  # cosine similarity, 1 = same direction; None in text mode
    vector_rank: int | None  # place in each ranking; None where the chunk was not in it
    text_rank: int | None
    transcript_source: str | None = None  # speech recognition, captions or a subtitle file
    channel: str | None = None
    published_at: datetime | None = None


async def pgvector_version(conn: asyncpg.Connection) -> tuple[int, ...]:
    version: str = await conn.fetchval(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    )
    return tuple(int(part) for part in version.split(".") if part.isdigit())


async def search_language(conn: asyncpg.Connection) -> str:
    """The text search configuration the chunks' lexemes were made with."""
    language: str = await conn.fetchval("SELECT language::text FROM text_search")
    return language


async def ensure_search_language(conn: asyncpg.Connection, language: str) -> bool:
    """Makes `language` the text search configuration of the corpus: new chunks take it as
    their default and existing ones are re-indexed with it, in one transaction, so lexemes and
    queries never disagree. Returns whether it changed anything (a rewrite of every chunk)."""
    async with conn.transaction():
        same = await conn.fetchval(
            "SELECT language = $1::regconfig FROM text_search FOR UPDATE", language
        )
        if same:
            return False
        # A default cannot be a parameter; the server quotes the (already valid) name.
        literal = await conn.fetchval("SELECT quote_literal($1::regconfig::text)", language)
        await conn.execute(f"ALTER TABLE segments ALTER COLUMN text_config SET DEFAULT {literal}")
        await conn.execute(
            "UPDATE segments SET text_config = $1::regconfig WHERE text_config <> $1::regconfig",
            language,
        )
        await conn.execute("UPDATE text_search SET language = $1::regconfig", language)
        return True


# For this transaction only. JIT compiles a plan whose estimated cost is high, as a ranking of
# many matches is, and compiling takes longer than the short run it would speed up. A plan made
# for the query's own words picks the GIN index for rare words and a sequential scan for common
# ones; a generic plan would pick one for both. A sequential scan that stops early (a sample of
# matches) starts where the last one stopped unless told not to, which would make the matches
# scored differ from one run to the next. Parallel workers cost more to start than the few
# hundred chunks a ranking by counts reads.
SETTINGS = """SELECT set_config('hnsw.ef_search', $1, true), set_config('jit', 'off', true),
                     set_config('plan_cache_mode', 'force_custom_plan', true),
                     set_config('synchronize_seqscans', 'off', true),
                     set_config('max_parallel_workers_per_gather', '0', true)"""


async def search_chunks(conn: asyncpg.Connection, query: SearchQuery) -> list[SearchHit]:
    language = await search_language(conn)
    iterative = await pgvector_version(conn) >= ITERATIVE_SCAN_SINCE
    async with conn.transaction(readonly=True):
        ef_search = max(query.ef_search, query.candidates)
        await conn.execute(SETTINGS, str(ef_search))
        if iterative and query.filters.active:
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        ranked: list[RankedChunk] = []
        if query.mode != "vector":
            ranked = await rank_by_words(
                conn, query.text, language, query.filters, query.candidates, query.exhaustive_text
            )
        params = Params()
        sql = _search_sql(query, language, iterative, ranked, params)
        rows = await conn.fetch(sql, *params.values)
    return [SearchHit(**{**dict(r), "speakers": tuple(r["speakers"])}) for r in rows]


def _vector_ranking(query: SearchQuery, where: str, vec: str, n: str, iterative: bool) -> str:
    # Before pgvector 0.8 an HNSW scan filters only the ef_search rows it found, which can
    # leave fewer than k. With a filter, ordering by an expression the index cannot serve makes
    # the search exact over the rows that pass the filter (narrow filters use their own
    # indexes); since 0.8 the index scan itself goes on until enough rows pass.
    exact = query.filters.active and not iterative
    order = f"(s.embedding <=> {vec}) + 0" if exact else f"s.embedding <=> {vec}"
    return f"""
    vec AS (
        SELECT video_id, seg_index, distance,
               row_number() OVER (ORDER BY distance, video_id, seg_index) AS rank
        FROM (SELECT s.video_id, s.seg_index, s.embedding <=> {vec} AS distance
              FROM segments s JOIN videos v ON v.id = s.video_id
              WHERE {where} ORDER BY {order} LIMIT {n}) c
    )"""  # noqa: S608 - constant fragments; every value is a parameter


def _text_ranking(ranked: list[RankedChunk], p: Params) -> str:
    videos = p([r.video_id for r in ranked], "::text[]")
    places = p([r.seg_index for r in ranked], "::integer[]")
    relevance = p([r.relevance for r in ranked], "::integer[]")
    return f"""
    txt AS (
        SELECT video_id, seg_index, relevance, rank
        FROM unnest({videos}, {places}, {relevance}) WITH ORDINALITY
             AS t (video_id, seg_index, relevance, rank)
    )"""  # noqa: S608 - constant fragments; every value is a parameter


def _fusion(mode: Mode) -> str:
    if mode == "vector":
        return """SELECT video_id, seg_index, 1 - distance AS score, rank AS vector_rank,
                         NULL::bigint AS text_rank FROM vec"""
    if mode == "text":
        return """SELECT video_id, seg_index, relevance::float8 AS score,
                         NULL::bigint AS vector_rank, rank AS text_rank FROM txt"""
    return f"""SELECT video_id, seg_index,
                      coalesce(1.0 / ({RRF_K} + vec.rank), 0)
                      + coalesce(1.0 / ({RRF_K} + txt.rank), 0) AS score,
                      vec.rank AS vector_rank, txt.rank AS text_rank
               FROM vec FULL JOIN txt USING (video_id, seg_index)"""  # noqa: S608


def _search_sql(
    query: SearchQuery, language: str, iterative: bool, ranked: list[RankedChunk], p: Params
) -> str:
    lang = p(language, "::regconfig")
    tsquery = f"websearch_to_tsquery({lang}, {p(query.text, '::text')})"
    ctes = []
    vec = "NULL::vector"
    if query.mode != "text":
        vec, n = p(query.vector), p(query.candidates, "::integer")
        where = filter_clause(query.filters, p)
        ctes.append(_vector_ranking(query, where, vec, n, iterative))
    if query.mode != "vector":
        ctes.append(_text_ranking(ranked, p))
    similarity = "NULL::float8" if query.mode == "text" else f"1 - (s.embedding <=> {vec})"
    one = "f.nth = 1" if query.one_per_video else "true"
    return f"""
    WITH {",".join(ctes)},
    fused AS ({_fusion(query.mode)}),
    placed AS (SELECT *, row_number() OVER (PARTITION BY video_id
                                            ORDER BY score DESC, seg_index) AS nth
               FROM fused)
    SELECT s.video_id, v.title, v.url, v.extractor, s.seg_index, s.start_s, s.end_s,
           s.speaker, coalesce(s.speakers, array_remove(ARRAY[s.speaker], NULL)) AS speakers,
           s.text,
           ts_headline({lang}, s.text, {tsquery},
                       'StartSel=**, StopSel=**, MaxWords=45, MinWords=20, MaxFragments=2')
               AS snippet,
           f.score::float8 AS score, {similarity} AS similarity,
           f.vector_rank::integer AS vector_rank, f.text_rank::integer AS text_rank,
           v.transcript_source, v.channel, v.published_at
    FROM placed f
    JOIN segments s USING (video_id, seg_index)
    JOIN videos v ON v.id = f.video_id
    WHERE {one}
    ORDER BY f.score DESC, f.text_rank NULLS LAST, f.video_id, f.seg_index
    LIMIT {p(query.k, "::integer")}
    """  # noqa: S608 - constant fragments; every value is a parameter
