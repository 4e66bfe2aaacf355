import asyncio

import asyncpg
import pytest

from db.migrate import MIGRATIONS_DIR, Migration, apply_migrations, discover

pytestmark = pytest.mark.anyio


def test_migration_files_are_numbered_in_order() -> None:
    migrations = discover(MIGRATIONS_DIR)
    assert migrations and [m.version for m in migrations] == sorted({m.version for m in migrations})


async def test_each_migration_is_applied_once_even_by_concurrent_replicas(
    database_url: str,
) -> None:
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(apply_migrations(c) for c in connections))
        names = [m.name for m in discover(MIGRATIONS_DIR)]
        assert sorted(applied, key=len) == [[], [], names]
        assert await apply_migrations(connections[0]) == []
        count = await connections[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(names)
    finally:
        for c in connections:
            await c.close()


async def test_a_failing_migration_leaves_nothing_half_applied(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        bad = Migration(999, "999_broken.sql", "CREATE TABLE half (x int); SELECT 1/0;")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(conn, [*discover(MIGRATIONS_DIR), bad])
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") < 999
    finally:
        await conn.close()
