"""Stand-in engines of known service time, so that the real pipeline's own efficiency shows.

Downloads sleep and copy a short WAV; ASR sleeps per second of audio; the embedder sleeps per
chunk. Sleeping releases the GIL, as waiting on a network or a GPU does.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from db.videos import DiscoveredVideo
from ingest.stages.download import Downloader, DownloadOptions, Fetched, audio_stem
from ingest.stages.messages import VideoJob
from workers.asr import AsrModel, AsrOptions, Samples, Span, duration_s
from workers.chunking import Segment
from workers.embedder import EmbedderOptions, TextEmbedder


@dataclass(frozen=True, slots=True)
class Costs:
    download_s: float  # per video, on each of the download workers
    asr_s_per_audio_s: float  # per second of audio, on each ASR worker
    embed_s_per_chunk: float
    audio_s: float = 10.0  # every video's length
    chunks_per_video: int = 10
    download_workers: int = 24
    asr_workers: int = 1

    def capacities(self) -> dict[str, float]:
        """Videos per second each stage could sustain alone."""
        return {
            "download": self.download_workers / self.download_s,
            "asr": self.asr_workers / (self.audio_s * self.asr_s_per_audio_s),
            "embed": 1 / (self.chunks_per_video * self.embed_s_per_chunk),
        }


class SleepingDownloader(Downloader):
    def __init__(self, options: DownloadOptions, seconds: float, template: Path) -> None:
        super().__init__(options)
        self.seconds, self.template = seconds, template

    def download(self, job: VideoJob) -> Fetched:
        time.sleep(self.seconds)
        path = self.options.audio_dir / f"{audio_stem(job.video_id)}.wav"
        shutil.copy(self.template, path)
        return Fetched(path, None, DiscoveredVideo(job.video_id, job.url))


class SleepingAsr(AsrModel):
    def __init__(self, costs: Costs) -> None:
        self.options = AsrOptions(model="synthetic", batch_size=1)
        self.costs = costs

    def transcribe(
        self, audio: Samples, *, words: bool = False, speech: Sequence[Span] | None = None
    ) -> list[Segment]:
        time.sleep(duration_s(audio) * self.costs.asr_s_per_audio_s)
        step = duration_s(audio) / self.costs.chunks_per_video
        return [
            Segment(i * step, (i + 1) * step, f"synthetic sentence number {i}")
            for i in range(self.costs.chunks_per_video)
        ]


def all_speech(audio: Samples) -> list[Span]:
    """The stand-in's voice activity: all of it. SleepingAsr's cost per audio second stands for
    the whole recognition, voice activity detection included, as faster-whisper's batched
    pipeline (which runs it internally) costs."""
    return [(0.0, duration_s(audio))]


class SleepingEmbedder(TextEmbedder):
    def __init__(self, costs: Costs, dimension: int = 384) -> None:
        self.options = EmbedderOptions(model="synthetic")
        self.dimension = dimension
        self.costs = costs
        self._rng = np.random.default_rng(0)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        time.sleep(len(texts) * self.costs.embed_s_per_chunk)
        vectors = self._rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.float32)
