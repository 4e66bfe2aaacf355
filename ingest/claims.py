"""This process's share of the work: leased videos, renewed while worked on, handed back at the
end, and the leases of this machine's dead processes taken over at start."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path

import structlog

from db import leases
from db.leases import ClaimRules
from ingest.messages import VideoJob
from ingest.retry import Database

log = structlog.get_logger()


def new_owner() -> str:
    """host:pid:token — unique per process; host and pid tell whether it still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead_here(owner: str) -> bool:
    """An owner on this machine whose process is gone (a crash, kill -9)."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid, _ = parts
    return host == socket.gethostname() and not _pid_alive(int(pid))


def audio_dir_of(base: Path, owner: str) -> Path:
    """Each process downloads into a folder of its own, named pid-token."""
    _, pid, token = owner.rsplit(":", 2)
    return base / f"{pid}-{token}"


def remove_dead_audio(base: Path) -> None:
    """Partial or unprocessed downloads of this machine's dead processes."""
    if not base.is_dir():
        return
    for folder in base.iterdir():
        pid = folder.name.split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class Claims:
    def __init__(self, db: Database, owner: str, rules: ClaimRules) -> None:
        self.db, self.owner, self.rules = db, owner, rules

    async def take_over_dead(self) -> int:
        """Ends the leases of this machine's dead processes, so a restart resumes at once
        instead of waiting for them to expire."""
        owners = await self.db.run(leases.lease_owners)
        dead = [o for o in owners if o != self.owner and is_dead_here(o)]
        if not dead:
            return 0
        count = await self.db.run(lambda conn: leases.expire(conn, dead))
        log.info("leases_taken_over", owners=dead, videos=count)
        return count

    async def count(self, ids: list[str]) -> leases.Claimable:
        return await self.db.run(lambda conn: leases.count_claimable(conn, ids, self.rules))

    async def jobs(
        self,
        jobs: Mapping[str, VideoJob],
        stop: asyncio.Event,
        limit: int | None = None,
        returned: Collection[str] = (),
    ) -> AsyncIterator[VideoJob]:
        """Claims the given videos one at a time, in order, until none is left, `limit` is
        reached, or `stop` is set. Claiming lazily leaves the rest to other replicas. Videos
        this run handed back (`returned`, which grows as it goes: a site that needs the user)
        are not claimed again by it."""
        ids = list(jobs)
        claimed = 0
        while not stop.is_set() and (limit is None or claimed < limit):
            if returned:
                ids = [i for i in ids if i not in returned]
            video_id = await self._claim_next(ids)
            if video_id is None:
                return
            claimed += 1
            yield jobs[video_id]

    async def _claim_next(self, ids: list[str]) -> str | None:
        return await self.db.run(lambda conn: leases.claim_next(conn, self.owner, ids, self.rules))

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.rules.ttl_s / 3)
            await self.db.run(lambda conn: leases.renew(conn, self.owner, self.rules.ttl_s))

    async def hand_back_all(self) -> int:
        count = await self.db.run(lambda conn: leases.hand_back(conn, self.owner))
        if count:
            log.info("videos_handed_back", videos=count)
        return count
