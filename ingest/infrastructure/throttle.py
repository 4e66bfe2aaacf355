"""One throttle governor per process: when a site says "slow down", every request to it waits.

Sites throttle a client, not a request: after a 429, a bot check or "try again later", the other
23 downloaders would only make it worse. So a throttling signal pauses the whole site (every
download, listing and caption fetch goes through `governed`) for the server's Retry-After, or
else an exponential backoff with jitter, capped. When the pause ends one request goes first as a
probe; the others wait for its outcome, and resume together only if it was not throttled.

A download caught by a pause (throttled, or about to start while the site is paused) gives up at
once with `SitePaused`: its video is handed back, its attempt not spent, and claimed again when
the site reopens. Claiming waits for the site to reopen (`reopened`) with one video in hand, so
a pause holds one lease instead of a queue of them, and nobody knocks meanwhile. Listings and
other requests wait out the pause in place.

A site that needs the user (sign-in, cookies, a JavaScript runtime, a PO token) is blocked for the
rest of the run: its requests raise `SiteBlocked` with what to configure, and the videos stay to
do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from aiolimiter import AsyncLimiter

from ingest.infrastructure.errors import Failure, classify
from ingest.infrastructure.metrics import Metrics

log = structlog.get_logger()
T = TypeVar("T")


class SiteBlocked(Exception):
    """The site needs something only the user can give (cookies, a runtime, a token)."""

    def __init__(self, site: str, failure: Failure) -> None:
        super().__init__(f"{site}: {failure.reason}; {failure.fix}")
        self.site, self.failure = site, failure


class SitePaused(Exception):
    """A download met a pause of its site: its video goes back to be claimed again later."""

    def __init__(self, site: str) -> None:
        super().__init__(f"{site} is paused")
        self.site = site


class FailureBurst(Exception):
    """One-off errors (connection resets, 5xx) from one site, too many too close together: a
    server shedding load, or a network that drops bulk clients. Throttling, not bad luck."""

    def __init__(self, site: str, count: int, window_s: float) -> None:
        super().__init__(f"{count} network or server errors from {site} within {window_s:.0f} s")


class ThrottleStopped(Exception):
    """The run is stopping: requests waiting for a paused site give up."""


@dataclass(frozen=True, slots=True)
class ThrottleOptions:
    initial_s: float = 60.0  # the first pause when the server does not say how long
    max_s: float = 1800.0  # the longest pause, whatever the streak or the server says
    jitter: float = 0.2  # a pause is stretched by up to this fraction, so replicas spread out
    videos_per_hour: float = 0.0  # downloads started per site and hour; 0: no cap
    burst: int = 5  # transient failures of one site within `burst_window_s` that pause it
    burst_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """What `ingest status`, the progress display and the metrics show about one site."""

    site: str
    paused: bool
    resume_in_s: float
    pauses: int
    reason: str
    blocked: bool = False
    fix: str = ""


@dataclass
class _Site:
    until: float = 0.0
    streak: int = 0  # pauses in a row without a successful request between them
    pauses: int = 0
    probing: bool = False
    reason: str = ""
    blocked: Failure | None = None
    paused_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    failures: deque[float] = field(default_factory=deque)  # transient ones, since the last answer

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Governor:
    def __init__(
        self,
        options: ThrottleOptions | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        publish: Callable[[SiteStatus], Awaitable[None]] | None = None,
    ) -> None:
        self.options = options or ThrottleOptions()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.publish = publish  # where other processes can see a pause (the database)
        self._sites: dict[str, _Site] = {}
        self._stopped = False
        self._paces: dict[str, AsyncLimiter] = {}

    async def pace(self, site: str) -> None:
        """Waits for the site's next download slot under INGEST_MAX_VIDEOS_PER_HOUR: evenly
        spaced (one every 3600/N s), not N at once and then an hour of nothing."""
        if self.options.videos_per_hour <= 0:
            return
        limiter = self._paces.get(site)
        if limiter is None:
            limiter = AsyncLimiter(1, 3600 / self.options.videos_per_hour)
            self._paces[site] = limiter
        await limiter.acquire()

    def _state(self, site: str) -> _Site:
        state = self._sites.get(site)
        if state is None:
            state = self._sites[site] = _Site()
        return state

    def stop(self) -> None:
        """Requests waiting for a pause raise ThrottleStopped: the run hands their videos back."""
        self._stopped = True
        for state in self._sites.values():
            state.wake()

    async def admit(self, site: str, hand_back: bool = False) -> bool:
        """Returns when a request to `site` may go: at once unless the site is paused; after a
        pause, one caller goes first (the probe: True is returned) and the others wait for its
        outcome. With `hand_back`, a caller that meets a pause raises SitePaused instead of
        waiting it out (the probe's outcome is still waited for: it is a matter of seconds)."""
        state = self._state(site)
        while True:
            if self._stopped:
                raise ThrottleStopped(site)
            if state.blocked is not None:
                raise SiteBlocked(site, state.blocked)
            if state.paused_at is None:
                return False
            left = state.until - self.clock()
            if left > 0 and hand_back:
                raise SitePaused(site)
            if left <= 0 and not state.probing:
                state.probing = True
                return True
            await self._wait(state, left if left > 0 else None)

    async def reopened(self, site: str) -> None:
        """Returns once `site` is not paused, or its pause is over and a probe may go; at once
        when the run stops or the site waits for the user (the caller's next step says so)."""
        state = self._state(site)
        while not self._stopped and state.blocked is None and state.paused_at is not None:
            left = state.until - self.clock()
            if left <= 0:
                return
            await self._wait(state, left)

    def probe_abandoned(self, site: str) -> None:
        """The probe ended without an answer (cancelled): the next request probes instead."""
        state = self._state(site)
        state.probing = False
        state.wake()

    async def _wait(self, state: _Site, at_most_s: float | None) -> None:
        """Until the site's state changes, or `at_most_s` passes."""
        changed = state.changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), at_most_s)

    def throttled(self, site: str, failure: Failure) -> float:
        """Pauses `site`; returns the pause in seconds. Calls from requests that were already in
        flight when the pause began do not lengthen it."""
        state = self._state(site)
        if state.paused_at is not None and not state.probing:
            return max(0.0, state.until - self.clock())
        pause = self._pause_s(state.streak, failure.retry_after_s)
        state.streak += 1
        state.pauses += 1
        state.probing = False
        state.reason = failure.reason
        state.paused_at = state.paused_at if state.paused_at is not None else self.clock()
        state.until = self.clock() + pause
        self.metrics.throttle_paused.labels(site).set(1)
        self.metrics.throttle_pauses.labels(site).inc()
        log.warning("site_throttled", site=site, pause_s=round(pause, 1), reason=failure.reason)
        state.wake()
        return pause

    def _pause_s(self, streak: int, retry_after_s: float | None) -> float:
        backoff = self.options.initial_s * 2**streak
        pause = max(backoff if retry_after_s is None else retry_after_s, 1.0)
        pause *= 1 + random.uniform(0, self.options.jitter)  # noqa: S311 - not cryptography
        return min(pause, self.options.max_s)

    def check_burst(self, site: str, exc: Exception) -> None:
        """Counts a transient failure of `site`; raises FailureBurst (throttling) from `exc` when
        `burst` of them came within `burst_window_s` with no request answered in between."""
        state, now = self._state(site), self.clock()
        state.failures.append(now)
        while state.failures and state.failures[0] < now - self.options.burst_window_s:
            state.failures.popleft()
        # Kept after a burst: while they go on, each failure (the probe's too) is one more.
        if len(state.failures) >= self.options.burst:
            raise FailureBurst(site, len(state.failures), self.options.burst_window_s) from exc

    def answered(self, site: str) -> bool:
        """A request to `site` went through (or failed for another reason): the site is open.
        True when this ended a pause."""
        state = self._state(site)
        state.streak = 0
        state.failures.clear()
        if state.paused_at is None:
            return False
        paused_s = self.clock() - state.paused_at
        state.paused_at, state.probing = None, False
        self.metrics.throttle_paused.labels(site).set(0)
        self.metrics.throttle_seconds.labels(site).inc(paused_s)
        log.info("site_resumed", site=site, paused_s=round(paused_s, 1))
        state.wake()
        return True

    def block(self, site: str, failure: Failure) -> None:
        state = self._state(site)
        if state.blocked is None:
            log.error("site_needs_user", site=site, reason=failure.reason, fix=failure.fix)
            self.metrics.throttle_paused.labels(site).set(1)
        state.blocked = failure
        state.wake()

    def is_blocked(self, site: str) -> bool:
        state = self._sites.get(site)
        return state is not None and state.blocked is not None

    def status(self) -> list[SiteStatus]:
        """Sites that have been paused in this run."""
        return [self.site_status(site) for site, s in self._sites.items() if s.pauses or s.blocked]

    def site_status(self, site: str) -> SiteStatus:
        s = self._state(site)
        return SiteStatus(
            site,
            paused=s.paused_at is not None or s.blocked is not None,
            resume_in_s=max(0.0, s.until - self.clock()) if s.paused_at is not None else 0.0,
            pauses=s.pauses,
            reason=s.blocked.reason if s.blocked else s.reason,
            blocked=s.blocked is not None,
            fix=s.blocked.fix if s.blocked else "",
        )

    async def announce(self, site: str) -> None:
        if self.publish is not None:
            await self.publish(self.site_status(site))


async def governed(
    governor: Governor, site: str, call: Callable[[], Awaitable[T]], hand_back: bool = False
) -> T:
    """`call` once the site admits it. Throttled: the site pauses and the call waits to go again,
    as often as it takes (the pause, not an attempt count, bounds the load), or with `hand_back`
    raises SitePaused. Needs the user: the site is blocked and SiteBlocked raised. Any other
    outcome means the site answered."""
    while True:
        probe = await governor.admit(site, hand_back)
        try:
            result = await call()
        except Exception as exc:
            failure = classify(exc)
            if failure.kind == "throttled":
                governor.throttled(site, failure)
                await governor.announce(site)
                if hand_back:
                    raise SitePaused(site) from exc
                continue
            if failure.kind == "needs_user":
                governor.block(site, failure)
                await governor.announce(site)
                raise SiteBlocked(site, failure) from exc
            await _answered(governor, site)
            raise
        except BaseException:
            if probe:
                governor.probe_abandoned(site)
            raise
        await _answered(governor, site)
        return result


async def _answered(governor: Governor, site: str) -> None:
    if governor.answered(site):
        await governor.announce(site)
