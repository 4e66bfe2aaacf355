"""The GPU stage on real models: labels, and a failing diarization failing only its video."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import anyio
import asyncpg
import pytest

from ingest.infrastructure.models import GpuWorker
from ingest.infrastructure.retry import Database
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, TranscribedVideo, VideoJob
from ingest.stages.transcribe import transcribe_stage
from tests.conftest import ModelPaths, Speech
from workers.asr import AsrModel, AsrOptions, Samples
from workers.chunking import ChunkingOptions
from workers.diarization import DiarizationOptions, Diarizer, Turn
from workers.speakers import Regions, SpeakerAttributor, SpeakerOptions

pytestmark = pytest.mark.anyio


def decoded_files_open() -> list[str]:
    """The decoded-audio files this process holds open (unnamed, so shown as deleted)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [t for t in targets if t.endswith(".pcm (deleted)")]


class CrashesOnLongAudio(Diarizer):
    def diarize(self, audio: Samples, regions: Regions | None = None) -> list[Turn]:
        if len(audio) > 30 * 16000:
            raise RuntimeError("diarization crashed")
        return super().diarize(audio, regions)


@pytest.fixture(scope="module")
def asr(models: ModelPaths) -> AsrModel:
    return AsrModel(AsrOptions(str(models.asr), batch_size=4))


async def run_stage(
    files: list[AudioFile], worker: GpuWorker, ledger: Ledger, scratch: Path | None = None
) -> list[TranscribedVideo]:
    send, receive = anyio.create_memory_object_stream[AudioFile](len(files))
    out_send, out_receive = anyio.create_memory_object_stream[TranscribedVideo](len(files))
    async with out_receive:
        async with send:
            for f in files:
                await send.send(f)
        options = ChunkingOptions(target_chars=20, max_seconds=20)
        await transcribe_stage(
            receive, out_send, workers=[worker], chunking=options, ledger=ledger, scratch=scratch
        )
        return [video async for video in out_receive]


async def test_a_failing_diarization_fails_only_its_video(
    tmp_path: Path, speech: Speech, models: ModelPaths, asr: AsrModel, pool: asyncpg.Pool
) -> None:
    files = []
    for name, source in (("long", speech.long), ("short", speech.short)):
        shutil.copy(source, tmp_path / f"{name}.wav")
        files.append(AudioFile(VideoJob(name, name), tmp_path / f"{name}.wav", True, 0.0))
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO videos (id, url) VALUES ($1, $1)", [("long",), ("short",)]
        )
    diarizer = CrashesOnLongAudio(DiarizationOptions(str(models.diarization)))
    worker = GpuWorker(asr, SpeakerAttributor(SpeakerOptions(mode="always"), None, diarizer, []))
    ledger = Ledger(Database(pool), total=2)

    (video,) = await run_stage(files, worker, ledger, scratch=tmp_path / "scratch")

    assert video.job.video_id == "short"
    assert video.chunks and all(c.speaker == "SPEAKER_00" for c in video.chunks)
    assert all(0.0 <= (c.confidence or 0.0) <= 1.0 for c in video.chunks)
    assert [name for name, _ in video.timings] == [
        "download", "decode", "vad", "speaker_check", "transcribe", "diarize"
    ]  # fmt: skip
    assert list(ledger.failures.items()) == [("long", "diarize: diarization crashed")]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT error FROM videos WHERE id = 'long'") == (
            "diarize: diarization crashed"
        )
    assert not any(
        f.path and f.path.exists() for f in files
    )  # downloaded audio is removed either way
    assert decoded_files_open() == []  # and so is the decoded audio, failed or not
    assert list((tmp_path / "scratch").iterdir()) == []


async def test_no_speakers_when_diarization_is_off(
    tmp_path: Path, speech: Speech, asr: AsrModel, pool: asyncpg.Pool
) -> None:
    shutil.copy(speech.medium, tmp_path / "m.wav")
    audio = AudioFile(VideoJob("m", "m"), tmp_path / "m.wav", owned=False, download_s=0.0)
    worker = GpuWorker(asr, SpeakerAttributor(SpeakerOptions(mode="off"), None, None, []))
    (video,) = await run_stage([audio], worker, Ledger(Database(pool), total=1))
    assert video.speakers.path == "off"
    assert video.chunks and all(c.speaker is None for c in video.chunks)
    assert audio.path and audio.path.exists()  # a user's own file is kept
