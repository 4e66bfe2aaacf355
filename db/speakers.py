"""The `speakers` table: enrolled voice profiles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np
import numpy.typing as npt


class ProfileModelMismatch(Exception):
    """A profile built with one voice model cannot take embeddings of another."""


@dataclass(frozen=True, slots=True)
class StoredProfile:
    name: str
    model: str
    embedding_sum: npt.NDArray[np.float32]
    windows: int
    updated_at: datetime


async def add_to_profile(
    conn: asyncpg.Connection,
    name: str,
    model: str,
    embedding_sum: npt.NDArray[np.float32],
    windows: int,
) -> StoredProfile:
    """Creates the profile, or adds the new windows to it."""
    row = await conn.fetchrow(
        """
        INSERT INTO speakers AS s (name, model, embedding_sum, windows) VALUES ($1, $2, $3, $4)
        ON CONFLICT (name) DO UPDATE SET
            embedding_sum = s.embedding_sum + EXCLUDED.embedding_sum,
            windows = s.windows + EXCLUDED.windows,
            updated_at = now()
        WHERE s.model = EXCLUDED.model
        RETURNING name, model, embedding_sum, windows, updated_at
        """,
        name,
        model,
        embedding_sum,
        windows,
    )
    if row is None:
        existing = await conn.fetchval("SELECT model FROM speakers WHERE name = $1", name)
        raise ProfileModelMismatch(
            f"profile {name!r} was enrolled with {existing}, not {model}; use that voice model"
        )
    return _profile(row)


async def list_profiles(conn: asyncpg.Connection, model: str | None = None) -> list[StoredProfile]:
    rows = await conn.fetch(
        "SELECT name, model, embedding_sum, windows, updated_at FROM speakers"
        " WHERE $1::text IS NULL OR model = $1 ORDER BY name",
        model,
    )
    return [_profile(r) for r in rows]


def _profile(row: asyncpg.Record) -> StoredProfile:
    return StoredProfile(
        name=row["name"],
        model=row["model"],
        embedding_sum=np.asarray(row["embedding_sum"].to_numpy(), dtype=np.float32),
        windows=row["windows"],
        updated_at=row["updated_at"],
    )
