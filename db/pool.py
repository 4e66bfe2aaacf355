"""asyncpg pools that speak pgvector."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg
from pgvector.asyncpg import register_vector


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    server_settings: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections encode and decode `vector` values (the extension must exist);
    `server_settings` are PostgreSQL settings of each of its connections."""
    await ensure_vector_extension(dsn)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings=dict(server_settings or {}),
    )
    return pool


async def ensure_vector_extension(dsn: str) -> None:
    # The codec cannot be registered on a connection before the type exists.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except asyncpg.UniqueViolationError:
        pass  # a replica starting at the same moment created it: IF NOT EXISTS is not atomic
    finally:
        await conn.close()
