"""Search on a real PostgreSQL + pgvector with real MiniLM embeddings: hybrid ranking, filters
that keep k results, the vector index's life, the model check, and what results carry. The
rankings are checked against ones rebuilt here: cosine similarity in numpy over every stored
vector, word counts from the texts, and reciprocal rank fusion of the two."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest

from db.corpus import SEARCH_INDEX, ensure_embedding_model, ensure_search_index
from db.pool import create_pool
from db.search import (
    SearchQuery,
    ensure_search_language,
    search_chunks,
    search_language,
)
from db.search_filters import SearchFilters
from db.sink import ChunkRow, FinishedVideo, write_finished
from ingest.infrastructure.config import ConfigError, Settings, load_settings
from ingest.orchestration.search import Searcher, SearchOptions, search_options, search_upkeep
from tests import standins
from workers.embedder import EmbedderOptions, TextEmbedder

pytestmark = pytest.mark.anyio
MODEL = str(standins.minilm_path())
RARE = "We patched CVE-2024-3094 on every server the same afternoon."
SUBJECTS = ("The attacker", "Our team", "The maintainer", "A researcher", "The compiler")
VERBS = ("found", "hid", "reviewed", "fixed", "reported", "ignored")
OBJECTS = (
    "a backdoor in the build scripts", "a memory leak in the parser", "CVE-2023-4863 in libwebp",
    "CVE-2021-44228 in the logging library", "a slow SSH login", "a bug in the scheduler",
)  # fmt: skip
PLACES = ("last spring", "in production", "during the release", "on the mailing list")
RRF_K = 60  # README: reciprocal rank fusion, k = 60
Place = tuple[str, int]  # a chunk's video and position


@dataclass(frozen=True)
class Chunk:
    video: int
    speaker: str
    text: str
    speakers: tuple[str, ...] | None = None  # None: stored as before the column was added


def corpus_texts() -> list[Chunk]:
    """300 chunks over 30 videos: security talk that resembles the rare chunk in meaning, 10
    chunks (3 %) of the speaker `Rare`, and the one chunk naming CVE-2024-3094, where the Guest
    is heard too."""
    rng = random.Random(7)
    chunks = []
    for i in range(300):
        words = (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES))
        text = " ".join(words) + "."
        speaker = "Rare" if i % 30 == 3 else ("Host" if i % 2 else "Guest")
        if i == 157:
            chunks.append(Chunk(i // 10, speaker, RARE, (speaker, "Guest")))
        else:
            chunks.append(Chunk(i // 10, speaker, text))
    return chunks


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(EmbedderOptions(MODEL))


@pytest.fixture(scope="module")
def embedded(embedder: TextEmbedder) -> tuple[list[Chunk], npt.NDArray[np.float32]]:
    chunks = corpus_texts()
    return chunks, embedder.encode([c.text for c in chunks])


async def fill(
    conn: asyncpg.Connection, chunks: Sequence[Chunk], vectors: npt.NDArray[np.float32]
) -> None:
    """Videos v00..v29: channel `even`/`odd`, uploaded one day apart from 2024-01-01, listed by
    the source `listing-a` (the first three) or `listing-b`."""
    await ensure_embedding_model(conn, MODEL, vectors.shape[1])
    videos = sorted({c.video for c in chunks})
    start = datetime(2024, 1, 1, tzinfo=UTC)
    await conn.executemany(
        "INSERT INTO videos (id, url, title, channel, extractor, published_at, status)"
        " VALUES ($1, $2, $3, $4, 'Youtube', $5, 'processing')",
        [
            (f"v{n:02d}", f"https://www.youtube.com/watch?v=v{n:02d}", f"Talk {n}",
             "even" if n % 2 == 0 else "odd", start + timedelta(days=n))
            for n in videos
        ],
    )  # fmt: skip
    await conn.executemany(
        "INSERT INTO listings (source, position, video_id) VALUES ($1, $2, $3)",
        [("listing-a" if n < 3 else "listing-b", n, f"v{n:02d}") for n in videos],
    )
    finished = []
    for n in videos:
        rows = [
            ChunkRow(
                i, i * 30.0 + 0.5, i * 30.0 + 29, c.speaker, c.text, vectors[j], None, c.speakers
            )
            for i, (j, c) in enumerate((j, c) for j, c in enumerate(chunks) if c.video == n)
        ]
        finished.append(FinishedVideo(f"v{n:02d}", 300.0, "asr", MODEL, rows))
    await write_finished(conn, finished)


@pytest.fixture
async def searcher(
    pool: asyncpg.Pool, embedded: tuple[list[Chunk], npt.NDArray[np.float32]]
) -> Searcher:
    async with pool.acquire() as conn:
        await fill(conn, *embedded)
    return Searcher(pool, settings())


def settings(**overrides: str) -> Settings:
    return load_settings(**{"embedding_model": MODEL, "device": "cpu", **overrides})


async def test_a_rare_exact_word_comes_first(searcher: Searcher) -> None:
    for mode in ("hybrid", "text"):
        results = await searcher.search("CVE-2024-3094", search_options(k=5, mode=mode))
        assert results[0].hit.text == RARE, mode
        assert results[0].hit.text_rank == 1
    hybrid = await searcher.search("CVE-2024-3094", SearchOptions(k=5))
    assert hybrid[0].hit.vector_rank is not None  # both rankings took part
    assert "**" in hybrid[0].hit.snippet and "3094" in hybrid[0].hit.snippet


def places(chunks: Sequence[Chunk]) -> list[Place]:
    """Where `fill` stores each chunk: its video, numbered in corpus order within it."""
    seen: Counter[int] = Counter()
    found = []
    for c in chunks:
        found.append((f"v{c.video:02d}", seen[c.video]))
        seen[c.video] += 1
    return found


def anywhere(place: Place) -> bool:
    return True


def on_odd_channel(place: Place) -> bool:
    return int(place[0][1:]) % 2 == 1


def by_meaning(
    embedded: tuple[list[Chunk], npt.NDArray[np.float32]],
    question: npt.NDArray[np.float32],
    keep: Callable[[Place], bool] = anywhere,
) -> list[tuple[Place, float]]:
    """Every chunk by cosine similarity to `question`, computed over all of them in numpy,
    ties (chunks of the same text) by video and position. Identical vectors are scored once,
    so that their tie is exact here as it is in the database."""
    chunks, vectors = embedded
    unique, inverse = np.unique(vectors.astype(np.float64), axis=0, return_inverse=True)
    norms = np.linalg.norm(unique, axis=1) * np.linalg.norm(question.astype(np.float64))
    similarity = (unique @ question.astype(np.float64) / norms)[inverse.ravel()]
    scored = [(-float(sim), p) for p, sim in zip(places(chunks), similarity, strict=True)]
    return [(p, -neg) for neg, p in sorted(scored) if keep(p)]


async def test_a_word_too_long_to_count_is_matched_but_not_counted(searcher: Searcher) -> None:
    """PostgreSQL holds a lexeme of up to 2,046 bytes: a word of 2,045 is one, but its count
    token "32:word" is not. Such a word is still looked for, and ranks nothing."""
    long = "é" * 1000 + "x" * 45  # 2,045 bytes
    assert await searcher.search(long, search_options(k=3, mode="text")) == []
    either = await searcher.search(f"{long} or CVE-2024-3094", search_options(k=3, mode="text"))
    assert either[0].hit.text == RARE
    assert len(await searcher.search(long, search_options(k=3, mode="hybrid"))) == 3


async def test_a_question_without_matching_words_still_finds_by_meaning(
    searcher: Searcher,
    embedder: TextEmbedder,
    embedded: tuple[list[Chunk], npt.NDArray[np.float32]],
) -> None:
    """The ten nearest chunks of a brute-force cosine similarity, in its order."""
    question = "who discovered a hidden exploit"
    results = await searcher.search(question, SearchOptions(k=10))
    nearest = by_meaning(embedded, embedder.encode([question])[0])[:10]
    assert [(r.hit.video_id, r.hit.seg_index) for r in results] == [p for p, _ in nearest]
    assert [r.hit.similarity for r in results] == pytest.approx([s for _, s in nearest], abs=1e-5)
    assert all(r.hit.text_rank is None for r in results)  # no chunk has all those words
    assert [r.hit.vector_rank for r in results] == list(range(1, 11))


@dataclass(frozen=True)
class WordQuery:
    """A query as typed, and what it means over this corpus's words, which each occur in one
    form only ("memory", never "memories"): which chunks match, which words count."""

    text: str
    scored: tuple[str, ...]
    matches: Callable[[Counter[str]], bool]


def by_words(
    chunks: Sequence[Chunk], query: WordQuery, keep: Callable[[Place], bool]
) -> list[Place]:
    """The README's ranking by words from the texts: most occurrences of the query's words
    (none reaches the cap of 32 here) first, then by video and position."""
    scored = []
    for place, c in zip(places(chunks), chunks, strict=True):
        counts = Counter(re.findall(r"[a-z0-9]+", c.text.lower()))
        if keep(place) and query.matches(counts):
            scored.append((-sum(counts[w] for w in query.scored), place))
    return [place for _, place in sorted(scored)]


@dataclass(frozen=True)
class Fused:
    place: Place
    score: Fraction
    vector_rank: int | None
    text_rank: int | None


def fused(vector: Sequence[Place], words: Sequence[Place]) -> list[Fused]:
    """Reciprocal rank fusion: the sum of 1 / (k + rank) over the rankings holding the chunk;
    ties go to the better word rank, then by video and position."""
    vector_rank = {p: rank for rank, p in enumerate(vector, 1)}
    text_rank = {p: rank for rank, p in enumerate(words, 1)}
    found = []
    for p in vector_rank.keys() | text_rank.keys():
        ranks = (vector_rank.get(p), text_rank.get(p))
        score = sum((Fraction(1, RRF_K + r) for r in ranks if r is not None), Fraction(0))
        found.append(Fused(p, score, *ranks))
    inf = float("inf")
    return sorted(found, key=lambda f: (-f.score, f.text_rank or inf, f.place))


def memory_leak_or_backdoor(n: Counter[str]) -> bool:
    return bool((n["memory"] and n["leak"]) or n["backdoor"])


def slow_ssh_login(n: Counter[str]) -> bool:
    return bool(n["slow"] and n["ssh"] and n["login"])


def patched_server(n: Counter[str]) -> bool:
    return bool(n["patched"] and n["server"])  # the rare chunk alone


def found_or_backdoor(n: Counter[str]) -> bool:
    return bool(n["found"] or n["backdoor"])


def in_v14(place: Place) -> bool:
    return place[0] == "v14"


HYBRID = [
    (
        WordQuery(
            "memory leak or backdoor", ("memory", "leak", "backdoor"), memory_leak_or_backdoor
        ),
        SearchFilters(),
        anywhere,
    ),
    (
        WordQuery("a slow SSH login", ("slow", "ssh", "login"), slow_ssh_login),
        SearchFilters(channel="odd"),
        on_odd_channel,
    ),
    (WordQuery("patched server", ("patched", "server"), patched_server), SearchFilters(), anywhere),
    # Chunks 0 and 3 of v14 are 1st and 2nd by meaning, 2nd and 1st by words: a tie.
    (
        WordQuery("found or backdoor", ("found", "backdoor"), found_or_backdoor),
        SearchFilters(video_id="v14"),
        in_v14,
    ),
]


async def test_hybrid_scores_are_the_fused_reciprocal_ranks(
    searcher: Searcher,
    embedder: TextEmbedder,
    embedded: tuple[list[Chunk], npt.NDArray[np.float32]],
) -> None:
    """Both rankings rebuilt outside the database (cosine similarity in numpy, word counts from
    the texts), each cut at the rows it gives the fusion, and fused here."""
    one_ranking = 0
    for query, filters, keep in HYBRID:
        options = SearchOptions(k=10, filters=filters)
        n = SearchQuery(query.text, None, options.k).candidates
        nearest = [p for p, _ in by_meaning(embedded, embedder.encode([query.text])[0], keep)]
        want = fused(nearest[:n], by_words(embedded[0], query, keep)[:n])[:10]
        hits = [r.hit for r in await searcher.search(query.text, options)]
        assert [(h.video_id, h.seg_index, h.vector_rank, h.text_rank) for h in hits] == [
            (*f.place, f.vector_rank, f.text_rank) for f in want
        ], query.text
        assert [h.score for h in hits] == pytest.approx([float(f.score) for f in want], rel=1e-12)
        one_ranking += sum(None in (f.vector_rank, f.text_rank) for f in want)
    assert one_ranking  # chunks only one ranking holds compete too


async def test_a_narrow_filter_still_returns_k_with_the_index(
    pool: asyncpg.Pool, searcher: Searcher, database_url: str
) -> None:
    async with pool.acquire() as conn:
        assert await ensure_search_index(conn)
        # A corpus this small is cheaper to sort whole; make the planner reach for the vector
        # index as it does on a large corpus, where an index scan filtered afterwards (what
        # pgvector 0.6 does) would lose results.
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET enable_sort = off')
    indexed = await create_pool(database_url)
    try:
        for mode in ("vector", "hybrid"):
            options = search_options(k=10, mode=mode, speaker="Rare")
            results = await Searcher(indexed, settings()).search("a memory leak", options)
            assert len(results) == 10, mode
            assert {r.hit.speaker for r in results} == {"Rare"}
    finally:
        await indexed.close()


async def test_the_text_ranking_by_counts_equals_scoring_every_match(
    pool: asyncpg.Pool, searcher: Searcher, embedded: tuple[list[Chunk], npt.NDArray[np.float32]]
) -> None:
    # "found" is in about one chunk of six: more than k, ranked by reading its counts.
    vector = embedded[1][0]
    async with pool.acquire() as conn:
        for fast_query in (
            SearchQuery("found", None, 10, "text"),
            SearchQuery("found", vector, 10, "hybrid"),
        ):
            fast = await search_chunks(conn, fast_query)
            every = replace(fast_query, exhaustive_text=True)
            assert [(h.video_id, h.seg_index, h.score) for h in fast] == [
                (h.video_id, h.seg_index, h.score) for h in await search_chunks(conn, every)
            ]
            assert len(fast) == 10
    assert all("found" in h.text for h in fast if h.text_rank is not None)


async def test_filters_by_channel_source_video_and_upload_date(searcher: Searcher) -> None:
    query = "a bug was reported"

    async def found(**filters: object) -> list[str]:
        options = SearchOptions(k=30, filters=SearchFilters(**filters))  # type: ignore[arg-type]
        return [r.hit.video_id for r in await searcher.search(query, options)]

    assert len(await found(channel="odd")) == 30
    assert {int(v[1:]) % 2 for v in await found(channel="odd")} == {1}
    assert set(await found(source="listing-a")) == {"v00", "v01", "v02"}
    assert set(await found(video_id="v07")) == {"v07"}
    day = datetime(2024, 1, 11, tzinfo=UTC)
    dated = await found(published_after=day, published_before=day + timedelta(days=2))
    assert set(dated) == {"v10", "v11"}
    assert len(dated) == 20  # every chunk of both videos, fewer than k


async def test_the_speaker_filter_matches_the_main_speaker_only(searcher: Searcher) -> None:
    host = await searcher.search("CVE-2024-3094", search_options(k=5, speaker="Host"))
    assert host[0].hit.text == RARE
    guest = await searcher.search("CVE-2024-3094", search_options(k=5, speaker="Guest"))
    assert guest and RARE not in [r.hit.text for r in guest]


async def test_one_result_per_video(searcher: Searcher) -> None:
    results = await searcher.search("a slow SSH login", search_options(k=8, one_per_video=True))
    videos = [r.hit.video_id for r in results]
    assert len(videos) == 8 and len(set(videos)) == 8


async def test_json_has_a_fixed_shape_and_a_link_to_the_second(searcher: Searcher) -> None:
    results = await searcher.search("CVE-2024-3094", SearchOptions(k=3))
    first = results[0].as_json()
    assert list(first) == [
        "video_id", "seg_index", "title", "channel", "published_at", "speaker", "speakers",
        "start_s", "end_s", "link", "path", "url", "score", "similarity", "vector_rank",
        "text_rank", "snippet", "text", "transcript_source",
    ]  # fmt: skip
    assert (first["speaker"], first["speakers"]) == ("Host", ["Host", "Guest"])
    # Chunks stored before speakers were: their main speaker alone.
    assert all(r.as_json()["speakers"] == [r.hit.speaker] for r in results[1:])
    assert first["link"] == "https://youtu.be/v15?t=210"  # chunk 7 starts at 210.5 s
    assert first["published_at"] == "2024-01-16T00:00:00+00:00"
    assert json.loads(json.dumps([r.as_json() for r in results])) == [r.as_json() for r in results]


async def test_a_local_file_has_its_path_beside_the_link(
    pool: asyncpg.Pool, searcher: Searcher
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE videos SET url = 'file:///talks/my%20talk.mp3', extractor = 'file'"
            " WHERE id = 'v15'"
        )
    result = (await searcher.search("CVE-2024-3094", SearchOptions(k=1)))[0]
    assert result.link == "file:///talks/my%20talk.mp3#t=210"
    assert result.path == "/talks/my talk.mp3"


async def test_another_model_or_dimension_is_an_error_not_wrong_results(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, MODEL, 8)  # MiniLM's name, but 8-d vectors
    with pytest.raises(ConfigError, match="holds 8-d embeddings"):
        await Searcher(pool, settings()).search("anything", SearchOptions())
    other = Searcher(pool, settings(embedding_model="other/model"))
    with pytest.raises(ConfigError, match=f"embedded with {re.escape(MODEL)}, but"):
        await other.search("anything", SearchOptions())


async def test_an_empty_corpus_finds_nothing(pool: asyncpg.Pool) -> None:
    assert await Searcher(pool, settings()).search("anything", SearchOptions()) == []


async def test_bad_options_are_usage_errors(searcher: Searcher) -> None:
    with pytest.raises(ConfigError, match="invalid mode"):
        search_options(mode="fuzzy")
    with pytest.raises(ConfigError, match="empty"):
        await searcher.search("  ", SearchOptions())


async def test_the_search_language_reindexes_every_chunk(
    pool: asyncpg.Pool, searcher: Searcher
) -> None:
    # English drops "the" as a stop word; the simple configuration keeps every word.
    assert await searcher.search("the", search_options(mode="text")) == []
    async with pool.acquire() as conn:
        assert await ensure_search_language(conn, "simple")
        assert not await ensure_search_language(conn, "simple")
        assert (
            await conn.fetchval("SELECT count(*) FROM segments WHERE text_config::text <> 'simple'")
            == 0
        )
        with pytest.raises(asyncpg.UndefinedObjectError):
            await ensure_search_language(conn, "klingon")
    assert len(await searcher.search("the", search_options(k=10, mode="text"))) == 10


async def test_upkeep_applies_the_language_and_builds_the_index_past_the_threshold(
    pool: asyncpg.Pool, searcher: Searcher
) -> None:
    async with pool.acquire() as conn:
        await search_upkeep(settings(search_language="simple", hnsw_min_chunks="301"))(conn)
        assert await search_language(conn) == "simple"
        assert await conn.fetchval("SELECT to_regclass($1)", SEARCH_INDEX) is None
        # A configuration that does not exist is logged, and the corpus keeps its own.
        await search_upkeep(settings(search_language="klingon", hnsw_min_chunks="300"))(conn)
        assert await search_language(conn) == "simple"
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)"
        assert await conn.fetchval(valid, SEARCH_INDEX)


async def test_the_index_waits_for_enough_chunks(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, MODEL, 384)
        assert not await ensure_search_index(conn, min_chunks=1)
        assert await conn.fetchval("SELECT to_regclass($1)", SEARCH_INDEX) is None


async def test_the_index_is_built_concurrently_while_chunks_are_written(
    pool: asyncpg.Pool, embedded: tuple[list[Chunk], npt.NDArray[np.float32]]
) -> None:
    chunks, vectors = embedded
    async with pool.acquire() as conn:
        await fill(conn, chunks[:100], vectors[:100])
        await conn.execute(
            "INSERT INTO videos (id, url, status) VALUES ('w1', 'http://x/1', 'processing'),"
            " ('w2', 'http://x/2', 'processing')"
        )
    async with pool.acquire() as writer, pool.acquire() as builder, pool.acquire() as later:
        # An open write makes the build wait for it, with its ShareUpdateExclusive lock held.
        open_write = writer.transaction()
        await open_write.start()
        await write_finished(writer, [video("w1", vectors[100])])
        build = asyncio.create_task(ensure_search_index(builder, min_chunks=100))
        await until_building(later)
        # A plain CREATE INDEX would block this write until the build ends.
        await later.execute("SET lock_timeout = '2s'")
        await write_finished(later, [video("w2", vectors[101])])
        await open_write.commit()
        assert await asyncio.wait_for(build, 60)
        valid = await later.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", SEARCH_INDEX
        )
        assert valid
        assert await later.fetchval("SELECT count(*) FROM segments") == 102


def video(video_id: str, vector: npt.NDArray[np.float32]) -> FinishedVideo:
    return FinishedVideo(video_id, 10.0, "asr", MODEL, [ChunkRow(0, 0, 9, None, "new", vector)])


async def until_building(conn: asyncpg.Connection) -> None:
    for _ in range(200):
        if await conn.fetchval(
            "SELECT count(*) FROM pg_stat_progress_create_index"
            " WHERE command = 'CREATE INDEX CONCURRENTLY'"
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the index build never started")


def test_the_command_line_searches_by_words(ingest_env: dict[str, str]) -> None:
    async def prepare() -> None:
        conn = await asyncpg.connect(ingest_env["DATABASE_URL"])
        try:
            from pgvector.asyncpg import register_vector

            from db.migrate import apply_migrations

            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await register_vector(conn)
            await apply_migrations(conn)
            chunks = corpus_texts()[150:160]
            vectors = np.random.default_rng(0).standard_normal((10, 384)).astype(np.float32)
            await fill(conn, chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        finally:
            await conn.close()

    asyncio.run(prepare())
    env = {**ingest_env, "INGEST_EMBEDDING_MODEL": MODEL}
    command = [sys.executable, "-m", "ingest", "search", "CVE-2024-3094", "--mode", "text"]
    done = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [(r["video_id"], r["speakers"]) for r in json.loads(done.stdout)] == [
        ("v15", ["Host", "Guest"])
    ]
    shown = subprocess.run(command, env=env, capture_output=True, text=True)
    assert "v15?t=210" in shown.stdout and "CVE-2024-3094" in shown.stdout
    assert "[speakers: Host, Guest]" in shown.stdout
    bad = subprocess.run([*command, "--mode", "fuzzy"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid mode" in bad.stderr
