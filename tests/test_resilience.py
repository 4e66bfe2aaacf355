"""Crashes, signals, replicas and a database restart, with real `ingest` processes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from db.embedded import start_embedded, stop_embedded
from tests.conftest import Speech, create_database, pg_folder
from tests.feeds import Gate, Item, fill, serve, write_feed
from tests.observing import Running, Samples, scrape, start, value

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


def wait_for(process: Running, ready: Callable[[Samples], bool], timeout: float = 180) -> None:
    """Until the metrics of `process` (which takes any free port) say `ready`."""
    port = process.metrics_port()
    deadline = time.monotonic() + timeout
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


@pytest.mark.timing
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
    env = {**ingest_env, "INGEST_METRICS_ADDR": "127.0.0.1:0"}
    with serve(folder, bytes_per_second=600_000) as base:
        feed = write_feed(folder, base, items)
        process = start(env, "backfill", feed)
        wait_for(process, moment)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        restart_ends_as_a_clean_run(ingest_env, feed, database_url, pg_uri)


@pytest.mark.timing
def test_a_replica_killed_on_another_machine_is_waited_for_then_taken_over(
    site: tuple[Path, list[Item]],
    ingest_env: dict[str, str],
    database_url: str,
    pg_uri: str,
    tmp_path: Path,
) -> None:
    """No shared data folder tells this backfill the other replica died: its videos are under
    way elsewhere until its heartbeat is older than its lease, and are then taken over; the
    backfill waits for them rather than exit 0 with them undone. The dead replica's heartbeat
    is kept fresh until the backfill says it waits, however long it takes to start."""
    folder, items = site
    env = {**ingest_env, "INGEST_LEASE_SECONDS": "20"}
    with serve(folder, bytes_per_second=600_000) as base:
        feed = write_feed(folder, base, items)
        process = start({**env, "INGEST_METRICS_ADDR": "127.0.0.1:0"}, "backfill", feed)
        wait_for(process, in_flight("transcribe"))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        other = {**env, "INGEST_DATA_DIR": str(tmp_path / "another-machine")}
        with alive_until_stopped(database_url) as stop:
            restart = start(other, "backfill", feed)
            restart.wait_for_event("waiting_for_other_replicas")
            stop.set()
        restart.communicate(timeout=300)
    assert restart.returncode == 0, restart.communicate()
    assert restart.events("leases_taken_over")
    videos, chunks = asyncio.run(snapshot(database_url))
    assert {v[1] for v in videos} == {"done"}
    assert len(chunks) == sum(int(str(v[3])) for v in videos)


@contextlib.contextmanager
def alive_until_stopped(database_url: str) -> Iterator[threading.Event]:
    """Keeps the heartbeat of every process registered so far fresh, as if they ran on
    elsewhere, until the event is set."""
    stop = threading.Event()

    async def beat() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            owners = await conn.fetchval("SELECT array_agg(owner) FROM workers")
            while not stop.is_set():
                await conn.execute(
                    "UPDATE workers SET seen_at = now() WHERE owner = ANY($1)", owners
                )
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    beater = threading.Thread(target=asyncio.run, args=(beat(),))
    beater.start()
    try:
        yield stop
    finally:
        stop.set()
        beater.join()


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


def held_until(ready: threading.Event, media: str = ".wav") -> Gate:
    """Answers a request for `media` only once `ready` is set, as a slow server would: the
    download waits meanwhile (its process's socket timeout must be longer)."""

    def gate(path: str) -> tuple[int, dict[str, str]] | None:
        if path.endswith(media):
            ready.wait(timeout=180)
        return None

    return gate


@pytest.mark.timing
def test_sigterm_exits_0_within_the_grace_period_and_loses_nothing(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str
) -> None:
    folder, items = site
    grace_s = 15
    env = {
        **ingest_env,
        "INGEST_METRICS_ADDR": "127.0.0.1:0",
        "INGEST_SHUTDOWN_GRACE_SECONDS": str(grace_s),
        "INGEST_DOWNLOAD_SOCKET_TIMEOUT": "300",
    }
    # The last video's download waits for the stop: one video at least is left to hand back.
    stopping = threading.Event()
    with serve(folder, bytes_per_second=300_000, gate=held_until(stopping, "5.wav")) as base:
        feed = write_feed(folder, base, items)
        process = start(env, "backfill", feed)
        try:
            wait_for(process, lambda s: stored_some(s) and in_flight("download")(s))
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait_for_event("stopping", timeout=60)
        finally:
            stopping.set()
        out, err = process.communicate(timeout=grace_s + 60)
        assert process.returncode == 0, err
        # The promise, generously: the grace period and the time to hand back and exit.
        assert time.monotonic() - stopped_at < grace_s + 30
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


@pytest.mark.timing
def test_a_second_signal_stops_at_once_and_still_safely(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str
) -> None:
    folder, items = site
    # A grace period longer than the test may take: only the second signal can end the run.
    env = {**ingest_env, "INGEST_METRICS_ADDR": "127.0.0.1:0",
           "INGEST_SHUTDOWN_GRACE_SECONDS": "600"}  # fmt: skip
    with serve(folder, bytes_per_second=100_000) as base:
        feed = write_feed(folder, base, items)
        process = start(env, "backfill", feed)
        # A video in the models as well: a graceful stop waits for it (and its flush), so the
        # run is still stopping when the second signal comes.
        wait_for(process, lambda s: in_flight("download")(s) and in_flight("transcribe")(s))
        process.send_signal(signal.SIGINT)
        process.wait_for_event("stopping", timeout=60)  # a second signal, not one merged
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert process.events("stopping_now") and not process.events("grace_period_over"), err
        # The promise, generously: "at once" is the time to hand back and exit.
        assert time.monotonic() - stopped_at < 30
    videos, _ = asyncio.run(snapshot(database_url))
    assert {v[1] for v in videos} <= {"discovered", "done"}
    assert all(v[4] is None for v in videos)


# What a query meets while the replicas are still migrating the schema.
MIGRATING = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)


async def _until_owners(database_url: str, owners: int) -> None:
    """Until `owners` processes hold leases at once (the replicas create the tables)."""
    conn = await asyncpg.connect(database_url)
    try:
        with anyio.fail_after(180):
            while True:
                with contextlib.suppress(*MIGRATING):
                    query = "SELECT count(DISTINCT lease_owner) FROM videos"
                    if await conn.fetchval(query) >= owners:
                        return
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


REPLICA_VIDEOS = 4


@pytest.mark.timing
def test_two_replicas_process_each_video_exactly_once(
    speech: Speech, ingest_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    """The media are held back until both replicas hold a lease; with one download at a time
    a replica claims at most three videos ahead (downloading, queued, and one on its way to the
    queue), so neither can take the whole feed, and both work at once."""
    folder = tmp_path / "site"
    folder.mkdir()
    items = fill(folder, (speech.short, speech.medium), REPLICA_VIDEOS)
    ready = threading.Event()
    # A held download must not time out before the other replica has started.
    env = {**ingest_env, "INGEST_DOWNLOAD_WORKERS": "1", "INGEST_DOWNLOAD_SOCKET_TIMEOUT": "300"}
    with serve(folder, gate=held_until(ready)) as base:
        feed = write_feed(folder, base, items)
        replicas = [
            start({**env, "INGEST_DATA_DIR": str(tmp_path / f"replica{i}")}, "backfill", feed)
            for i in range(2)
        ]
        try:
            asyncio.run(_until_owners(database_url, 2))
        finally:
            ready.set()
        outputs = [p.communicate(timeout=300) for p in replicas]
    assert [p.returncode for p in replicas] == [0, 0], [err for _, err in outputs]
    done = [int(out.split(" done,")[0].split()[-1]) for out, _ in outputs]
    assert sum(done) == REPLICA_VIDEOS and min(done) >= 1, done
    conn_rows = asyncio.run(_attempts(database_url))
    assert conn_rows == [(f"generic:v{i}", "done", 1) for i in range(REPLICA_VIDEOS)]


async def _attempts(database_url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, status, attempts FROM videos ORDER BY id")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def database_retries(process: Running, after: int, timeout: float = 120) -> None:
    """Until the process has logged more than `after` database retries: it waits for the
    database rather than fail."""
    deadline = time.monotonic() + timeout
    while len(process.events("database_retry")) <= after:
        assert process.poll() is None, "the run ended instead of waiting for the database"
        assert time.monotonic() < deadline, "no database retry logged"
        time.sleep(0.05)


@pytest.mark.timing
def test_the_database_restarting_mid_run_loses_nothing(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str]
) -> None:
    folder, items = site
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    env = {**ingest_env, "DATABASE_URL": uri, "INGEST_METRICS_ADDR": "127.0.0.1:0"}
    try:
        with serve(folder, bytes_per_second=400_000) as base:
            feed = write_feed(folder, base, items)
            process = start(env, "backfill", feed)
            wait_for(process, stored_some)
            retried = len(process.events("database_retry"))
            stop_embedded(pgdata)
            database_retries(process, retried)
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


@pytest.mark.timing
def test_an_outage_longer_than_the_lease_ends_with_each_video_done_once(
    site: tuple[Path, list[Item]], ingest_env: dict[str, str], database_url: str
) -> None:
    """The run outlives its leases while the database is away; when it is back, it renews the
    leases of the videos it still works on instead of claiming them a second time, and every
    result is written under a lease checked in the same statement."""
    folder, items = site
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    lease_s = 5
    env = {**ingest_env, "DATABASE_URL": uri, "INGEST_LEASE_SECONDS": str(lease_s),
           "INGEST_METRICS_ADDR": "127.0.0.1:0"}  # fmt: skip
    try:
        with serve(folder, bytes_per_second=400_000) as base:
            process = start(env, "backfill", write_feed(folder, base, items))
            try:
                wait_for(process, in_flight("transcribe"))
                retried = len(process.events("database_retry"))
                stop_embedded(pgdata)
                # No renewal reaches a stopped database: a lease ends `lease_s` from now at most.
                leases_over = time.monotonic() + lease_s
                database_retries(process, retried)
                time.sleep(max(0.0, leases_over - time.monotonic()))
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
