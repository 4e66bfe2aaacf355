"""An install without CTranslate2, faster-whisper, PyAV, yt-dlp, asyncpg, speechbrain, pyannote,
onnxruntime or torchaudio (a GPU image with torch and transformers alone): the transformers ASR
engine, voice activity, the text embedder and the GPU sampler still import and work.

One child process, where those packages look uninstalled, does it all and the tests read its
report: ~17 s of CPU, nearly all of it importing torch, transformers and sentence-transformers
(40 s on 2 busy cores)."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import standins
from tests.speech import SENTENCES, speak
from workers import vad
from workers.asr import SAMPLE_RATE, Span, detect_speech
from workers.decode import decode_audio
from workers.vad import VadRules

ABSENT = ("ctranslate2", "faster_whisper", "av", "yt_dlp", "asyncpg", "speechbrain", "pyannote",
          "onnxruntime", "torchaudio")  # fmt: skip
SPAN_TOLERANCE_S = 0.1  # the two copies of Silero differ by a window or two at the edges


@dataclass(frozen=True, slots=True)
class Report:
    """What the child process saw, in JSON's types (lists for tuples)."""

    imported_absent: list[str]  # of ABSENT, what got imported all the same
    speech: list[list[float]]
    edge_cases: list[list[list[float]]]  # no audio, less than one window, a second of silence
    torch_threads: list[int]  # before and after detecting speech
    transcript: list[list[Any]]  # start, end, text
    transcript_error: str
    clip_s: float
    engine: list[str]  # engine, reason
    refused: str  # why the faster-whisper engine, asked for, does not load
    vector_norms: list[float]
    dimension: int
    device_count: list[int]  # cuda_device_count(), torch.cuda.device_count()
    device: str  # what INGEST_DEVICE=auto resolves to
    cuda_initialized: bool
    gpus_sampled: int
    gpu_unavailable: str | None


def hide(names: Collection[str]) -> None:
    """Makes the packages look uninstalled: importing one fails, and find_spec finds nothing."""

    class Hiding(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, fullname: str, path: Any = None, target: Any = None) -> Any:
            if fullname.partition(".")[0] in names:
                return None
            return super().find_spec(fullname, path, target)

    sys.meta_path[:] = [
        Hiding if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path
    ]


def child(whisper: str, clip: str, minilm: str) -> None:
    """Runs in the child process: prints its `Report` as JSON."""
    hide(ABSENT)
    import torch

    from ingest.infrastructure.config import Settings, cuda_device_count
    from ingest.infrastructure.gpu import GpuSampler
    from ingest.infrastructure.metrics import Metrics
    from workers.embedder import EmbedderOptions, TextEmbedder

    audio = np.load(clip)
    threads = torch.get_num_threads()
    speech = detect_speech(audio)
    edges = [detect_speech(audio[:0]), detect_speech(audio[:100]),
             detect_speech(np.zeros(SAMPLE_RATE, np.float32))]  # fmt: skip
    threads_after = torch.get_num_threads()
    transcript, transcript_error = _transcribe(whisper, audio, speech)
    engine, refused = _engine_choice(whisper)
    embedder = TextEmbedder(EmbedderOptions(minilm))
    vectors = embedder.encode(["voice activity", "a GPU image without CTranslate2"])
    sampler = GpuSampler(Metrics())
    cuda: Any = torch.cuda  # partly annotated
    report = Report(
        imported_absent=sorted(name for name in sys.modules if name.partition(".")[0] in ABSENT),
        speech=[list(span) for span in speech],
        edge_cases=[[list(span) for span in spans] for spans in edges],
        torch_threads=[threads, threads_after],
        transcript=transcript,
        transcript_error=transcript_error,
        clip_s=len(audio) / SAMPLE_RATE,
        engine=engine,
        refused=refused,
        vector_norms=np.linalg.norm(vectors, axis=1).tolist(),
        dimension=embedder.dimension,
        device_count=[cuda_device_count(), cuda.device_count()],
        device=Settings(_env_file=None).resolved_device(),  # type: ignore[call-arg]
        cuda_initialized=cuda.is_initialized(),
        gpus_sampled=len(sampler.devices),
        gpu_unavailable=sampler.unavailable,
    )
    print(json.dumps(asdict(report)))


def _transcribe(whisper: str, audio: Any, speech: list[Span]) -> tuple[list[list[Any]], str]:
    """The segments, or why there are none: a failure here leaves the other reports whole."""
    from workers.asr import AsrOptions
    from workers.asr_transformers import TransformersAsrModel

    try:
        engine = TransformersAsrModel(AsrOptions(whisper, batch_size=4))
        segments = engine.transcribe(audio, speech=speech)
    except Exception as exc:
        return [], f"{type(exc).__name__}: {exc}"
    return [[s.start_s, s.end_s, s.text] for s in segments], ""


def _engine_choice(whisper: str) -> tuple[list[str], str]:
    """What `auto` picks and why; why the faster-whisper engine, asked for, does not load."""
    from ingest.infrastructure.config import Settings
    from ingest.infrastructure.models import ModelLoadError, choose_asr_engine, load_asr

    chosen = choose_asr_engine(Settings(_env_file=None, device="cpu"))  # type: ignore[call-arg]
    asked = Settings(_env_file=None, device="cpu", asr_model=whisper,  # type: ignore[call-arg]
                     asr_engine="faster-whisper")  # fmt: skip
    try:
        load_asr(asked)
    except ModelLoadError as exc:
        return [chosen.engine, chosen.reason], str(exc)
    return [chosen.engine, chosen.reason], ""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~12 s of espeak speech with pauses, decoded; as .npy, which the child reads without
    PyAV."""
    folder = tmp_path_factory.mktemp("clip")
    path = folder / "speech.npy"
    np.save(path, decode_audio(speak(folder / "speech.wav", SENTENCES[:3])))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, clip: Path, hf_whisper: Path) -> Report:
    # Imported here, not at the top: the child imports this module, and conftest imports asyncpg.
    from tests.conftest import isolated_environment

    script = "import sys, tests.test_imports as t; t.child(*sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", script, str(hf_whisper), str(clip), str(standins.minilm_path())],
        env=isolated_environment(),
        cwd=tmp_path_factory.mktemp("cwd"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return Report(**json.loads(result.stdout.strip().splitlines()[-1]))


def test_nothing_uninstalled_is_imported(report: Report) -> None:
    assert report.imported_absent == []


def test_auto_picks_the_transformers_engine_and_refuses_faster_whisper(report: Report) -> None:
    assert report.engine == ["transformers", "faster-whisper is not installed"]
    assert "cannot load ASR model" in report.refused and "faster_whisper" in report.refused


def test_the_transformers_engine_transcribes(report: Report) -> None:
    assert report.transcript_error == ""
    assert report.transcript
    previous = 0.0
    for start, end, text in report.transcript:
        assert text == "test transcript"
        assert previous <= start <= end <= report.clip_s
        previous = start


def test_voice_activity_matches_faster_whispers(report: Report, clip: Path) -> None:
    """The silero-vad package's copy of the model, on torch, cuts where faster-whisper's does
    (this process has faster-whisper)."""
    assert vad._detector() is vad._faster_whisper
    expected = detect_speech(np.load(clip))
    assert len(expected) >= 3
    assert len(report.speech) == len(expected)
    for found, wanted in zip(report.speech, expected, strict=True):
        assert abs(found[0] - wanted[0]) < SPAN_TOLERANCE_S
        assert abs(found[1] - wanted[1]) < SPAN_TOLERANCE_S
    assert report.edge_cases == [[], [], []]
    threads, after = report.torch_threads
    assert after == threads  # importing silero_vad would leave torch on one thread


@pytest.mark.parametrize("rules", [VadRules(30, 160), VadRules(2.5, 2000)])
def test_both_copies_of_silero_cut_alike(clip: Path, rules: VadRules) -> None:
    """In this process, which has both (~2 s): with a 2.5 s limit and long pauses allowed,
    the pieces are cut at the limit, by the same rule."""
    audio = np.load(clip)
    wanted = vad._faster_whisper(audio, rules)
    found = vad._silero_package(audio, rules)
    assert len(wanted) >= (8 if rules.max_speech_s < 3 else 3)
    assert len(found) == len(wanted)
    for (a, b), (c, d) in zip(found, wanted, strict=True):
        assert abs(a - c) < SPAN_TOLERANCE_S * vad.RATE and abs(b - d) < SPAN_TOLERANCE_S * vad.RATE


def test_the_embedder_embeds(report: Report) -> None:
    assert report.dimension == 384
    assert report.vector_norms == pytest.approx([1.0, 1.0], abs=1e-4)


def test_the_device_count_falls_back_to_torch(report: Report) -> None:
    count, torch_count = report.device_count
    assert count == torch_count
    assert report.device == ("cuda" if count else "cpu")
    assert not report.cuda_initialized
    if count == 0:  # a CPU machine: the sampler finds no GPU and says why
        assert report.gpus_sampled == 0 and report.gpu_unavailable
