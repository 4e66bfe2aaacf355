"""Search over the chunks: by meaning (cosine similarity of embeddings), by words (full-text
search), or both fused by reciprocal rank fusion, with filters that never cost results."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

import asyncpg
import numpy as np
import numpy.typing as npt

Mode = Literal["hybrid", "vector", "text"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "text")
# The constant of reciprocal rank fusion (Cormack et al.): damps the weight of the very top
# ranks so that agreement between the two lists counts more than either list's first place.
RRF_K = 60
# pgvector's HNSW scan returns at most hnsw.ef_search rows, and ef_search is at most 1000.
MAX_CANDIDATES = 1000
# Iterative index scans, which keep scanning until enough rows pass a filter.
ITERATIVE_SCAN_SINCE = (0, 8)
# The most chunks containing the query's words that the text ranking scores, the first found.
# ts_rank_cd costs microseconds a chunk, and words that most chunks hold (speech follows a Zipf
# law: "know", "think") would have it score much of the corpus: up to 0.7 s at 200,000 chunks. Rare
# words, the ones an embedding blurs and the text ranking is for, match fewer and are all
# scored; for common ones it ranks a sample, not the corpus's best (bench/search.py says how
# far hybrid results then differ from a full ranking's).
TEXT_MATCHES = 2000


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


@dataclass(frozen=True, slots=True)
class SearchQuery:
    text: str
    vector: npt.NDArray[np.float32] | None  # None in text mode
    k: int
    mode: Mode = "hybrid"
    filters: SearchFilters = SearchFilters()
    one_per_video: bool = False
    ef_search: int = 40
    text_matches: int | None = TEXT_MATCHES  # None: score every matching chunk (exact)

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
    # hybrid: fused reciprocal rank; vector: cosine similarity; text: ts_rank_cd.
    score: float
    similarity: float | None  # cosine similarity, 1 = same direction; None in text mode
    vector_rank: int | None  # place in each ranking; None where the chunk was not in it
    text_rank: int | None
    transcript_source: str | None = None  # speech recognition, captions or a subtitle file
    channel: str | None = None
    published_at: datetime | None = None


class _Params:
    """Numbered placeholders for the values a query uses, in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


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
# for the query's own words picks the GIN index for rare words and a sequential scan, stopped
# after TEXT_MATCHES rows, for common ones; a generic plan would pick one for both. A
# sequential scan starts where the last one stopped unless told not to, which would make the
# matches scored differ from one run to the next.
SETTINGS = """SELECT set_config('hnsw.ef_search', $1, true), set_config('jit', 'off', true),
                     set_config('plan_cache_mode', 'force_custom_plan', true),
                     set_config('synchronize_seqscans', 'off', true)"""


async def search_chunks(conn: asyncpg.Connection, query: SearchQuery) -> list[SearchHit]:
    language = await search_language(conn)
    iterative = await pgvector_version(conn) >= ITERATIVE_SCAN_SINCE
    params = _Params()
    sql = _search_sql(query, language, iterative, params)
    async with conn.transaction(readonly=True):
        ef_search = max(query.ef_search, query.candidates)
        await conn.execute(SETTINGS, str(ef_search))
        if iterative and query.filters.active:
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = await conn.fetch(sql, *params.values)
    return [SearchHit(**{**dict(r), "speakers": tuple(r["speakers"])}) for r in rows]


def _filters(filters: SearchFilters, p: _Params) -> str:
    clauses = ["true"]
    if filters.speaker is not None:
        clauses.append(f"s.speaker = {p(filters.speaker)}")
    if filters.channel is not None:
        clauses.append(f"v.channel = {p(filters.channel)}")
    if filters.source is not None:
        listed = f"SELECT 1 FROM listings l WHERE l.source = {p(filters.source)}"  # noqa: S608
        clauses.append(f"EXISTS ({listed} AND l.video_id = s.video_id)")
    if filters.video_id is not None:
        clauses.append(f"s.video_id = {p(filters.video_id)}")
    if filters.published_after is not None:
        clauses.append(f"v.published_at >= {p(filters.published_after, '::timestamptz')}")
    if filters.published_before is not None:
        clauses.append(f"v.published_at < {p(filters.published_before, '::timestamptz')}")
    return " AND ".join(clauses)


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


def _text_ranking(where: str, tsquery: str, n: str, matches: str) -> str:
    # The inner LIMIT bounds the chunks scored (LIMIT NULL: all of them).
    return f"""
    txt AS (
        SELECT video_id, seg_index, relevance,
               row_number() OVER (ORDER BY relevance DESC, video_id, seg_index) AS rank
        FROM (SELECT m.video_id, m.seg_index, ts_rank_cd(m.text_search, {tsquery}) AS relevance
              FROM (SELECT s.video_id, s.seg_index, s.text_search
                    FROM segments s JOIN videos v ON v.id = s.video_id
                    WHERE s.text_search @@ {tsquery} AND {where} LIMIT {matches}) m
              ORDER BY relevance DESC, m.video_id, m.seg_index LIMIT {n}) c
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


def _search_sql(query: SearchQuery, language: str, iterative: bool, p: _Params) -> str:
    lang = p(language, "::regconfig")
    tsquery = f"websearch_to_tsquery({lang}, {p(query.text, '::text')})"
    n = p(query.candidates, "::integer")
    where = _filters(query.filters, p)
    ctes = []
    vec = "NULL::vector"
    if query.mode != "text":
        vec = p(query.vector)
        ctes.append(_vector_ranking(query, where, vec, n, iterative))
    if query.mode != "vector":
        matches = p(query.text_matches, "::integer")
        ctes.append(_text_ranking(where, tsquery, n, matches))
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
