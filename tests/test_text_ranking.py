"""The ranking by words on a real PostgreSQL: read through the word counts' index, it must give
exactly what scoring every match gives, for AND, OR, NOT and phrase queries, with filters, and
where the counts cannot serve."""

from __future__ import annotations

import random

import asyncpg
import numpy as np
import pytest

import db.text_ranking as text_ranking
from db.corpus import ensure_embedding_model
from db.search_filters import SearchFilters
from db.text_ranking import RankedChunk, lookups, parse_words, rank_by_words, shares

pytestmark = pytest.mark.anyio
WORDS = [f"w{i}" for i in range(40)]


async def fill(conn: asyncpg.Connection, chunks: int = 600) -> None:
    """Chunks of 5 to 60 words drawn by a Zipf law (w0 in most chunks, w30 in few), over 30
    videos on two channels, half of them spoken by `Guest`."""
    rng = np.random.default_rng(3)
    await ensure_embedding_model(conn, "test", 3)
    await conn.executemany(
        "INSERT INTO videos (id, url, status, channel) VALUES ($1, $1, 'done', $2)",
        [(f"v{n:02d}", "even" if n % 2 == 0 else "odd") for n in range(30)],
    )
    rows = []
    for i in range(chunks):
        picks = np.minimum(rng.zipf(1.3, int(rng.integers(5, 61))), len(WORDS)) - 1
        text = " ".join(WORDS[w] for w in picks)
        rows.append((f"v{i % 30:02d}", i // 30, 0.0, 1.0, "Guest" if i % 2 else "Host", text))
    await conn.executemany(
        "INSERT INTO segments (video_id, seg_index, start_s, end_s, speaker, text, embedding)"
        " VALUES ($1, $2, $3, $4, $5, $6, '[1,0,0]')",
        rows,
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
