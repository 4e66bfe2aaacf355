"""The throttle governor on its own: pauses, the probe, backoff, blocking, stopping, pacing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ingest.infrastructure.errors import Failure
from ingest.infrastructure.throttle import (
    Governor,
    SiteBlocked,
    ThrottleOptions,
    ThrottleStopped,
    governed,
)

pytestmark = pytest.mark.anyio

SLOW_DOWN = Failure("throttled", "HTTP 429: too many requests", retry_after_s=0.3)


class TooManyRequests(Exception):
    def __str__(self) -> str:
        return "HTTP Error 429: Too Many Requests"


def governor(**options: Any) -> Governor:
    return Governor(ThrottleOptions(**{"initial_s": 0.2, "jitter": 0.0, **options}))


async def test_a_pause_holds_every_request_then_one_probe_goes_first() -> None:
    gov = governor()
    gov.throttled("x.org", SLOW_DOWN)
    went: list[tuple[bool, float]] = []

    async def request() -> None:
        probe = await gov.admit("x.org")
        went.append((probe, time.monotonic() - started))
        if probe:
            await asyncio.sleep(0.2)
        gov.answered("x.org")

    started = time.monotonic()
    await asyncio.gather(request(), request(), request())
    (probe, at), *others = went
    assert probe and at >= 1.0  # Retry-After 0.3 s, but no pause is shorter than a second
    assert [p for p, _ in others] == [False, False]
    assert all(t >= at + 0.2 for _, t in others)  # the others waited for the probe's answer
    (status,) = gov.status()
    assert (status.paused, status.pauses) == (False, 1)


async def test_pauses_double_without_retry_after_and_stop_at_the_cap() -> None:
    gov = governor(initial_s=1.0, max_s=5.0)
    no_hint = Failure("throttled", "bot check")
    pauses = []
    for _ in range(4):
        pauses.append(gov.throttled("x.org", no_hint))
        gov._sites["x.org"].probing = True  # the probe of each pause was throttled again
    assert pauses == pytest.approx([1.0, 2.0, 4.0, 5.0], abs=0.01)
    gov.answered("x.org")
    assert gov.throttled("x.org", no_hint) == pytest.approx(1.0, abs=0.01)  # the streak ended


async def test_requests_in_flight_when_the_pause_began_do_not_lengthen_it() -> None:
    gov = governor()
    first = gov.throttled("x.org", SLOW_DOWN)
    assert gov.throttled("x.org", SLOW_DOWN) <= first
    assert gov.status()[0].pauses == 1


async def test_governed_calls_wait_out_throttling_without_failing() -> None:
    gov = governor()
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TooManyRequests
        return "ok"

    assert await governed(gov, "x.org", flaky) == "ok"
    assert calls[2] - calls[0] >= 2 * 0.2  # each 429 paused the site before the next try


async def test_a_site_that_needs_the_user_blocks_every_request() -> None:
    gov = governor()

    async def sign_in() -> None:
        raise RuntimeError("ERROR: [youtube] x: Sign in to confirm your age")

    with pytest.raises(SiteBlocked, match="INGEST_COOKIES_FILE"):
        await governed(gov, "youtube.com", sign_in)
    with pytest.raises(SiteBlocked):
        await gov.admit("youtube.com")
    await gov.admit("other.org")  # other sites go on
    assert gov.status()[0].blocked


async def test_stopping_releases_the_waiting_requests() -> None:
    gov = governor(initial_s=60)
    gov.throttled("x.org", Failure("throttled", "slow down"))
    waiting = asyncio.create_task(gov.admit("x.org"))
    await asyncio.sleep(0.05)
    gov.stop()
    with pytest.raises(ThrottleStopped):
        await waiting


async def test_a_cancelled_probe_lets_the_next_request_probe() -> None:
    gov = governor()
    gov.throttled("x.org", SLOW_DOWN)

    async def hangs() -> None:
        await asyncio.sleep(60)

    probe = asyncio.create_task(governed(gov, "x.org", hangs))
    await asyncio.sleep(1.2)  # the pause is over: the probe is in flight
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await asyncio.wait_for(gov.admit("x.org"), 1) is True


async def test_pacing_spaces_downloads_evenly() -> None:
    gov = governor(videos_per_hour=3600 / 0.1)  # one every 0.1 s
    started = time.monotonic()
    for _ in range(5):
        await gov.pace("x.org")
    assert time.monotonic() - started >= 0.35
    await asyncio.wait_for(gov.pace("other.org"), 0.05)  # each site has its own pace


async def test_the_progress_display_says_who_throttles_and_when_the_next_try_is() -> None:
    from ingest.orchestration.progress import site_line

    now = [1000.0]
    gov = Governor(ThrottleOptions(jitter=0.0), clock=lambda: now[0])
    gov.throttled("youtube.com", Failure("throttled", "bot check", retry_after_s=240))
    assert site_line(gov.site_status("youtube.com")) == (
        " throttled by youtube.com, next try in 0:04:00"
    )
    now[0] += 90
    assert site_line(gov.site_status("youtube.com")).endswith("next try in 0:02:30")
    gov.answered("youtube.com")
    assert site_line(gov.site_status("youtube.com")) == ""
    gov.block("youtube.com", Failure("needs_user", "PO token required", "install a provider"))
    assert site_line(gov.site_status("youtube.com")) == (
        " youtube.com needs you: PO token required; install a provider"
    )


async def test_a_download_that_meets_a_pause_gives_up_at_once_and_claiming_waits_for_it() -> None:
    from ingest.infrastructure.throttle import SitePaused

    gov = governor()
    gov.throttled("x.org", SLOW_DOWN)
    with pytest.raises(SitePaused):
        await gov.admit("x.org", hand_back=True)
    started = time.monotonic()
    await gov.reopened("x.org")
    assert time.monotonic() - started >= 0.9  # waited out the pause (a second at least)
    assert await gov.admit("x.org", hand_back=True)  # the pause is over: this one probes


async def test_a_throttled_download_is_handed_back_instead_of_tried_again() -> None:
    from ingest.infrastructure.throttle import SitePaused

    gov = governor()
    calls = 0

    async def request() -> None:
        nonlocal calls
        calls += 1
        raise TooManyRequests

    with pytest.raises(SitePaused):
        await governed(gov, "x.org", request, hand_back=True)
    assert calls == 1 and gov.site_status("x.org").paused


def test_transient_failures_in_a_burst_are_throttling_until_a_request_is_answered() -> None:
    from ingest.infrastructure.errors import classify
    from ingest.infrastructure.throttle import FailureBurst

    now = [0.0]
    gov = Governor(ThrottleOptions(burst=3, burst_window_s=10.0), clock=lambda: now[0])
    reset = ConnectionResetError(104, "Connection reset by peer")
    gov.check_burst("x.org", reset)
    now[0] += 11  # the first has left the window
    gov.check_burst("x.org", reset)
    gov.check_burst("x.org", reset)
    with pytest.raises(FailureBurst) as burst:
        gov.check_burst("x.org", reset)
    assert classify(burst.value).kind == "throttled"
    with pytest.raises(FailureBurst):  # the probe of the pause fails too: still a burst
        gov.check_burst("x.org", reset)
    gov.answered("x.org")
    gov.check_burst("x.org", reset)  # an answer ended it
