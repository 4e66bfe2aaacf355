"""Voice profiles: enrolling a speaker from audio, and handing the profiles to the workers."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

from db.speakers import StoredProfile, add_to_profile, list_profiles
from ingest.infrastructure.config import Settings
from ingest.infrastructure.database import open_database
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.models import load_voice
from ingest.stages.download import Downloader, DownloadOptions
from ingest.stages.messages import VideoJob
from workers.asr import speech_regions
from workers.decode import decode_to_file
from workers.speakers import VoiceProfile, spread_windows
from workers.voice import VoiceEncoder, cut, normalize

ENROLL_WINDOWS = 64  # per input: enough to average out words, few enough to stay quick
ENROLL_WINDOW_S = 3.0


class EnrollError(Exception):
    """An input to `ingest enroll` could not be used; nothing was stored."""


@dataclass(frozen=True, slots=True)
class Enrolled:
    profile: StoredProfile
    added_windows: int


async def load_profiles(conn: asyncpg.Connection, voice_model: str) -> list[VoiceProfile]:
    return [
        VoiceProfile(p.name, normalize(p.embedding_sum), p.windows)
        for p in await list_profiles(conn, voice_model)
    ]


def _audio_of(source: str, workdir: Path, socket_timeout: float) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if "://" not in source:
        raise EnrollError(f"{source}: neither an audio file nor a URL")
    downloader = Downloader(DownloadOptions(workdir, workers=1, socket_timeout=socket_timeout))
    try:
        fetched = downloader.download(VideoJob(source, source))
        assert fetched.path is not None  # captions are off: the audio is always fetched
        return fetched.path
    finally:
        downloader.close()


def _window_sum(
    voice: VoiceEncoder, source: str, workdir: Path, timeout: float
) -> tuple[np.ndarray, int]:
    try:
        audio = decode_to_file(_audio_of(source, workdir, timeout), workdir)
    except EnrollError:
        raise
    except Exception as exc:
        raise EnrollError(f"{source}: {describe_error(exc)}") from exc
    with contextlib.closing(audio):
        windows = spread_windows(speech_regions(audio), ENROLL_WINDOWS, ENROLL_WINDOW_S)
        if not windows:
            raise EnrollError(f"{source}: no speech found")
        vectors = voice.embed(cut(audio, windows))
    return np.asarray(vectors.sum(axis=0), dtype=np.float32), len(vectors)


def _embed_all(
    voice: VoiceEncoder, sources: Sequence[str], timeout: float
) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="ingest-enroll-") as workdir:
        sums = [_window_sum(voice, s, Path(workdir), timeout) for s in sources]
    return np.sum([s for s, _ in sums], axis=0).astype(np.float32), sum(n for _, n in sums)


async def enroll(name: str, sources: Sequence[str], settings: Settings) -> Enrolled:
    """Adds the speech of every source to the profile `name`, or nothing if any source fails."""
    voice = await asyncio.to_thread(load_voice, settings)
    total, windows = await asyncio.to_thread(
        _embed_all, voice, sources, settings.download_socket_timeout
    )
    async with open_database(settings) as pool, pool.acquire() as conn:
        profile = await add_to_profile(conn, name, voice.name, total, windows)
    return Enrolled(profile, windows)


async def profiles(settings: Settings) -> list[StoredProfile]:
    async with open_database(settings) as pool, pool.acquire() as conn:
        return await list_profiles(conn)
