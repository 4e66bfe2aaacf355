"""Which embedding model the corpus was built with, and the search index that depends on it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


class EmbeddingModelMismatch(Exception):
    """The database holds vectors of another model: mixing them would make search meaningless."""


_CORPUS_MODEL = "SELECT embedding_model, embedding_dim, previous_model FROM corpus"


async def ensure_embedding_model(conn: asyncpg.Connection, model: str, dim: int) -> None:
    """Records the model on first use and types the vector column; refuses a different model."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE corpus IN EXCLUSIVE MODE")
        row = await conn.fetchrow(_CORPUS_MODEL)
        if row is None:
            await conn.execute(
                "INSERT INTO corpus (embedding_model, embedding_dim) VALUES ($1, $2)", model, dim
            )
            # The dimension is a type modifier, not a parameter; `dim` is an int, so it is safe.
            await conn.execute(f"ALTER TABLE segments ALTER COLUMN embedding TYPE vector({dim:d})")
            return
        if (row["embedding_model"], row["embedding_dim"]) != (model, dim):
            if row["previous_model"] == model:
                raise EmbeddingModelMismatch(
                    f"the corpus was re-embedded from {model} to {row['embedding_model']}: "
                    f"set INGEST_EMBEDDING_MODEL={row['embedding_model']}"
                )
            raise EmbeddingModelMismatch(
                f"the database holds {row['embedding_dim']}-d embeddings of "
                f"{row['embedding_model']}, but the configured model is {model} ({dim}-d); "
                "use that model or another database"
            )


@dataclass(frozen=True, slots=True)
class CorpusModel:
    """The model the corpus's vectors come from, and the one a re-embedding replaced."""

    model: str
    dim: int
    previous: str | None = None


async def corpus_model(conn: asyncpg.Connection) -> CorpusModel | None:
    """None until the first model is recorded."""
    row = await conn.fetchrow(_CORPUS_MODEL)
    return None if row is None else CorpusModel(*row)


async def pinned_corpus_model(conn: asyncpg.Connection) -> CorpusModel | None:
    """The corpus's model, which cannot change until `conn`'s transaction ends: a switch of
    models needs `segments` exclusively, so the vectors a query of this transaction reads are
    of this model."""
    await conn.execute("LOCK TABLE segments IN ACCESS SHARE MODE")
    return await corpus_model(conn)


async def recorded_embedding_model(conn: asyncpg.Connection) -> str | None:
    model: str | None = await conn.fetchval("SELECT embedding_model FROM corpus")
    return model


SEARCH_INDEX = "segments_embedding_hnsw"
# Only one replica builds the index; the others find it building (or built) and carry on.
_BUILD_LOCK = 0x686E7377


async def ensure_search_index(conn: asyncpg.Connection, min_chunks: int = 0) -> bool:
    """Builds the cosine HNSW index once the column is typed and the corpus holds `min_chunks`
    chunks; returns whether it built it. Below that size an exact scan is fast and every insert
    stays cheap. CONCURRENTLY: writers go on while it builds, so `conn` must not be in a
    transaction. A build that was interrupted leaves an invalid index, which is built again."""
    if await conn.fetchval("SELECT count(*) FROM corpus") == 0:
        return False
    if await _index_valid(conn) or not await _holds_chunks(conn, min_chunks):
        return False
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _BUILD_LOCK):
        return False
    try:
        valid = await _index_valid(conn)
        if valid:
            return False
        if valid is False:
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SEARCH_INDEX}")
        await conn.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SEARCH_INDEX}"
            " ON segments USING hnsw (embedding vector_cosine_ops)"
        )
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _BUILD_LOCK)


async def _index_valid(conn: asyncpg.Connection) -> bool | None:
    """None: there is no index; False: a build is under way or was interrupted."""
    valid: bool | None = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", SEARCH_INDEX
    )
    return valid


async def _holds_chunks(conn: asyncpg.Connection, at_least: int) -> bool:
    # Counts no further than needed: the daemon asks on every poll of a corpus of millions.
    found: int = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM segments LIMIT $1) s", at_least
    )
    return found >= at_least
