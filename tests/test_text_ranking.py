"""The ranking by words on a real PostgreSQL: read through the word counts' index, it must give
exactly what scoring every match gives, for AND, OR, NOT and phrase queries, with filters, and
where the counts cannot serve. Both must give what the README documents, as computed here in
Python from the words each chunk was written with."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np
import pytest

import db.text_ranking as text_ranking
from db.corpus import ensure_embedding_model
from db.search_filters import SearchFilters
from db.text_ranking import RankedChunk, lookups, parse_words, rank_by_words, shares

pytestmark = pytest.mark.anyio
WORDS = [f"w{i}" for i in range(40)]
CAP = 32  # README: each word counted up to 32 times


@dataclass(frozen=True)
class Stored:
    """A chunk as the test wrote it: what the oracle ranks, without the database."""

    video_id: str
    seg_index: int
    speaker: str
    channel: str
    words: tuple[str, ...]


async def fill(conn: asyncpg.Connection, chunks: int = 600) -> list[Stored]:
    """Chunks of 5 to 60 words drawn by a Zipf law (w0 in most chunks, w30 in few), over 30
    videos on two channels, half of them spoken by `Guest`."""
    rng = np.random.default_rng(3)
    await ensure_embedding_model(conn, "test", 3)
    await conn.executemany(
        "INSERT INTO videos (id, url, status, channel) VALUES ($1, $1, 'done', $2)",
        [(f"v{n:02d}", channel_of(n)) for n in range(30)],
    )
    stored = []
    for i in range(chunks):
        picks = np.minimum(rng.zipf(1.3, int(rng.integers(5, 61))), len(WORDS)) - 1
        words = tuple(WORDS[w] for w in picks)
        speaker = "Guest" if i % 2 else "Host"
        stored.append(Stored(f"v{i % 30:02d}", i // 30, speaker, channel_of(i % 30), words))
    await insert(conn, stored)
    return stored


def channel_of(video: int) -> str:
    return "even" if video % 2 == 0 else "odd"


async def insert(conn: asyncpg.Connection, stored: Sequence[Stored]) -> None:
    await conn.executemany(
        "INSERT INTO segments (video_id, seg_index, start_s, end_s, speaker, text, embedding)"
        " VALUES ($1, $2, 0, 1, $3, $4, '[1,0,0]')",
        [(s.video_id, s.seg_index, s.speaker, " ".join(s.words)) for s in stored],
    )


def queries() -> list[str]:
    rng = random.Random(5)
    found = []
    for _ in range(60):
        words = rng.sample(WORDS[:12] + WORDS[25:28], rng.randint(1, 3))
        shape = rng.choice(("and", "or", "not", "phrase"))
        if shape == "or":
            found.append(" or ".join(words))
        elif shape == "not" and len(words) > 1:
            found.append(" ".join(words[:-1]) + f" -{words[-1]}")
        elif shape == "phrase":
            found.append(f'"{" ".join(words)}"')
        else:
            found.append(" ".join(words))
    return [*found, "-w0", "w0 or -w1", "w39", "w38 w0", "nothing here", "the and of"]


async def both(
    conn: asyncpg.Connection, text: str, filters: SearchFilters, n: int
) -> tuple[list[RankedChunk], list[RankedChunk]]:
    counted = await rank_by_words(conn, text, "english", filters, n)
    every = await rank_by_words(conn, text, "english", filters, n, exhaustive=True)
    return counted, every


async def test_the_counted_ranking_is_the_exhaustive_one(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await fill(conn)
        filled = 0
        for text in queries():
            counted, every = await both(conn, text, SearchFilters(), 20)
            assert counted == every, text
            filled += len(every) == 20
    assert filled > 40  # most queries have more matches than the ranking keeps


@dataclass(frozen=True)
class Query:
    """A query as typed, with its meaning written out in Python: which chunks match it, and
    which of its words count towards a chunk's relevance (all but the excluded ones)."""

    text: str
    scored: tuple[str, ...]
    matches: Callable[[tuple[str, ...]], bool]


def all_of(*words: str) -> Query:
    return Query(" ".join(words), words, lambda seen: all(w in seen for w in words))


def any_of(*words: str) -> Query:
    return Query(" or ".join(words), words, lambda seen: any(w in seen for w in words))


def all_but(out: str, *words: str) -> Query:
    def matches(seen: tuple[str, ...]) -> bool:
        return out not in seen and all(w in seen for w in words)

    return Query(" ".join(words) + f" -{out}", words, matches)


def phrase(*words: str) -> Query:
    def matches(seen: tuple[str, ...]) -> bool:
        return any(seen[i : i + len(words)] == words for i in range(len(seen)))

    return Query(f'"{" ".join(words)}"', words, matches)


def oracle_queries() -> list[Query]:
    """Random queries of each shape over common and rare words, and the odd ones."""
    rng = random.Random(11)
    shapes = (all_of, any_of, phrase)
    found = []
    for _ in range(24):
        words = rng.sample([*WORDS[:10], *WORDS[25:28], "w39"], rng.randint(1, 3))
        found.append(rng.choice(shapes)(*words))
        found.append(all_but(words[0], *rng.sample(WORDS[:10], 2)))
    negated = Query("w0 or -w1", ("w0",), lambda seen: "w0" in seen or "w1" not in seen)
    only_not = Query("-w0", (), lambda seen: "w0" not in seen)
    return [*found, all_of("w1", "w2"), negated, only_not, all_of("nothing")]


def expected(
    stored: Sequence[Stored], query: Query, keep: Callable[[Stored], bool], n: int
) -> list[RankedChunk]:
    """The README's ranking computed from the words written: the query's words' occurrences,
    each word counted at most CAP times; best first, then by video and position."""
    scored = [
        (-sum(min(s.words.count(w), CAP) for w in query.scored), s.video_id, s.seg_index)
        for s in stored
        if keep(s) and query.matches(s.words)
    ]
    return [RankedChunk(video, place, -score) for score, video, place in sorted(scored)[:n]]


async def fill_past_the_cap(conn: asyncpg.Connection) -> list[Stored]:
    """Three chunks of video v01 that hold w1 more than CAP times: for "w1 w2" they score 33,
    35 and 34 capped, 41, 36 and 34 uncapped, so the cap changes their order."""
    counts = ((40, 1), (33, 3), (30, 4))
    stored = [
        Stored("v01", 20 + i, "Guest", "odd", ("w1",) * ones + ("w2",) * twos)
        for i, (ones, twos) in enumerate(counts)
    ]
    await insert(conn, stored)
    return stored


FILTERS: list[tuple[SearchFilters, Callable[[Stored], bool]]] = [
    (SearchFilters(), lambda s: True),
    (SearchFilters(speaker="Guest"), lambda s: s.speaker == "Guest"),
    (SearchFilters(channel="odd"), lambda s: s.channel == "odd"),
]


async def test_the_ranking_is_the_documented_count_of_the_words(pool: asyncpg.Pool) -> None:
    """Checked against the words themselves, not against another use of the ranking's SQL:
    both the ranking by counts and the one scoring every match (which filtered queries take
    here, their matches being few)."""
    async with pool.acquire() as conn:
        stored = await fill_for_the_oracle(conn)
        full = 0
        for filters, keep in FILTERS:
            for query in oracle_queries():
                want = expected(stored, query, keep, 20)
                for exhaustive in (False, True):
                    found = await rank_by_words(
                        conn, query.text, "english", filters, 20, exhaustive
                    )
                    assert found == want, (query.text, filters, exhaustive)
                full += len(want) == 20
    assert full > 100  # most queries have more matches than the ranking keeps


async def test_filtered_ranking_by_counts_is_the_documented_count_too(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few queries of each shape: a filtered ranking by counts lowers its bar many times."""
    monkeypatch.setattr(text_ranking, "FILTERED_MATCHES", 0)
    async with pool.acquire() as conn:
        stored = await fill_for_the_oracle(conn)
        for filters, keep in FILTERS[1:]:
            for query in oracle_queries()[::6]:
                found = await rank_by_words(conn, query.text, "english", filters, 20)
                assert found == expected(stored, query, keep, 20), (query.text, filters)


async def fill_for_the_oracle(conn: asyncpg.Connection) -> list[Stored]:
    """The Zipf chunks and those past the cap, which lead "w1 w2" in their capped order."""
    stored = [*await fill(conn), *await fill_past_the_cap(conn)]
    capped = expected(stored, all_of("w1", "w2"), lambda s: True, 3)
    assert [(c.seg_index, c.relevance) for c in capped] == [(21, 35), (22, 34), (20, 33)]
    return stored


async def test_filters_with_many_matches_are_ranked_by_counts_too(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_ranking, "FILTERED_MATCHES", 0)
    async with pool.acquire() as conn:
        await fill(conn)
        filled = 0
        for filters in (SearchFilters(speaker="Guest"), SearchFilters(channel="odd")):
            for text in queries()[:30]:
                counted, every = await both(conn, text, filters, 15)
                assert counted == every, (text, filters)
                filled += len(every) == 15
    assert filled > 30


async def test_too_many_lookups_rank_a_sample_of_the_matches(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_ranking, "MAX_LOOKUPS", 1)
    monkeypatch.setattr(text_ranking, "SAMPLE", 30)
    async with pool.acquire() as conn:
        await fill(conn)
        sampled, every = await both(conn, "w0 w1", SearchFilters(), 10)
    assert len(sampled) == 10
    assert sampled != every  # 30 of several hundred matches, not the best of them all
    assert [r.relevance for r in sampled] == sorted((r.relevance for r in sampled), reverse=True)


async def test_the_query_language_parses_as_postgresql_writes_it(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:

        async def parsed(text: str) -> tuple[tuple[str, ...], bool]:
            tsquery = await conn.fetchval("SELECT websearch_to_tsquery('english', $1)::text", text)
            words = parse_words(tsquery)
            return words.words, words.required

        assert await parsed("Rust compilers") == (("rust", "compil"), True)
        assert await parsed('"memory leak" parser') == (("memori", "leak", "parser"), True)
        assert await parsed("rust or go") == (("rust", "go"), False)
        assert await parsed("rust -go") == (("rust",), False)
        assert await parsed("the and of") == ((), True)
    quoted = parse_words("'o''neil' & !'c:\\\\path' & 'x'")
    assert quoted.words == ("o'neil", "x")
    assert not quoted.required


def test_each_share_of_a_total_is_one_lookup() -> None:
    assert list(shares(5, [4, 3], 1)) == [(2, 3), (3, 2), (4, 1)]
    assert list(shares(2, [4, 3], 0)) == [(0, 2), (1, 1), (2, 0)]
    assert list(shares(9, [4, 3], 1)) == []
    words = parse_words("'know' & 'it''s'")
    assert lookups(words, [4, 3], 5) == ["'2:know' & '3:it''s'", "'3:know' & '2:it''s'",
                                         "'4:know' & '1:it''s'"]  # fmt: skip
    many = parse_words(" & ".join(f"'w{i}'" for i in range(4)))
    assert lookups(many, [32] * 4, 60) is None
