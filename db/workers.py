"""Heartbeats: which processes are alive, on the database's clock.

Each process keeps a row in `workers` and touches it every third of its lease. An owner whose row
is older than its lease (or gone) is dead wherever it ran: two containers with one host name, or
every process being PID 1, make a process id prove nothing.
"""

from __future__ import annotations

import asyncpg

# Whether a `workers` row's heartbeat is as recent as its lease.
ALIVE = "seen_at > now() - make_interval(secs => lease_s)"


async def beat(conn: asyncpg.Connection, owner: str, host: str, pid: int, lease_s: float) -> None:
    """This process is alive now (its row is created by the first beat)."""
    await conn.execute(
        "INSERT INTO workers (owner, host, pid, lease_s) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (owner) DO UPDATE SET seen_at = now(), lease_s = EXCLUDED.lease_s",
        owner,
        host,
        pid,
        lease_s,
    )


async def retire(conn: asyncpg.Connection, owner: str) -> None:
    """This process ends: its row goes, and with it the rows of processes dead for a day (their
    leases and folders are long handed back and removed by then)."""
    await conn.execute(
        "DELETE FROM workers WHERE owner = $1 OR seen_at < now() - interval '1 day'", owner
    )


async def live_owners(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(f"SELECT owner FROM workers WHERE {ALIVE}")  # noqa: S608 - constant
    return {row["owner"] for row in rows}
