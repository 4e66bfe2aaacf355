"""A private embedded PostgreSQL for the benchmarks, one fresh database per measurement."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from db.embedded import start_embedded, stop_embedded


@contextmanager
def server() -> Iterator[str]:
    """Outside /root and pytest's trees: pgserver opens the parent folders to its own user."""
    folder = Path(tempfile.mkdtemp(prefix="ingest-bench-pg-"))
    try:
        yield start_embedded(folder / "pgdata")
    finally:
        stop_embedded(folder / "pgdata")
        shutil.rmtree(folder, ignore_errors=True)


async def fresh_database(server_uri: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_uri)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_uri.replace("/postgres?", f"/{name}?", 1)
