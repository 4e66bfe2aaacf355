"""Stopping on SIGTERM/SIGINT: first gracefully within a grace period, at once on a second."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, ParamSpec, TypeVar

import structlog

log = structlog.get_logger()
P = ParamSpec("P")
T = TypeVar("T")
# Set by a stop: from then on, threads still busy at exit are abandoned rather than awaited.
_stopping = threading.Event()


class Shutdown:
    """The first signal requests a graceful stop (no new work, in-flight work finishes or is
    handed back); the second, or the end of the grace period, cancels what is left."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self._on_request: list[Callable[[], None]] = []
        self._ends_at: float | None = None  # on the monotonic clock, once a stop is requested

    def on_request(self, callback: Callable[[], None]) -> None:
        self._on_request.append(callback)

    def request(self, reason: str) -> None:
        _stopping.set()
        if self.requested.is_set():
            log.warning("stopping_now", reason=reason)
            self._ends_at = time.monotonic()
            self.forced.set()
            return
        log.warning("stopping", reason=reason, grace_s=self.grace_s)
        self._ends_at = time.monotonic() + self.grace_s
        self.requested.set()
        for callback in self._on_request:
            callback()

    def remaining_s(self) -> float | None:
        """Until the deadline; None before a stop is requested."""
        return None if self._ends_at is None else max(0.0, self._ends_at - time.monotonic())

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request, sig.name)
        loop.set_default_executor(BoundedExecutor(self.remaining_s))

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


class BoundedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (`asyncio.to_thread`), whose shutdown waits for the calls in
    flight only until the stop's deadline. Closing a loop waits for them without limit on
    Python 3.11 (3.12 added a timeout), and a model call cannot be interrupted: a stopped process
    would wait minutes for a transcript it no longer wants."""

    def __init__(self, remaining_s: Callable[[], float | None]) -> None:
        super().__init__(thread_name_prefix="asyncio")
        self._remaining_s = remaining_s
        self._calls: set[concurrent.futures.Future[Any]] = set()

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future = super().submit(fn, *args, **kwargs)
        self._calls.add(future)
        future.add_done_callback(self._calls.discard)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        remaining = self._remaining_s()
        super().shutdown(wait=False, cancel_futures=cancel_futures or remaining is not None)
        if wait:
            concurrent.futures.wait(list(self._calls), timeout=remaining)


def exit_process(code: int | str | None) -> NoReturn:
    """Exits with `code`. After a stop, threads still busy (a model call that cannot be
    interrupted) are abandoned: the interpreter would wait for them before exiting. Leases
    were handed back before this point."""
    status = code if isinstance(code, int) else (0 if code is None else 1)
    busy = [t.name for t in threading.enumerate() if _abandoned(t)] if _stopping.is_set() else []
    if not busy:
        sys.exit(code)
    log.warning("abandoning_threads", threads=busy)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _abandoned(thread: threading.Thread) -> bool:
    return thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
