"""Opening the configured database (or the embedded one) with the schema up to date."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import asyncpg

from db.embedded import start_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from ingest.infrastructure.config import Settings
from ingest.infrastructure.retry import (
    DATABASE_ERRORS,
    RetryPolicy,
    is_connection_error,
    retry_transient,
)

# A connection lost while starting (a restart, a flaky network) is tried again for a few seconds;
# a database that stays away is reported then.
_STARTING = RetryPolicy(attempts=4, initial_s=0.5, max_s=2.0)


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
async def open_database(
    settings: Settings, server_settings: Mapping[str, str] | None = None
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the configured database; `server_settings` are PostgreSQL settings of each of
    its connections (a statement timeout, say)."""
    dsn = await resolve_dsn(settings)
    connect = partial(create_pool, dsn, max_size=8, server_settings=server_settings)
    try:
        pool = await retry_transient(
            _STARTING, "database_connect", connect,
            is_connection_error,
        )  # fmt: skip
    except DATABASE_ERRORS as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    try:
        await _migrate(pool)
        yield pool
    finally:
        await pool.close()


async def _migrate(pool: asyncpg.Pool) -> None:
    """The schema brought up to date; a connection lost on the way (each migration is one
    transaction, applied once) is worth a few more tries."""

    async def migrate() -> None:
        async with pool.acquire() as conn:
            # A migration takes as long as it takes, whatever statement timeout the pool's
            # connections have; the pool resets the setting when the connection goes back.
            await conn.execute("SET statement_timeout = 0")
            await apply_migrations(conn)

    await retry_transient(_STARTING, "migrations", migrate, is_connection_error)
