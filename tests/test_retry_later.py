"""Failures that may heal come back on a schedule that grows; set-aside videos when the identity
changes; permanent ones never. Through the real ledger, claims and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
import structlog.testing
from yt_dlp.utils import DownloadError, ExtractorError

from db import leases
from db.leases import ClaimRules
from db.videos import RetrySchedule, status_summary
from ingest.infrastructure.retry import Database
from ingest.orchestration.claims import Claims
from ingest.stages.ledger import Ledger, failure_class
from ingest.stages.messages import VideoJob
from ingest.stages.transcribe import StageError
from tests.test_claims import alive_claims, claim_all, listed
from workers.audio import TruncatedAudio

pytestmark = pytest.mark.anyio

SERVER_ERROR = DownloadError("ERROR: [generic] x: Unable to download webpage: HTTP Error 500")
PRIVATE = DownloadError("ERROR: [youtube] x: Private video. Sign in if you've been granted access")
AGE = DownloadError(
    "ERROR: [youtube] x: Sign in to confirm your age. This video may be inappropriate for some "
    "users."
)


async def row(pool: asyncpg.Pool, video_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        found: asyncpg.Record = await conn.fetchrow(
            "SELECT status, failure_class, attempts,"
            " extract(epoch FROM retry_at - now()) AS retry_in FROM videos WHERE id = $1",
            video_id,
        )
    return found


async def fail_once(
    pool: asyncpg.Pool, claims: Claims, ledger: Ledger, video_id: str, exc: Exception
) -> None:
    assert await claim_all(claims, ["s"]) == [video_id]
    await ledger.failed(VideoJob(video_id, f"https://x.org/{video_id}", None), "download", exc)


async def make_due(pool: asyncpg.Pool, video_id: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute("UPDATE videos SET retry_at = now() WHERE id = $1", video_id)


async def test_a_transient_failure_comes_back_later_and_later_until_its_tries_run_out(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s", ["v"])
    claims = await alive_claims(pool, "host:1:a", ClaimRules())
    schedule = RetrySchedule(first_s=120, max_s=400, tries=4)
    ledger = Ledger(Database(pool), 1, schedule=schedule)
    delays = []
    for attempt in range(1, 5):
        await fail_once(pool, claims, ledger, "v", SERVER_ERROR)
        failed = await row(pool, "v")
        assert (failed["status"], failed["failure_class"]) == ("failed", "transient")
        assert failed["attempts"] == attempt
        delays.append(failed["retry_in"])
        assert await claim_all(claims, ["s"]) == []  # not due yet
        if failed["retry_in"] is not None:
            await make_due(pool, "v")
    assert delays[:3] == pytest.approx([120, 240, 400], abs=5)  # doubling, capped
    assert delays[3] is None  # the fourth attempt was the last
    assert await claim_all(claims, ["s"]) == []
    async with pool.acquire() as conn:
        summary = (await status_summary(conn)).failed
    assert (summary.gave_up, summary.waiting, summary.for_good) == (1, 0, 0)


async def test_a_permanent_failure_never_comes_back_and_the_status_says_when_the_next_is_due(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s", ["gone", "flaky"])
    claims = await alive_claims(pool, "host:1:a", ClaimRules())
    ledger = Ledger(Database(pool), 2)
    assert await claim_all(claims, ["s"], limit=1) == ["gone"]
    await ledger.failed(VideoJob("gone", "https://x.org/gone", None), "download", PRIVATE)
    await fail_once(pool, claims, ledger, "flaky", SERVER_ERROR)
    assert (await row(pool, "gone"))["retry_in"] is None
    async with pool.acquire() as conn:
        summary = (await status_summary(conn)).failed
        retry = await leases.next_retry(conn, ["s"])
    assert (summary.for_good, summary.waiting) == (1, 1)
    assert summary.next_retry_at is not None
    assert retry.due == 0 and retry.next_in_s == pytest.approx(120, abs=5)
    await make_due(pool, "flaky")
    assert await claim_all(claims, ["s"]) == ["flaky"]


async def test_an_age_gated_video_is_set_aside_until_the_cookies_change(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s", ["adult", "next"])
    claims = await alive_claims(pool, "host:1:a", ClaimRules(identity="guest"))
    ledger = Ledger(Database(pool), 2, identity="guest")
    assert await claim_all(claims, ["s"], limit=1) == ["adult"]
    await ledger.failed(VideoJob("adult", "https://x.org/adult", None), "download", AGE)
    assert (await row(pool, "adult"))["failure_class"] == "needs_cookies"
    assert await claim_all(claims, ["s"]) == ["next"]  # the rest of the channel goes on
    assert await claim_all(claims, ["s"]) == []
    with_cookies = await alive_claims(pool, "host:2:b", ClaimRules(identity="signed-in"))
    assert await claim_all(with_cookies, ["s"]) == ["adult"]


def test_failure_classes() -> None:
    job = VideoJob("v", "https://x.org/v", None)
    local = VideoJob("f", "file:///a.wav", None, local_path=Path("/a.wav"))
    cut = StageError("decode", ValueError("Invalid data found when processing input"))
    geo = DownloadError("ERROR: x", (None, ExtractorError("not available in your country"), None))
    assert failure_class("download", SERVER_ERROR, job) == "transient"
    assert failure_class("download", PRIVATE, job) == "permanent"
    assert failure_class("download", AGE, job) == "needs_cookies"
    assert failure_class("download", geo, job) == "needs_location"
    assert failure_class("decode", cut, job) == "decode"  # a download may have been cut
    assert failure_class("decode", cut, local) == "permanent"  # a user's file stays as it is
    too_long = StageError(
        "decode", ValueError("too long: 53 s of audio, INGEST_MAX_DURATION is 30 s")
    )
    assert failure_class("decode", too_long, job) == "permanent"
    truncated = TruncatedAudio("truncated: 2.0 s of audio where the file states 4.0 s")
    wrapped = DownloadError(f"ERROR: Postprocessing: {truncated}", (None, truncated, None))
    assert failure_class("download", wrapped, job) == "decode"  # a download cut short


async def test_outcome_counts_what_a_run_set_out_to_do(pool: asyncpg.Pool) -> None:
    await listed(pool, "s", ["a", "b", "c"])
    claims = await alive_claims(pool, "host:1:a", ClaimRules())
    ledger = Ledger(Database(pool), 3)
    async with pool.acquire() as conn:
        planned = await leases.planned_ids(conn, ["s"], claims.rules)
    assert sorted(planned) == ["a", "b", "c"]
    assert await claim_all(claims, ["s"], limit=1) == ["a"]
    await ledger.failed(VideoJob("a", "https://x.org/a", None), "download", SERVER_ERROR)
    async with pool.acquire() as conn:
        outcome = await leases.outcome(conn, planned, claims.owner)
        later = await leases.planned_ids(conn, ["s"], claims.rules)
    assert (outcome.waiting_retry, outcome.left, outcome.finished) == (1, 2, 0)
    assert sorted(later) == ["a", "b", "c"]  # a video waiting for its retry is still to do


async def test_a_transient_failure_that_heals_on_its_scheduled_retry_ends_done_and_clean(
    pool: asyncpg.Pool,
) -> None:
    """The whole life of a failure that heals: failed, shown as waiting for a retry at a time
    `ingest status` gives, not claimable before it, claimed when due, then done with its chunks;
    nothing of the failure is left to show, and the run counts the video done, not failed."""
    from db.corpus import ensure_embedding_model
    from db.videos import FailedSummary
    from ingest.infrastructure.metrics import Metrics
    from tests.test_lease_faults import embedded, sink
    from tests.test_sink import DIM

    await listed(pool, "s", ["v"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    claims = await alive_claims(pool, "host:1:a", ClaimRules())
    ledger = Ledger(Database(pool), 1, Metrics(), schedule=RetrySchedule(first_s=120))
    await fail_once(pool, claims, ledger, "v", SERVER_ERROR)
    async with pool.acquire() as conn:
        waiting = await status_summary(conn)
        halfway = await leases.outcome(conn, ["v"], claims.owner)
    assert (waiting.failed.waiting, waiting.counts["failed"]) == (1, 1)
    assert waiting.failed.next_retry_at is not None
    (error,) = waiting.recent_errors
    assert (error.video_id, error.failure_class, error.attempts) == ("v", "transient", 1)
    assert error.error.startswith("download: ") and error.retry_at == waiting.failed.next_retry_at
    assert halfway.waiting_retry == 1  # a backfill ending now says it may heal (exit 4)
    assert await claim_all(claims, ["s"]) == []  # not before its time

    await make_due(pool, "v")
    (job,) = [job async for job in claims.jobs(["s"], asyncio.Event())]
    ledger.took(job)
    await sink(Database(pool), ledger, (embedded(job, ["first chunk", "second chunk"]),))

    async with pool.acquire() as conn:
        healed = await conn.fetchrow(
            "SELECT status, attempts, error, failure_class, retry_at, chunk_count"
            " FROM videos WHERE id = 'v'"
        )
        summary = await status_summary(conn)
        outcome = await leases.outcome(conn, ["v"], claims.owner)
    assert dict(healed) == {
        "status": "done",
        "attempts": 2,
        "error": None,
        "failure_class": None,
        "retry_at": None,
        "chunk_count": 2,
    }
    assert (summary.counts["done"], summary.counts["failed"], summary.chunks) == (1, 0, 2)
    assert summary.failed == FailedSummary() and summary.recent_errors == []
    assert (outcome.finished, outcome.waiting_retry, outcome.left) == (1, 0, 0)
    assert (ledger.counters.done, ledger.counters.chunks) == (1, 2)


async def test_a_failure_after_some_work_logs_the_estimate_too(pool: asyncpg.Pool) -> None:
    """Without a terminal the estimate is logged as each video ends, failed ones included."""
    await listed(pool, "s", ["a"])
    (claimed,) = [
        job async for job in (await alive_claims(pool, "h:1:a")).jobs(["s"], asyncio.Event())
    ]
    ledger = Ledger(Database(pool), 3)
    ledger.counters.planned_audio_s, ledger.counters.audio_seconds = 300.0, 100.0
    ledger.counters.done = 1
    ledger.started = time.monotonic() - 100.0  # 100 s of audio in 100 s: 200 s left
    with structlog.testing.capture_logs() as logs:
        await ledger.failed(claimed, "download", SERVER_ERROR)
    assert [e["event"] for e in logs] == ["video_failed", "progress"]
    assert (logs[1]["done"], logs[1]["failed"], logs[1]["total"]) == (1, 1, 3)
    assert logs[1]["eta_s"] == pytest.approx(200, abs=5)
