"""GPU stage: N workers, each with its own models, turning audio into speaker-labelled chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio
import numpy as np
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.models import GpuWorker
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, TranscribedVideo
from workers.asr import Samples, duration_s, regions_of
from workers.audio import check_complete, stated_duration, too_long
from workers.chunking import ChunkingOptions, chunk_segments
from workers.decode import PcmFile, decode_to_file

log = structlog.get_logger()
P = ParamSpec("P")
R = TypeVar("R")


class StageError(Exception):
    """A video's failure inside the GPU stage, naming the step that failed."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(str(cause))
        self.step = step


@dataclass(frozen=True, slots=True)
class Decoded:
    """A video's audio decoded once (16 kHz mono), on its way to the models."""

    audio: AudioFile
    waveform: Samples  # on disk; empty when captions are the transcript and speakers are off
    timings: tuple[tuple[str, float], ...]
    duration_s: float


async def transcribe_stage(
    inbox: MemoryObjectReceiveStream[AudioFile],
    outbox: MemoryObjectSendStream[TranscribedVideo],
    *,
    workers: Sequence[GpuWorker],
    chunking: ChunkingOptions,
    ledger: Ledger,
    max_duration_s: float | None = None,
    scratch: Path | None = None,
) -> None:
    """Per GPU worker, a decoder decodes the next video while the models work on the current
    one, so the GPU never waits for the CPU; at most one decoded video waits per worker. Decoded
    audio is kept in `scratch` (the system's temporary folder when None), not in memory."""
    async with inbox, outbox, asyncio.TaskGroup() as tg:
        for models in workers:
            send, receive = anyio.create_memory_object_stream[Decoded](1)
            rules = _DecodeRules(max_duration_s, models.speakers.on, scratch)
            tg.create_task(_decoder(inbox.clone(), send, ledger, rules))
            tg.create_task(_worker(receive, outbox.clone(), models, chunking, ledger))


async def _decoder(
    inbox: MemoryObjectReceiveStream[AudioFile],
    outbox: MemoryObjectSendStream[Decoded],
    ledger: Ledger,
    rules: _DecodeRules,
) -> None:
    async with inbox, outbox:
        async for audio in inbox:
            timings = [("download", audio.download_s)]
            with (
                structlog.contextvars.bound_contextvars(
                    video_id=audio.job.video_id, stage="decode"
                ),
                ledger.metrics.in_flight.labels("decode").track_inprogress(),
            ):
                try:
                    decoded = await asyncio.to_thread(
                        _step, "decode", timings, ledger.metrics, _prepare, audio, rules
                    )
                except StageError as exc:  # one video's failure never stops the others
                    await ledger.failed(audio.job, exc.step, exc)
                    continue
                finally:
                    if audio.owned and audio.path:  # decoded once: no longer needed
                        audio.path.unlink(missing_ok=True)
            await outbox.send(Decoded(audio, decoded.waveform, tuple(timings), decoded.duration_s))


async def _worker(
    inbox: MemoryObjectReceiveStream[Decoded],
    outbox: MemoryObjectSendStream[TranscribedVideo],
    models: GpuWorker,
    chunking: ChunkingOptions,
    ledger: Ledger,
) -> None:
    async with inbox, outbox:
        async for decoded in inbox:
            job = decoded.audio.job
            with (
                structlog.contextvars.bound_contextvars(video_id=job.video_id, stage="transcribe"),
                ledger.metrics.in_flight.labels("transcribe").track_inprogress(),
            ):
                try:
                    video = await asyncio.to_thread(
                        _infer, decoded, models, chunking, ledger.metrics
                    )
                except StageError as exc:  # one video's failure never stops the others
                    await ledger.failed(job, exc.step, exc)
                    continue
            await outbox.send(video)


def _step(
    step: str,
    timings: list[tuple[str, float]],
    metrics: Metrics,
    func: Callable[P, R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Runs one blocking step, timing it and naming it if it fails."""
    started = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except Exception as exc:
        raise StageError(step, exc) from exc
    elapsed = time.perf_counter() - started
    timings.append((step, elapsed))
    metrics.latency.labels(step).observe(elapsed)
    metrics.items.labels(step, "ok").inc()
    return result


@dataclass(frozen=True, slots=True)
class _DecodeRules:
    max_duration_s: float | None
    needs_audio: bool  # captions without speakers need no waveform
    scratch: Path | None


@dataclass(frozen=True, slots=True)
class _Audio:
    waveform: Samples
    duration_s: float


def _prepare(audio: AudioFile, rules: _DecodeRules) -> _Audio:
    """The waveform, unless captions are the transcript and nothing else listens to it."""
    if audio.path is not None and (rules.needs_audio or audio.captions is None):
        waveform = _decode(audio.path, rules.max_duration_s, rules.scratch)
        return _Audio(waveform, duration_s(waveform))
    assert audio.captions is not None  # no audio is fetched without captions
    stated = audio.duration_s or (stated_duration(audio.path) if audio.path else None)
    if reason := too_long(stated, rules.max_duration_s):
        raise ValueError(reason)
    ends = max((s.end_s for s in audio.captions.segments), default=0.0)
    return _Audio(np.zeros(0, dtype=np.float32), stated or ends)


def _decode(path: Path, max_duration_s: float | None, scratch: Path | None) -> PcmFile:
    """Decodes once onto disk, after checking the stated duration; audio that ends well before
    its header says is refused rather than transcribed in part."""
    stated = stated_duration(path)
    if reason := too_long(stated, max_duration_s):
        raise ValueError(reason)
    waveform = decode_to_file(path, scratch)
    try:
        check_complete(stated, duration_s(waveform))
    except BaseException:
        waveform.close()
        raise
    return waveform


def _release(waveform: Samples) -> None:
    if isinstance(waveform, PcmFile):
        waveform.close()


def _infer(
    decoded: Decoded, models: GpuWorker, chunking: ChunkingOptions, metrics: Metrics
) -> TranscribedVideo:
    """Blocking: every model step of one video, in one thread hop; the decoded audio is freed
    here, by the thread that reads it, even when the run has stopped waiting for it."""
    try:
        return _model_steps(decoded, models, chunking, metrics)
    finally:
        _release(decoded.waveform)


def _model_steps(
    decoded: Decoded, models: GpuWorker, chunking: ChunkingOptions, metrics: Metrics
) -> TranscribedVideo:
    timings = list(decoded.timings)
    waveform = decoded.waveform
    captions = decoded.audio.captions
    # One voice-activity pass serves speech recognition, the host check and the clustering
    # diarizer.
    listens = models.speakers.on or captions is None
    speech = _step("vad", timings, metrics, models.vad, waveform) if listens else []
    regions = regions_of(speech)
    decision = _step("speaker_check", timings, metrics, models.speakers.decide, waveform, regions)
    if captions is None:
        # Word timings are only needed to split segments at a change of speaker.
        words = decision.path == "full"
        segments = _step("transcribe", timings, metrics, models.asr.transcribe, waveform,
                         words=words, speech=speech)  # fmt: skip
    else:
        segments = list(captions.segments)
    labelled = _step(
        "diarize", timings, metrics, models.speakers.label, waveform, segments, decision, regions
    )
    asr_model = models.asr.options.model if captions is None else None
    return TranscribedVideo(
        job=decoded.audio.job,
        duration_s=decoded.duration_s,
        chunks=tuple(chunk_segments(labelled, chunking)),
        asr_model=asr_model,
        timings=tuple(timings),
        speakers=decision,
        transcript_source=captions.source if captions else f"speech recognition ({asr_model})",
    )
