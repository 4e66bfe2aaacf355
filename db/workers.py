"""Heartbeats: which processes are alive, on the database's clock.

Each process keeps a row in `workers` and touches it every third of its lease. An owner whose row
is older than its lease (or gone) is dead wherever it ran: two containers with one host name, or
every process being PID 1, make a process id prove nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


async def bury(conn: asyncpg.Connection, tokens: list[str]) -> None:
    """The owners whose random token (the last part of `host:pid:token`) is in `tokens` died."""
    await conn.execute(
        "UPDATE workers SET seen_at = '-infinity'"
        " WHERE split_part(owner, ':', 3) = ANY($1::text[])",
        tokens,
    )


async def live_owners(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(f"SELECT owner FROM workers WHERE {ALIVE}")  # noqa: S608 - constant
    return {row["owner"] for row in rows}


_REPLICAS = f"""
SELECT w.owner, w.host, w.pid, w.started_at,
    extract(epoch FROM now() - w.seen_at)::float8 AS seen_s, {ALIVE} AS alive,
    (SELECT count(*) FROM videos v WHERE v.lease_owner = w.owner AND v.status = 'processing')
        AS videos
FROM workers w ORDER BY w.started_at
"""  # noqa: S608 - a constant fragment


@dataclass(frozen=True, slots=True)
class Replica:
    """A process as its heartbeat shows it, for `ingest status`."""

    owner: str
    host: str
    pid: int
    started_at: datetime
    seen_s: float  # since its last heartbeat
    alive: bool  # its heartbeat is as recent as its lease
    videos: int  # it holds now


async def replicas(conn: asyncpg.Connection) -> list[Replica]:
    """Every process with a heartbeat row: the live ones, and those that stopped within a day."""
    rows = await conn.fetch(_REPLICAS)
    return [Replica(**dict(row)) for row in rows]
