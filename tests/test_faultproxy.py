"""The fault proxy itself: it forwards faithfully, and each fault fires when and how it says."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.faultproxy import FaultProxy, postgres_address

pytestmark = pytest.mark.anyio

# asyncpg raises ConnectionDoesNotExistError (a PostgresError, not an InterfaceError) when the
# connection goes away under a statement, and InterfaceError for one started on a closed connection.
CONNECTION_LOST = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)


@pytest.fixture
def proxy(database_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(postgres_address(database_url)) as proxy:
        yield proxy


@pytest.fixture
async def table(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection (no proxy) to a database with a table t(id, n) holding (1, 0)."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)")
    await conn.execute("INSERT INTO t VALUES (1, 0)")
    try:
        yield conn
    finally:
        await conn.close()


async def eventually(condition: Callable[[], bool]) -> None:
    """Waits for `condition`, with room to spare on a slow machine."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - state in another thread, not an event
            await asyncio.sleep(0.02)


def test_the_url_goes_through_the_proxy_as_the_same_user_and_database() -> None:
    with FaultProxy("/nowhere/.s.PGSQL.5432") as proxy:
        url = proxy.url("postgresql://postgres:@/test_abc?host=/tmp/pg")
        assert url == f"postgresql://postgres@127.0.0.1:{proxy.port}/test_abc"
        url = proxy.url("postgresql://u:secret@db:6543/x?host=/tmp/pg&port=1&application_name=a")
        assert url == f"postgresql://u:secret@127.0.0.1:{proxy.port}/x?application_name=a"
    assert postgres_address("postgresql://postgres:@/d?host=/tmp/pg") == "/tmp/pg/.s.PGSQL.5432"
    assert postgres_address("postgresql://u@/d?host=/s&port=7") == "/s/.s.PGSQL.7"
    assert postgres_address("postgresql://u@db:6543/d") == ("db", 6543)


async def test_queries_and_pools_work_through_the_proxy(
    proxy: FaultProxy, database_url: str
) -> None:
    conn = await asyncpg.connect(proxy.url(database_url))
    try:
        database = urlsplit(database_url).path.lstrip("/")
        assert await conn.fetchval("SELECT current_database()") == database
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()
    async with asyncpg.create_pool(proxy.url(database_url), min_size=2, max_size=4) as pool:
        got = await asyncio.gather(*(pool.fetchval("SELECT $1::int", i) for i in range(20)))
        assert got == list(range(20))
        rows = [(i, f"r{i}") for i in range(5000)]
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE c (id int, s text)")
            await conn.copy_records_to_table("c", records=rows)
            assert await conn.fetchval("SELECT count(*) FROM c") == 5000
    assert proxy.connections >= 3
    assert proxy.fired.lost_replies == proxy.fired.cuts == proxy.fired.periodic_resets == 0


CLIENT = """
import asyncio, sys, asyncpg

async def main():
    conn = await asyncpg.connect(sys.argv[1])
    print(await conn.fetchval("SELECT current_database()"))
    await conn.close()

asyncio.run(main())
"""


def test_another_process_gets_through_a_proxy_on_a_tcp_address(
    proxy: FaultProxy, database_url: str
) -> None:
    with FaultProxy(("127.0.0.1", proxy.port)) as outer:  # forwards to `proxy` over TCP
        url = outer.url(proxy.url(database_url))
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, url], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == urlsplit(database_url).path.lstrip("/")
    assert outer.connections == proxy.connections == 1


async def test_a_lost_reply_leaves_the_statement_committed(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(proxy.url(database_url))
    proxy.lose_reply("UPDATE t SET")
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await conn.execute("UPDATE t SET n = n + 1 WHERE id = 1")
    assert conn.is_closed()
    assert await table.fetchval("SELECT n FROM t") == 1
    assert proxy.fired.lost_replies == 1


async def test_a_lost_reply_matches_a_prepared_statement_run_again(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    async with asyncpg.create_pool(proxy.url(database_url), min_size=1, max_size=1) as pool:
        update = "UPDATE t SET n = n + $1 WHERE id = 1"
        await pool.execute(update, 1)  # prepared, named and cached on the pool's connection
        proxy.lose_reply("UPDATE t SET")
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await pool.execute(update, 10)  # only a Bind naming the statement now
        assert await table.fetchval("SELECT n FROM t") == 11
        assert proxy.fired.lost_replies == 1
        assert await pool.fetchval("SELECT n FROM t") == 11  # the pool reconnects
    assert proxy.connections == 2


async def test_a_lost_commit_reply(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(proxy.url(database_url))
    proxy.lose_reply("COMMIT")
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        async with conn.transaction():
            await conn.execute("UPDATE t SET n = 5")
    assert await table.fetchval("SELECT n FROM t") == 5
    assert proxy.fired.lost_replies == 1


async def update_then_copy(conn: asyncpg.Connection, rows: list[tuple[int, int]]) -> None:
    async with conn.transaction():
        await conn.execute("UPDATE t SET n = 7")
        await conn.copy_records_to_table("t", records=rows)


async def test_a_copy_cut_midway_writes_nothing(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(proxy.url(database_url))
    proxy.reset_during("COPY")
    rows = [(i, i) for i in range(2, 20_000)]
    # The transaction's __aexit__ cannot roll back on the closed connection: its InterfaceError
    # replaces the ConnectionDoesNotExistError that copy_records_to_table raised.
    with pytest.raises(asyncpg.InterfaceError) as cut:
        await update_then_copy(conn, rows)
    assert isinstance(cut.value.__context__, asyncpg.ConnectionDoesNotExistError)
    assert await table.fetchval("SELECT count(*) FROM t") == 1
    assert await table.fetchval("SELECT n FROM t") == 0
    assert proxy.fired.cuts == 1


async def test_a_lost_reply_to_a_whole_copy(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(proxy.url(database_url))
    proxy.lose_reply("COPY")
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await conn.copy_records_to_table("t", records=[(i, i) for i in range(2, 20_000)])
    assert await table.fetchval("SELECT count(*) FROM t") == 19_999
    assert proxy.fired.lost_replies == 1


async def test_a_statement_cut_before_its_reply(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(proxy.url(database_url))
    proxy.reset_during("SELECT pg_sleep")
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await conn.fetchval("SELECT pg_sleep(0.01)")
    assert proxy.fired.cuts == 1


async def test_faults_fire_only_as_many_times_as_asked(
    proxy: FaultProxy, database_url: str, table: asyncpg.Connection
) -> None:
    proxy.lose_reply("UPDATE t SET", times=2)
    for _ in range(3):
        conn = await asyncpg.connect(proxy.url(database_url))
        try:
            await conn.execute("UPDATE t SET n = n + 1")
        except CONNECTION_LOST:
            pass
        finally:
            await conn.close()
    assert await table.fetchval("SELECT n FROM t") == 3
    assert proxy.fired.lost_replies == 2


async def test_reset_all_closes_every_connection(proxy: FaultProxy, database_url: str) -> None:
    conns = [await asyncpg.connect(proxy.url(database_url)) for _ in range(3)]
    assert proxy.reset_all() == 3
    await eventually(lambda: all(c.is_closed() for c in conns))
    with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
        await conns[0].fetchval("SELECT 1")


async def test_every_connection_is_reset_every_few_tenths_of_a_second(
    proxy: FaultProxy, database_url: str
) -> None:
    conns = [await asyncpg.connect(proxy.url(database_url)) for _ in range(3)]
    proxy.reset_every(0.2, 0.4)
    await eventually(lambda: all(c.is_closed() for c in conns))
    assert proxy.fired.periodic_resets >= 3
    # A connection opened afterwards is reset too (perhaps, on a loaded machine, while connecting).
    with contextlib.suppress(*CONNECTION_LOST, OSError):
        late = await asyncpg.connect(proxy.url(database_url))
        await eventually(late.is_closed)
    assert proxy.fired.periodic_resets >= 4
    proxy.stop_resets()
    survivor = await asyncpg.connect(proxy.url(database_url))
    await asyncio.sleep(0.6)
    assert await survivor.fetchval("SELECT 1") == 1
    await survivor.close()
