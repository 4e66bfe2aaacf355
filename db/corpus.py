"""Which embedding model the corpus was built with, and the search index that depends on it."""

from __future__ import annotations

import asyncpg


class EmbeddingModelMismatch(Exception):
    """The database holds vectors of another model: mixing them would make search meaningless."""


async def ensure_embedding_model(conn: asyncpg.Connection, model: str, dim: int) -> None:
    """Records the model on first use and types the vector column; refuses a different model."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE corpus IN EXCLUSIVE MODE")
        row = await conn.fetchrow("SELECT embedding_model, embedding_dim FROM corpus")
        if row is None:
            await conn.execute(
                "INSERT INTO corpus (embedding_model, embedding_dim) VALUES ($1, $2)", model, dim
            )
            # The dimension is a type modifier, not a parameter; `dim` is an int, so it is safe.
            await conn.execute(f"ALTER TABLE segments ALTER COLUMN embedding TYPE vector({dim:d})")
            return
        if (row["embedding_model"], row["embedding_dim"]) != (model, dim):
            raise EmbeddingModelMismatch(
                f"the database holds {row['embedding_dim']}-d embeddings of "
                f"{row['embedding_model']}, but the configured model is {model} ({dim}-d); "
                "use that model or another database"
            )


async def recorded_embedding_model(conn: asyncpg.Connection) -> str | None:
    model: str | None = await conn.fetchval("SELECT embedding_model FROM corpus")
    return model


async def ensure_search_index(conn: asyncpg.Connection) -> None:
    """Builds the cosine HNSW index once the column is typed (after a backfill, when it is cheap
    compared with maintaining it row by row during the bulk load)."""
    if await conn.fetchval("SELECT count(*) FROM corpus") == 0:
        return
    await conn.execute(
        "CREATE INDEX IF NOT EXISTS segments_embedding_hnsw"
        " ON segments USING hnsw (embedding vector_cosine_ops)"
    )
