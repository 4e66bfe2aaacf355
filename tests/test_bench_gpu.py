"""The GPU benchmark's modes on CPU: ASR alone loads nothing but the ASR engine and voice
activity, and the end-to-end run takes the speaker path that is installed. (Its end-to-end smoke
run is part of `test_bench`.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu, gpu_asr
from bench.gpu import Models, SpeakerKind, SpeakerPath, choose_speakers
from bench.gpu_asr import SMOKE, AsrRun, asr_figures, asr_only
from ingest.infrastructure.models import choose_diarizer
from tests.conftest import isolated_environment

# What the ASR-only run must not import: the database side and every other model's package.
NOT_FOR_ASR = ("asyncpg", "pgserver", "db", "bench.database", "ingest.orchestration",
               "pyannote", "speechbrain", "sentence_transformers", "lightning",
               "workers.voice", "workers.diarization", "workers.embedder")  # fmt: skip
# What importing the benchmark must not need: each is imported when a mode uses it.
NOT_ON_IMPORT = ("asyncpg", "ctranslate2", "av", "pyannote", "speechbrain", "torch")
RUN = """
import json, sys, typer
from bench.gpu import main

def loaded(names):
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in sys.modules)]

on_import = loaded({on_import!r})
try:
    typer.run(main)
except SystemExit as stop:
    code = stop.code
print(json.dumps({{"code": code, "on_import": on_import, "after": loaded({after!r})}}))
"""


def test_asr_only_runs_the_engine_without_the_database_or_other_models(tmp_path: Path) -> None:
    """About 15 s of CPU: the tiny Whisper is written, loaded and run over 3 videos of 20 s."""
    out = tmp_path / "asr.json"
    script = RUN.format(on_import=NOT_ON_IMPORT, after=NOT_FOR_ASR)
    env = {**isolated_environment(), "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/nothing"}
    result = subprocess.run(
        [sys.executable, "-c", script, "--asr-only", "--quick", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "on_import": [], "after": []}, result.stderr
    figures = json.loads(out.read_text())
    assert [f["name"] for f in figures] == ["ASR only (VAD + Whisper): audio hours per hour"]
    figure = figures[0]
    assert figure["value"] > 0 and figure["unit"] == "x realtime"
    assert figure["detail"]["videos"] == SMOKE.videos and figure["detail"]["segments"] > 0
    assert 0 < figure["detail"]["vad_share"] < 1


def test_without_cuda_only_the_quick_run_measures_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpu_asr, "cuda_device_count", lambda: 0)
    [figure] = asr_only(quick=False)
    assert figure.name == "ASR only on a GPU" and figure.value is None
    assert str(figure.detail["status"]).startswith("not run: no CUDA device")
    [figure] = gpu.gpu("postgresql://nowhere", quick=False)
    assert figure.name == "end-to-end on a GPU" and figure.value is None


def test_an_asr_run_that_heard_nothing_is_no_measurement() -> None:
    silent = AsrRun(audio_s=60, wall_s=1, vad_s=0.1, asr_s=0.9, segments=0, busy=None)
    with pytest.raises(RuntimeError, match="no speech"):
        asr_figures(silent, SMOKE)
    [figure] = asr_figures(AsrRun(60, 2, 0.5, 1.5, segments=3, busy=None), SMOKE)
    assert figure.value == 30 and figure.detail["vad_share"] == 0.25


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    monkeypatch.setattr(gpu, "_installed", lambda module: module not in missing)


def test_the_speaker_path_is_the_one_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_speakers().kind == "pyannote"
    _without(monkeypatch, "pyannote.audio")
    assert choose_speakers() == SpeakerPath(
        "ecapa", "pyannote.audio is not installed: ECAPA clustering"
    )
    _without(monkeypatch, "speechbrain")
    off = choose_speakers()
    assert off.kind == "off" and "speechbrain is not installed" in off.reason
    assert choose_speakers("off").kind == "off"


def test_a_speaker_path_asked_for_but_not_installed_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "pyannote.audio")
    assert choose_speakers("ecapa").kind == "ecapa"
    with pytest.raises(ValueError, match=r"--speakers pyannote cannot run: pyannote\.audio is not"):
        choose_speakers("pyannote")
    _without(monkeypatch, "speechbrain")
    with pytest.raises(ValueError, match="--speakers ecapa cannot run: speechbrain is not"):
        choose_speakers("ecapa")


def _models(tmp_path: Path, speakers: SpeakerPath) -> Models:
    voice = tmp_path / "voice" if speakers.kind != "off" else None
    diarization = tmp_path / "diarization" if speakers.kind == "pyannote" else None
    return Models(tmp_path / "asr", {"MiniLM": tmp_path / "e"}, speakers, voice, diarization)


@pytest.mark.parametrize("kind", ["pyannote", "ecapa", "off"])
def test_the_run_loads_the_chosen_speaker_path(tmp_path: Path, kind: SpeakerKind) -> None:
    models = _models(tmp_path, SpeakerPath(kind, "chosen"))
    settings = gpu._settings(tmp_path / "data", models, tmp_path / "e", SMOKE)
    assert choose_diarizer(settings).kind == kind
    if kind == "pyannote":
        assert settings.diarization_model == str(tmp_path / "diarization")
    if kind != "off":
        assert settings.voice_model == str(tmp_path / "voice")


def test_pyannote_models_that_cannot_be_built_give_way_to_ecapa(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def missing(*args: object, **kwargs: object) -> Path:
        raise ImportError("No module named 'lightning'")

    for writer in ("write_voice", "write_sentence_embedder", "write_asr"):
        monkeypatch.setattr(gpu, writer, lambda folder, *a, **k: folder)
    monkeypatch.setattr(gpu, "write_diarization", missing)
    models = gpu.write_models(tmp_path, SMOKE, SpeakerPath("pyannote", "installed"))
    assert models.speakers.kind == "ecapa" and "lightning" in models.speakers.reason
    assert models.diarization is None and models.voice == tmp_path / "voice"
    with pytest.raises(ImportError):
        gpu.write_models(tmp_path, SMOKE, SpeakerPath("pyannote", "asked", explicit=True))
