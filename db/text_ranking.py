"""Ranking by words: the chunks matching a query (PostgreSQL's `websearch_to_tsquery`), best
first, then by video and position.

A chunk's relevance is how often the query's words occur in it, each word counted at most
`MAX_COUNT` times. It is found exactly without scoring every match: the chunks whose relevance
is at least S are a union of lookups in the `word_counts` GIN index (migrations/010), one per
way of sharing S among the words ("know" 5 times and "rust" twice, ...). S starts at the most
any chunk can reach and is lowered until that union holds enough chunks; only those are scored.
Words that most chunks contain ("know", "think") thus cost a few small reads instead of a score
for most of the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg

from db.search_filters import Params, SearchFilters, filter_clause

MAX_COUNT = 32  # as in migrations/010_word_counts.sql
# The longest lexeme PostgreSQL holds, in bytes. A word's count tokens ("32:word") must fit too:
# a longer word (over 2,043 bytes: no word of a language) is matched by the query as it stands,
# but not counted, so that ranking by words never asks PostgreSQL for a lexeme it cannot hold.
MAX_LEXEME_BYTES = 2046
# The most lookups one step may union (each costs a GIN descent); a query needing more, of many
# words that are all common, ranks a sample of its matches instead.
MAX_LOOKUPS = 200
# The matches scored where the counts cannot serve: that case, and a query of excluded words
# only ("-word"), rank the first this many matches found.
SAMPLE = 2000
# A filter that most chunks fail would have S lowered far before enough chunks pass it; when at
# most this many matches pass, they are all scored instead (the filters' own indexes find them).
FILTERED_MATCHES = 2000

# The highest count of each word in any chunk, from the top of its index entries down; $1 holds
# the tsquery of each word (first index) at each count (second index).
TOP_COUNTS = """
SELECT coalesce((SELECT n FROM generate_series(array_length($1::text[], 2), 1, -1) AS n
                 WHERE EXISTS (SELECT 1 FROM segments s
                               WHERE word_counts(s.text_search) @@ ($1::text[])[i][n]::tsquery)
                 LIMIT 1), 0)
FROM generate_subscripts($1::text[], 1) AS i ORDER BY i"""


@dataclass(frozen=True, slots=True)
class Words:
    tsquery: str  # as PostgreSQL writes it
    words: tuple[str, ...]  # its lexemes, except those directly negated or too long to count
    required: bool  # every match holds every word: no OR and no NOT anywhere


@dataclass(frozen=True, slots=True)
class RankedChunk:
    video_id: str
    seg_index: int
    relevance: int


def parse_words(tsquery: str) -> Words:
    """Lexemes are quoted, with quotes and backslashes doubled; operators are outside quotes."""
    words: list[str] = []
    operators = ""
    i = 0
    while i < len(tsquery):
        if tsquery[i] != "'":
            operators += tsquery[i]
            i += 1
            continue
        lexeme, i = _read_lexeme(tsquery, i + 1)
        negated = operators.rstrip(" ").endswith("!")
        if not negated and countable(lexeme) and lexeme not in words:
            words.append(lexeme)
        operators += " "
    required = "|" not in operators and "!" not in operators
    return Words(tsquery, tuple(words), required)


def countable(lexeme: str) -> bool:
    """Whether the lexeme's count tokens, up to MAX_COUNT, fit in PostgreSQL's lexeme."""
    return len(f"{MAX_COUNT}:{lexeme}".encode()) <= MAX_LEXEME_BYTES


def _read_lexeme(text: str, i: int) -> tuple[str, int]:
    out = []
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("''", "\\\\", "\\'"):
            out.append(pair[1])
            i += 2
        elif text[i] == "'":
            return "".join(out), i + 1
        else:
            out.append(text[i])
            i += 1
    raise ValueError(f"unterminated lexeme in tsquery {text!r}")


def count_token(count: int, word: str) -> str:
    """The tsquery of "`word` at least `count` times"."""
    quoted = f"{count}:{word}".replace("\\", "\\\\").replace("'", "''")
    return f"'{quoted}'"


def shares(total: int, bounds: Sequence[int], low: int) -> Iterator[tuple[int, ...]]:
    """Every way of writing `total` as counts of the words, each between `low` and its bound."""
    if len(bounds) == 1:
        if low <= total <= bounds[0]:
            yield (total,)
        return
    rest = sum(bounds[1:])
    for first in range(max(low, total - rest), min(total - low * (len(bounds) - 1), bounds[0]) + 1):
        for tail in shares(total - first, bounds[1:], low):
            yield (first, *tail)


def lookups(words: Words, bounds: Sequence[int], total: int) -> list[str] | None:
    """One tsquery on `word_counts` per share of `total`: together, the chunks whose relevance
    is at least `total`. None when there are more than MAX_LOOKUPS."""
    found: list[str] = []
    for share in shares(total, bounds, 1 if words.required else 0):
        if len(found) == MAX_LOOKUPS:
            return None
        pairs = zip(share, words.words, strict=True)
        found.append(" & ".join(count_token(n, w) for n, w in pairs if n))
    return found


async def rank_by_words(
    conn: asyncpg.Connection,
    text: str,
    language: str,
    filters: SearchFilters,
    n: int,
    exhaustive: bool = False,
) -> list[RankedChunk]:
    """The `n` best chunks for `text`; `exhaustive` scores every match instead (slow for common
    words: what the counted ranking is checked against)."""
    words = parse_words(
        await conn.fetchval("SELECT websearch_to_tsquery($1::regconfig, $2)::text", language, text)
    )
    if not words.tsquery:  # only stop words: nothing to look for
        return []
    if exhaustive:
        return await _score_matches(conn, words, filters, n, None)
    if not words.words:
        return await _score_matches(conn, words, filters, n, SAMPLE)
    if filters.active and await _few_filtered(conn, words, filters):
        return await _score_matches(conn, words, filters, n, None)
    return await _by_counts(conn, words, filters, n)


async def _by_counts(
    conn: asyncpg.Connection, words: Words, filters: SearchFilters, n: int
) -> list[RankedChunk]:
    tokens = [[count_token(n, w) for n in range(1, MAX_COUNT + 1)] for w in words.words]
    bounds = [r[0] for r in await conn.fetch(TOP_COUNTS, tokens)]
    if words.required and not all(bounds):
        return []
    if not any(bounds):
        return await _without_words(conn, words, filters, n)
    # A chunk holding one word its most times holds the others at least once, if required.
    floor = len(words.words) if words.required else 1
    total = min(sum(bounds), max(bounds) + floor - 1)
    while True:
        queries = lookups(words, bounds, total)
        if queries is None:
            return await _score_matches(conn, words, filters, n, SAMPLE)
        found = await _at_least(conn, words, filters, n, queries)
        if len(found) >= n or total <= floor:
            break
        total -= 1
    if len(found) < n and not words.required:
        found += await _without_words(conn, words, filters, n - len(found))
    return found


async def _at_least(
    conn: asyncpg.Connection, words: Words, filters: SearchFilters, n: int, queries: list[str]
) -> list[RankedChunk]:
    p = Params()
    tsquery, listed = p(words.tsquery, "::tsquery"), p(list(words.words), "::text[]")
    union = " OR ".join(f"word_counts(s.text_search) @@ {p(q, '::tsquery')}" for q in queries)
    # ts_match_vq is @@ by another name, which the planner does not take to the text index:
    # the chunks of the union are few, a common word's matches are most of the corpus.
    sql = f"""
    SELECT s.video_id, s.seg_index, {_relevance(listed)} AS relevance
    FROM segments s {_videos(filters)}
    WHERE ({union}) AND ts_match_vq(s.text_search, {tsquery}) AND {filter_clause(filters, p)}
    ORDER BY relevance DESC, s.video_id, s.seg_index LIMIT {p(n, "::integer")}"""  # noqa: S608
    return [RankedChunk(*r) for r in await conn.fetch(sql, *p.values)]


async def _without_words(
    conn: asyncpg.Connection, words: Words, filters: SearchFilters, n: int
) -> list[RankedChunk]:
    """Matches of an OR or NOT query that hold none of the words: relevance 0, by position."""
    p = Params()
    tsquery = p(words.tsquery, "::tsquery")
    anyword = p(" | ".join(count_token(1, w) for w in words.words), "::tsquery")
    sql = f"""
    SELECT s.video_id, s.seg_index, 0 FROM segments s {_videos(filters)}
    WHERE s.text_search @@ {tsquery} AND NOT word_counts(s.text_search) @@ {anyword}
          AND {filter_clause(filters, p)}
    ORDER BY s.video_id, s.seg_index LIMIT {p(n, "::integer")}"""  # noqa: S608
    return [RankedChunk(*r) for r in await conn.fetch(sql, *p.values)]


async def _few_filtered(conn: asyncpg.Connection, words: Words, filters: SearchFilters) -> bool:
    p = Params()
    sql = f"""
    SELECT count(*) FROM (SELECT 1 FROM segments s {_videos(filters)}
                          WHERE s.text_search @@ {p(words.tsquery, "::tsquery")}
                                AND {filter_clause(filters, p)}
                          LIMIT {p(FILTERED_MATCHES + 1, "::integer")}) m"""  # noqa: S608
    found: int = await conn.fetchval(sql, *p.values)
    return found <= FILTERED_MATCHES


async def _score_matches(
    conn: asyncpg.Connection, words: Words, filters: SearchFilters, n: int, limit: int | None
) -> list[RankedChunk]:
    """Scores every match, or the first `limit` found."""
    p = Params()
    tsquery, listed = p(words.tsquery, "::tsquery"), p(list(words.words), "::text[]")
    sql = f"""
    SELECT video_id, seg_index, relevance
    FROM (SELECT s.video_id, s.seg_index,
                 {_relevance(listed)} AS relevance
          FROM (SELECT s.video_id, s.seg_index, s.text_search FROM segments s {_videos(filters)}
                WHERE s.text_search @@ {tsquery} AND {filter_clause(filters, p)}
                LIMIT {p(limit, "::integer")}) s) m
    ORDER BY relevance DESC, video_id, seg_index LIMIT {p(n, "::integer")}"""  # noqa: S608
    return [RankedChunk(*r) for r in await conn.fetch(sql, *p.values)]


def _relevance(words: str) -> str:
    """The same count as word_counts(): a lexeme without positions counts once."""
    counts = f"least(greatest(cardinality(w.positions), 1), {MAX_COUNT})"
    return f"""(SELECT coalesce(sum({counts}), 0) FROM unnest(s.text_search) AS w
                WHERE w.lexeme = ANY({words}))::integer"""  # noqa: S608 - words is a placeholder


def _videos(filters: SearchFilters) -> str:
    return "JOIN videos v ON v.id = s.video_id" if filters.active else ""
