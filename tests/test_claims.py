"""Claiming along the stored listings (order, limit, a video in two sources, what this run
handed back, leases that expired behind the walk), and leases that cannot be stolen back."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Sequence, Set
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Self, cast

import asyncpg
import pytest

from db import leases
from db.corpus import ensure_embedding_model
from db.leases import ClaimRules
from db.listings import INSERT_ROWS, record_listing
from db.sink import write_finished
from db.videos import (
    DiscoveredVideo,
    FailureRecord,
    mark_failed,
    mark_skipped,
    record_discovered,
    status_summary,
    update_metadata,
)
from ingest.infrastructure.config import load_settings
from ingest.infrastructure.retry import Database
from ingest.infrastructure.shutdown import Shutdown
from ingest.orchestration import backfill, daemon
from ingest.orchestration.backfill import session
from ingest.orchestration.claims import Claims, RunningLock, audio_dir_of, remove_dead_audio
from ingest.stages.ledger import Ledger
from tests.test_sink import DIM, finished

pytestmark = pytest.mark.anyio


async def listed(pool: asyncpg.Pool, source: str, ids: Sequence[str]) -> None:
    async with pool.acquire() as conn:
        await record_discovered(conn, [DiscoveredVideo(i, f"https://x.org/{i}") for i in ids])
        await record_listing(conn, source, ids)


async def alive_claims(pool: asyncpg.Pool, owner: str, rules: ClaimRules | None = None) -> Claims:
    """Claims of a process whose heartbeat is beating."""
    claims = Claims(Database(pool), owner, rules or ClaimRules())
    await claims.beat()
    return claims


async def stop_heartbeat(pool: asyncpg.Pool, owner: str) -> None:
    """The process stops beating (it died, or stalled): its heartbeat is older than its lease."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE workers SET seen_at = now() - make_interval(secs => lease_s + 1)"
            " WHERE owner = $1",
            owner,
        )


async def fetch_status(conn: asyncpg.Connection, video_id: str) -> str:
    return cast(str, await conn.fetchval("SELECT status FROM videos WHERE id = $1", video_id))


async def claim_all(
    claims: Claims,
    sources: Sequence[str],
    limit: int | None = None,
    returned: Set[str] = frozenset(),
) -> list[str]:
    stop = asyncio.Event()
    return [job.video_id async for job in claims.jobs(sources, stop, limit, returned)]


async def test_claims_follow_the_listings_and_take_a_shared_video_once(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["c", "a", "b"])
    await listed(pool, "s2", ["b", "d"])
    claims = await alive_claims(pool, "host:1:first")
    assert (await claims.count(["s1", "s2"])).videos == 4
    assert await claim_all(claims, ["s1", "s2"]) == ["c", "a", "b", "d"]
    assert await claim_all(await alive_claims(pool, "host:2:other"), ["s1"]) == []


async def test_limit_takes_the_first_in_listing_order(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", [f"v{i}" for i in range(10)])
    claims = await alive_claims(pool, "host:1:first")
    assert await claim_all(claims, ["s1"], limit=3) == ["v0", "v1", "v2"]


async def test_a_new_listing_replaces_the_old_order(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    await listed(pool, "s1", ["c", "new", "a"])  # "b" was deleted from the channel
    claims = await alive_claims(pool, "host:1:first")
    assert await claim_all(claims, ["s1"]) == ["c", "new", "a"]


async def test_videos_handed_back_by_this_run_are_left_alone(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    claims = await alive_claims(pool, "host:1:first")
    assert await claim_all(claims, ["s1"], returned={"b"}) == ["a", "c"]


async def test_finished_videos_are_skipped_unless_the_rules_say_redo(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    async with pool.acquire() as conn:
        await conn.execute("UPDATE videos SET status = 'done', done_at = now() WHERE id = 'b'")
        await conn.execute("UPDATE videos SET status = 'failed', failed_at = now() WHERE id = 'c'")
        cutoff: datetime = await conn.fetchval("SELECT now()")
    claims = await alive_claims(pool, "host:1:first")
    assert await claim_all(claims, ["s1"]) == ["a"]
    redo = ClaimRules(retry_failed_before=cutoff, reprocess_done_before=cutoff)
    assert await claim_all(await alive_claims(pool, "host:2:x", redo), ["s1"]) == ["b", "c"]


async def test_a_failed_video_renamed_by_the_runs_own_listing_is_still_retried(
    pool: asyncpg.Pool,
) -> None:
    """`--retry-failed` takes what failed before the run began, even when the run's listing,
    recorded after the cutoff, gave the video a new title."""
    await listed(pool, "s1", ["c"])
    jobs = [
        job async for job in (await alive_claims(pool, "host:1:x")).jobs(["s1"], asyncio.Event())
    ]
    async with pool.acquire() as conn:
        assert await mark_failed(conn, "c", FailureRecord("HTTP Error 404"), jobs[0].lease)
        cutoff: datetime = await conn.fetchval("SELECT now()")
        renamed = DiscoveredVideo("c", "https://x.org/c", title="Renamed since")
        await record_discovered(conn, [renamed])
        await record_listing(conn, "s1", ["c"])
        assert await conn.fetchval("SELECT updated_at > $1 FROM videos", cutoff)
    retry = ClaimRules(retry_failed_before=cutoff)
    assert await claim_all(await alive_claims(pool, "host:2:y", retry), ["s1"]) == ["c"]


YEAR = timedelta(days=365)


class YearBehind(datetime):
    """A client clock that runs a year behind the database's."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Self:
        return super().now(tz) - YEAR


def set_the_clients_clock_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python-side source of the time a cutoff could be built from."""
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() - YEAR.total_seconds())
    for module in (dt, backfill, daemon, leases):
        monkeypatch.setattr(module, "datetime", YearBehind)


async def test_the_cutoffs_of_a_run_are_the_databases_time_not_the_clients(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--reprocess` and `--retry-failed` redo what finished before the run began. A cutoff
    from a client whose clock is a year behind would redo nothing finished since then."""
    await listed(pool, "s1", ["a", "b", "c"])
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE videos SET status = 'done', done_at = now(), updated_at = now() WHERE id = 'b'"
        )
        await conn.execute(
            "UPDATE videos SET status = 'failed', failed_at = now(), updated_at = now()"
            " WHERE id = 'c'"
        )
        finished: datetime = await conn.fetchval("SELECT max(updated_at) FROM videos")
    set_the_clients_clock_back(monkeypatch)
    settings = load_settings(database_url=database_url, data_dir=tmp_path, metrics_addr="")

    def redo(now: datetime) -> ClaimRules:
        return ClaimRules(retry_failed_before=now, reprocess_done_before=now)

    async with session(settings, redo, Shutdown(1.0)) as (run, _):
        assert await claim_all(run.claims, ["s1"]) == ["a", "b", "c"]
        cutoff = run.claims.rules.reprocess_done_before
    async with pool.acquire() as conn:
        assert cutoff is not None and finished < cutoff <= await conn.fetchval("SELECT now()")


async def test_a_video_whose_owner_dies_behind_the_walk_is_taken_at_the_end(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    dead = await alive_claims(pool, "host:1:dead")
    assert await claim_all(dead, ["s1"], limit=1) == ["a"]  # and then it dies
    alive = await alive_claims(pool, "host:2:alive")
    stop = asyncio.Event()
    walk = alive.jobs(["s1"], stop)
    assert (await anext(walk)).video_id == "b"  # "a" is leased: the walk passes it
    await stop_heartbeat(pool, "host:1:dead")
    assert [job.video_id async for job in walk] == ["c", "a"]


async def test_a_replica_whose_lease_was_taken_over_writes_nothing(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b", "c", "d", "e"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    old = await alive_claims(pool, "host:1:old")
    jobs = {job.video_id: job async for job in old.jobs(["s1"], asyncio.Event())}
    assert list(jobs) == ["a", "b", "c", "d", "e"]
    await stop_heartbeat(pool, "host:1:old")  # it stalled past its lease...
    new = await alive_claims(pool, "host:2:new")
    assert await claim_all(new, ["s1"], limit=4) == ["a", "b", "c", "d"]  # ...and was taken over

    ledger = Ledger(Database(pool), 5)
    await ledger.failed(jobs["a"], "download", RuntimeError("boom"))
    await ledger.skipped(jobs["b"], "live stream")
    await ledger.handed_back(jobs["c"])
    async with pool.acquire() as conn:
        late = [finished(v, ["late"], lease=jobs[v].lease) for v in "de"]
        stale = await write_finished(conn, late)
        assert not await update_metadata(conn, DiscoveredVideo("a", "x", "new"), jobs["a"].lease)
    assert (stale.videos, stale.lost) == (0, ("d", "e"))  # "e" too: the heartbeat stopped
    assert ledger.counters.lost == 3 and ledger.counters.failed == ledger.counters.skipped == 0

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, status, lease_owner, title FROM videos ORDER BY id")
        assert [tuple(r) for r in rows] == [
            *((v, "processing", "host:2:new", None) for v in "abcd"),
            ("e", "discovered", None, None),
        ]
        assert await conn.fetchval("SELECT count(*) FROM segments WHERE video_id = 'd'") == 0


async def test_a_stale_claim_of_a_video_this_process_claimed_again_writes_nothing(
    pool: asyncpg.Pool,
) -> None:
    """The ABA sequence: job 1 of A loses its lease, B takes the video and hands it back, A
    claims it again as job 2. Job 1's late outcome is dropped, and its end leaves job 2 in
    flight (renewed)."""
    await listed(pool, "s", ["v"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    a, b = await alive_claims(pool, "host:1:a"), await alive_claims(pool, "host:1:b")
    ledger_a, ledger_b = Ledger(Database(pool), 1), Ledger(Database(pool), 1)
    (first,) = [job async for job in a.jobs(["s"], asyncio.Event())]
    ledger_a.took(first)
    await stop_heartbeat(pool, "host:1:a")
    (taken,) = [job async for job in b.jobs(["s"], asyncio.Event())]
    ledger_b.took(taken)
    await ledger_b.handed_back(taken, again=True)
    await a.beat()
    (second,) = [job async for job in a.jobs(["s"], asyncio.Event())]
    ledger_a.took(second)
    assert len({first.lease, taken.lease, second.lease}) == 3

    await ledger_a.failed(first, "download", RuntimeError("late"))
    assert ledger_a.counters.lost == 1 and ledger_a.in_flight == {second}
    async with pool.acquire() as conn:
        held = [(j.video_id, j.lease) for j in ledger_a.in_flight if j.lease is not None]
        assert (await leases.renew(conn, a.owner, 60, held)).renewed == 1
        assert await fetch_status(conn, "v") == "processing"
        result = await write_finished(conn, [finished("v", ["on time"], lease=second.lease)])
        assert result.videos == 1 and await fetch_status(conn, "v") == "done"


async def test_a_write_retried_after_its_reply_was_lost_is_recognised_as_its_own(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s", ["a", "b", "c", "d"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    claims = await alive_claims(pool, "host:1:x")
    jobs = {job.video_id: job async for job in claims.jobs(["s"], asyncio.Event())}
    failure = FailureRecord("boom")
    async with pool.acquire() as conn:
        for _ in range(2):
            assert await mark_failed(conn, "a", failure, jobs["a"].lease)
            assert await mark_skipped(conn, "b", "live", jobs["b"].lease)
            assert await leases.hand_back(conn, cast(int, jobs["c"].lease))
        first = await write_finished(conn, [finished("d", ["x", "y"], lease=jobs["d"].lease)])
        again = await write_finished(conn, [finished("d", ["x", "y"], lease=jobs["d"].lease)])
        assert (first.videos, first.lost, first.already) == (1, (), ())
        assert (again.videos, again.lost, again.already) == (0, (), ("d",))
        assert await conn.fetchval("SELECT count(*) FROM segments WHERE video_id = 'd'") == 2


async def test_renewal_extends_only_the_claims_in_flight_and_hands_back_orphans(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s1", ["a", "b", "c"])
    claims = await alive_claims(pool, "host:1:x", ClaimRules(ttl_s=60))
    jobs = {job.video_id: job async for job in claims.jobs(["s1"], asyncio.Event())}
    lease = {video: cast(int, job.lease) for video, job in jobs.items()}
    async with pool.acquire() as conn:
        await conn.execute("UPDATE videos SET lease_expires_at = now() - interval '1 second'")
        stale = [("a", lease["a"] + 1000), ("c", lease["b"])]
        assert (await leases.renew(conn, "host:2:other", 60, [("b", lease["b"])])).renewed == 1
        renewal = await leases.renew(conn, "host:1:x", 60, [("b", lease["b"]), *stale])
        rows = await conn.fetch("SELECT id, status FROM videos ORDER BY id")
    # "a" and "c" are this owner's, expired, and held by no claim in flight: handed back.
    assert (renewal.renewed, sorted(renewal.orphans)) == (1, ["a", "c"])
    assert [tuple(r) for r in rows] == [("a", "discovered"), ("b", "processing"),
                                        ("c", "discovered")]  # fmt: skip


async def test_an_expired_video_outside_every_listing_is_handed_back(pool: asyncpg.Pool) -> None:
    await listed(pool, "s1", ["a", "b"])
    dead = await alive_claims(pool, "host:1:dead")
    assert await claim_all(dead, ["s1"]) == ["a", "b"]
    await listed(pool, "s1", ["b"])  # "a" left the channel while it was processed
    await stop_heartbeat(pool, "host:1:dead")
    alive = await alive_claims(pool, "host:2:alive")
    assert await claim_all(alive, ["s1"]) == ["b"]
    async with pool.acquire() as conn:
        assert await fetch_status(conn, "a") == "discovered"


async def test_two_processes_with_one_host_name_and_pid_judge_each_other_by_heartbeat(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Containers with a fixed host name, every process PID 1: only the heartbeat tells."""
    await listed(pool, "s", ["a", "b"])
    one, two = "box:1:aaaaaaaaaaaa", "box:1:bbbbbbbbbbbb"
    first, second = await alive_claims(pool, one), await alive_claims(pool, two)
    for owner in (one, two):
        audio_dir_of(tmp_path, owner).mkdir()
    (tmp_path / "not-ours").mkdir()
    assert await claim_all(first, ["s"], limit=1) == ["a"]
    assert await claim_all(second, ["s"]) == ["b"]  # "a" stays with the live first
    assert remove_dead_audio(tmp_path, await second.live_owners()) == []
    await stop_heartbeat(pool, one)
    assert remove_dead_audio(tmp_path, await second.live_owners()) == [audio_dir_of(tmp_path, one)]
    left = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert left == ["bbbbbbbbbbbb", "not-ours"]
    assert await claim_all(second, ["s"]) == ["a"]


async def test_concurrent_claimers_share_a_listing_without_overlap(pool: asyncpg.Pool) -> None:
    ids = [f"v{i}" for i in range(200)]
    await listed(pool, "s", ids)
    claimers = [await alive_claims(pool, f"host:1:{n:012x}") for n in range(6)]

    async def take(claims: Claims) -> list[str]:
        taken = []
        async for job in claims.jobs(["s"], asyncio.Event()):
            taken.append(job.video_id)
            await asyncio.sleep(0)  # let the others claim in between
        return taken

    shares = await asyncio.gather(*(take(claims) for claims in claimers))
    assert sorted(v for share in shares for v in share) == sorted(ids)
    assert sum(len(share) > 0 for share in shares) >= 2


class SlowDatabase(Database):
    """Every operation waits a little first, as a loaded database does."""

    async def run(self, op: Any) -> Any:
        await asyncio.sleep(0.2)
        return await super().run(op)


async def test_a_walk_that_ends_while_a_hand_back_is_written_waits_for_it(
    pool: asyncpg.Pool,
) -> None:
    await listed(pool, "s1", ["a"])
    claims = await alive_claims(pool, "host:1:first")
    (job,) = [job async for job in claims.jobs(["s1"], asyncio.Event())]
    ledger = Ledger(SlowDatabase(pool), 1)
    ledger.took(job)
    handing_back = asyncio.create_task(ledger.handed_back(job, again=True))
    await asyncio.sleep(0)  # the task starts: out of flight at once, its hand-back written slowly
    assert not ledger.in_flight
    stop = asyncio.Event()
    # Without the wait the run would end here with the video still to do.
    assert await asyncio.wait_for(ledger.settle(stop), 5) == 1
    await handing_back
    assert await claim_all(claims, ["s1"]) == ["a"]


async def test_status_shows_each_replica_by_its_heartbeat(pool: asyncpg.Pool) -> None:
    await listed(pool, "s", ["a", "b"])
    live, dead = await alive_claims(pool, "box:1:live"), await alive_claims(pool, "box:1:dead")
    assert await claim_all(live, ["s"], limit=2) == ["a", "b"]
    await stop_heartbeat(pool, "box:1:dead")
    async with pool.acquire() as conn:
        replicas = (await status_summary(conn)).replicas
    shown = {r.owner: (r.alive, r.videos, r.seen_s > dead.rules.ttl_s) for r in replicas}
    assert shown == {"box:1:live": (True, 2, False), "box:1:dead": (False, 0, True)}


async def test_a_video_handed_back_while_its_listing_is_rewritten_stays_claimable(
    pool: asyncpg.Pool,
) -> None:
    """The listing's rows are computed under the source's lock, which a change of the video's
    state waits for: the rewritten row cannot miss the hand-back."""
    await listed(pool, "s", ["a"])
    claims = await alive_claims(pool, "host:1:x")
    (job,) = [job async for job in claims.jobs(["s"], asyncio.Event())]
    async with pool.acquire() as lister, pool.acquire() as other:
        async with lister.transaction():
            await lister.execute("SELECT pg_advisory_xact_lock(hashtext('s'))")
            back = asyncio.create_task(leases.hand_back(other, cast(int, job.lease)))
            for _ in range(300):
                waiting = await lister.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND wait_event = 'advisory' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting == 1  # the hand-back waits for the listing
            await lister.execute("DELETE FROM listings WHERE source = 's'")
            await lister.execute(INSERT_ROWS, "s", 0, ["a"])  # "a" still processing here
        assert await back
    assert await claim_all(claims, ["s"]) == ["a"]


def test_a_process_killed_beside_another_is_known_dead_at_once(tmp_path: Path) -> None:
    """By the lock its file held, which the kernel drops however the process dies."""
    folder = tmp_path / "running"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLDS_A_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    me = RunningLock(folder, "box:1:aaaaaaaaaaaa")
    assert me.dead_beside() == []  # the child runs
    child.kill()
    child.communicate()
    assert me.dead_beside() == ["cccccccccccc"]
    assert [p.name for p in folder.iterdir()] == ["aaaaaaaaaaaa.lock"]
    me.release()


CHILD_HOLDS_A_LOCK = """
import sys, time
from pathlib import Path
from ingest.orchestration.claims import RunningLock
lock = RunningLock(Path(sys.argv[1]), "box:1:cccccccccccc")
print("held", flush=True)
time.sleep(600)
"""


async def test_results_dropped_for_a_lost_lease_are_counted_by_outcome_in_the_metrics(
    pool: asyncpg.Pool,
) -> None:
    """`ingest_leases_lost_total` is what an operator watches to see replicas take each other's
    videos over: each result a stalled replica dropped counts once under its outcome, and the
    replica that took the videos over writes its own results without counting any."""
    from ingest.infrastructure.metrics import Metrics
    from tests.observing import value
    from tests.test_lease_faults import embedded, sink
    from tests.test_throttle import exported

    await listed(pool, "s1", ["a", "b", "c", "d"])
    async with pool.acquire() as conn:
        await ensure_embedding_model(conn, "emb", DIM)
    old = await alive_claims(pool, "host:1:old")
    stale = {job.video_id: job async for job in old.jobs(["s1"], asyncio.Event())}
    await stop_heartbeat(pool, "host:1:old")
    new = await alive_claims(pool, "host:2:new")
    taken = {job.video_id: job async for job in new.jobs(["s1"], asyncio.Event())}
    assert list(taken) == ["a", "b", "c", "d"]

    old_metrics, new_metrics = Metrics(), Metrics()
    old_ledger = Ledger(Database(pool), 4, old_metrics)
    await old_ledger.failed(stale["a"], "download", RuntimeError("boom"))
    await old_ledger.skipped(stale["b"], "live stream")
    await old_ledger.handed_back(stale["c"])
    await sink(Database(pool), old_ledger, (embedded(stale["d"], ["late"]),))
    new_ledger = Ledger(Database(pool), 4, new_metrics)
    await sink(Database(pool), new_ledger, (embedded(taken["d"], ["on time"]),))

    lost = exported(old_metrics)
    outcomes = ("failed", "skipped", "handed_back", "done")
    assert {
        o: value(lost, "ingest_leases_lost_total", outcome=o) for o in outcomes
    } == dict.fromkeys(outcomes, 1.0)
    assert not [key for key in exported(new_metrics) if key[0] == "ingest_leases_lost_total"]
    assert new_ledger.counters.done == 1 and old_ledger.counters.done == 0
