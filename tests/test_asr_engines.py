"""Both ASR engines on the same random-weight Whisper, in its two on-disk formats: the same
timed segments and words from both, the torch engine's word alignment against CTranslate2's,
which engine `auto` picks, and a backfill on the torch engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from structlog.testing import capture_logs

from ingest.infrastructure.config import Settings
from ingest.infrastructure.models import AsrEngineChoice, choose_asr_engine, load_asr
from tests import standins
from tests.conftest import ModelPaths, Speech
from workers.asr import SAMPLE_RATE, AsrModel, AsrOptions, detect_speech, duration_s
from workers.asr_transformers import TransformersAsrModel
from workers.chunking import Segment
from workers.cuda_libs import CudaLibrary
from workers.decode import decode_audio


@pytest.fixture(scope="module")
def torch_engine(hf_whisper: Path) -> TransformersAsrModel:
    return TransformersAsrModel(AsrOptions(str(hf_whisper), batch_size=4))


@pytest.fixture(scope="module")
def ct2_engine(models: ModelPaths) -> AsrModel:
    """Full precision, as the torch engine runs on a CPU: int8 would move the cross-attention
    the word timings come from."""
    return AsrModel(AsrOptions(str(models.asr), batch_size=4, compute_type="float32"))


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


def check_same(ours: list[Segment], theirs: list[Segment], within: float = 0.1) -> None:
    assert [s.text for s in ours] == [s.text for s in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.start_s == pytest.approx(other.start_s, abs=within)
        assert mine.end_s == pytest.approx(other.end_s, abs=within)
        assert [w.text for w in mine.words] == [w.text for w in other.words]
        for word, twin in zip(mine.words, other.words, strict=True):
            assert (word.start_s, word.end_s) == pytest.approx(
                (twin.start_s, twin.end_s), abs=within
            )


@pytest.mark.parametrize("words", [True, False])
def test_both_engines_give_the_same_segments_and_words(
    torch_engine: TransformersAsrModel, ct2_engine: AsrModel, speech: Speech, words: bool
) -> None:
    """The same weights hear the same clips of the same speech: the segments and word times
    agree within 0.1 s. The stand-in's scripted decoder makes both engines emit the same
    tokens; its random cross-attention, warped the same way, gives the word times (what the
    alignment itself does is checked on forced tokens below). ~10 s."""
    audio = decode_audio(speech.long)  # longer than one 30 s window
    end = duration_s(audio)
    speech_found = detect_speech(audio)
    ours = torch_engine.transcribe(audio, words=words, speech=speech_found)
    theirs = ct2_engine.transcribe(audio, words=words, speech=speech_found)
    for segments in (ours, theirs):
        check_timing(segments, end, words)
        assert len(segments) >= 2
    check_same(ours, theirs)
    assert torch_engine.transcribe(audio[:0]) == []
    assert torch_engine.transcribe(np.zeros(5 * SAMPLE_RATE, dtype=np.float32)) == []


def test_the_alignment_matches_ctranslate2s_on_forced_tokens(
    torch_engine: TransformersAsrModel, ct2_engine: AsrModel, speech: Speech
) -> None:
    """The word-timing alignment alone, on the same features and the same forced text (more
    tokens than the script emits): the torch engine's warping path and token probabilities
    against CTranslate2's `align`, which faster-whisper's words come from. The texts are of
    one length, as CTranslate2 smooths a batch's rows padded to its longest. ~3 s."""
    import ctranslate2
    import torch

    audio = decode_audio(speech.long)
    clips = [(0.5, 20.5), (21.0, 45.0)]
    features = torch_engine._features(audio, clips)
    start = torch_engine._start_sequence("en")
    with torch.inference_mode():
        hidden = torch_engine._model.model.encoder(features).last_hidden_state
    text = standins.filler_words(40)
    texts, frames = [text, text[::-1]], [2000, 2400]
    ours = torch_engine._aligner.align(hidden, start, texts, frames)
    storage = ctranslate2.StorageView.from_array(features.numpy())
    theirs = ct2_engine._model.model.align(storage, start, texts, frames)
    for mine, other in zip(ours, theirs, strict=True):
        assert len(jump_times(mine.alignments)) == len(text) + 1
        assert jump_times(mine.alignments) == pytest.approx(jump_times(other.alignments), abs=0.02)
        assert mine.text_token_probs == pytest.approx(other.text_token_probs, rel=0.01)


def jump_times(path: list[tuple[int, int]]) -> list[float]:
    """When the path enters each text row, in seconds: what faster-whisper reads of it."""
    rows = np.array([i for i, _ in path])
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    times: list[float] = (np.array([j for _, j in path])[jumps] / 50).tolist()
    return times


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
