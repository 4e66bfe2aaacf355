"""The `site_pauses` table: which sites each process has paused, for `ingest status`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class SitePause:
    site: str
    owner: str
    kind: str  # throttled, needs_user or extractor_broken
    reason: str
    fix: str | None
    resume_at: datetime | None
    pauses: int


async def record_pause(
    conn: asyncpg.Connection, owner: str, pause: SitePause, resume_in_s: float | None
) -> None:
    await conn.execute(
        """
        INSERT INTO site_pauses (site, owner, kind, reason, fix, resume_at, pauses)
        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
        ON CONFLICT (site, owner) DO UPDATE SET kind = EXCLUDED.kind, reason = EXCLUDED.reason,
            fix = EXCLUDED.fix, resume_at = EXCLUDED.resume_at, pauses = EXCLUDED.pauses,
            updated_at = now()
        """,
        pause.site,
        owner,
        pause.kind,
        pause.reason,
        pause.fix,
        resume_in_s,
        pause.pauses,
    )


async def clear_pause(conn: asyncpg.Connection, owner: str, site: str) -> None:
    await conn.execute("DELETE FROM site_pauses WHERE owner = $1 AND site = $2", owner, site)


async def end_throttling(conn: asyncpg.Connection, owner: str) -> None:
    """A process that ends takes its throttling pauses along; what waits for the user stays
    for `ingest status` to show, until a run starts that will find out again."""
    await conn.execute("DELETE FROM site_pauses WHERE owner = $1 AND kind = 'throttled'", owner)


async def forget_needs_user(conn: asyncpg.Connection) -> None:
    """At a run's start: the user may have fixed what was asked (or updated yt-dlp); the first
    request tells."""
    await conn.execute("DELETE FROM site_pauses WHERE kind <> 'throttled'")


async def current_pauses(conn: asyncpg.Connection) -> list[SitePause]:
    """Pauses still running, and sites waiting for the user, newest first."""
    rows = await conn.fetch(
        "SELECT site, owner, kind, reason, fix, resume_at, pauses FROM site_pauses"
        " WHERE kind <> 'throttled' OR resume_at > now() ORDER BY updated_at DESC"
    )
    return [SitePause(**dict(row)) for row in rows]
