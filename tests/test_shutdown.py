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
from tests.observing import free_port, scrape, start, value

GRACE_S = 2.0


@pytest.fixture(scope="module")
def long_talk(speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes of speech: diarizing it takes far longer than the grace period."""
    out = tmp_path_factory.mktemp("long") / "talk.wav"
    subprocess.run(["sox", str(speech.long), str(out), "repeat", "11"], check=True)
    return out


def until_transcribing(port: int, process: subprocess.Popen[str]) -> None:
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


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_a_stop_ends_in_time_with_a_model_call_in_flight_and_hands_the_video_back(
    signals: int, long_talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    port = free_port()
    env = {
        **ingest_env,
        "INGEST_METRICS_ADDR": f"127.0.0.1:{port}",
        "INGEST_SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
        "INGEST_DIARIZATION": "always",
        "INGEST_DIARIZER": "ecapa",
    }
    process = start(env, "backfill", str(long_talk))
    until_transcribing(port, process)
    time.sleep(1.0)  # inside the call: decoding is done, the models are at work
    stopped_at = time.monotonic()
    for _ in range(signals):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    out, err = process.communicate(timeout=120)
    took = time.monotonic() - stopped_at
    assert process.returncode == 0, err
    assert took < (GRACE_S if signals == 1 else 0) + 4, err
    assert "abandoning_threads" in err  # the call was still running when the process left
    assert "stopped early" in out
    # Handed back, not failed: the next run takes it again, and this try does not count.
    assert asyncio.run(videos(database_url)) == [("discovered", None, None, 0)]
