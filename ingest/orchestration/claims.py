"""This process's share of the work: leased videos, renewed while worked on, handed back at the
end, and the leases of this machine's dead processes taken over at start."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import structlog

from db import leases
from db.leases import ClaimRules
from db.listings import FIRST_POSITION
from ingest.infrastructure.retry import Database
from ingest.stages.messages import VideoJob

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


@dataclass
class _Cursor:
    """Where the walk along the listings is: a source, and a position in its listing."""

    sources: list[str]
    index: int = 0
    position: int = FIRST_POSITION
    fresh: bool = True  # this walk began at the start and has found nothing yet

    @property
    def source(self) -> str | None:
        return self.sources[self.index] if self.index < len(self.sources) else None

    def found(self, position: int) -> None:
        self.position, self.fresh = position + 1, False

    def next_source(self) -> None:
        self.index, self.position = self.index + 1, FIRST_POSITION

    def restart(self) -> None:
        self.index, self.position, self.fresh = 0, FIRST_POSITION, True


def job_of(video: leases.Claimed) -> VideoJob:
    """The job of a claimed video, rebuilt from its row: a local file's path is in its URL."""
    local = None
    if video.extractor == "file":
        local = Path(url2pathname(urlsplit(video.url).path))
    return VideoJob(video.id, video.url, video.title, local_path=local)


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

    async def count(self, sources: Sequence[str]) -> leases.Claimable:
        return await self.db.run(lambda conn: leases.count_claimable(conn, sources, self.rules))

    async def jobs(
        self,
        sources: Sequence[str],
        stop: asyncio.Event,
        limit: int | None = None,
        returned: Collection[str] = (),
        closed: Callable[[str], bool] = lambda _source: False,
        settle: Callable[[], Awaitable[int]] | None = None,
    ) -> AsyncIterator[VideoJob]:
        """Claims the videos of the sources' recorded listings one at a time, in listing order
        (source after source), until none is left, `limit` is reached, or `stop` is set.
        Claiming lazily leaves the rest to other replicas. Videos this run handed back
        (`returned`) are left alone, and so are sources that are `closed` (their site waits
        for the user): claiming their videos only to hand them back would make `returned` grow
        with the channel.

        A cursor walks the listings, so each claim costs an index lookup whatever their length.
        At the end the walk starts over once, for videos whose lease expired or that another
        claim held meanwhile; a walk from the start that finds nothing ends it, unless `settle`
        (which waits for the videos still in flight) says some came back to be claimed again:
        they count against `limit` once."""
        cursor = _Cursor(list(sources))
        claimed = 0
        while not stop.is_set():
            video = None
            if limit is None or claimed < limit:
                video = await self._claim_at(cursor, returned, closed)
            if video is None:
                if not cursor.fresh:
                    cursor.restart()
                    continue
                came_back = await settle() if settle is not None else 0
                if not came_back:
                    return
                claimed -= came_back
                cursor.restart()
                continue
            claimed += 1
            yield job_of(video)

    async def _claim_at(
        self, cursor: _Cursor, returned: Collection[str], closed: Callable[[str], bool]
    ) -> leases.Claimed | None:
        while (source := cursor.source) is not None:
            if closed(source):
                cursor.next_source()
                continue
            claim = functools.partial(
                leases.claim_next,
                owner=self.owner,
                source=source,
                start=cursor.position,
                rules=self.rules,
                excluded=list(returned),
            )
            video = await self.db.run(claim)
            if video is not None:
                cursor.found(video.position)
                return video
            cursor.next_source()
        return None

    async def renew_forever(self, in_flight: Collection[str]) -> None:
        """Every third of the lease, extends the leases of the videos `in_flight` (a live view
        of what this process works on), and no other."""
        while True:
            await asyncio.sleep(self.rules.ttl_s / 3)
            renew = functools.partial(
                leases.renew, owner=self.owner, ttl_s=self.rules.ttl_s, in_flight=list(in_flight)
            )
            await self.db.run(renew)

    async def hand_back_all(self) -> int:
        count = await self.db.run(lambda conn: leases.hand_back(conn, self.owner))
        if count:
            log.info("videos_handed_back", videos=count)
        return count
