"""One throttle governor per process: when a site says "slow down", every request to it waits.

Sites throttle a client, not a request: after a 429, a bot check or "try again later", the other
23 downloaders would only make it worse. So a throttling signal pauses the whole site (every
download, listing and caption fetch goes through `governed`) for the larger of the server's
Retry-After and an exponential backoff, with jitter, capped. When the pause ends one request
goes first as a probe; the others wait for its outcome, and resume together (each after a little
jitter) only if it was not throttled. A probe that gets no answer within its deadline counts as
throttled again.

Each pause begins a new epoch, and every request carries the epoch it was admitted in (its
`Ticket`). Only the probe, or a request admitted after the pause began, may end a pause or
reset the backoff: a download that started before the pause and finishes during it says
nothing about the site now. Likewise its 429 does not lengthen the pause.

A download caught by a pause (throttled, or about to start while the site is paused) gives up at
once with `SitePaused`: its video is handed back, its attempt not spent, and claimed again when
the site reopens. Claiming waits for the site to reopen (`reopened`) with one video in hand, so
a pause holds one lease instead of a queue of them, and nobody knocks meanwhile. Listings and
other requests wait out the pause in place.

A site that needs the user (sign-in, cookies, a JavaScript runtime, a PO token), or whose yt-dlp
extractor is broken, is blocked: its requests raise `SiteBlocked` with what to do, the videos
stay to do, and after `blocked_probe_s` (an hour) one request probes whether it was fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

import structlog
from aiolimiter import AsyncLimiter

from ingest.infrastructure.metrics import Metrics
from ingest.sites.errors import Failure, classify
from ingest.sites.ytdlp_version import installed_release

log = structlog.get_logger()
T = TypeVar("T")

SiteKind = Literal["throttled", "needs_user", "extractor_broken"]


class SiteBlocked(Exception):
    """The site needs something only the user can give (cookies, a runtime, a token), or a
    newer yt-dlp."""

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
    probe_deadline_s: float = 300.0  # a probe without an answer by then counts as throttled
    resume_jitter_s: float = 2.0  # after a pause, waiting requests start within this spread
    blocked_probe_s: float = 3600.0  # a blocked site is probed again after this long


@dataclass(frozen=True, slots=True)
class Ticket:
    """A request's admission: the epoch (pauses begun so far) it was admitted in, and whether
    it is the probe that decides whether a pause is over."""

    epoch: int
    probe: bool = False


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
    kind: SiteKind = "throttled"
    paused_s: float = 0.0  # how long the site has been paused without a break


@dataclass
class _Site:
    until: float = 0.0
    streak: int = 0  # pauses in a row without a successful request between them
    pauses: int = 0
    epoch: int = 0
    probing: bool = False
    reason: str = ""
    blocked: Failure | None = None
    paused_at: float | None = None
    deadline: asyncio.TimerHandle | None = None  # the probe's
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    failures: deque[float] = field(default_factory=deque)  # transient ones, since the last answer

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def end_probe(self) -> None:
        self.probing = False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


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
        self._announcing: set[asyncio.Task[None]] = set()

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

    async def admit(self, site: str, hand_back: bool = False) -> Ticket:
        """Returns when a request to `site` may go: at once unless the site is paused; after a
        pause, one caller goes first (the probe: its ticket is true) and the others wait for
        its outcome. With `hand_back`, a caller that meets a pause raises SitePaused instead of
        waiting it out (the probe's outcome is still waited for: it is a matter of seconds)."""
        state = self._state(site)
        waited = False
        while True:
            if self._stopped:
                raise ThrottleStopped(site)
            if state.blocked is not None:
                if state.until <= self.clock() and not state.probing:
                    return self._probe(site, state)
                raise SiteBlocked(site, state.blocked)
            if state.paused_at is None:
                if waited:  # resumed together: spread out, so the server sees no wall
                    waited = False
                    await self._wait(state, random.uniform(0, self.options.resume_jitter_s))  # noqa: S311
                    continue
                return Ticket(state.epoch)
            left = state.until - self.clock()
            if left > 0 and hand_back:
                raise SitePaused(site)
            if left <= 0 and not state.probing:
                return self._probe(site, state)
            await self._wait(state, left if left > 0 else None)
            waited = True

    def _probe(self, site: str, state: _Site) -> Ticket:
        state.probing = True
        epoch = state.epoch
        loop = asyncio.get_running_loop()
        state.deadline = loop.call_later(
            self.options.probe_deadline_s, self._probe_overdue, site, epoch
        )
        return Ticket(epoch, probe=True)

    def _probe_overdue(self, site: str, epoch: int) -> None:
        state = self._state(site)
        if not state.probing or state.epoch != epoch:
            return
        deadline = self.options.probe_deadline_s
        log.warning("probe_overdue", site=site, deadline_s=deadline)
        silent = Failure("throttled", f"the probe got no answer within {deadline:.0f} s")
        if state.blocked is not None:
            self.block(site, state.blocked, Ticket(epoch, probe=True))
        else:
            self.throttled(site, silent, Ticket(epoch, probe=True))
        task = asyncio.ensure_future(self.announce(site))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def reopened(self, site: str) -> None:
        """Returns once `site` is not paused, or its pause is over and a probe may go; at once
        when the run stops or the site waits for the user (the caller's next step says so)."""
        state = self._state(site)
        while not self._stopped and state.blocked is None and state.paused_at is not None:
            left = state.until - self.clock()
            if left <= 0:
                return
            await self._wait(state, left)

    def probe_abandoned(self, site: str, ticket: Ticket | None = None) -> None:
        """The probe ended without an answer (cancelled): the next request probes instead."""
        state = self._state(site)
        if ticket is not None and ticket.epoch != state.epoch:
            return
        state.end_probe()
        state.wake()

    async def _wait(self, state: _Site, at_most_s: float | None) -> None:
        """Until the site's state changes, or `at_most_s` passes."""
        changed = state.changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), at_most_s)

    def _stale(self, state: _Site, ticket: Ticket | None) -> bool:
        """Admitted before the latest pause began, or not the probe of a running pause: what
        happened to it says nothing about the site now."""
        if ticket is None:
            return False
        if ticket.epoch != state.epoch:
            return True
        return (state.paused_at is not None or state.blocked is not None) and not ticket.probe

    def throttled(self, site: str, failure: Failure, ticket: Ticket | None = None) -> float:
        """Pauses `site`; returns the pause in seconds. A request admitted before the pause
        began, or a second signal during it, does not lengthen it (`ticket` None: a request
        admitted now)."""
        state = self._state(site)
        if self._stale(state, ticket) or (ticket is None and state.paused_at is not None):
            return max(0.0, state.until - self.clock())
        pause = self._pause_s(state.streak, failure.retry_after_s)
        state.end_probe()
        state.streak += 1
        state.pauses += 1
        state.epoch += 1
        state.reason = failure.reason
        state.paused_at = state.paused_at if state.paused_at is not None else self.clock()
        state.until = self.clock() + pause
        self.metrics.throttle_paused.labels(site).set(1)
        self.metrics.throttle_pauses.labels(site).inc()
        log.warning("site_throttled", site=site, pause_s=round(pause, 1), reason=failure.reason,
                    streak=state.streak)  # fmt: skip
        state.wake()
        return pause

    def _pause_s(self, streak: int, retry_after_s: float | None) -> float:
        """The larger of the backoff and the server's Retry-After: a Retry-After of 0 (or a
        date gone by) does not cut a streak short."""
        backoff: float = self.options.initial_s * 2.0**streak
        pause = max(backoff, retry_after_s or 0.0, 1.0)
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

    def answered(self, site: str, ticket: Ticket | None = None) -> bool:
        """A request to `site` went through (or failed for another reason): the site is open,
        unless the request was admitted before the latest pause began. True when this ended a
        pause or a block."""
        state = self._state(site)
        if self._stale(state, ticket):
            return False
        state.streak = 0
        state.failures.clear()
        state.end_probe()
        if state.blocked is not None:
            log.info("site_unblocked", site=site, was=state.blocked.reason)
            state.blocked = None
            self.metrics.throttle_paused.labels(site).set(0)
            state.wake()
            return True
        if state.paused_at is None:
            return False
        paused_s = self.clock() - state.paused_at
        state.paused_at = None
        self.metrics.throttle_paused.labels(site).set(0)
        self.metrics.throttle_seconds.labels(site).inc(paused_s)
        log.info("site_resumed", site=site, paused_s=round(paused_s, 1))
        state.wake()
        return True

    def block(self, site: str, failure: Failure, ticket: Ticket | None = None) -> None:
        """The site waits for the user (or a newer yt-dlp): every request raises SiteBlocked
        until, `blocked_probe_s` later, one probes whether it was fixed."""
        state = self._state(site)
        if state.blocked is not None and self._stale(state, ticket):
            return
        if state.blocked is None or state.blocked.reason != failure.reason:
            log.error("site_needs_user", site=site, kind=failure.kind, reason=failure.reason,
                      fix=failure.fix)  # fmt: skip
            self.metrics.throttle_paused.labels(site).set(1)
        state.end_probe()
        state.epoch += 1
        state.blocked = failure
        state.until = self.clock() + self.options.blocked_probe_s
        state.wake()

    def is_blocked(self, site: str) -> bool:
        """Blocked, and not yet due for a probe."""
        state = self._sites.get(site)
        if state is None or state.blocked is None:
            return False
        return state.probing or state.until > self.clock()

    def status(self) -> list[SiteStatus]:
        """Sites that have been paused in this run."""
        return [self.site_status(site) for site, s in self._sites.items() if s.pauses or s.blocked]

    def site_status(self, site: str) -> SiteStatus:
        s, now = self._state(site), self.clock()
        kind: SiteKind = "throttled"
        if s.blocked is not None:
            kind = "extractor_broken" if s.blocked.kind == "extractor_broken" else "needs_user"
        return SiteStatus(
            site,
            paused=s.paused_at is not None or s.blocked is not None,
            resume_in_s=max(0.0, s.until - now) if s.paused_at is not None else 0.0,
            pauses=s.pauses,
            reason=s.blocked.reason if s.blocked else s.reason,
            blocked=s.blocked is not None,
            fix=s.blocked.fix if s.blocked else "",
            kind=kind,
            paused_s=now - s.paused_at if s.paused_at is not None else 0.0,
        )

    async def announce(self, site: str) -> None:
        if self.publish is not None:
            await self.publish(self.site_status(site))


async def governed(
    governor: Governor, site: str, call: Callable[[], Awaitable[T]], hand_back: bool = False
) -> T:
    """`call` once the site admits it. Throttled: the site pauses and the call waits to go again,
    as often as it takes (the pause, not an attempt count, bounds the load), or with `hand_back`
    raises SitePaused. Needs the user, or yt-dlp's extractor is broken: the site is blocked and
    SiteBlocked raised. Any other outcome means the site answered."""
    while True:
        ticket = await governor.admit(site, hand_back)
        try:
            result = await call()
        except Exception as exc:
            failure = classify(exc)
            if failure.kind == "throttled":
                governor.throttled(site, failure, ticket)
                await governor.announce(site)
                if hand_back:
                    raise SitePaused(site) from exc
                continue
            if failure.kind in ("needs_user", "extractor_broken"):
                failure = with_update_advice(failure)
                governor.block(site, failure, ticket)
                await governor.announce(site)
                raise SiteBlocked(site, failure) from exc
            await _answered(governor, site, ticket)
            raise
        except BaseException:
            if ticket.probe:
                governor.probe_abandoned(site, ticket)
            raise
        await _answered(governor, site, ticket)
        return result


def with_update_advice(failure: Failure) -> Failure:
    """An extractor broken by a site change is fixed by a newer yt-dlp: say which is installed
    and how old it is."""
    if failure.kind != "extractor_broken":
        return failure
    release = installed_release()
    age = release.age_days()
    released = f", released {age} days ago" if age is not None else ""
    fix = (
        f"update yt-dlp (installed {release.version}{released}): "
        'pip install -U "yt-dlp[default,deno]"; a restart probes again at once'
    )
    return replace(failure, fix=fix)


async def _answered(governor: Governor, site: str, ticket: Ticket) -> None:
    if governor.answered(site, ticket):
        await governor.announce(site)
