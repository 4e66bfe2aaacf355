"""Stopping while a model call is in flight, with real `ingest` processes: the call cannot be
interrupted, so the process leaves it behind rather than wait for it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Speech
from tests.observing import Running, scrape, start, value

GRACE_S = 2.0


@pytest.fixture(scope="module")
def long_talk(speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes of speech: diarizing it takes far longer than the grace period."""
    out = tmp_path_factory.mktemp("long") / "talk.wav"
    subprocess.run(["sox", str(speech.long), str(out), "repeat", "11"], check=True)
    return out


def until_transcribing(process: Running) -> None:
    """Until the model call is in flight: the gauge rises in the same step of the event loop that
    hands the decoded audio to the models' thread, so once a scrape shows it, the call runs."""
    port = process.metrics_port()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before the moment to stop it"
        samples = scrape(port)
        if samples and (value(samples, "ingest_stage_in_flight", stage="transcribe") or 0) > 0:
            return
        time.sleep(0.05)
    raise AssertionError("the model calls never started")


async def videos(database_url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT status, error, lease_owner, attempts FROM videos")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


# What ends the wait for the call: the grace period running out, or a second signal at once.
ENDINGS = ("grace_period_over", "stopping_now")


@pytest.mark.timing
@pytest.mark.parametrize(
    ("signals", "ended_by"),
    [(1, "grace_period_over"), (2, "stopping_now")],
    ids=["sigterm", "sigterm-twice"],
)
def test_a_stop_ends_in_time_with_a_model_call_in_flight_and_hands_the_video_back(
    signals: int, ended_by: str, long_talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    env = {
        **ingest_env,
        "INGEST_METRICS_ADDR": "127.0.0.1:0",
        "INGEST_SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
        "INGEST_DIARIZATION": "always",
        "INGEST_DIARIZER": "ecapa",
    }
    process = start(env, "backfill", str(long_talk))
    until_transcribing(process)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    if signals == 2:
        process.wait_for_event("stopping", timeout=60)  # a second signal, not one merged
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    took = time.monotonic() - stopped_at
    assert process.returncode == 0, err
    assert {e: len(process.events(e)) for e in ENDINGS} == {e: int(e == ended_by) for e in ENDINGS}
    # The promise, generously: the process does not wait for the call (minutes) to end.
    assert took < GRACE_S + 30, err
    assert "abandoning_threads" in err  # the call was still running when the process left
    assert "stopped early" in out
    # Handed back, not failed: the next run takes it again, and this try does not count.
    assert asyncio.run(videos(database_url)) == [("discovered", None, None, 0)]
