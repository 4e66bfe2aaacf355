"""Session-wide real resources: an embedded PostgreSQL, model stand-ins, synthetic speech."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from db.embedded import start_embedded, stop_embedded
from db.migrate import apply_migrations
from db.pool import create_pool
from tests import standins
from tests.speech import SENTENCES, dialogue, speak

# What the suite takes from the environment it was started in: enough to find programs, write
# temporary files and speak a locale. Everything else (a user's DATABASE_URL, INGEST_* settings,
# hub tokens) stays out of every test and every process a test starts.
ALLOWED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR", "TZ")
# Locale and the tuning of the machine's maths libraries (some CPUs need OPENBLAS_CORETYPE).
ALLOWED_PREFIXES = ("LC_", "OPENBLAS_", "OMP_", "MKL_")
# The model hubs are never reached: the stand-ins are local.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYANNOTE_METRICS_ENABLED": "0",
}
os.environ.update(OFFLINE)


def isolated_environment() -> dict[str, str]:
    """The environment of a process a test starts: the allow-list and the offline switches."""
    kept = {k: v for k, v in os.environ.items() if k in ALLOWED or k.startswith(ALLOWED_PREFIXES)}
    return {**kept, **OFFLINE}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test runs in its own working directory, so no `.env` is read unless the test writes
    one there, with only the allowed variables in its environment."""
    keep = isolated_environment()
    for name in list(os.environ):
        if name not in keep:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def uncached_loggers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A command run in-process configures logging as a process does, which caches each logger
    on first use: every later test's `capture_logs` would then see nothing. Here loggers are
    never cached, and each test starts from structlog's defaults."""
    configure = structlog.configure

    def without_cache(**options: Any) -> None:
        configure(**{**options, "cache_logger_on_first_use": False})

    monkeypatch.setattr(structlog, "configure", without_cache)
    yield
    structlog.reset_defaults()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pg_folder() -> Path:
    """A folder for a test cluster outside pytest's temporary tree: pgserver opens the parent
    folders to its `pgserver` user, and pytest closes its own tree to everyone else whenever a
    session starts."""
    return Path(tempfile.mkdtemp(prefix="ingest-test-pg-"))


@pytest.fixture
def outside_data_dir() -> Iterator[Path]:
    """A data dir for the embedded PostgreSQL, where its user can reach it (see `pg_folder`)."""
    folder = pg_folder()
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_uri() -> Iterator[str]:
    """URI of a real PostgreSQL 16 + pgvector for the whole session."""
    folder = pg_folder()
    yield start_embedded(folder / "pgdata")
    stop_embedded(folder / "pgdata")
    shutil.rmtree(folder, ignore_errors=True)


async def _create_database(pg_uri: str, name: str) -> None:
    conn = await asyncpg.connect(pg_uri)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def create_database(pg_uri: str) -> str:
    """A new, empty database on the server; returns its URI."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await _create_database(pg_uri, name)
    return pg_uri.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture
def database_url(pg_uri: str) -> str:
    """A fresh, empty database for one test."""
    return asyncio.run(create_database(pg_uri))


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


@pytest.fixture(scope="session")
def hf_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in Whisper of `models`, its weights written in transformers' format."""
    return standins.write_whisper_transformers(tmp_path_factory.mktemp("hf") / "whisper")


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
        **isolated_environment(),
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
        # The local servers of the tests need no pacing (the default suits YouTube).
        "INGEST_YTDLP_SLEEP_REQUESTS": "0",
    }
    return env
