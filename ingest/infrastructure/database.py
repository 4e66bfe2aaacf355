"""Opening the configured database (or the embedded one) with the schema up to date."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from db.embedded import start_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.infrastructure.config import Settings


class DatabaseUnavailable(Exception):
    """The database cannot be reached or started (exit status 2)."""


async def resolve_dsn(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    try:
        return await asyncio.to_thread(start_embedded, settings.pgdata_dir)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {settings.pgdata_dir}: {exc}"
        ) from exc


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    dsn = await resolve_dsn(settings)
    try:
        pool = await create_pool(dsn, max_size=8)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool
    finally:
        await pool.close()
