"""GPU stage: N workers, each with its own models, turning audio into speaker-labelled chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.ledger import Ledger
from ingest.messages import AudioFile, TranscribedVideo
from ingest.metrics import Metrics
from ingest.models import GpuWorker
from workers.asr import Waveform, decode_audio, duration_s, probe_duration
from workers.chunking import ChunkingOptions, chunk_segments

log = structlog.get_logger()
P = ParamSpec("P")
R = TypeVar("R")


class StageError(Exception):
    """A video's failure inside the GPU stage, naming the step that failed."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(str(cause))
        self.step = step


async def transcribe_stage(
    inbox: MemoryObjectReceiveStream[AudioFile],
    outbox: MemoryObjectSendStream[TranscribedVideo],
    *,
    workers: Sequence[GpuWorker],
    chunking: ChunkingOptions,
    ledger: Ledger,
    max_duration_s: float | None = None,
) -> None:
    """One task per GPU worker; each decodes a video once, and every model reads that waveform."""
    async with inbox, outbox, asyncio.TaskGroup() as tg:
        for models in workers:
            tg.create_task(
                _worker(inbox.clone(), outbox.clone(), models, chunking, ledger, max_duration_s)
            )


async def _worker(
    inbox: MemoryObjectReceiveStream[AudioFile],
    outbox: MemoryObjectSendStream[TranscribedVideo],
    models: GpuWorker,
    chunking: ChunkingOptions,
    ledger: Ledger,
    max_duration_s: float | None,
) -> None:
    async with inbox, outbox:
        async for audio in inbox:
            with (
                structlog.contextvars.bound_contextvars(
                    video_id=audio.job.video_id, stage="transcribe"
                ),
                ledger.metrics.in_flight.labels("transcribe").track_inprogress(),
            ):
                try:
                    video = await _process(audio, models, chunking, ledger.metrics, max_duration_s)
                except StageError as exc:  # one video's failure never stops the others
                    await ledger.failed(audio.job, exc.step, exc)
                    continue
                finally:
                    if audio.owned:
                        audio.path.unlink(missing_ok=True)
            await outbox.send(video)


async def _timed(
    step: str,
    timings: list[tuple[str, float]],
    metrics: Metrics,
    func: Callable[P, R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Runs one blocking step in a thread, timing it and naming it if it fails."""
    started = time.perf_counter()
    try:
        result = await asyncio.to_thread(func, *args, **kwargs)
    except Exception as exc:
        raise StageError(step, exc) from exc
    elapsed = time.perf_counter() - started
    timings.append((step, elapsed))
    metrics.latency.labels(step).observe(elapsed)
    metrics.items.labels(step, "ok").inc()
    return result


def _decode(path: Path, max_duration_s: float | None) -> Waveform:
    """Decodes once, after checking the stated duration: memory stays bounded."""
    stated = probe_duration(path)
    if max_duration_s and stated and stated > max_duration_s:
        raise ValueError(
            f"too long: {stated:.0f} s of audio, INGEST_MAX_DURATION is {max_duration_s:.0f} s"
        )
    return decode_audio(path)


async def _process(
    audio: AudioFile,
    models: GpuWorker,
    chunking: ChunkingOptions,
    metrics: Metrics,
    max_duration_s: float | None = None,
) -> TranscribedVideo:
    timings = [("download", audio.download_s)]
    waveform = await _timed("decode", timings, metrics, _decode, audio.path, max_duration_s)
    decision = await _timed("speaker_check", timings, metrics, models.speakers.decide, waveform)
    # Word timings are only needed to split segments at a change of speaker.
    words = decision.path == "full"
    segments = await _timed(
        "transcribe", timings, metrics, models.asr.transcribe, waveform, words=words
    )
    labelled = await _timed(
        "diarize", timings, metrics, models.speakers.label, waveform, segments, decision
    )
    return TranscribedVideo(
        job=audio.job,
        duration_s=duration_s(waveform),
        chunks=tuple(chunk_segments(labelled, chunking)),
        asr_model=models.asr.options.model,
        timings=tuple(timings),
        speakers=decision,
    )
