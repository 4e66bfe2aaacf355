"""End to end on a GPU: the real backfill with real-architecture random-weight models.

Whisper is shaped like distil-large-v3 (32 encoder layers, 2 decoder layers, width 1280) with
its decoder scripted to emit 90 tokens per window, about what real speech decodes to; speakers
go through the full path (pyannote pipeline with WeSpeaker ResNet34 embeddings, ECAPA at its
real width); embeddings are MiniLM, then a 1536-d embedder (BERT-large-shaped). NVML is sampled
every second. Figures: audio hours per hour and GPU busy %, both over the steady state (from
the first video done to the last, so model loading and the first fill are left out).

The speaker path is the one installed: pyannote with ECAPA beside it, else ECAPA clustering
alone, else none (said in a line on stderr and in each figure's details).

Without a GPU, `--quick` runs the same code on CPU with tiny models as a smoke test (figures
reported, no target judged), and a full run reports that it was not run.

Either ASR engine can be measured, with Whisper shaped like distil-large-v3 or large-v3-turbo;
`--asr-only` measures it alone (`bench.gpu_asr`: no database, no other model). Every model is
built from its shape here, so no network is needed:

    python -m bench.gpu --engine transformers --shape large-v3-turbo [--asr-only] [--quick]
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import typer
from rich.console import Console

from bench.gpu_asr import (
    SHAPES,
    TARGET,
    Engine,
    Scale,
    asr_only,
    gpu_samples,
    not_run,
    scale_detail,
    scale_for,
    write_asr,
    write_channel,
)
from bench.results import Figure, show, write
from ingest.infrastructure.config import DiarizerKind, Settings
from ingest.infrastructure.logging import configure_logging
from tests.standins import minilm_path, write_diarization, write_sentence_embedder, write_voice

if TYPE_CHECKING:
    from ingest.orchestration.backfill import BackfillResult

SpeakerKind = Literal["pyannote", "ecapa", "off"]
SPEAKER_CHOICES = ("auto", "pyannote", "ecapa", "off")


@dataclass(frozen=True, slots=True)
class SpeakerPath:
    """Which speaker models the run loads, and why."""

    kind: SpeakerKind
    reason: str
    explicit: bool = False  # asked for by --speakers: a model that cannot be built is fatal


@dataclass(frozen=True, slots=True)
class Models:
    asr: Path
    embedders: dict[str, Path]
    speakers: SpeakerPath
    voice: Path | None = None  # None when the run has no speakers
    diarization: Path | None = None  # the pyannote pipeline, when it is the diarizer


@dataclass(frozen=True, slots=True)
class Measured:
    audio_h_per_h: float
    busy: float | None  # mean GPU utilisation, 0..1; None without NVML
    videos: int
    audio_s: float
    window_s: float


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def choose_speakers(asked: str = "auto") -> SpeakerPath:
    """pyannote when it is installed (the pipeline loads the ECAPA voice model beside it), else
    clustering ECAPA voice embeddings; without speechbrain no voice model, so no speakers."""
    if asked == "off":
        return SpeakerPath("off", "--speakers off", explicit=True)
    explicit = asked != "auto"
    if not _installed("speechbrain"):
        path = SpeakerPath("off", "speechbrain is not installed: no voice model, no speakers")
    elif asked == "ecapa":
        path = SpeakerPath("ecapa", "--speakers ecapa", explicit)
    elif not _installed("pyannote.audio"):
        path = SpeakerPath("ecapa", "pyannote.audio is not installed: ECAPA clustering")
    else:
        path = SpeakerPath("pyannote", "pyannote.audio is installed", explicit)
    if explicit and path.kind != asked:
        raise ValueError(f"--speakers {asked} cannot run: {path.reason}")
    return path


def gpu(
    server_uri: str,
    quick: bool,
    engine: Engine = "faster-whisper",
    shape: str = "distil-large-v3",
    speakers: SpeakerPath | None = None,
) -> list[Figure]:
    scale = scale_for(quick, engine, shape)
    if scale is None:
        return not_run("end-to-end")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-gpu-") as tmp:
        work = Path(tmp)
        models = write_models(work / "models", scale, speakers or choose_speakers())
        Console(stderr=True).print(
            f"gpu: speakers: {models.speakers.kind} ({models.speakers.reason})"
        )
        folder = write_channel(work / "channel", scale)
        figures: list[Figure] = []
        for name, embedder in models.embedders.items():
            settings = _settings(work / name, models, embedder, scale)
            measured = asyncio.run(_measure(server_uri, settings, folder, scale.videos))
            figures += _figures(name, measured, scale, models.speakers)
    return figures


def write_models(folder: Path, scale: Scale, speakers: SpeakerPath) -> Models:
    """Every model the run loads, random but for Whisper's scripted decoder."""
    voice = None
    if speakers.kind != "off":
        voice = write_voice(folder / "voice", channels=scale.voice_channels)
    diarization = None
    if speakers.kind == "pyannote":
        try:
            diarization = write_diarization(folder / "diarization", wespeaker=True)
        except ImportError as exc:  # pyannote imports, but a package its models need does not
            if speakers.explicit:
                raise
            speakers = SpeakerPath("ecapa", f"pyannote's models cannot be built: {exc}")
    embedders = {
        "MiniLM": minilm_path(),
        "1536-d": write_sentence_embedder(
            folder / "e1536", hidden=scale.embedder_hidden, layers=scale.embedder_layers
        ),
    }
    asr = write_asr(folder / "asr", scale)
    return Models(asr, embedders, speakers, voice, diarization)


def _settings(data_dir: Path, models: Models, embedder: Path, scale: Scale) -> Settings:
    diarizer: DiarizerKind = "pyannote" if models.speakers.kind == "pyannote" else "ecapa"
    settings = Settings(
        data_dir=data_dir,
        device=scale.device,
        asr_model=str(models.asr),
        asr_engine=scale.engine,
        asr_compute_type=scale.compute_type,
        asr_workers=scale.asr_workers,
        asr_batch_size=scale.asr_batch,
        # No host is enrolled: with speakers on, every video takes the full speaker path.
        diarization="off" if models.speakers.kind == "off" else "auto",
        diarizer=diarizer,
        embedding_model=str(embedder),
        metrics_addr="",
    )
    paths = {"voice_model": models.voice, "diarization_model": models.diarization}
    return settings.model_copy(update={k: str(v) for k, v in paths.items() if v is not None})


async def _measure(server_uri: str, settings: Settings, folder: Path, videos: int) -> Measured:
    from bench.database import fresh_database
    from ingest.orchestration.backfill import backfill

    settings = settings.model_copy(update={"database_url": await fresh_database(server_uri)})
    with gpu_samples() as samples:
        result = await backfill([str(folder)], settings)
    if result.failed or result.done != videos:
        raise RuntimeError(f"the benchmark's backfill did not finish cleanly: {result}")
    assert settings.database_url is not None
    done = await _done_times(settings.database_url)
    return _steady(done, result, samples)


def _steady(
    done: list[tuple[float, float]], result: BackfillResult, samples: list[tuple[float, float]]
) -> Measured:
    """The figures over the steady state: from the first video done to the last."""
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
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM done_at)::float8 AS at, duration_s FROM videos"
            " WHERE status = 'done' ORDER BY done_at"
        )
    finally:
        await conn.close()
    return [(r["at"], r["duration_s"]) for r in rows]


def _figures(name: str, measured: Measured, scale: Scale, speakers: SpeakerPath) -> list[Figure]:
    judged = scale.device == "cuda"
    detail: dict[str, float | str] = {
        "device": scale.device,
        "videos": measured.videos,
        "audio_h": round(measured.audio_s / 3600, 3),
        "steady_window_s": round(measured.window_s, 1),
        **scale_detail(scale),
        "speakers": speakers.kind,
    }
    if not judged:
        detail["status"] = "smoke: tiny models on CPU, not a measurement"
    figures = [
        Figure("gpu", f"audio hours per hour, {name} embeddings", measured.audio_h_per_h,
               unit="x realtime", target=TARGET if judged else None, detail=detail)
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
    asr_only_: Annotated[
        bool,
        typer.Option(
            "--asr-only",
            help="Only the ASR engine and voice activity: no database, no other model.",
        ),
    ] = False,
    speakers: Annotated[
        str, typer.Option(help=f"Speaker path: {', '.join(SPEAKER_CHOICES)} (installed ones).")
    ] = "auto",
    quick: Annotated[
        bool, typer.Option(help="Fewer, shorter videos (tiny models on CPU).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = Path(
        "bench/results-gpu.json"
    ),
) -> None:
    """The GPU benchmark, end to end or ASR alone, on one ASR engine and Whisper shape."""
    if engine not in ("faster-whisper", "transformers") or shape not in SHAPES:
        raise typer.BadParameter(f"unknown engine {engine!r} or shape {shape!r}")
    if speakers not in SPEAKER_CHOICES:
        raise typer.BadParameter(f"unknown speaker path {speakers!r}")
    chosen: Engine = "transformers" if engine == "transformers" else "faster-whisper"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging("warning")
    if asr_only_:
        figures = asr_only(quick, chosen, shape)
    else:
        figures = _end_to_end(quick, chosen, shape, speakers)
    show(figures, Console())
    write(figures, out)


def _end_to_end(quick: bool, engine: Engine, shape: str, speakers: str) -> list[Figure]:
    from bench.database import server

    try:
        path = choose_speakers(speakers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with server() as uri:
        return gpu(uri, quick, engine, shape, path)


if __name__ == "__main__":
    typer.run(main)
