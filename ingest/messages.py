"""Frozen messages passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from workers.chunking import Chunk
from workers.speakers import Decision


@dataclass(frozen=True, slots=True)
class VideoJob:
    """A video selected for processing: where its audio comes from."""

    video_id: str
    url: str
    title: str | None = None
    local_path: Path | None = None


@dataclass(frozen=True, slots=True)
class AudioFile:
    """Audio on local disk, ready for the GPU workers."""

    job: VideoJob
    path: Path
    owned: bool  # downloaded by us, so deleted once transcribed; a user's own file never is
    download_s: float


@dataclass(frozen=True, slots=True)
class TranscribedVideo:
    """A video's search chunks, not yet embedded."""

    job: VideoJob
    duration_s: float
    chunks: tuple[Chunk, ...]
    asr_model: str
    timings: tuple[tuple[str, float], ...]
    speakers: Decision


@dataclass(frozen=True, slots=True)
class EmbeddedVideo:
    """A video's chunks with one unit-norm embedding per chunk, in chunk order (read-only)."""

    video: TranscribedVideo
    embeddings: npt.NDArray[np.float32]
