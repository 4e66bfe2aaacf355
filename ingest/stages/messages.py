"""Frozen messages passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from workers.chunking import Chunk, Segment
from workers.speakers import Decision


@dataclass(frozen=True, slots=True)
class VideoJob:
    """A video selected for processing: where its audio comes from, and the claim's fencing
    token that every write of its outcome carries (None: processed without a claim)."""

    video_id: str
    url: str
    title: str | None = None
    local_path: Path | None = None
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Captions:
    """A transcript that came with the video, used instead of speech recognition."""

    segments: tuple[Segment, ...]
    source: str  # "creator captions (en)", "automatic captions (en)", "subtitle file (a.vtt)"


@dataclass(frozen=True, slots=True)
class AudioFile:
    """Audio on local disk, ready for the GPU workers; or, when captions are the transcript and
    no speakers are wanted, no audio at all (`path` None, `duration_s` from the metadata)."""

    job: VideoJob
    path: Path | None
    owned: bool  # downloaded by us, so deleted once transcribed; a user's own file never is
    download_s: float
    captions: Captions | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class TranscribedVideo:
    """A video's search chunks, not yet embedded."""

    job: VideoJob
    duration_s: float
    chunks: tuple[Chunk, ...]
    asr_model: str | None  # None when captions were the transcript
    timings: tuple[tuple[str, float], ...]
    speakers: Decision
    transcript_source: str | None = None  # the ASR model, or where the captions came from


@dataclass(frozen=True, slots=True)
class EmbeddedVideo:
    """A video's chunks with one unit-norm embedding per chunk, in chunk order (read-only)."""

    video: TranscribedVideo
    embeddings: npt.NDArray[np.float32]
    model: str  # the embedding model they come from
