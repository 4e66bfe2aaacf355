"""GPU stage: N workers, each with its own Whisper model, turning audio into search chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.ledger import Ledger
from ingest.messages import AudioFile, TranscribedVideo
from workers.asr import AsrModel, decode_audio, duration_s
from workers.chunking import ChunkingOptions, chunk_segments

log = structlog.get_logger()


async def transcribe_stage(
    inbox: MemoryObjectReceiveStream[AudioFile],
    outbox: MemoryObjectSendStream[TranscribedVideo],
    *,
    models: Sequence[AsrModel],
    chunking: ChunkingOptions,
    ledger: Ledger,
) -> None:
    """One worker per loaded model; each decodes a video once and transcribes it in a thread."""
    async with inbox, outbox, asyncio.TaskGroup() as tg:
        for model in models:
            tg.create_task(_worker(inbox.clone(), outbox.clone(), model, chunking, ledger))


async def _worker(
    inbox: MemoryObjectReceiveStream[AudioFile],
    outbox: MemoryObjectSendStream[TranscribedVideo],
    model: AsrModel,
    chunking: ChunkingOptions,
    ledger: Ledger,
) -> None:
    async with inbox, outbox:
        async for audio in inbox:
            with structlog.contextvars.bound_contextvars(
                video_id=audio.job.video_id, stage="transcribe"
            ):
                video = await _transcribe(audio, model, chunking, ledger)
            if video is not None:
                await outbox.send(video)


async def _transcribe(
    audio: AudioFile, model: AsrModel, chunking: ChunkingOptions, ledger: Ledger
) -> TranscribedVideo | None:
    try:
        started = time.perf_counter()
        waveform = await asyncio.to_thread(decode_audio, audio.path)
        decoded = time.perf_counter()
        segments = await asyncio.to_thread(model.transcribe, waveform)
        transcribed = time.perf_counter()
    except Exception as exc:  # one video's failure never stops the others
        await ledger.failed(audio.job, "transcribe", exc)
        return None
    finally:
        if audio.owned:
            audio.path.unlink(missing_ok=True)
    return TranscribedVideo(
        job=audio.job,
        duration_s=duration_s(waveform),
        chunks=tuple(chunk_segments(segments, chunking)),
        asr_model=model.options.model,
        timings=(
            ("download", audio.download_s),
            ("decode", decoded - started),
            ("asr", transcribed - decoded),
        ),
    )
