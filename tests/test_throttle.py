"""The throttle governor on its own: pauses, the probe, backoff, blocking, stopping, pacing."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.retry import Database
from ingest.orchestration.backfill import publish_pause
from ingest.sites.errors import Failure
from ingest.sites.throttle import (
    Governor,
    SiteBlocked,
    SitePaused,
    ThrottleOptions,
    ThrottleStopped,
    Ticket,
    governed,
)
from tests.observing import Samples, value
from tests.test_backfill import ingest

pytestmark = pytest.mark.anyio

SLOW_DOWN = Failure("throttled", "HTTP 429: too many requests", retry_after_s=0.3)


class TooManyRequests(Exception):
    def __str__(self) -> str:
        return "HTTP Error 429: Too Many Requests"


def governor(**options: Any) -> Governor:
    defaults = {"initial_s": 0.2, "jitter": 0.0, "resume_jitter_s": 0.05}
    return Governor(ThrottleOptions(**{**defaults, **options}))


def probe_of(gov: Governor, site: str) -> Ticket:
    """The ticket of the probe of the site's current pause."""
    return Ticket(gov._sites[site].epoch, probe=True)


async def test_a_pause_holds_every_request_then_one_probe_goes_first() -> None:
    gov = governor()
    started = time.monotonic()  # before the pause begins: it lasts a second from then at least
    gov.throttled("x.org", SLOW_DOWN)
    went: list[tuple[bool, float]] = []

    async def request() -> None:
        ticket = await gov.admit("x.org")
        went.append((ticket.probe, time.monotonic() - started))
        if ticket.probe:
            await asyncio.sleep(0.2)
        gov.answered("x.org", ticket)

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
    pauses.append(gov.throttled("x.org", no_hint))
    for _ in range(3):  # the probe of each pause was throttled again
        pauses.append(gov.throttled("x.org", no_hint, probe_of(gov, "x.org")))
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
        # extractor/youtube/_base.py, when the cookies' session has been rotated by the browser
        raise RuntimeError(
            "ERROR: [youtube] x: The provided YouTube account cookies are no longer valid. "
            "They have likely been rotated in the browser as a security measure."
        )

    with pytest.raises(SiteBlocked, match="INGEST_COOKIES_FILE"):
        await governed(gov, "youtube.com", sign_in)
    with pytest.raises(SiteBlocked):
        await gov.admit("youtube.com")
    await gov.admit("other.org")  # other sites go on
    assert gov.status()[0].blocked


async def test_an_age_gated_video_fails_alone_and_the_site_goes_on() -> None:
    gov = governor()

    async def age_gate() -> None:
        raise RuntimeError(
            "ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate "
            "for some users."
        )

    with pytest.raises(RuntimeError, match="confirm your age"):
        await governed(gov, "youtube.com", age_gate, hand_back=True)
    assert not gov.is_blocked("youtube.com")
    assert not (await gov.admit("youtube.com", hand_back=True)).probe


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

    in_flight = asyncio.Event()

    async def hangs() -> None:
        in_flight.set()
        await asyncio.sleep(60)

    probe = asyncio.create_task(governed(gov, "x.org", hangs))
    await asyncio.wait_for(in_flight.wait(), 30)  # the pause is over: the probe is in flight
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert (await asyncio.wait_for(gov.admit("x.org"), 1)).probe


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
    gov = governor()
    gov.throttled("x.org", SLOW_DOWN)
    with pytest.raises(SitePaused):
        await gov.admit("x.org", hand_back=True)
    started = time.monotonic()
    await gov.reopened("x.org")
    assert time.monotonic() - started >= 0.9  # waited out the pause (a second at least)
    assert (await gov.admit("x.org", hand_back=True)).probe  # the pause is over: this one probes


async def test_a_throttled_download_is_handed_back_instead_of_tried_again() -> None:
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
    from ingest.sites.errors import classify
    from ingest.sites.throttle import FailureBurst

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


async def test_downloads_in_flight_when_a_pause_begins_neither_end_it_nor_reset_the_backoff() -> (
    None
):
    gov = governor(initial_s=1.0)
    release = asyncio.Event()

    async def slow_but_fine() -> str:
        await release.wait()
        return "ok"

    async def too_many() -> str:
        raise TooManyRequests

    in_flight = [
        asyncio.create_task(governed(gov, "x.org", slow_but_fine, hand_back=True)) for _ in range(5)
    ]
    await asyncio.sleep(0.05)
    with pytest.raises(SitePaused):
        await governed(gov, "x.org", too_many, hand_back=True)
    release.set()  # the five started before the pause finish during it
    assert await asyncio.gather(*in_flight) == ["ok"] * 5
    status = gov.site_status("x.org")
    assert status.paused and status.resume_in_s > 0.8, status  # still paused
    await gov.reopened("x.org")
    with pytest.raises(SitePaused):  # the probe meets the throttling again
        await governed(gov, "x.org", too_many, hand_back=True)
    # The backoff doubled: nothing in between reset the streak.
    assert gov.site_status("x.org").resume_in_s > 1.8
    assert gov.site_status("x.org").pauses == 2


async def test_a_retry_after_of_zero_does_not_cut_the_backoff_short() -> None:
    gov = governor(initial_s=2.0)
    assert gov.throttled("x.org", Failure("throttled", "429", retry_after_s=0.0)) >= 2.0
    probe = probe_of(gov, "x.org")
    assert gov.throttled("x.org", Failure("throttled", "429", retry_after_s=0.0), probe) >= 4.0
    later = Failure("throttled", "429", retry_after_s=30.0)
    assert gov.throttled("x.org", later, probe_of(gov, "x.org")) >= 30.0  # the larger one


async def test_a_probe_without_an_answer_by_its_deadline_counts_as_throttled() -> None:
    gov = governor(probe_deadline_s=0.3)
    gov.throttled("x.org", SLOW_DOWN)
    probe = await asyncio.wait_for(gov.admit("x.org"), 2)
    assert probe.probe
    await asyncio.sleep(0.5)  # the probe hangs past its deadline
    status = gov.site_status("x.org")
    assert status.paused and status.pauses == 2 and status.resume_in_s > 0
    assert not gov.answered("x.org", probe)  # its late answer says nothing about now
    assert gov.site_status("x.org").paused


async def test_requests_resume_spread_out_after_a_pause() -> None:
    gov = governor(resume_jitter_s=0.5)
    gov.throttled("x.org", SLOW_DOWN)
    went: list[float] = []

    async def request() -> None:
        ticket = await gov.admit("x.org")
        went.append(time.monotonic())
        gov.answered("x.org", ticket)

    await asyncio.gather(*(request() for _ in range(6)))
    _probe_at, *others = sorted(went)
    assert max(others) - min(others) > 0.05  # not all at once


async def test_a_blocked_site_is_probed_again_later_and_reopens_when_fixed() -> None:
    gov = governor(blocked_probe_s=0.3)
    gov.block("x.org", Failure("needs_user", "PO token required", "install a provider"))
    with pytest.raises(SiteBlocked):
        await gov.admit("x.org")
    assert gov.is_blocked("x.org")
    await asyncio.sleep(0.35)
    assert not gov.is_blocked("x.org")  # due for a probe: its videos may be claimed again
    probe = await gov.admit("x.org")
    assert probe.probe
    with pytest.raises(SiteBlocked):  # only the probe goes
        await gov.admit("x.org")
    assert gov.answered("x.org", probe)
    assert not gov.site_status("x.org").paused
    assert not (await gov.admit("x.org")).probe


async def test_a_broken_extractor_blocks_the_site_and_says_which_yt_dlp_to_replace() -> None:
    import yt_dlp

    from tests.test_errors import BUG_REPORT

    gov = governor()

    async def broken() -> None:
        raise RuntimeError(
            f"ERROR: [youtube] x: Failed to extract any player response; {BUG_REPORT}"
        )

    with pytest.raises(SiteBlocked) as blocked:
        await governed(gov, "youtube.com", broken, hand_back=True)
    assert blocked.value.failure.kind == "extractor_broken"
    fix = blocked.value.failure.fix
    assert f"update yt-dlp (installed {yt_dlp.version.__version__}, released " in fix
    status = gov.site_status("youtube.com")
    assert (status.kind, status.blocked) == ("extractor_broken", True)
    with pytest.raises(SiteBlocked):  # the other videos are handed back untouched
        await gov.admit("youtube.com", hand_back=True)


def exported(metrics: Metrics) -> Samples:
    """Every sample of the registry as /metrics serves it, parsed back as a scraper reads it."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def too_many() -> str:
    raise TooManyRequests


async def fine() -> str:
    return "ok"


async def test_throttle_metrics_show_which_site_is_paused_how_often_and_for_how_long() -> None:
    """What a dashboard shows of throttling: the site paused while it is, one pause per
    throttling signal, and the seconds of the whole stretch (both pauses) once it resumes."""
    now = [1000.0]
    metrics = Metrics()
    gov = Governor(ThrottleOptions(initial_s=60, jitter=0.0), metrics, clock=lambda: now[0])
    with pytest.raises(SitePaused):
        await governed(gov, "x.org", too_many, hand_back=True)
    first = exported(metrics)
    assert value(first, "ingest_throttle_paused", site="x.org") == 1
    assert value(first, "ingest_throttle_pauses_total", site="x.org") == 1
    assert (value(first, "ingest_throttle_paused_seconds_total", site="x.org") or 0) == 0
    now[0] += 61  # the pause is over: the probe meets the throttling again
    with pytest.raises(SitePaused):
        await governed(gov, "x.org", too_many, hand_back=True)
    again = exported(metrics)
    assert value(again, "ingest_throttle_paused", site="x.org") == 1
    assert value(again, "ingest_throttle_pauses_total", site="x.org") == 2
    now[0] += 121  # the second pause (doubled: 120 s) is over, and the probe gets through
    assert await governed(gov, "x.org", fine) == "ok"
    after = exported(metrics)
    assert value(after, "ingest_throttle_paused", site="x.org") == 0
    assert value(after, "ingest_throttle_pauses_total", site="x.org") == 2
    assert value(after, "ingest_throttle_paused_seconds_total", site="x.org") == 182
    assert value(after, "ingest_throttle_paused", site="other.org") is None


async def status_of(env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """What `ingest status` prints, as text and as --json."""
    text = await asyncio.to_thread(ingest, env, "status")
    as_json = await asyncio.to_thread(ingest, env, "status", "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    report: dict[str, Any] = json.loads(as_json.stdout)
    return text.stdout, report


async def test_status_lists_a_throttled_site_while_it_is_paused_and_not_after(
    pool: asyncpg.Pool, ingest_env: dict[str, str]
) -> None:
    """`ingest status`, run anywhere, says which site throttles which process, why, and when it
    resumes; once the site answers again the pause is gone (its row too, not only hidden)."""
    now = [1000.0]
    owner = "host-a:4242:5e1f"
    publish = functools.partial(publish_pause, Database(pool), owner)
    gov = Governor(ThrottleOptions(initial_s=60, jitter=0.0), clock=lambda: now[0], publish=publish)
    with pytest.raises(SitePaused):
        await governed(gov, "x.org", too_many, hand_back=True)
    db_now: datetime = await pool.fetchval("SELECT now()")

    text, report = await status_of(ingest_env)
    (line,) = [line for line in text.splitlines() if "throttled" in line]
    assert re.fullmatch(
        rf"throttled by x\.org \({owner}, resumes at \d\d:\d\d:\d\d\): HTTP 429 Too Many Requests",
        line,
    ), line
    (pause,) = report["paused_sites"]
    assert {k: pause[k] for k in ("site", "owner", "kind", "reason", "pauses")} == {
        "site": "x.org",
        "owner": owner,
        "kind": "throttled",
        "reason": "HTTP 429 Too Many Requests",
        "pauses": 1,
    }
    resume_in = (datetime.fromisoformat(pause["resume_at"]) - db_now).total_seconds()
    assert resume_in == pytest.approx(60, abs=10)

    now[0] += 61
    assert await governed(gov, "x.org", fine) == "ok"  # the probe got through
    after = await asyncio.to_thread(ingest, ingest_env, "status", "--json")
    assert json.loads(after.stdout)["paused_sites"] == []
    assert await pool.fetchval("SELECT count(*) FROM site_pauses") == 0
