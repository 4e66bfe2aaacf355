"""Both ASR engines on the same random-weight Whisper, in its two on-disk formats: the timed
segments and words they give, which engine `auto` picks, and a backfill on the torch engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from ingest.infrastructure.config import Settings
from ingest.infrastructure.models import AsrEngineChoice, choose_asr_engine, load_asr
from tests import standins
from tests.conftest import ModelPaths, Speech
from workers.asr import AsrModel, AsrOptions, duration_s
from workers.asr_transformers import TransformersAsrModel
from workers.chunking import Segment
from workers.cuda_libs import CudaLibrary
from workers.decode import decode_audio


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standins.write_whisper_transformers(tmp_path_factory.mktemp("hf") / "whisper")


def check_timing(segments: list[Segment], end: float, words: bool) -> None:
    """In time order, inside the audio, words inside their segments."""
    assert segments and all(s.text == "test transcript" for s in segments)
    previous = 0.0
    for segment in segments:
        assert previous <= segment.start_s <= segment.end_s <= end
        previous = segment.start_s
        assert bool(segment.words) == words
        at = segment.start_s
        for word in segment.words:
            assert at <= word.start_s <= word.end_s <= segment.end_s
            at = word.end_s
        assert "".join(w.text for w in segment.words).strip() == (segment.text if words else "")


@pytest.mark.parametrize("words", [True, False])
def test_both_engines_give_timed_segments_and_words(
    hf_whisper: Path, models: ModelPaths, speech: Speech, words: bool
) -> None:
    audio = decode_audio(speech.long)  # longer than one 30 s window
    end = duration_s(audio)
    torch_engine = TransformersAsrModel(AsrOptions(str(hf_whisper), batch_size=4))
    ct2_engine = AsrModel(AsrOptions(str(models.asr), batch_size=4))
    for engine in (torch_engine, ct2_engine):
        segments = engine.transcribe(audio, words=words)
        check_timing(segments, end, words)
        assert len(segments) >= 2
    assert torch_engine.transcribe(audio[:0]) == []


def test_the_torch_engine_refuses_a_ctranslate2_folder(models: ModelPaths) -> None:
    with pytest.raises(ValueError, match="CTranslate2 folder"):
        TransformersAsrModel(AsrOptions(str(models.asr)))


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_auto_picks_faster_whisper_where_ctranslate2_runs(
    hf_whisper: Path, models: ModelPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert choose_asr_engine(settings(device="cpu", asr_model=str(models.asr))) == (
        AsrEngineChoice("faster-whisper", "CTranslate2 runs on the CPU")
    )
    chosen = choose_asr_engine(settings(device="cpu", asr_model=str(hf_whisper)))
    assert chosen.engine == "transformers" and "transformers folder" in chosen.reason
    explicit = choose_asr_engine(settings(device="cpu", asr_engine="transformers"))
    assert explicit == AsrEngineChoice("transformers", "INGEST_ASR_ENGINE=transformers")

    monkeypatch.setattr("ingest.infrastructure.models.cuda_device_count", lambda: 0)
    on_gpu = choose_asr_engine(settings(device="cuda", asr_model="distil-large-v3"))
    assert on_gpu == AsrEngineChoice("transformers", "CTranslate2 sees no CUDA device")


def test_auto_avoids_ctranslate2_without_its_cuda_libraries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = CudaLibrary("cuBLAS 12", "system", True, ("libcublas.so.12",))
    missing = CudaLibrary("cuDNN 9", None, error="pip install nvidia-cudnn-cu12==9.*")
    monkeypatch.setattr("ingest.infrastructure.models.cuda_device_count", lambda: 2)
    monkeypatch.setattr("workers.cuda_libs.preload_cuda_libraries", lambda: (found, missing))
    chosen = choose_asr_engine(settings(device="cuda", asr_model="large-v3-turbo"))
    assert chosen.engine == "transformers" and "cuDNN 9 missing" in chosen.reason
    monkeypatch.setattr("workers.cuda_libs.preload_cuda_libraries", lambda: (found,))
    chosen = choose_asr_engine(settings(device="cuda", asr_model="large-v3-turbo"))
    assert chosen == AsrEngineChoice("faster-whisper", "CTranslate2 sees 2 CUDA device(s)")


def test_load_asr_loads_the_chosen_engine(hf_whisper: Path) -> None:
    with capture_logs() as logs:
        loaded = load_asr(settings(device="cpu", asr_model=str(hf_whisper)))
    assert isinstance(loaded, TransformersAsrModel)
    assert [e["event"] for e in logs] == ["model_loading", "model_loaded"]


def backfill(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest", "backfill", str(folder)], env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


@pytest.mark.anyio
async def test_backfill_on_the_transformers_engine(
    hf_whisper: Path, ingest_env: dict[str, str], speech: Speech, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "channel"
    folder.mkdir()
    for path in (speech.short, speech.long):
        shutil.copy(path, folder / path.name)
    env = {**ingest_env, "INGEST_ASR_ENGINE": "transformers", "INGEST_ASR_MODEL": str(hf_whisper),
           "INGEST_DIARIZATION": "off", "INGEST_LOG_FORMAT": "json"}  # fmt: skip
    run = backfill(env, folder)
    assert run.returncode == 0, run.stderr
    assert "2 done, 0 failed of 2 videos" in run.stdout
    chosen = [line for line in run.stderr.splitlines() if "asr_engine_chosen" in line]
    assert len(chosen) == 1 and '"engine": "transformers"' in chosen[0]
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT video_id, start_s, end_s, text FROM segments ORDER BY 1, 2")
        durations = dict(await conn.fetch("SELECT id, duration_s FROM videos"))
    finally:
        await conn.close()
    assert {row["video_id"] for row in rows} == set(durations)
    assert all("test transcript" in row["text"] for row in rows)
    assert all(0 <= row["start_s"] <= row["end_s"] <= durations[row["video_id"]] for row in rows)
