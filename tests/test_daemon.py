"""`ingest daemon` follows a feed: new videos are ingested as they appear; SIGTERM ends it."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from yt_dlp.utils import DownloadError

from db.listings import record_listing
from db.migrate import apply_migrations
from db.pool import create_pool
from db.videos import record_discovered
from ingest.infrastructure.retry import Database
from ingest.stages.ledger import Ledger
from ingest.stages.sources import list_source
from tests.conftest import Speech
from tests.feeds import Item, serve, write_feed
from tests.observing import Running, start


async def statuses(database_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, status FROM videos")
    except asyncpg.UndefinedTableError:  # the daemon has not migrated the database yet
        return {}
    finally:
        await conn.close()
    return {r["id"]: r["status"] for r in rows}


def wait_until(database_url: str, expected: dict[str, str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(statuses(database_url)) == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{asyncio.run(statuses(database_url))} != {expected}")


@contextmanager
def following(
    env: dict[str, str], feed: str, interval: str = "1s", *options: str
) -> Iterator[Running]:
    """`ingest daemon` polling the feed every second; killed if the test leaves it running."""
    daemon = start(env, "daemon", feed, "--poll-interval", interval, *options)
    try:
        yield daemon
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()


def stop(daemon: Running) -> str:
    """SIGTERM; the daemon must exit 0. Returns what it printed."""
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    return out


def test_daemon_ingests_new_uploads_and_stops_on_sigterm(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.short, site / "a.wav")
    shutil.copy(speech.medium, site / "b.wav")
    first = [Item("a", "First", "a.wav"), Item("gone", "Broken", "gone.wav")]
    with serve(site) as base:
        feed = write_feed(site, base, first)
        with following(ingest_env, feed) as daemon:
            wait_until(database_url, {"generic:a": "done", "generic:gone": "failed"})
            # Fixed now, but a video failed for good is not tried again unless asked
            # (--retry-failed): the listings and walks to come pass it by.
            shutil.copy(speech.short, site / "gone.wav")
            write_feed(site, base, [*first, Item("b", "New upload", "b.wav")])
            wait_until(
                database_url,
                {"generic:a": "done", "generic:gone": "failed", "generic:b": "done"},
            )
            assert daemon.poll() is None  # a bad video never stops the daemon
            stopped_at = time.monotonic()
            out = stop(daemon)
    assert time.monotonic() - stopped_at < 30
    assert "stopped: 2 done, 1 failed" in out


def test_poll_interval_must_be_a_duration(ingest_env: dict[str, str]) -> None:
    from tests.test_backfill import ingest

    result = ingest(ingest_env, "daemon", "/tmp", "--poll-interval", "soon")
    assert result.returncode == 2
    assert "error: invalid interval 'soon'" in result.stderr


def hls(source: Path, folder: Path, *, ended: bool) -> None:
    """`folder/stream.m3u8`: an HLS stream of the audio, still live unless `ended`."""
    playlist = folder / "stream.m3u8"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c:a", "aac", "-f", "hls",
         "-hls_time", "2", "-hls_playlist_type", "vod",
         "-hls_segment_filename", str(folder / "segment%d.ts"), str(playlist)],
        check=True,
    )  # fmt: skip
    if not ended:  # a live playlist has no end yet: more segments may come
        lines = playlist.read_text().splitlines()
        kept = [line for line in lines if "ENDLIST" not in line and "PLAYLIST-TYPE" not in line]
        playlist.write_text("\n".join(kept) + "\n")


def test_a_live_stream_is_skipped_until_it_ends(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.short, site / "a.wav")
    hls(speech.medium, site, ended=False)
    items = [Item("a", "Upload", "a.wav"), Item("live", "Live now", "stream.m3u8")]
    with serve(site) as base:
        feed = write_feed(site, base, items)
        with following(ingest_env, feed) as daemon:
            wait_until(database_url, {"generic:a": "done", "generic:live": "skipped"})
            # Each listing looks at a feed's skipped stream again (a moment without the reason):
            # the reason is read from a moment it is skipped.
            deadline = time.monotonic() + 60
            while asyncio.run(errors(database_url)) != {"generic:live": "skipped: live stream"}:
                assert time.monotonic() < deadline, asyncio.run(errors(database_url))
                time.sleep(0.1)
            hls(speech.medium, site, ended=True)
            wait_until(database_url, {"generic:a": "done", "generic:live": "done"})
            out = stop(daemon)
    assert "stopped: 2 done, 0 failed" in out
    assert asyncio.run(errors(database_url)) == {}


async def errors(database_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, error FROM videos WHERE error IS NOT NULL")
    finally:
        await conn.close()
    return {r["id"]: r["error"] for r in rows}


@dataclass
class Outage:
    """Answers HTTP 500 to requests for `path` for `window_s` seconds from the first one."""

    path: str
    window_s: float
    started: float | None = None
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: str) -> tuple[int, dict[str, str]] | None:
        if not path.endswith(self.path):
            return None
        with self.lock:
            now = time.monotonic()
            self.started = now if self.started is None else self.started
            if now - self.started >= self.window_s:
                return None
            self.refused += 1
            return 500, {}


async def failure_of(database_url: str, video_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(
            "SELECT status, failure_class, retry_at, attempts FROM videos WHERE id = $1", video_id
        )
    finally:
        await conn.close()


def test_a_video_whose_host_fails_for_half_a_minute_ends_done_by_itself(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for name, voice in (("a.wav", speech.short), ("b.wav", speech.medium), ("c.wav", speech.short)):
        shutil.copy(voice, site / name)
    outage = Outage("c.wav", window_s=30.0)
    # One try per attempt and a first retry after 8 s: tries at about 0, 8, 24 and 56 s, so the
    # schedule, not a burst of errors pausing the site, brings it back.
    env = {**ingest_env, "INGEST_RETRY_ATTEMPTS": "1", "INGEST_RETRY_LATER_SECONDS": "8"}
    with serve(site, gate=outage) as base:
        # The broken video's host is another site ("localhost") than the others' (127.0.0.1).
        flaky = base.replace("127.0.0.1", "localhost") + "/c.wav"
        items = [Item("a", "A", "a.wav"), Item("b", "B", "b.wav"), Item("c", "Flaky", flaky)]
        feed = write_feed(site, base, items)
        # Listings an hour apart: only the schedule of retries can bring the video back.
        with following(env, feed, "1h") as daemon:
            wait_until(
                database_url,
                {"generic:a": "done", "generic:b": "done", "generic:c": "failed"},
            )
            failed = asyncio.run(failure_of(database_url, "generic:c"))
            assert failed is not None and failed["failure_class"] == "transient"
            assert failed["retry_at"] is not None
            wait_until(
                database_url,
                {"generic:a": "done", "generic:b": "done", "generic:c": "done"},
                timeout=400,
            )
            out = stop(daemon)
    done = asyncio.run(failure_of(database_url, "generic:c"))
    assert done is not None and done["attempts"] >= 3 and done["failure_class"] is None
    assert outage.refused >= 3
    assert "stopped: 3 done" in out


async def attempts(database_url: str) -> dict[str, tuple[str, int, str | None]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, status, attempts, failure_class FROM videos")
    finally:
        await conn.close()
    return {r["id"]: (r["status"], r["attempts"], r["failure_class"]) for r in rows}


NOT_FOUND = DownloadError("ERROR: [generic] fixed: Unable to download webpage: HTTP Error 404")


async def failed_earlier(database_url: str, feed: str) -> None:
    """What an earlier run left behind: the feed listed (by the real lister) and its one video
    claimed and failed for good."""
    from tests.test_claims import alive_claims

    listing = await asyncio.to_thread(list_source, feed)
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await record_discovered(conn, [video.record for video in listing])
            await record_listing(conn, feed, [video.record.id for video in listing])
        claims = await alive_claims(pool, "host:1:earlier")
        (job,) = [job async for job in claims.jobs([feed], asyncio.Event())]
        await Ledger(Database(pool), 1).failed(job, "download", NOT_FOUND)
        await claims.retire()
    finally:
        await pool.close()


def polls_later(daemon: Running, polls: int = 3) -> None:
    """Until the daemon has listed the feed and walked it `polls` more times."""
    seen = len(daemon.events("poll_done"))
    deadline = time.monotonic() + 60
    while len(daemon.events("poll_done")) < seen + polls:
        assert daemon.poll() is None and time.monotonic() < deadline, "the daemon stopped polling"
        time.sleep(0.2)


def test_retry_failed_tries_the_videos_failed_before_the_daemon_started_once_more(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    """`daemon --retry-failed` takes every video that failed before it started once more (here
    one fixed since: it ends done), and only those: one that fails while it runs stays failed
    even once fixed, as without the flag."""
    site = tmp_path / "site"
    site.mkdir()
    fixed = Item("fixed", "Fixed", "fixed.wav")
    with serve(site) as base:
        asyncio.run(failed_earlier(database_url, write_feed(site, base, [fixed])))
        assert asyncio.run(attempts(database_url)) == {"generic:fixed": ("failed", 1, "permanent")}
        for name, voice in (("a.wav", speech.short), ("fixed.wav", speech.medium)):
            shutil.copy(voice, site / name)
        items = [Item("a", "A", "a.wav"), fixed, Item("broken", "Broken", "broken.wav")]
        feed = write_feed(site, base, items)
        with following(ingest_env, feed, "1s", "--retry-failed") as daemon:
            expected = {"generic:a": "done", "generic:fixed": "done", "generic:broken": "failed"}
            wait_until(database_url, expected)
            shutil.copy(speech.short, site / "broken.wav")
            polls_later(daemon)
            assert "stopped: 2 done, 1 failed" in stop(daemon)
    assert asyncio.run(attempts(database_url)) == {
        "generic:a": ("done", 1, None),
        "generic:fixed": ("done", 2, None),
        "generic:broken": ("failed", 1, "permanent"),
    }
    assert asyncio.run(errors(database_url)).keys() == {"generic:broken"}
