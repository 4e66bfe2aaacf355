"""Search latency and recall on a synthetic corpus: hybrid against vector, with and without a
filter matching 1 % of the chunks, and recall@10 against an exact search of the same query:
exact nearest neighbours fused with the ranking by words that scores every matching chunk.

Vectors are 384-d (MiniLM's size), drawn around 256 topic centres so that neighbours exist the
way they do among real chunks; texts are words of a Zipf-distributed vocabulary, so that some
words are in most chunks and most words in few, as in speech.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import asyncpg
import numpy as np
import numpy.typing as npt

from bench.database import fresh_database
from bench.results import Figure
from db.corpus import ensure_embedding_model, ensure_search_index
from db.migrate import apply_migrations
from db.pool import create_pool
from db.search import Mode, SearchHit, SearchQuery, search_chunks, search_language
from db.search_filters import SearchFilters
from db.sink import ChunkRow, FinishedVideo, write_finished
from ingest.infrastructure.config import Settings

DIM = 384
CHUNKS_PER_VIDEO = 100
WORDS_PER_CHUNK = 40
VOCABULARY = 20_000
RARE_SPEAKER = "Rare"  # 1 % of the chunks
K = 10
# HNSW candidates: what a search gets unless INGEST_HNSW_EF_SEARCH says otherwise.
EF_SEARCH: int = Settings.model_fields["hnsw_ef_search"].default
# Hybrid recall, split by how many chunks a query's words are in: at most COMMON, or more, where
# scoring every match would cost more than the latency target.
COMMON = 2000
EVERY_MATCH, FEW_MATCHES, MANY_MATCHES = "every match", "few matches", "many matches"


@dataclass(frozen=True, slots=True)
class Probe:
    text: str
    vector: npt.NDArray[np.float32]


def search(server_uri: str, quick: bool) -> list[Figure]:
    size = 20_000 if quick else 200_000
    figures = asyncio.run(_search(server_uri, size, queries=20 if quick else 100))
    return figures + asyncio.run(_write_rates(server_uri, videos=20 if quick else 200))


async def _write_rates(server_uri: str, videos: int) -> list[Figure]:
    """Chunks the sink writes per second with and without the word counts' index: what exact
    ranking by words costs the writes (chunks of 170 words, before any vector index)."""
    figures = []
    for words_index in (True, False):
        pool = await create_pool(await fresh_database(server_uri), max_size=1)
        try:
            async with pool.acquire() as conn:
                rate = await _write_rate(conn, videos, words_index)
        finally:
            await pool.close()
        name = f"sink writes, {videos * 100:,} chunks, {'with' if words_index else 'without'}"
        figures.append(Figure("search", f"{name} the word-count index", rate, "chunks/s"))
    return figures


async def _write_rate(conn: asyncpg.Connection, videos: int, words_index: bool) -> float:
    await apply_migrations(conn)
    if not words_index:
        await conn.execute("DROP INDEX segments_word_counts_idx")
    await ensure_embedding_model(conn, "bench", DIM)
    rng = np.random.default_rng(1)
    spent = 0.0
    for first in range(0, videos, 10):
        batch = []
        for n in range(first, first + 10):
            await conn.execute("INSERT INTO videos (id, url) VALUES ($1, $1)", f"v{n}")
            picks = np.minimum(rng.zipf(1.2, (100, 170)), VOCABULARY) - 1
            vectors = rng.standard_normal((100, DIM)).astype(np.float32)
            rows = [
                ChunkRow(i, 30.0 * i, 30.0 * i + 29, "Host", " ".join(f"w{w}" for w in picks[i]),
                         vectors[i])
                for i in range(100)
            ]  # fmt: skip
            batch.append(FinishedVideo(f"v{n}", 3000.0, "bench", "bench", rows))
        started = time.perf_counter()
        await write_finished(conn, batch)
        spent += time.perf_counter() - started
    return videos * 100 / spent


async def _search(server_uri: str, size: int, queries: int) -> list[Figure]:
    pool = await create_pool(await fresh_database(server_uri), max_size=2)
    try:
        async with pool.acquire() as conn:
            probes = await _load(conn, size, queries)
            await conn.execute("SET maintenance_work_mem = '1GB'")
            started = time.perf_counter()
            await ensure_search_index(conn)
            built_s = time.perf_counter() - started
            await conn.execute("ANALYZE")
            figures = [Figure("search", f"HNSW index build, {size:,} chunks", built_s, "s")]
            for mode in ("vector", "hybrid"):
                for narrow in (False, True):
                    figures += await _measure(conn, probes, mode, narrow, size)
    finally:
        await pool.close()
    return figures


async def _load(conn: asyncpg.Connection, size: int, queries: int) -> list[Probe]:
    """Writes the corpus; returns queries: a chunk's vector moved a little, two of its words."""
    await apply_migrations(conn)
    await ensure_embedding_model(conn, "bench", DIM)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((256, DIM)).astype(np.float32)
    words = [f"w{i}" for i in range(VOCABULARY)]
    videos = size // CHUNKS_PER_VIDEO
    await conn.executemany(
        "INSERT INTO videos (id, url, status, published_at)"
        " VALUES ($1, $1, 'done', now() - $2 * interval '1 day')",
        [(f"v{n}", float(n % 1000)) for n in range(videos)],
    )
    probes: list[Probe] = []
    for first in range(0, videos, 100):
        rows, vectors, texts = _batch(rng, centres, words, first, min(100, videos - first))
        await conn.copy_records_to_table(
            "segments",
            records=rows,
            columns=("video_id", "seg_index", "start_s", "end_s", "speaker", "text", "embedding"),
        )
        for i in rng.choice(len(rows), size=max(1, queries * 100 // videos), replace=False):
            moved = vectors[i] + 0.3 * rng.standard_normal(DIM).astype(np.float32) / DIM**0.5
            probes.append(Probe(" ".join(texts[i].split()[:2]), moved / np.linalg.norm(moved)))
    return probes[:queries]


def _batch(
    rng: np.random.Generator,
    centres: npt.NDArray[np.float32],
    words: list[str],
    first_video: int,
    videos: int,
) -> tuple[list[tuple[object, ...]], npt.NDArray[np.float32], list[str]]:
    n = videos * CHUNKS_PER_VIDEO
    topic = rng.integers(0, len(centres), n)
    vectors = centres[topic] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picks = np.minimum(rng.zipf(1.2, (n, WORDS_PER_CHUNK)), VOCABULARY) - 1
    texts = [" ".join(words[w] for w in row) for row in picks]
    rare = rng.random(n) < 0.01
    rows: list[tuple[object, ...]] = [
        (f"v{first_video + i // CHUNKS_PER_VIDEO}", i % CHUNKS_PER_VIDEO, 30.0 * (i % 100),
         30.0 * (i % 100) + 29, RARE_SPEAKER if rare[i] else "Host", texts[i], vectors[i])
        for i in range(n)
    ]  # fmt: skip
    return rows, vectors, texts


async def _measure(
    conn: asyncpg.Connection, probes: list[Probe], mode: Mode, narrow: bool, size: int
) -> list[Figure]:
    filters = SearchFilters(speaker=RARE_SPEAKER) if narrow else SearchFilters()
    latencies, short = [], 0
    # Vector searches rank no text: one reference serves.
    recalls: dict[str, list[float]] = {EVERY_MATCH: [], FEW_MATCHES: [], MANY_MATCHES: []}
    for probe in probes:
        query = SearchQuery(probe.text, probe.vector, K, mode, filters, ef_search=EF_SEARCH)
        started = time.perf_counter()
        found = _ids(await search_chunks(conn, query))
        latencies.append((time.perf_counter() - started) * 1000)
        short += len(found) < K
        exact = await _exact(conn, replace(query, exhaustive_text=True))
        recalls[EVERY_MATCH].append(len(found & exact) / max(1, len(exact)))
        if mode == "hybrid" and not narrow:  # the count ignores filters
            many = await _matches_more_than(conn, query, COMMON)
            recalls[MANY_MATCHES if many else FEW_MATCHES].append(recalls[EVERY_MATCH][-1])
    label = f"{mode}{', 1 % filter' if narrow else ''}, {size:,} chunks"
    return _figures(label, latencies, recalls, short)


def _figures(
    label: str, latencies: list[float], recalls: dict[str, list[float]], short: int
) -> list[Figure]:
    """Recall against the exact search: the vector ranking sorted exactly and the ranking by
    words scoring every chunk that matches."""
    p50, p95 = _percentiles(latencies)
    figures = [
        Figure("search", f"{label}: p50", p50, "ms"),
        Figure("search", f"{label}: p95", p95, "ms", target=50, compare="<="),
        Figure("search", f"{label}: recall@{K} vs exact", statistics.mean(recalls[EVERY_MATCH]),
               target=0.95),
        Figure("search", f"{label}: queries with fewer than {K} results", short, target=0,
               compare="<="),
    ]  # fmt: skip
    parts = ((FEW_MATCHES, f"<= {COMMON:,}"), (MANY_MATCHES, f"> {COMMON:,}"))
    for part, words in parts:
        if values := recalls[part]:
            name = f"{label}: recall@{K} vs exact, words in {words} chunks ({len(values)} queries)"
            figures.append(Figure("search", name, statistics.mean(values)))
    return figures


async def _matches_more_than(conn: asyncpg.Connection, query: SearchQuery, limit: int) -> bool:
    found: int = await conn.fetchval(
        """SELECT count(*) FROM (SELECT 1 FROM segments s
                                 WHERE s.text_search @@ websearch_to_tsquery($3::regconfig, $1)
                                 LIMIT $2 + 1) m""",
        query.text,
        limit,
        await search_language(conn),
    )
    return found > limit


async def _exact(conn: asyncpg.Connection, query: SearchQuery) -> set[tuple[str, int]]:
    """The search without index scans: the vector ranking becomes an exact sort (the words are
    found by bitmap scans of the GIN index, which are exact anyway, and every match scored)."""
    await conn.execute("SET enable_indexscan = off")
    try:
        return _ids(await search_chunks(conn, query))
    finally:
        await conn.execute("RESET enable_indexscan")


def _ids(hits: Sequence[SearchHit]) -> set[tuple[str, int]]:
    return {(h.video_id, h.seg_index) for h in hits}


def _percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), cuts[18]
