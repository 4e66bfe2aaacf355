"""Session-wide real resources: an embedded PostgreSQL, model stand-ins, synthetic speech."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from db.embedded import start_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from tests import standins
from tests.speech import SENTENCES, dialogue, speak

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["PYANNOTE_METRICS_ENABLED"] = "0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URI of a real PostgreSQL 16 + pgvector for the whole session."""
    return start_embedded(tmp_path_factory.mktemp("pg") / "pgdata")


async def _create_database(pg_uri: str, name: str) -> None:
    conn = await asyncpg.connect(pg_uri)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
def database_url(pg_uri: str) -> str:
    """A fresh, empty database for one test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(pg_uri, name))
    return pg_uri.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database with every migration applied."""
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool
    finally:
        await pool.close()


@dataclass(frozen=True)
class ModelPaths:
    asr: Path
    embedding: Path
    voice: Path
    diarization: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    folder = tmp_path_factory.mktemp("models")
    return ModelPaths(
        asr=standins.write_whisper(folder / "asr"),
        embedding=standins.minilm_path(),
        voice=standins.write_voice(folder / "voice"),
        diarization=standins.write_diarization(folder / "diarization"),
    )


@dataclass(frozen=True)
class Speech:
    short: Path  # ~5 s, one voice
    medium: Path  # ~13 s, another voice
    long: Path  # ~52 s: more than one 30 s Whisper window
    dialogue: Path  # two voices taking turns, two sentences each
    host: Path  # the dialogue's first voice alone, other sentences: for enrolling


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    folder = tmp_path_factory.mktemp("speech")
    return Speech(
        short=speak(folder / "short.wav", SENTENCES[:1]),
        medium=speak(folder / "medium.wav", SENTENCES[1:4], voice="en-gb+f3", pitch=60),
        long=speak(folder / "long.wav", SENTENCES * 2, voice="en-gb-x-rp"),
        dialogue=dialogue(folder / "dialogue.wav", SENTENCES, ("en-us+m3", 35), ("en-gb+f4", 75)),
        host=speak(folder / "host.wav", SENTENCES[3:], voice="en-us+m3", pitch=35),
    )


@pytest.fixture
def ingest_env(database_url: str, models: ModelPaths, tmp_path: Path) -> dict[str, str]:
    """Environment for an `ingest` process on the test database and the stand-in models."""
    env: dict[str, str] = {
        **os.environ,
        "DATABASE_URL": database_url,
        "INGEST_DATA_DIR": str(tmp_path / "data"),
        "INGEST_DEVICE": "cpu",
        "INGEST_ASR_MODEL": str(models.asr),
        "INGEST_EMBEDDING_MODEL": str(models.embedding),
        "INGEST_VOICE_MODEL": str(models.voice),
        "INGEST_DIARIZATION_MODEL": str(models.diarization),
        "INGEST_DOWNLOAD_WORKERS": "4",
        "INGEST_EMBED_FLUSH_SECONDS": "0.5",
        "INGEST_METRICS_ADDR": "",
        "INGEST_METRICS_SAMPLE_SECONDS": "0.5",
    }
    return env
