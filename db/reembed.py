"""Re-embedding the corpus with another model: the next vectors beside the current ones, then a
switch of columns in one transaction.

While a run is under way `segments.next_embedding` holds the target model's vectors of the
chunks done so far; search and writers go on with `embedding`. Writers do not know the target
model: their new chunks get NULL next vectors, and so does a chunk whose text they change (a
trigger), and the run embeds those too, the last few inside the switch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np
import numpy.typing as npt
from pgvector import Vector

from db.corpus import SEARCH_INDEX

# One run at a time; held on the run's own connection, so a run killed any way releases it.
RUN_LOCK = 0x7265656D62
NEXT_INDEX = "segments_next_embedding_hnsw"
# The chunks still lacking a next vector, so that finding them never reads the finished ones.
_MISSING_INDEX = "segments_next_embedding_missing"
_PRESENT = "segments_embedding_present"

Embed = Callable[[list[str]], Awaitable[npt.NDArray[np.float32]]]


@dataclass(frozen=True, slots=True)
class Reembedding:
    model: str
    dim: int
    started_at: datetime


@dataclass(frozen=True, slots=True)
class PendingChunk:
    video_id: str
    seg_index: int
    text: str


async def reembedding(conn: asyncpg.Connection) -> Reembedding | None:
    """The re-embedding under way, if any."""
    row = await conn.fetchrow("SELECT embedding_model, embedding_dim, started_at FROM reembedding")
    return None if row is None else Reembedding(*row)


@dataclass(frozen=True, slots=True)
class ReembeddingStatus:
    run: Reembedding
    left: int  # chunks still lacking a next vector
    total: int

    @property
    def summary(self) -> str:
        done = self.total - self.left
        return (
            f"re-embedding with {self.run.model} since {self.run.started_at:%Y-%m-%d %H:%M}: "
            f"{done}/{self.total} chunks done"
        )


async def reembedding_status(conn: asyncpg.Connection) -> ReembeddingStatus | None:
    """The re-embedding under way and how far it is, for `ingest status`."""
    if (run := await reembedding(conn)) is None:
        return None
    try:
        left, total = await count_chunks(conn)
    except asyncpg.UndefinedColumnError:  # it switched in between
        return None
    return ReembeddingStatus(run, left, total)


# Whether a session of this database holds the run's lock (a bigint advisory lock shows as its
# high and low halves, objsubid 1).
_RUN_GOING_ON = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
    WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()
      AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid AND l.objsubid = 1)
"""


async def run_going_on(conn: asyncpg.Connection) -> bool:
    """Whether a run holds its lock now: a recorded run without one was stopped half-way."""
    going: bool = await conn.fetchval(_RUN_GOING_ON, RUN_LOCK >> 32, RUN_LOCK & 0xFFFFFFFF)
    return going


async def start_reembedding(conn: asyncpg.Connection, model: str, dim: int) -> Reembedding:
    """Records the target and adds its column (or finds them from an interrupted run), then
    builds the index of the chunks still to do. `conn` must not be in a transaction."""
    async with conn.transaction():
        # Waits for the writers' flushes under way, which read the corpus's model FOR SHARE.
        await conn.execute("SELECT 1 FROM corpus FOR UPDATE")
        if (found := await reembedding(conn)) is None:
            await conn.execute(
                "INSERT INTO reembedding (embedding_model, embedding_dim) VALUES ($1, $2)",
                model,
                dim,
            )
            # The dimension is a type modifier, not a parameter; `dim` is an int, so it is safe.
            await conn.execute(f"ALTER TABLE segments ADD COLUMN next_embedding vector({dim:d})")
            await conn.execute(
                "CREATE TRIGGER segments_next_embedding_stale BEFORE UPDATE OF text ON segments"
                " FOR EACH ROW WHEN (OLD.text IS DISTINCT FROM NEW.text)"
                " EXECUTE FUNCTION segments_next_embedding_stale()"
            )
            found = await reembedding(conn)
    await _build_index(conn, _MISSING_INDEX, "(video_id, seg_index) WHERE next_embedding IS NULL")
    assert found is not None
    return found


async def count_chunks(conn: asyncpg.Connection) -> tuple[int, int]:
    """(chunks still lacking a next vector, all chunks)."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM segments WHERE next_embedding IS NULL),"
        " (SELECT count(*) FROM segments)"
    )
    return int(row[0]), int(row[1])


_PENDING = """
SELECT video_id, seg_index, text FROM segments
WHERE next_embedding IS NULL AND (video_id, seg_index) > ($1, $2)
ORDER BY video_id, seg_index LIMIT $3
"""


async def pending_chunks(
    conn: asyncpg.Connection, after: tuple[str, int] | None, limit: int
) -> list[PendingChunk]:
    """The next chunks lacking a next vector, in key order after `after` (None: from the first):
    the scan goes on from where the last batch ended instead of passing the finished ones."""
    video_id, seg_index = after or ("", -1)
    rows = await conn.fetch(_PENDING, video_id, seg_index, limit)
    return [PendingChunk(*row) for row in rows]


# Only where the text is still the one embedded: a writer may have changed it meanwhile.
_STORE = """
UPDATE segments s SET next_embedding = u.vector
FROM unnest($1::text[], $2::integer[], $3::text[], $4::vector[]) AS u(id, n, text, vector)
WHERE s.video_id = u.id AND s.seg_index = u.n AND s.text = u.text
"""


async def store_next(
    conn: asyncpg.Connection, chunks: Sequence[PendingChunk], vectors: npt.NDArray[np.float32]
) -> int:
    """Writes the chunks' next vectors; returns how many were written."""
    status = await conn.execute(
        _STORE,
        [c.video_id for c in chunks],
        [c.seg_index for c in chunks],
        [c.text for c in chunks],
        [Vector(vector) for vector in vectors],  # an array's items: no sequences of their own
    )
    return int(status.rsplit(" ", 1)[-1])


async def build_next_search_index(conn: asyncpg.Connection) -> bool:
    """The HNSW index of the next vectors, built (CONCURRENTLY: search and writers go on) where
    the corpus has a search index; the switch renames it. Returns whether there is one."""
    if await conn.fetchval("SELECT to_regclass($1)", SEARCH_INDEX) is None:
        return False
    await _build_index(conn, NEXT_INDEX, "USING hnsw (next_embedding vector_cosine_ops)")
    return True


async def _build_index(conn: asyncpg.Connection, name: str, definition: str) -> None:
    """An interrupted build leaves an invalid index, which is built again."""
    valid = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name
    )
    if valid:
        return
    if valid is False:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    await conn.execute(f"CREATE INDEX CONCURRENTLY {name} ON segments {definition}")


async def switch_models(conn: asyncpg.Connection, embed: Embed) -> int:
    """Makes the next vectors the corpus's, in one transaction: the chunks still lacking one
    (written meanwhile) are embedded with `embed` first. Returns how many those were.

    Locks in the writers' order (corpus, videos, segments): a flush under way ends first, one
    that comes later waits and then finds the new model; searches wait for the few statements.
    """
    async with conn.transaction():
        old = await conn.fetchval("SELECT embedding_model FROM corpus FOR UPDATE")
        target = await reembedding(conn)
        if target is None:
            raise RuntimeError("no re-embedding is under way")
        await conn.execute(
            "UPDATE videos SET embedding_model = $1"
            " WHERE embedding_model IS NOT NULL AND embedding_model <> $1",
            target.model,
        )
        await conn.execute("LOCK TABLE segments IN ACCESS EXCLUSIVE MODE")
        left = await pending_chunks(conn, None, 2**31 - 1)
        if left:
            await store_next(conn, left, await embed([c.text for c in left]))
        await _swap_columns(conn)
        await conn.execute(
            "UPDATE corpus SET embedding_model = $1, embedding_dim = $2, previous_model = $3",
            target.model,
            target.dim,
            old,
        )
        await conn.execute("DELETE FROM reembedding")
    return len(left)


async def _swap_columns(conn: asyncpg.Connection) -> None:
    next_index = await conn.fetchval("SELECT to_regclass($1)", NEXT_INDEX)
    await conn.execute(f"DROP INDEX IF EXISTS {_MISSING_INDEX}")
    await conn.execute("DROP TRIGGER segments_next_embedding_stale ON segments")
    await conn.execute("ALTER TABLE segments DROP COLUMN embedding")  # and its search index
    await conn.execute("ALTER TABLE segments RENAME COLUMN next_embedding TO embedding")
    # NOT NULL would scan the whole table here, under the lock; a constraint NOT VALID holds for
    # every new row at once, and settle_not_null proves it for the old ones afterwards.
    await conn.execute(
        f"ALTER TABLE segments ADD CONSTRAINT {_PRESENT} CHECK (embedding IS NOT NULL) NOT VALID"
    )
    if next_index is not None:
        await conn.execute(f"ALTER INDEX {NEXT_INDEX} RENAME TO {SEARCH_INDEX}")


async def settle_not_null(conn: asyncpg.Connection) -> None:
    """The switched column made NOT NULL like the original: the check is validated without
    blocking anyone, then NOT NULL needs no scan of its own."""
    present = await conn.fetchval(
        "SELECT 1 FROM pg_constraint WHERE conname = $1 AND conrelid = 'segments'::regclass",
        _PRESENT,
    )
    if present is None:
        return
    await conn.execute(f"ALTER TABLE segments VALIDATE CONSTRAINT {_PRESENT}")
    async with conn.transaction():
        await conn.execute("ALTER TABLE segments ALTER COLUMN embedding SET NOT NULL")
        await conn.execute(f"ALTER TABLE segments DROP CONSTRAINT {_PRESENT}")
