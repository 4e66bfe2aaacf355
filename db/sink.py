"""Writing embedded chunks: COPY into a staging table, then one upsert that skips unchanged rows.

Each call is one transaction: the chunks of every video in it are written, stale chunks of a
reprocessed video are removed, and the videos are marked `done`, all or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import numpy.typing as npt

_COLUMNS = (
    "video_id", "seg_index", "start_s", "end_s", "speaker", "speaker_confidence", "speakers",
    "text", "embedding",
)  # fmt: skip

# One per dimension: a table made before the corpus switched models has the old vector type.
_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS segments_staging_{dim:d}"
    " (LIKE segments INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)

# Re-embedding the same text gives vectors that differ in the last bits (batch composition
# changes padding); rewriting such a row under an HNSW index costs ~100x an insert, so only a
# real change of the vector counts.
_UPSERT = """
INSERT INTO segments AS s
    (video_id, seg_index, start_s, end_s, speaker, speaker_confidence, speakers, text,
     embedding)
SELECT video_id, seg_index, start_s, end_s, speaker, speaker_confidence, speakers, text,
       embedding
FROM segments_staging_{dim:d}
ON CONFLICT (video_id, seg_index) DO UPDATE SET
    start_s = EXCLUDED.start_s, end_s = EXCLUDED.end_s, speaker = EXCLUDED.speaker,
    speaker_confidence = EXCLUDED.speaker_confidence, speakers = EXCLUDED.speakers,
    text = EXCLUDED.text, embedding = EXCLUDED.embedding
WHERE (s.start_s, s.end_s, s.speaker, s.speaker_confidence, s.speakers, s.text)
      IS DISTINCT FROM (EXCLUDED.start_s, EXCLUDED.end_s, EXCLUDED.speaker,
                        EXCLUDED.speaker_confidence, EXCLUDED.speakers, EXCLUDED.text)
   OR (s.embedding <=> EXCLUDED.embedding) > 1e-6
"""

_ANY_STORED = "SELECT EXISTS (SELECT 1 FROM segments WHERE video_id = ANY($1::text[]))"

_DELETE_STALE = """
DELETE FROM segments s USING unnest($1::text[], $2::integer[]) AS v(id, n)
WHERE s.video_id = v.id AND s.seg_index >= v.n
"""

_MARK_DONE = """
UPDATE videos AS v SET
    status = 'done', error = NULL, duration_s = d.duration_s, chunk_count = d.n,
    asr_model = d.asr_model, embedding_model = d.embedding_model, timings = d.timings::jsonb,
    speaker_path = d.speaker_path, speaker_similarity = d.similarity,
    speaker_spread = d.spread, speaker_reason = d.reason, transcript_source = d.source,
    lease_owner = NULL, lease_expires_at = NULL, done_at = now(), updated_at = now()
FROM unnest($1::text[], $2::float8[], $3::integer[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::float8[], $9::float8[], $10::text[], $11::text[])
     AS d(id, duration_s, n, asr_model, embedding_model, timings,
          speaker_path, similarity, spread, reason, source)
WHERE v.id = d.id
"""


class CorpusModelChanged(Exception):
    """The corpus switched to another embedding model since these vectors were made: they would
    be meaningless beside its own. Nothing was written; embed the batch with `model` again."""

    def __init__(self, model: str, made_with: str) -> None:
        super().__init__(f"the corpus now uses {model}; these vectors come from {made_with}")
        self.model = model


@dataclass(frozen=True, slots=True)
class ChunkRow:
    seg_index: int
    start_s: float
    end_s: float
    speaker: str | None
    text: str
    embedding: npt.NDArray[np.float32]
    speaker_confidence: float | None = None
    # Everyone heard in the chunk, `speaker` first; None: `speaker` alone, as search reads it.
    speakers: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SpeakerPath:
    """How a video's speakers were found: `fast` (host matched), `full` (diarized) or `off`."""

    path: str | None = None
    similarity: float | None = None
    spread: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FinishedVideo:
    video_id: str
    duration_s: float
    asr_model: str | None  # None when the transcript came with the video (captions)
    embedding_model: str
    chunks: Sequence[ChunkRow]
    timings: Mapping[str, float] = field(default_factory=dict)
    speakers: SpeakerPath = SpeakerPath()
    transcript_source: str | None = None
    lease: int | None = None  # the claim's fencing token; None: written without a claim


@dataclass(frozen=True, slots=True)
class WriteResult:
    videos: int
    chunks: int
    rows_written: int  # inserted or changed; unchanged rows are not rewritten
    rows_deleted: int
    lost: tuple[str, ...] = ()  # videos whose claim no longer held them: not written
    # Videos an earlier attempt of this write had written (its reply was lost): not written again.
    already: tuple[str, ...] = ()


# The videos whose claims still hold them, locked so that a takeover waits for this transaction
# to end; and those an earlier attempt of the same claims marked done.
_HELD = """
SELECT v.id, v.status FROM videos v JOIN unnest($1::text[], $2::bigint[]) AS c(id, token)
    ON v.id = c.id AND v.lease_token = c.token
WHERE v.status IN ('processing', 'done') FOR NO KEY UPDATE OF v
"""


async def write_finished(conn: asyncpg.Connection, videos: Sequence[FinishedVideo]) -> WriteResult:
    """Writes the videos' chunks and marks them done, in one transaction: of the videos with a
    claim (`lease`), only those it still holds (checked and locked in that transaction); the
    others are `lost`, or `already` written when this is a retry whose first reply was lost.

    Videos with no stored chunks yet (every video of a first backfill) are COPYed straight into
    `segments`, which writes each row once; otherwise rows go through the staging table and the
    upsert. A concurrent writer that got there first sends the batch down the upsert path too.
    """
    ids = [v.video_id for v in videos]
    if not await conn.fetchval(_ANY_STORED, ids):
        try:
            async with conn.transaction():
                await _same_model(conn, videos)
                kept, already = await _still_held(conn, videos)
                records = _records(kept)
                await conn.copy_records_to_table("segments", records=records, columns=_COLUMNS)
                await _mark_done(conn, kept)
            lost = _lost(videos, kept, already)
            return WriteResult(len(kept), len(records), len(records), 0, lost, already)
        except asyncpg.UniqueViolationError:
            pass
    async with conn.transaction():
        dim = await _same_model(conn, videos)
        kept, already = await _still_held(conn, videos)
        records = _records(kept)
        await conn.execute(_STAGING.format(dim=dim))
        await conn.copy_records_to_table(
            f"segments_staging_{dim:d}", records=records, columns=_COLUMNS
        )
        written = _row_count(await conn.execute(_UPSERT.format(dim=dim)))
        kept_ids = [v.video_id for v in kept]
        deleted = _row_count(
            await conn.execute(_DELETE_STALE, kept_ids, [len(v.chunks) for v in kept])
        )
        await _mark_done(conn, kept)
    lost = _lost(videos, kept, already)
    return WriteResult(len(kept), len(records), written, deleted, lost, already)


async def _same_model(conn: asyncpg.Connection, videos: Sequence[FinishedVideo]) -> int:
    """The corpus's dimension (0 before any model is recorded), once the videos' vectors are
    known to be of its model. FOR SHARE: a switch of models waits for this transaction, and one
    under way holds this read until it ends, which then finds the new model."""
    row = await conn.fetchrow("SELECT embedding_model, embedding_dim FROM corpus FOR SHARE")
    if row is None:
        return 0
    for video in videos:
        if video.embedding_model != row["embedding_model"]:
            raise CorpusModelChanged(row["embedding_model"], video.embedding_model)
    dim: int = row["embedding_dim"]
    return dim


async def _still_held(
    conn: asyncpg.Connection, videos: Sequence[FinishedVideo]
) -> tuple[list[FinishedVideo], tuple[str, ...]]:
    """The videos to write (held by their claim, or written without one), and those already
    written by their claim."""
    claimed = [v for v in videos if v.lease is not None]
    rows = await conn.fetch(_HELD, [v.video_id for v in claimed], [v.lease for v in claimed])
    state = {row["id"]: row["status"] for row in rows}
    kept = [v for v in videos if v.lease is None or state.get(v.video_id) == "processing"]
    return kept, tuple(v.video_id for v in claimed if state.get(v.video_id) == "done")


def _lost(
    videos: Sequence[FinishedVideo], kept: Sequence[FinishedVideo], already: Sequence[str]
) -> tuple[str, ...]:
    written = {v.video_id for v in kept} | set(already)
    return tuple(v.video_id for v in videos if v.video_id not in written)


def _records(videos: Sequence[FinishedVideo]) -> list[tuple[object, ...]]:
    return [
        (v.video_id, c.seg_index, c.start_s, c.end_s, c.speaker, c.speaker_confidence,
         c.speakers, c.text, c.embedding)
        for v in videos
        for c in v.chunks
    ]  # fmt: skip


async def _mark_done(conn: asyncpg.Connection, videos: Sequence[FinishedVideo]) -> None:
    await conn.execute(
        _MARK_DONE,
        [v.video_id for v in videos],
        [v.duration_s for v in videos],
        [len(v.chunks) for v in videos],
        [v.asr_model for v in videos],
        [v.embedding_model for v in videos],
        [json.dumps(dict(v.timings)) for v in videos],
        [v.speakers.path for v in videos],
        [v.speakers.similarity for v in videos],
        [v.speakers.spread for v in videos],
        [v.speakers.reason for v in videos],
        [v.transcript_source for v in videos],
    )


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 12" or "DELETE 3".
    return int(status.rsplit(" ", 1)[-1])
