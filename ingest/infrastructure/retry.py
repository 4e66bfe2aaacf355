"""Retry policies: transient failures are retried with backoff, permanent ones fail at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

log = structlog.get_logger()
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 2.0
    max_s: float = 60.0


# What a database operation raises when the server or the connection fails under it. A server
# shutting down can leave asyncpg's protocol waiting out an error that never completes, and the
# next operation on that connection is refused with InternalClientError ("cannot switch to
# state 12; another operation (2) is in progress"): a lost connection by another name.
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


# The database went away (restart, network, a server shutting down), as opposed to refusing
# what was asked of it.
CONNECTION_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


def is_connection_error(exc: BaseException) -> bool:
    """The database went away (restart, network): worth waiting for."""
    return isinstance(exc, CONNECTION_ERRORS)


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(f"{what}_retry", attempt=state.attempt_number, wait_s=round(wait, 2),
                    error=str(error))  # fmt: skip

    return before_sleep


async def retry_transient(
    policy: RetryPolicy,
    what: str,
    call: Callable[[], Awaitable[T]],
    transient: Callable[[BaseException], bool],
) -> T:
    """`call` again after failures that are `transient`, at most `policy.attempts` times in all."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(transient),
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential_jitter(
            multiplier=policy.initial_s, max=policy.max_s, jitter=policy.initial_s
        ),
        before_sleep=_log_retry(what),
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises the last error")


def is_worth_retrying(exc: BaseException) -> bool:
    """A lost connection, or a transaction the server aborted to break a deadlock."""
    return is_connection_error(exc) or isinstance(exc, asyncpg.DeadlockDetectedError)


class Database:
    """Runs an operation on a pooled connection; while the database is away (restart, lost
    connection) it waits with backoff, up to `outage_s`, and runs the whole operation again, as
    it does one the server aborted to break a deadlock. Operations are single statements or
    transactions, so a retried one never half-applies."""

    def __init__(self, pool: asyncpg.Pool, outage_s: float = 600.0) -> None:
        self.pool = pool
        self.outage_s = outage_s

    async def run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_worth_retrying),
            stop=stop_after_delay(self.outage_s),
            wait=wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.5),
            before_sleep=_log_retry("database"),
            reraise=True,
        ):
            with attempt:
                async with self.pool.acquire() as conn:
                    return await op(conn)
        raise AssertionError("unreachable: tenacity reraises the last error")
