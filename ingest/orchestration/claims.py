"""This process's share of the work: leased videos, renewed while worked on, handed back at the
end; a heartbeat that tells every replica this process is alive, and the leases and audio folders
of processes whose heartbeat stopped handed back and removed."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import re
import shutil
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import structlog

from db import leases, workers
from db.leases import ClaimRules
from db.listings import FIRST_POSITION
from ingest.infrastructure.retry import Database
from ingest.stages.messages import VideoJob

log = structlog.get_logger()


def new_owner() -> str:
    """host:pid:token, unique per process by its random token; host and pid only help a person
    reading `ingest status` (liveness is the heartbeat's, see db.workers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _token_of(owner: str) -> str:
    return owner.rsplit(":", 1)[-1]


def audio_dir_of(base: Path, owner: str) -> Path:
    """Each process downloads into a folder of its own, named by its owner's token."""
    return base / _token_of(owner)


# Folders named as above, or pid-token as earlier versions named them.
_AUDIO_FOLDER = re.compile(r"(?:\d+-)?([0-9a-f]{8,32})")


def remove_dead_audio(base: Path, live_owners: Collection[str]) -> list[Path]:
    """Removes the partial or unprocessed downloads of processes whose heartbeat stopped, on a
    disk that replicas of any machine may share; returns the folders removed."""
    if not base.is_dir():
        return []
    live = {_token_of(owner) for owner in live_owners}
    removed = []
    for folder in base.iterdir():
        match = _AUDIO_FOLDER.fullmatch(folder.name)
        if folder.is_dir() and match and match.group(1) not in live:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class RunningLock:
    """A file this process keeps locked (flock) for its life, beside those of the processes
    sharing its data folder. The kernel drops a lock when its process dies, however it dies
    (kill -9, out of memory), so a process starting next to a dead one knows it dead at once,
    where its heartbeat would look alive for up to a lease; PIDs and host names play no part."""

    def __init__(self, folder: Path, owner: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.path = folder, folder / f"{_token_of(owner)}.lock"
        self._file = self.path.open("w")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def dead_beside(self) -> list[str]:
        """The owner tokens of the files no process holds any more (their files removed)."""
        dead = []
        for path in self.folder.glob("*.lock"):
            if path == self.path:
                continue
            with path.open("a") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # held: its process runs
                path.unlink(missing_ok=True)
                dead.append(path.stem)
        return dead

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self._file.close()


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
    return VideoJob(video.id, video.url, video.title, local_path=local, lease=video.token)


class Claims:
    def __init__(self, db: Database, owner: str, rules: ClaimRules) -> None:
        self.db, self.owner, self.rules = db, owner, rules
        self._tokens: deque[int] = deque()  # drawn for the claims to come

    async def beat(self) -> None:
        """This process is alive: its heartbeat row, now."""
        host, pid, ttl = socket.gethostname(), os.getpid(), self.rules.ttl_s
        await self.db.run(lambda conn: workers.beat(conn, self.owner, host, pid, ttl))

    async def beat_forever(self) -> None:
        """Every third of the lease: the heartbeat, and the videos of processes whose heartbeat
        stopped handed back for anyone to take."""
        while True:
            await asyncio.sleep(self.rules.ttl_s / 3)
            await self.beat()
            await self.hand_back_dead()

    async def bury(self, tokens: Collection[str]) -> None:
        """The owners of `tokens` are known dead (see RunningLock): their heartbeats end now,
        and their videos are handed back at the next tidy."""
        if tokens:
            await self.db.run(lambda conn: workers.bury(conn, list(tokens)))
            log.info("dead_processes_found", owners=list(tokens))

    async def retire(self) -> None:
        await self.db.run(lambda conn: workers.retire(conn, self.owner))

    async def live_owners(self) -> set[str]:
        return await self.db.run(workers.live_owners)

    async def remove_dead_audio(self, base: Path) -> list[Path]:
        """The downloads left by processes whose heartbeat stopped, removed off the event loop
        (a shared disk can be slow to walk)."""
        return await asyncio.to_thread(remove_dead_audio, base, await self.live_owners())

    async def hand_back_dead(self) -> int:
        """Ends the leases of processes whose heartbeat stopped, so that their videos are taken
        over now, wherever those processes ran."""
        count = await self.db.run(lambda conn: leases.hand_back_dead(conn, self.owner))
        if count:
            log.info("leases_taken_over", videos=count)
        return count

    async def tidy(self) -> None:
        """Before a walk: dead processes' videos handed back, and the listing rows of videos
        that became claimable by time (a retry fell due) or for this process marked ready."""
        await self.hand_back_dead()
        await self.db.run(lambda conn: leases.mark_ready(conn, self.rules.identity))

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

        A cursor walks the listings' ready rows, so each claim costs an index probe whatever
        their length and state. Before each walk, the videos of dead processes are handed back
        and those that became claimable are marked (`tidy`). At the end the walk starts over
        once, for videos that became claimable meanwhile; a walk from the start that finds
        nothing ends it, unless `settle` (which waits for the videos still in flight) says some
        came back to be claimed again: they count against `limit` once."""
        cursor = _Cursor(list(sources))
        claimed = 0
        await self.tidy()
        while not stop.is_set():
            video = None
            if limit is None or claimed < limit:
                video = await self._claim_at(cursor, returned, closed)
            if video is None:
                if not cursor.fresh:
                    await self.tidy()
                    cursor.restart()
                    continue
                came_back = await settle() if settle is not None else 0
                if not came_back:
                    return
                claimed -= came_back
                await self.tidy()
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
            video = await self._claim(source, cursor.position, returned)
            if video is not None:
                cursor.found(video.position)
                return video
            cursor.next_source()
        return None

    async def _claim(
        self, source: str, start: int, returned: Collection[str]
    ) -> leases.Claimed | None:
        """One claim; retried after a lost reply, it finds the video its token took. A token
        is kept until a claim takes a video with it, and dropped when the claim failed or its
        video was handed back meanwhile (it is on that video's row)."""
        while True:
            if not self._tokens:
                self._tokens.extend(await self.db.run(lambda c: leases.draw_tokens(c, 16)))
            claim = functools.partial(
                leases.claim_next, owner=self.owner, source=source, start=start,
                rules=self.rules, token=self._tokens[0], excluded=list(returned),
            )  # fmt: skip
            try:
                video = await self.db.run(claim)
            except leases.TokenSpent as exc:
                log.warning("claim_lost", error=str(exc))
                self._tokens.popleft()
                continue
            except BaseException:
                self._tokens.popleft()
                raise
            if video is not None:
                self._tokens.popleft()
            return video

    async def renew_forever(self, in_flight: Collection[VideoJob]) -> None:
        """Every third of the lease, extends the leases of the claims `in_flight` (a live view
        of what this process works on), and no other; this process's expired leases that no
        claim in flight holds are handed back."""
        while True:
            await asyncio.sleep(self.rules.ttl_s / 3)
            held = [(job.video_id, job.lease) for job in in_flight if job.lease is not None]
            renew = functools.partial(
                leases.renew, owner=self.owner, ttl_s=self.rules.ttl_s, held=held
            )
            renewal = await self.db.run(renew)
            if renewal.orphans:
                log.warning("orphans_handed_back", videos=list(renewal.orphans))

    async def hand_back_all(self) -> int:
        count = await self.db.run(lambda conn: leases.hand_back_all(conn, self.owner))
        if count:
            log.info("videos_handed_back", videos=count)
        return count
