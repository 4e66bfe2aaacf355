"""The pipeline: bounded streams joining download, transcription, embedding and the sink."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ingest.infrastructure.config import Settings
from ingest.infrastructure.models import EmbedderSlot, Models
from ingest.infrastructure.retry import Database, RetryPolicy
from ingest.sites.throttle import Governor
from ingest.sites.ytdlp_options import ytdlp_params
from ingest.stages.download import Downloader, DownloadOptions, download_stage
from ingest.stages.embed import BatchRules, EmbeddedBatch, embed_stage
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, TranscribedVideo, VideoJob
from ingest.stages.sink import sink_stage
from ingest.stages.transcribe import transcribe_stage
from workers.chunking import ChunkingOptions


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    download: DownloadOptions
    chunking: ChunkingOptions
    batching: BatchRules
    audio_queue: int = 24
    transcript_queue: int = 64
    sink_queue: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineOptions:
        return cls(
            download=DownloadOptions(
                audio_dir=settings.audio_dir,
                workers=settings.download_workers,
                socket_timeout=settings.download_socket_timeout,
                retries=settings.download_retries,
                retry=RetryPolicy(settings.retry_attempts, settings.retry_backoff_seconds),
                max_duration_s=settings.max_duration,
                ytdlp=ytdlp_params(settings),
                captions=settings.captions,
                captions_language=settings.asr_language or settings.captions_language,
                audio_needed=settings.diarization != "off",
            ),
            chunking=ChunkingOptions(
                settings.chunk_chars, settings.chunk_max_seconds, settings.chunk_min_chars
            ),
            batching=BatchRules(settings.embed_batch, settings.embed_flush_seconds),
            audio_queue=settings.audio_queue_size,
            transcript_queue=settings.transcript_queue_size,
            sink_queue=settings.sink_queue_size,
        )


class Pipeline:
    """One run's streams and stages; `depths()` may be read while `run()` goes on."""

    def __init__(
        self,
        options: PipelineOptions,
        *,
        db: Database,
        models: Models,
        ledger: Ledger,
        downloader: Downloader | None = None,
        governor: Governor | None = None,
    ) -> None:
        self.options, self.db, self.models, self.ledger = options, db, models, ledger
        self.downloader = downloader or Downloader(options.download)
        self.governor = governor or Governor(metrics=ledger.metrics)
        self._jobs = anyio.create_memory_object_stream[VideoJob](options.download.workers)
        self._audio = anyio.create_memory_object_stream[AudioFile](options.audio_queue)
        self._texts = anyio.create_memory_object_stream[TranscribedVideo](options.transcript_queue)
        self._batches = anyio.create_memory_object_stream[EmbeddedBatch](options.sink_queue)
        for name, (_, receive) in self._streams().items():
            ledger.metrics.watch_queue(
                name,
                functools.partial(_depth, receive),
                int(receive.statistics().max_buffer_size),
            )

    def _streams(self) -> dict[str, tuple[Any, MemoryObjectReceiveStream[Any]]]:
        return {
            "jobs": self._jobs,
            "audio": self._audio,
            "transcripts": self._texts,
            "batches": self._batches,
        }

    def depths(self) -> dict[str, int]:
        return {name: _depth(receive) for name, (_, receive) in self._streams().items()}

    def stop_downloads(self) -> None:
        """No new downloads: waiting and interrupted videos are handed back, the rest flows on."""
        self.downloader.cancel()
        self.governor.stop()

    async def run(self, jobs: AsyncIterable[VideoJob]) -> None:
        """Returns once every job is done, failed or handed back; any stage crashing cancels
        the others."""
        downloader = self.downloader
        slot = EmbedderSlot(self.models.embedder)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_feed(jobs, self._jobs[0]))
                tg.create_task(
                    download_stage(
                        self._jobs[1],
                        self._audio[0],
                        downloader=downloader,
                        ledger=self.ledger,
                        governor=self.governor,
                    )
                )
                tg.create_task(
                    transcribe_stage(
                        self._audio[1],
                        self._texts[0],
                        workers=self.models.workers,
                        chunking=self.options.chunking,
                        ledger=self.ledger,
                        max_duration_s=self.options.download.max_duration_s,
                        scratch=self.options.download.audio_dir,
                    )
                )
                tg.create_task(
                    embed_stage(
                        self._texts[1],
                        self._batches[0],
                        embedder=slot,
                        rules=self.options.batching,
                        ledger=self.ledger,
                    )
                )
                tg.create_task(
                    sink_stage(
                        self._batches[1],
                        db=self.db,
                        ledger=self.ledger,
                        embedder=slot,
                    )
                )
        finally:
            await asyncio.shield(asyncio.to_thread(downloader.close))


def _depth(stream: MemoryObjectReceiveStream[Any]) -> int:
    return stream.statistics().current_buffer_used


async def _feed(jobs: AsyncIterable[VideoJob], outbox: MemoryObjectSendStream[VideoJob]) -> None:
    async with outbox:
        async for job in jobs:
            await outbox.send(job)
