"""Speech recognition alone: the ASR engine and voice activity over speech, nothing else.

The model steps of the pipeline's GPU stage without the speaker models, the embedders or the
database, to tell whether Whisper alone keeps up. Every ASR worker's model is loaded and warmed
up first; then the workers transcribe their shares of the videos at the same time, as the
pipeline's workers do, and only that stretch is timed. The scales, the speech and the NVML
sampling are shared with the end-to-end benchmark (`bench.gpu`).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from bench.results import Figure
from ingest.infrastructure.config import cuda_device_count
from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.metrics import Metrics
from tests.speech import SENTENCES, speak, wav_seconds
from tests.standins import (
    DISTIL_LARGE_V3,
    LARGE_V3_TURBO,
    TINY,
    WhisperShape,
    filler_words,
    write_whisper,
    write_whisper_transformers,
)
from workers.asr import (
    SAMPLE_RATE,
    AsrModel,
    AsrOptions,
    SpeechRecognizer,
    Waveform,
    detect_speech,
)
from workers.decode import decode_audio

TOKENS_PER_WINDOW = 90  # English speech: ~2.5 words/s, ~1.2 tokens a word, 30 s windows
WARM_UP_S = 30  # one Whisper window per worker before the clock starts
TARGET = 300.0  # audio hours per hour the whole run must reach, so ASR alone at least as much
Engine = Literal["faster-whisper", "transformers"]
SHAPES = {"distil-large-v3": DISTIL_LARGE_V3, "large-v3-turbo": LARGE_V3_TURBO}


@dataclass(frozen=True, slots=True)
class Scale:
    device: Literal["cpu", "cuda"]
    videos: int
    video_s: float
    whisper: WhisperShape
    compute_type: str
    asr_workers: int
    asr_batch: int
    voice_channels: int
    embedder_hidden: int
    embedder_layers: int
    engine: Engine = "faster-whisper"


GPU = Scale("cuda", videos=64, video_s=600, whisper=DISTIL_LARGE_V3, compute_type="float16",
            asr_workers=4, asr_batch=16, voice_channels=1024, embedder_hidden=1024,
            embedder_layers=24)  # fmt: skip
SMOKE = Scale("cpu", videos=3, video_s=20, whisper=TINY, compute_type="int8", asr_workers=1,
              asr_batch=4, voice_channels=256, embedder_hidden=128, embedder_layers=2)  # fmt: skip


def scale_for(quick: bool, engine: Engine, shape: str) -> Scale | None:
    """The GPU scale (fewer, shorter videos when quick); on a machine without CUDA the tiny
    smoke scale when quick, else None: there is nothing to measure."""
    if cuda_device_count() == 0:
        return replace(SMOKE, engine=engine) if quick else None
    scale = replace(GPU, videos=8, video_s=120) if quick else GPU
    return replace(scale, engine=engine, whisper=SHAPES[shape])


def not_run(name: str) -> list[Figure]:
    status = "not run: no CUDA device; see README (Benchmarks)"
    return [Figure("gpu", f"{name} on a GPU", None, detail={"status": status})]


def write_asr(folder: Path, scale: Scale) -> Path:
    """Whisper of the scale's shape, random but for a decoder scripted to emit as many tokens
    per window as speech does, in the engine's format (transformers, or CTranslate2)."""
    writer = write_whisper_transformers if scale.engine == "transformers" else write_whisper
    return writer(folder, shape=scale.whisper, script=filler_words(TOKENS_PER_WINDOW))


def write_speech(out: Path, seconds: float) -> Path:
    """One WAV of spoken sentences, repeated to `seconds` long."""
    speech = speak(out.with_suffix(".sentences.wav"), SENTENCES)
    repeats = math.ceil(seconds / wav_seconds(speech))
    subprocess.run(
        ["sox", str(speech), str(out), "repeat", str(repeats), "trim", "0", str(seconds)],
        check=True,
    )
    return out


def write_channel(folder: Path, scale: Scale) -> Path:
    """`scale.videos` files of speech, each `scale.video_s` long (hard links of one file)."""
    folder.mkdir(parents=True)
    first = write_speech(folder.parent / "video.wav", scale.video_s)
    for i in range(scale.videos):
        os.link(first, folder / f"video-{i:03d}.wav")
    return folder


@contextmanager
def gpu_samples() -> Iterator[list[tuple[float, float]]]:
    """(epoch seconds, utilisation 0..1 of GPU 0), once a second, while the block runs."""
    samples: list[tuple[float, float]] = []
    sampler = GpuSampler(Metrics())
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            readings = sampler.read()
            if readings and (busy := readings[0].utilization) is not None:  # None on MIG
                samples.append((time.time(), busy))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        sampler.close()


@dataclass(frozen=True, slots=True)
class AsrRun:
    audio_s: float
    wall_s: float
    vad_s: float  # summed over the workers, as are asr_s and segments
    asr_s: float
    segments: int
    busy: float | None  # mean GPU utilisation over the timed stretch; None without NVML


def asr_only(
    quick: bool, engine: Engine = "faster-whisper", shape: str = "distil-large-v3"
) -> list[Figure]:
    scale = scale_for(quick, engine, shape)
    if scale is None:
        return not_run("ASR only")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-asr-") as tmp:
        model = write_asr(Path(tmp) / "asr", scale)
        run = measure_asr(model, write_speech(Path(tmp) / "video.wav", scale.video_s), scale)
    return asr_figures(run, scale)


def measure_asr(model: Path, video: Path, scale: Scale) -> AsrRun:
    audio = decode_audio(video)
    engines = [load_engine(model, scale, worker) for worker in range(scale.asr_workers)]
    for engine in engines:
        _transcribe(engine, audio[: WARM_UP_S * SAMPLE_RATE])

    def share(worker: int) -> list[tuple[float, float, int]]:
        return [_transcribe(engines[worker], audio)
                for _ in range(worker, scale.videos, len(engines))]  # fmt: skip

    with gpu_samples() as samples, ThreadPoolExecutor(len(engines)) as pool:
        started = time.time()
        done = list(pool.map(share, range(len(engines))))
        wall = time.time() - started
    steps = [step for worker in done for step in worker]
    busy = [u for at, u in samples if at >= started]
    return AsrRun(
        audio_s=scale.videos * len(audio) / SAMPLE_RATE,
        wall_s=wall,
        vad_s=sum(vad for vad, _, _ in steps),
        asr_s=sum(asr for _, asr, _ in steps),
        segments=sum(n for _, _, n in steps),
        busy=float(np.mean(busy)) if busy else None,
    )


def load_engine(model: Path, scale: Scale, worker: int) -> SpeechRecognizer:
    """The engine as the pipeline's worker `worker` has it, spread over the visible GPUs."""
    gpus = max(1, cuda_device_count()) if scale.device == "cuda" else 1
    options = AsrOptions(str(model), device=scale.device, compute_type=scale.compute_type,
                         batch_size=scale.asr_batch, device_index=worker % gpus)  # fmt: skip
    if scale.engine == "transformers":
        from workers.asr_transformers import TransformersAsrModel

        return TransformersAsrModel(options)
    return AsrModel(options)


def _transcribe(engine: SpeechRecognizer, audio: Waveform) -> tuple[float, float, int]:
    """One video as the GPU stage takes it without speakers: voice activity, then Whisper on
    the speech found. Seconds of each, and the segments."""
    started = time.perf_counter()
    speech = detect_speech(audio)
    heard = time.perf_counter()
    segments = engine.transcribe(audio, speech=speech)
    return heard - started, time.perf_counter() - heard, len(segments)


def asr_figures(run: AsrRun, scale: Scale) -> list[Figure]:
    if run.segments == 0:
        raise RuntimeError("ASR found no speech to transcribe: the measurement means nothing")
    judged = scale.device == "cuda"
    detail: dict[str, float | str] = {
        "device": scale.device,
        "videos": scale.videos,
        "audio_h": round(run.audio_s / 3600, 3),
        "timed_s": round(run.wall_s, 1),
        "vad_share": round(run.vad_s / (run.vad_s + run.asr_s), 3),
        "segments": run.segments,
        **scale_detail(scale),
    }
    if not judged:
        detail["status"] = "smoke: tiny models on CPU, not a measurement"
    figures = [Figure("gpu", "ASR only (VAD + Whisper): audio hours per hour",
                      run.audio_s / run.wall_s, unit="x realtime",
                      target=TARGET if judged else None, detail=detail)]  # fmt: skip
    if run.busy is not None:
        figures.append(Figure("gpu", "ASR only: GPU busy", run.busy * 100, unit="%",
                              detail=detail))  # fmt: skip
    return figures


def scale_detail(scale: Scale) -> dict[str, float | str]:
    return {
        "asr_workers": scale.asr_workers,
        "asr_batch": scale.asr_batch,
        "asr_engine": scale.engine,
        "whisper_layers": f"{scale.whisper.encoder_layers}+{scale.whisper.decoder_layers}",
    }
