"""End to end on a GPU: the real backfill with real-architecture random-weight models.

Whisper is shaped like distil-large-v3 (32 encoder layers, 2 decoder layers, width 1280) with
its decoder scripted to emit 90 tokens per window, about what real speech decodes to; speakers
go through the full path (pyannote pipeline with WeSpeaker ResNet34 embeddings, ECAPA at its
real width); embeddings are MiniLM, then a 1536-d embedder (BERT-large-shaped). NVML is sampled
every second. Figures: audio hours per hour and GPU busy %, both over the steady state (from
the first video done to the last, so model loading and the first fill are left out).

Without a GPU, `--quick` runs the same code on CPU with tiny models as a smoke test (figures
reported, no target judged), and a full run reports that it was not run.

Either ASR engine can be measured, with Whisper shaped like distil-large-v3 or large-v3-turbo;
every model is built from its shape here, so no network is needed:

    python -m bench.gpu --engine transformers --shape large-v3-turbo [--quick]
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import asyncpg
import numpy as np
import typer
from rich.console import Console

from bench.database import fresh_database, server
from bench.results import Figure, show, write
from ingest.infrastructure.config import Settings, cuda_device_count
from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.logging import configure_logging
from ingest.infrastructure.metrics import Metrics
from ingest.orchestration.backfill import backfill
from tests.speech import SENTENCES, speak, wav_seconds
from tests.standins import (
    DISTIL_LARGE_V3,
    LARGE_V3_TURBO,
    TINY,
    WhisperShape,
    filler_words,
    minilm_path,
    write_diarization,
    write_sentence_embedder,
    write_voice,
    write_whisper,
    write_whisper_transformers,
)

TOKENS_PER_WINDOW = 90  # English speech: ~2.5 words/s, ~1.2 tokens a word, 30 s windows
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


@dataclass(frozen=True, slots=True)
class Models:
    asr: Path
    voice: Path
    diarization: Path
    embedders: dict[str, Path]


@dataclass(frozen=True, slots=True)
class Measured:
    audio_h_per_h: float
    busy: float | None  # mean GPU utilisation, 0..1; None without NVML
    videos: int
    audio_s: float
    window_s: float


def gpu(
    server_uri: str,
    quick: bool,
    engine: Engine = "faster-whisper",
    shape: str = "distil-large-v3",
) -> list[Figure]:
    if cuda_device_count() == 0 and not quick:
        return [
            Figure("gpu", "end-to-end on a GPU", None,
                   detail={"status": "not run: no CUDA device; see README (Benchmarks)"})
        ]  # fmt: skip
    scale = replace(SMOKE, engine=engine)
    if cuda_device_count() > 0:
        scale = replace(GPU, videos=8, video_s=120) if quick else GPU
        scale = replace(scale, engine=engine, whisper=SHAPES[shape])
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-gpu-") as tmp:
        work = Path(tmp)
        models = write_models(work / "models", scale)
        folder = write_channel(work / "channel", scale)
        figures: list[Figure] = []
        for name, embedder in models.embedders.items():
            settings = _settings(work / name, models, embedder, scale)
            measured = asyncio.run(_measure(server_uri, settings, folder, scale.videos))
            figures += _figures(name, measured, scale)
    return figures


def write_models(folder: Path, scale: Scale) -> Models:
    """Every model the run loads, random but for Whisper's scripted decoder, in the format of
    the engine measured (a transformers folder, or CTranslate2 converted from one)."""
    writer = write_whisper_transformers if scale.engine == "transformers" else write_whisper
    return Models(
        asr=writer(folder / "asr", shape=scale.whisper, script=filler_words(TOKENS_PER_WINDOW)),
        voice=write_voice(folder / "voice", channels=scale.voice_channels),
        diarization=write_diarization(folder / "diarization", wespeaker=True),
        embedders={
            "MiniLM": minilm_path(),
            "1536-d": write_sentence_embedder(
                folder / "e1536", hidden=scale.embedder_hidden, layers=scale.embedder_layers
            ),
        },
    )


def write_channel(folder: Path, scale: Scale) -> Path:
    """`scale.videos` files of speech, each `scale.video_s` long (hard links of one file)."""
    folder.mkdir(parents=True)
    speech = speak(folder.parent / "speech.wav", SENTENCES)
    repeats = math.ceil(scale.video_s / wav_seconds(speech))
    first = folder / "video-000.wav"
    subprocess.run(
        ["sox", str(speech), str(first), "repeat", str(repeats), "trim", "0", str(scale.video_s)],
        check=True,
    )
    for i in range(1, scale.videos):
        os.link(first, folder / f"video-{i:03d}.wav")
    return folder


def _settings(data_dir: Path, models: Models, embedder: Path, scale: Scale) -> Settings:
    return Settings(
        data_dir=data_dir,
        device=scale.device,
        asr_model=str(models.asr),
        asr_engine=scale.engine,
        asr_compute_type=scale.compute_type,
        asr_workers=scale.asr_workers,
        asr_batch_size=scale.asr_batch,
        voice_model=str(models.voice),
        diarization_model=str(models.diarization),
        diarization="auto",  # no host is enrolled: every video takes the full speaker path
        embedding_model=str(embedder),
        metrics_addr="",
    )


async def _measure(server_uri: str, settings: Settings, folder: Path, videos: int) -> Measured:
    settings = settings.model_copy(update={"database_url": await fresh_database(server_uri)})
    with _gpu_samples() as samples:
        result = await backfill([str(folder)], settings)
    if result.failed or result.done != videos:
        raise RuntimeError(f"the benchmark's backfill did not finish cleanly: {result}")
    assert settings.database_url is not None
    done = await _done_times(settings.database_url)
    first, last = done[0][0], done[-1][0]
    total = sum(seconds for _, seconds in done)
    window = last - first
    audio = sum(seconds for at, seconds in done if at > first)
    if window <= 0:  # all done in one flush: no steady state to see, so the whole run
        first, window, audio = last - result.elapsed_s, result.elapsed_s, total
    busy = [u for at, u in samples if first <= at <= last]
    return Measured(
        audio_h_per_h=audio / window,
        busy=float(np.mean(busy)) if busy else None,
        videos=len(done),
        audio_s=total,
        window_s=window,
    )


async def _done_times(database_url: str) -> list[tuple[float, float]]:
    """(epoch seconds done, audio seconds) of every video, in the order they were done."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM done_at)::float8 AS at, duration_s FROM videos"
            " WHERE status = 'done' ORDER BY done_at"
        )
    finally:
        await conn.close()
    return [(r["at"], r["duration_s"]) for r in rows]


@contextmanager
def _gpu_samples() -> Iterator[list[tuple[float, float]]]:
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


def _figures(name: str, measured: Measured, scale: Scale) -> list[Figure]:
    judged = scale.device == "cuda"
    detail: dict[str, float | str] = {
        "device": scale.device,
        "videos": measured.videos,
        "audio_h": round(measured.audio_s / 3600, 3),
        "steady_window_s": round(measured.window_s, 1),
        "asr_workers": scale.asr_workers,
        "asr_batch": scale.asr_batch,
        "asr_engine": scale.engine,
        "whisper_layers": f"{scale.whisper.encoder_layers}+{scale.whisper.decoder_layers}",
    }
    if not judged:
        detail["status"] = "smoke: tiny models on CPU, not a measurement"
    figures = [
        Figure("gpu", f"audio hours per hour, {name} embeddings", measured.audio_h_per_h,
               unit="x realtime", target=300.0 if judged else None, detail=detail)
    ]  # fmt: skip
    if measured.busy is not None:
        figures.append(
            Figure("gpu", f"GPU busy, {name} embeddings", measured.busy * 100, unit="%",
                   target=90.0 if judged else None, detail=detail)
        )  # fmt: skip
    return figures


def main(
    engine: Annotated[str, typer.Option(help="faster-whisper or transformers.")] = "faster-whisper",
    shape: Annotated[str, typer.Option(help=f"Whisper's shape: {', '.join(SHAPES)}.")] = (
        "distil-large-v3"
    ),
    quick: Annotated[
        bool, typer.Option(help="Fewer, shorter videos (tiny models on CPU).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = Path(
        "bench/results-gpu.json"
    ),
) -> None:
    """The end-to-end GPU benchmark on one ASR engine and Whisper shape."""
    if engine not in ("faster-whisper", "transformers") or shape not in SHAPES:
        raise typer.BadParameter(f"unknown engine {engine!r} or shape {shape!r}")
    chosen: Engine = "transformers" if engine == "transformers" else "faster-whisper"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging("warning")
    with server() as uri:
        figures = gpu(uri, quick, chosen, shape)
    show(figures, Console())
    write(figures, out)


if __name__ == "__main__":
    typer.run(main)
