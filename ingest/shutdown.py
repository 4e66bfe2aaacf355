"""Stopping on SIGTERM/SIGINT: first gracefully within a grace period, at once on a second."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger()


class Shutdown:
    """The first signal requests a graceful stop (no new work, in-flight work finishes or is
    handed back); the second, or the end of the grace period, cancels what is left."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._on_request: list[Callable[[], None]] = []

    def on_request(self, callback: Callable[[], None]) -> None:
        self._on_request.append(callback)

    def request(self, reason: str) -> None:
        if self.requested.is_set():
            log.warning("stopping_now", reason=reason)
            self.forced.set()
            return
        log.warning("stopping", reason=reason, grace_s=self.grace_s)
        self.requested.set()
        for callback in self._on_request:
            callback()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request, sig.name)

    def uninstall(self) -> None:
        """Back to the default handlers, unless a stop is under way: then the process is exiting
        and further signals are ignored, so that they cannot interrupt its last clean-up."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            if self.requested.is_set():
                signal.signal(sig, signal.SIG_IGN)

    async def deadline(self) -> None:
        """Returns when what is left must be cancelled."""
        await self.requested.wait()
        try:
            await asyncio.wait_for(self.forced.wait(), self.grace_s)
        except TimeoutError:
            log.warning("grace_period_over", grace_s=self.grace_s)

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` until it ends or the deadline comes."""
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(work)
            watchdog = tg.create_task(self._cancel_at_deadline(task))
            await asyncio.wait({task})
            watchdog.cancel()

    async def _cancel_at_deadline(self, task: asyncio.Task[None]) -> None:
        await self.deadline()
        task.cancel()
