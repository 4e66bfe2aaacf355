"""Crashes, signals, replicas and a database restart, with real `ingest` processes."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from db.embedded import start_embedded, stop_embedded
from tests.conftest import Speech, create_database, pg_folder
from tests.feeds import Item, fill, serve, write_feed
from tests.observing import Samples, free_port, scrape, start, value

VIDEOS = 6


@pytest.fixture
def site(tmp_path: Path, speech: Speech) -> tuple[Path, list[Item]]:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder, fill(folder, (speech.medium, speech.long, speech.short), VIDEOS)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def wait_for(
    port: int,
    process: subprocess.Popen[str],
    ready: Callable[[Samples], bool],
    timeout: float = 120,
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before the moment to interrupt it"
        samples = scrape(port)
        if samples and ready(samples):
            return
        time.sleep(0.05)
    raise AssertionError("the moment to interrupt never came")


async def snapshot(database_url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """What a run leaves behind, without what differs between equally good runs (times, URLs)."""
    conn = await asyncpg.connect(database_url)
    try:
        videos = await conn.fetch(
            "SELECT id, status, error, chunk_count, lease_owner FROM videos ORDER BY id"
        )
        chunks = await conn.fetch(
            "SELECT video_id, seg_index, round(start_s::numeric, 2), round(end_s::numeric, 2),"
            " speaker, text FROM segments ORDER BY video_id, seg_index"
        )
    finally:
        await conn.close()
    return [tuple(v) for v in videos], [tuple(c) for c in chunks]


def in_flight(stage: str) -> Callable[[Samples], bool]:
    return lambda s: (value(s, "ingest_stage_in_flight", stage=stage) or 0) > 0


def stored_some(s: Samples) -> bool:
    return (value(s, "ingest_chunks_written_total") or 0) > 0


@pytest.mark.parametrize(
    "moment",
    [in_flight("download"), in_flight("transcribe"), stored_some],
    ids=["during-downloads", "during-asr", "after-a-flush"],
)
def test_kill_9_then_restart_ends_as_a_clean_run(
    moment: Callable[[Samples], bool],
    site: tuple[Path, list[Item]],
    ingest_env: dict[str, str],
    database_url: str,
    pg_uri: str,
) -> None:
    folder, items = site
    port = free_port()
    env = {**ingest_env, "INGEST_METRICS_ADDR": f"127.0.0.1:{port}"}
    with serve(folder, bytes_per_second=600_000) as base:
        feed = write_feed(folder, base, items)
        process = start(env, "backfill", feed)
        wait_for(port, process, moment)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        restart_ends_as_a_clean_run(ingest_env, feed, database_url, pg_uri)


def test_a_replica_killed_on_another_machine_is_waited_for_then_taken_over(
    site: tuple[Path, list[Item]],
    ingest_env: dict[str, str],
    database_url: str,
    pg_uri: str,
    tmp_path: Path,
) -> None:
    """No shared data folder tells this backfill the other replica died: its videos are under
    way elsewhere until its heartbeat is older than its lease, and are then taken over; the
    backfill waits for them rather than exit 0 with them undone."""
    folder, items = site
    port = free_port()
    env = {**ingest_env, "INGEST_LEASE_SECONDS": "20"}  # longer than loading the models
    with serve(folder, bytes_per_second=600_000) as base:
        feed = write_feed(folder, base, items)
        process = start({**env, "INGEST_METRICS_ADDR": f"127.0.0.1:{port}"}, "backfill", feed)
        wait_for(port, process, in_flight("transcribe"))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        other = {**env, "INGEST_DATA_DIR": str(tmp_path / "another-machine")}
        restart = run(other, "backfill", feed)
    assert restart.returncode == 0, restart.stderr
    assert "waiting_for_other_replicas" in restart.stderr
    assert "leases_taken_over" in restart.stderr
    videos, chunks = asyncio.run(snapshot(database_url))
    assert {v[1] for v in videos} == {"done"}
    assert len(chunks) == sum(int(str(v[3])) for v in videos)


def restart_ends_as_a_clean_run(
    env: dict[str, str], feed: str, database_url: str, pg_uri: str
) -> None:
    """Runs the backfill again after a crash and compares the result with a clean run's."""
    restart = run(env, "backfill", feed)
    assert restart.returncode == 0, restart.stderr
    clean_url = asyncio.run(create_database(pg_uri))
    clean = run({**env, "DATABASE_URL": clean_url}, "backfill", feed)
    assert clean.returncode == 0, clean.stderr
    after_crash = asyncio.run(snapshot(database_url))
    assert after_crash == asyncio.run(snapshot(clean_url))
    assert {v[1] for v in after_crash[0]} == {"done"}
    audio = Path(env["INGEST_DATA_DIR"]) / "audio"
    assert not audio.exists() or not any(audio.rglob("*"))  # no stale partial files


# Holds the flush that marks videos done, after its chunks are written, until the test lets go.
_PAUSE_FLUSH = """
CREATE FUNCTION pause_flush() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
CREATE TRIGGER pause_flush BEFORE UPDATE ON videos FOR EACH ROW
WHEN (NEW.status = 'done' AND OLD.status <> 'done') EXECUTE FUNCTION pause_flush();
"""

_FLUSHING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND query LIKE '%status = ''done''%'"
)
_PAUSED = _FLUSHING + " AND wait_event = 'advisory'"


async def _until(conn: asyncpg.Connection, query: str, wanted: int) -> None:
    for _ in range(1200):
        if await conn.fetchval(query) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached {wanted}: {query}")


async def _kill_inside_a_flush(database_url: str, env: dict[str, str], feed: str) -> None:
    """Runs a backfill and kills it while its first flush transaction is open, chunks written."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock(4242)")
        await conn.execute(_PAUSE_FLUSH)
        process = start(env, "backfill", feed)
        await _until(conn, _PAUSED, 1)
        assert await conn.fetchval("SELECT count(*) FROM segments") == 0  # not committed
        process.send_signal(signal.SIGKILL)
        process.communicate()
        await conn.execute("SELECT pg_advisory_unlock(4242)")
        # The server finds its client gone and rolls the transaction back.
        await _until(conn, _FLUSHING, 0)
        await conn.execute("DROP TRIGGER pause_flush ON videos; DROP FUNCTION pause_flush()")
        assert await conn.fetchval("SELECT count(*) FROM segments") == 0
        assert await conn.fetchval("SELECT count(*) FROM videos WHERE status = 'done'") == 0
    finally:
        await conn.close()


def test_kill_9_inside_a_flush_transaction_then_restart_ends_as_a_clean_run(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str, pg_uri: str
) -> None:
    folder, items = site
    assert run(ingest_env, "migrate").returncode == 0
    with serve(folder) as base:
        feed = write_feed(folder, base, items)
        asyncio.run(_kill_inside_a_flush(database_url, ingest_env, feed))
        restart_ends_as_a_clean_run(ingest_env, feed, database_url, pg_uri)


def test_sigterm_exits_0_within_the_grace_period_and_loses_nothing(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str
) -> None:
    folder, items = site
    port = free_port()
    env = {
        **ingest_env,
        "INGEST_METRICS_ADDR": f"127.0.0.1:{port}",
        "INGEST_SHUTDOWN_GRACE_SECONDS": "15",
    }
    with serve(folder, bytes_per_second=300_000) as base:
        feed = write_feed(folder, base, items)
        process = start(env, "backfill", feed)
        wait_for(port, process, lambda s: stored_some(s) and in_flight("download")(s))
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert time.monotonic() - stopped_at < 15 + 5
        assert "stopped early" in out

        videos, chunks = asyncio.run(snapshot(database_url))
        statuses = {v[0]: v[1] for v in videos}
        assert "processing" not in statuses.values()
        assert all(v[4] is None for v in videos)  # no lease left behind
        done = {v for v, status in statuses.items() if status == "done"}
        assert done and len(done) < VIDEOS
        assert {c[0] for c in chunks} == done

        rest = run(ingest_env, "backfill", feed)
        assert rest.returncode == 0, rest.stderr
        assert f"{VIDEOS - len(done)} done, 0 failed" in rest.stdout
    assert {v[1] for v in asyncio.run(snapshot(database_url))[0]} == {"done"}


def test_a_second_signal_stops_at_once_and_still_safely(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str
) -> None:
    folder, items = site
    port = free_port()
    env = {**ingest_env, "INGEST_METRICS_ADDR": f"127.0.0.1:{port}"}
    with serve(folder, bytes_per_second=100_000) as base:
        feed = write_feed(folder, base, items)
        process = start(env, "backfill", feed)
        wait_for(port, process, in_flight("download"))
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert time.monotonic() - stopped_at < 10
    videos, _ = asyncio.run(snapshot(database_url))
    assert {v[1] for v in videos} <= {"discovered", "done"}
    assert all(v[4] is None for v in videos)


def test_two_replicas_process_each_video_exactly_once(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    folder, items = site
    with serve(folder, bytes_per_second=1_000_000) as base:
        feed = write_feed(folder, base, items)
        replicas = [
            start(
                {**ingest_env, "INGEST_DATA_DIR": str(tmp_path / f"replica{i}")}, "backfill", feed
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=300) for p in replicas]
    assert [p.returncode for p in replicas] == [0, 0], [err for _, err in outputs]
    done = [int(out.split(" done,")[0].split()[-1]) for out, _ in outputs]
    assert sum(done) == VIDEOS
    conn_rows = asyncio.run(_attempts(database_url))
    assert conn_rows == [(f"generic:v{i}", "done", 1) for i in range(VIDEOS)]


async def _attempts(database_url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, status, attempts FROM videos ORDER BY id")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def test_the_database_restarting_mid_run_loses_nothing(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str]
) -> None:
    folder, items = site
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    port = free_port()
    env = {**ingest_env, "DATABASE_URL": uri, "INGEST_METRICS_ADDR": f"127.0.0.1:{port}"}
    try:
        with serve(folder, bytes_per_second=400_000) as base:
            feed = write_feed(folder, base, items)
            process = start(env, "backfill", feed)
            wait_for(port, process, stored_some)
            stop_embedded(pgdata)
            time.sleep(3)
            assert process.poll() is None  # it waits for the database
            start_embedded(pgdata)
            out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert f"{VIDEOS} done, 0 failed of {VIDEOS} videos" in out
        videos, chunks = asyncio.run(snapshot(uri))
        assert {v[1] for v in videos} == {"done"}
        assert {c[0] for c in chunks} == {v[0] for v in videos}
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(pgdata.parent, ignore_errors=True)


def test_an_outage_longer_than_the_lease_ends_with_each_video_done_once(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str
) -> None:
    """The run outlives its leases while the database is away; when it is back, it renews the
    leases of the videos it still works on instead of claiming them a second time, and every
    result is written under a lease checked in the same statement."""
    folder, items = site
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    port = free_port()
    env = {**ingest_env, "DATABASE_URL": uri, "INGEST_LEASE_SECONDS": "5",
           "INGEST_METRICS_ADDR": f"127.0.0.1:{port}"}  # fmt: skip
    try:
        with serve(folder, bytes_per_second=400_000) as base:
            process = start(env, "backfill", write_feed(folder, base, items))
            try:
                wait_for(port, process, in_flight("transcribe"))
                stop_embedded(pgdata)
                time.sleep(8)  # every lease has expired when the database is back
                start_embedded(pgdata)
                out, err = process.communicate(timeout=300)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        assert process.returncode == 0, err
        assert f"{VIDEOS} done, 0 failed of {VIDEOS} videos" in out
        assert asyncio.run(_attempts(uri)) == [(f"generic:v{i}", "done", 1) for i in range(VIDEOS)]
        videos, chunks = asyncio.run(snapshot(uri))
        assert len(chunks) == sum(int(str(v[3])) for v in videos)  # chunks written once per video
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(pgdata.parent, ignore_errors=True)
