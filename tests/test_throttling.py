"""A site that throttles, and one that wants a signed-in user, through the real yt-dlp and the
real `ingest backfill`."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Speech
from tests.feeds import Gate, Item, fill, serve, write_feed
from tests.test_backfill import fetch, ingest


@dataclass
class Throttler:
    """Answers 429 with Retry-After to every audio request for `window_s` seconds, from the
    `after`-th audio request on, as a server that has had enough does; counts what it gets."""

    after: int
    window_s: float
    hang_up: bool = False  # drop the connection instead of answering 429
    retry_after: int | None = None  # a fixed Retry-After; None: the rest of the window
    requests: int = 0
    started: float | None = None
    during: list[float] = field(default_factory=list)  # when requests came during the window
    served_after: int = 0  # requests answered once the window was over
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: str) -> tuple[int, dict[str, str]] | None:
        if not path.endswith(".wav"):
            return None
        with self.lock:
            self.requests += 1
            now = time.monotonic()
            if self.started is None and self.requests >= self.after:
                self.started = now
            if self.started is None:
                return None
            if now - self.started >= self.window_s:
                self.served_after += 1
                return None
            self.during.append(now - self.started)
            if self.hang_up:
                return 0, {}
            left = math.ceil(self.window_s - (now - self.started))
            return 429, {"Retry-After": str(self.retry_after or left)}


async def statuses(database_url: str) -> dict[str, tuple[str, int]]:
    rows = await fetch(database_url, "SELECT id, status, attempts FROM videos")
    return {r["id"]: (r["status"], r["attempts"]) for r in rows}


def gated_backfill(
    folder: Path, sources: list[Path], count: int, env: dict[str, str], gate: Gate
) -> subprocess.CompletedProcess[str]:
    """`ingest backfill` of a feed of `count` copies of `sources`, served as `gate` says."""
    folder.mkdir()
    items = fill(folder, sources, count)
    with serve(folder, gate=gate) as base:
        return ingest(env, "backfill", write_feed(folder, base, items))


def paused_line(result: subprocess.CompletedProcess[str]) -> str:
    (paused,) = [line for line in result.stdout.splitlines() if "paused" in line]
    return paused


@pytest.mark.timing
def test_a_throttling_server_pauses_every_download_and_fails_none(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    """429 with Retry-After 10 to every request for a minute from the third media request,
    and two broken entries (404): every good video ends done, and the exit status is 1 only for
    the broken ones. Pauses of 10, 20, 40 s: several rounds of hand-backs while the feed's
    walk has nothing left to claim, the race that once ended such a run early with exit 0."""
    site = tmp_path / "site"
    site.mkdir()
    items = fill(site, [speech.short, speech.medium], 10)
    broken = [Item("gone1", "Gone", "gone1.wav"), Item("gone2", "Gone too", "gone2.wav")]
    throttler = Throttler(after=3, window_s=60.0, retry_after=10)
    env = {**ingest_env, "INGEST_DOWNLOAD_WORKERS": "8", "INGEST_RETRY_BACKOFF_SECONDS": "0.1",
           "INGEST_THROTTLE_INITIAL_SECONDS": "10"}  # fmt: skip
    with serve(site, gate=throttler) as base:
        result = ingest(env, "backfill", write_feed(site, base, [*items, *broken]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "10 done, 2 failed of 12 videos" in result.stdout, result.stdout
    assert "throttled by 127.0.0.1" in result.stdout
    videos = asyncio.run(statuses(database_url))
    good = {k: v for k, v in videos.items() if "gone" not in k}
    assert set(good.values()) == {("done", 1)}, videos  # no attempt spent on the throttling
    assert {videos["generic:gone1"][0], videos["generic:gone2"][0]} == {"failed"}
    # The downloads that met the pause handed their videos back, to be claimed again after it.
    assert "video_handed_back" in result.stdout + result.stderr
    # The videos the throttling met were downloaded once the site relented, not before: no
    # more than the requests before the window were answered earlier.
    assert throttler.served_after >= len(items) - (throttler.after - 1), throttler
    # Only the downloads under way when the first 429 came (each is at most two requests: the
    # extraction's and the media's) and one probe per pause: not eight downloaders knocking
    # for a minute.
    assert len(throttler.during) <= 2 * 8 + 2 * 3, throttler.during


@pytest.mark.timing
def test_connections_dropped_in_a_burst_pause_the_site_instead_of_failing_videos(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    dropper = Throttler(after=3, window_s=6.0, hang_up=True)
    env = {**ingest_env, "INGEST_RETRY_BACKOFF_SECONDS": "0.1",
           "INGEST_THROTTLE_INITIAL_SECONDS": "3"}  # fmt: skip
    voices = [speech.short, speech.medium]
    result = gated_backfill(tmp_path / "site", voices, 8, env, dropper)
    assert result.returncode == 0, result.stderr
    assert "8 done, 0 failed of 8 videos" in result.stdout
    assert "throttled by 127.0.0.1" in result.stdout
    assert set(asyncio.run(statuses(database_url)).values()) == {("done", 1)}
    # Without the pause each video would have spent its three tries inside the window.
    assert len(dropper.during) < 3 * 8, dropper.during


def sign_in(path: str) -> tuple[int, dict[str, str]] | None:
    """A server whose media is for signed-in users only."""
    return (401, {"WWW-Authenticate": 'Basic realm="members"'}) if path.endswith(".wav") else None


def test_a_server_that_asks_to_sign_in_pauses_its_videos_and_says_how(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    result = gated_backfill(tmp_path / "site", [speech.short], 4, ingest_env, sign_in)
    assert result.returncode == 1, result.stderr
    assert "0 done, 0 failed of 4 videos" in result.stdout
    paused = paused_line(result)
    assert paused.startswith("127.0.0.1 paused, its videos left to do: HTTP 401"), paused
    assert "INGEST_COOKIES_FILE" in paused and "--netrc" in paused
    assert set(asyncio.run(statuses(database_url)).values()) == {("discovered", 0)}
    status = ingest(ingest_env, "status")
    assert "paused 127.0.0.1" in status.stdout and "signed-in user" in status.stdout


def cloudflare_challenge(path: str) -> tuple[int, dict[str, str]] | None:
    """What a site behind Cloudflare's bot check answers a plain client: yt-dlp needs to be set
    up to impersonate a browser, which only the user can do."""
    return (403, {"cf-mitigated": "challenge"}) if path.endswith(".wav") else None


def test_a_site_that_needs_the_user_is_paused_and_says_what_to_do(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    result = gated_backfill(tmp_path / "site", [speech.short], 5, ingest_env, cloudflare_challenge)
    assert result.returncode == 1, result.stderr
    assert "0 done, 0 failed of 5 videos" in result.stdout
    paused = paused_line(result)
    assert paused.startswith("127.0.0.1 paused, its videos left to do: Cloudflare")
    assert "INGEST_YTDLP_EXTRACTOR_ARGS='generic:impersonate'" in paused
    assert set(asyncio.run(statuses(database_url)).values()) == {("discovered", 0)}

    status = ingest(ingest_env, "status")
    assert "paused 127.0.0.1" in status.stdout and "impersonate" in status.stdout
    report = json.loads(ingest(ingest_env, "status", "--json").stdout)
    (pause,) = report["paused_sites"]
    assert (pause["site"], pause["kind"]) == ("127.0.0.1", "needs_user")


@pytest.mark.timing
def test_a_backfill_gives_up_on_a_site_throttled_past_the_longest_wait(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    throttler = Throttler(after=1, window_s=600.0, retry_after=2)
    env = {**ingest_env, "INGEST_MAX_THROTTLE_WAIT": "6s",
           "INGEST_THROTTLE_INITIAL_SECONDS": "2"}  # fmt: skip
    result = gated_backfill(tmp_path / "site", [speech.short], 4, env, throttler)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "0 done, 0 failed of 4 videos" in result.stdout
    assert "gave up waiting for 127.0.0.1" in result.stdout
    assert "4 videos left to do" in result.stdout
    # Nothing was spent: a later run (when the site relents) takes every video afresh.
    assert set(asyncio.run(statuses(database_url)).values()) == {("discovered", 0)}


@pytest.mark.timing
def test_a_backfill_retries_a_failure_that_heals_within_its_run(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    from tests.test_daemon import Outage

    outage = Outage("0.wav", window_s=5.0)
    env = {**ingest_env, "INGEST_RETRY_ATTEMPTS": "1", "INGEST_RETRY_LATER_SECONDS": "3"}
    result = gated_backfill(tmp_path / "site", [speech.short], 2, env, outage)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 done, 0 failed of 2 videos" in result.stdout
    assert outage.refused >= 1
    assert "failed generic:v0" not in result.stdout  # healed: not listed as a failure
    videos = asyncio.run(statuses(database_url))
    assert videos["generic:v1"] == ("done", 1)
    assert videos["generic:v0"][0] == "done" and videos["generic:v0"][1] >= 2


@pytest.mark.timing
def test_a_backfill_leaves_a_later_retry_to_the_daemon_and_says_so(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    from tests.test_daemon import Outage

    outage = Outage("0.wav", window_s=600.0)
    env = {**ingest_env, "INGEST_RETRY_ATTEMPTS": "1", "INGEST_BACKFILL_RETRY_WAIT": "10s"}
    result = gated_backfill(tmp_path / "site", [speech.short], 2, env, outage)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "1 done, 1 failed of 2 videos" in result.stdout
    assert "1 failed but may heal" in result.stdout
    status = ingest(env, "status")
    assert "1 wait for a retry" in status.stdout and "next retry at" in status.stdout
