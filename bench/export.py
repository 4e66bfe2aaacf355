"""Exporting the corpus at scale: a database of 100,000 and one of 1,000,000 synthetic chunks
(384-d random vectors, texts of about 400 characters, 100 chunks a video) are exported as JSON
Lines, Parquet, and Parquet with embeddings, each by a fresh process whose peak resident memory
and time are measured. Memory should not grow with the corpus: the export holds a batch (and a
Parquet row group) at a time.

`python -m bench.export URI FORMAT EMBEDDINGS OUT` is that process: it prints its figures as
one line of JSON.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.database import fresh_database
from bench.results import Figure
from db.corpus import ensure_embedding_model
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.orchestration.export import CorpusFormat, CorpusOptions, write_corpus

DIM = 384
CHUNKS_PER_VIDEO = 100
KINDS: tuple[tuple[CorpusFormat, bool], ...] = (
    ("jsonl", False),
    ("parquet", False),
    ("parquet", True),
)
# Peak memory of the larger export over the smaller one's: flat, give or take the allocator.
# Arrow's allocator (mimalloc) keeps pages as it likes: the same 100,000-chunk Parquet export
# peaked anywhere from 206 to 226 MB over runs, so 1.25 leaves that noise out; memory that grew
# with the chunks would be ten times as much at a million.
FLAT = 1.25

# Random unit-free vectors, one per chunk; the subquery names `g` so that it runs per row.
_FILL = f"""
INSERT INTO segments (video_id, seg_index, start_s, end_s, speaker, speakers, text, embedding)
SELECT 'v' || (g / {CHUNKS_PER_VIDEO}), g % {CHUNKS_PER_VIDEO}, (g % {CHUNKS_PER_VIDEO}) * 30.0,
       (g % {CHUNKS_PER_VIDEO}) * 30.0 + 29.5, 'Host', ARRAY['Host', 'Guest'],
       repeat(md5(g::text) || ' ', 12),
       (SELECT array_agg(random()::real) FROM generate_series(1, {DIM} + 0 * g))::vector
FROM generate_series($1::integer, $2::integer - 1) AS g
"""


def export(server_uri: str, quick: bool) -> list[Figure]:
    # Quick: one Parquet row group against three.
    small, large = (20_000, 60_000) if quick else (100_000, 1_000_000)
    runs = {size: _measure_size(server_uri, size) for size in (small, large)}
    figures = []
    for kind in KINDS:
        name = _name(kind)
        low, high = runs[small][kind], runs[large][kind]
        figures.append(
            Figure(
                "export", f"{name}: peak RSS, {large:,} ÷ {small:,} chunks",
                high["peak_rss_mb"] / low["peak_rss_mb"], target=FLAT, compare="<=",
                detail={f"peak_rss_mb_{small}": round(low["peak_rss_mb"], 1),
                        f"peak_rss_mb_{large}": round(high["peak_rss_mb"], 1)},
            )
        )  # fmt: skip
        figures.append(
            Figure(
                "export", f"{name}, {large:,} chunks", high["rows"] / high["seconds"], "chunks/s",
                detail={"seconds": round(high["seconds"], 1), "file_mb": round(high["mb"], 1)},
            )
        )  # fmt: skip
    return figures


def _name(kind: tuple[CorpusFormat, bool]) -> str:
    fmt, embeddings = kind
    return f"{fmt} + embeddings" if embeddings else fmt


def _measure_size(server_uri: str, size: int) -> dict[tuple[CorpusFormat, bool], dict[str, float]]:
    uri = asyncio.run(_fill(server_uri, size))
    folder = Path(tempfile.mkdtemp(prefix="ingest-bench-export-"))
    try:
        return {kind: _child(uri, *kind, folder / f"corpus.{kind[0]}") for kind in KINDS}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _child(uri: str, fmt: CorpusFormat, embeddings: bool, path: Path) -> dict[str, float]:
    """The figures of a fresh process that exports the corpus; the file is deleted after."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.export", uri, fmt, str(embeddings), str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    path.unlink()
    return figures


async def _fill(server_uri: str, size: int) -> str:
    """A database of `size` chunks. The full-text columns, which an export does not read, are
    dropped first, so that filling a million chunks takes minutes, not an hour."""
    uri = await fresh_database(server_uri)
    pool = await create_pool(uri, max_size=1)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await ensure_embedding_model(conn, "bench", DIM)
            await conn.execute("ALTER TABLE segments DROP COLUMN text_search")
            await conn.execute(
                "INSERT INTO videos (id, url, title, channel, extractor, published_at, status)"
                " SELECT 'v' || n, 'https://www.youtube.com/watch?v=v' || n, 'Talk ' || n,"
                " 'channel ' || (n % 10), 'Youtube', now() - n * interval '1 day', 'done'"
                " FROM generate_series(0, $1::integer - 1) AS n",
                -(-size // CHUNKS_PER_VIDEO),
            )
            for first in range(0, size, 100_000):
                await conn.execute(_FILL, first, min(first + 100_000, size))
            await conn.execute("VACUUM ANALYZE segments")
    finally:
        await pool.close()
    return uri


async def _export(uri: str, fmt: CorpusFormat, embeddings: bool, path: Path) -> dict[str, float]:
    pool = await create_pool(uri, max_size=1)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            rows = await write_corpus(conn, path, fmt, CorpusOptions(embeddings=embeddings))
            seconds = time.perf_counter() - started
    finally:
        await pool.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}


if __name__ == "__main__":
    uri, fmt, embeddings, out = sys.argv[1:5]
    kind: CorpusFormat = "jsonl" if fmt == "jsonl" else "parquet"
    figures = asyncio.run(_export(uri, kind, embeddings == "True", Path(out)))
    print(json.dumps({**figures, "mb": Path(out).stat().st_size / 2**20}))
