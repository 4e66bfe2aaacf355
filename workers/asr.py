"""Speech recognition with faster-whisper."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.chunking import Segment, Word

SAMPLE_RATE = 16000

Waveform = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class AsrOptions:
    model: str  # a faster-whisper size name, a hub id, or a local CTranslate2 folder
    device: str = "cpu"
    compute_type: str = "int8"
    batch_size: int = 8
    language: str | None = None
    device_index: int = 0
    cpu_threads: int = 0
    token: str | None = None  # for private hub models


# What faster-whisper itself takes from a model repository.
_WHISPER_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json",
                  "vocabulary.*"]  # fmt: skip


def fetch_whisper(model: str, token: str | None = None) -> str:
    """A local folder holding `model` (a size name, a hub id or a folder), downloaded with a
    progress bar the first time: faster-whisper's own download hides its progress and has no
    switch for it. Its table of size names is the only list of their repositories."""
    if Path(model).expanduser().is_dir():
        return model
    from faster_whisper.utils import _MODELS
    from huggingface_hub import snapshot_download

    folder: str = snapshot_download(
        _MODELS.get(model, model), allow_patterns=_WHISPER_FILES, token=token
    )
    return folder


def decode_audio(path: Path) -> Waveform:
    """Any audio or video file as 16 kHz mono float32 (PyAV, no ffmpeg process)."""
    from faster_whisper import decode_audio as _decode

    audio: Waveform = _decode(str(path), sampling_rate=SAMPLE_RATE)
    return audio


def duration_s(audio: Waveform) -> float:
    return len(audio) / SAMPLE_RATE


def speech_regions(audio: Waveform) -> list[tuple[float, float]]:
    """Where the voice-activity detector (Silero, shipped with faster-whisper) hears speech."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    stamps = get_speech_timestamps(audio, VadOptions(), sampling_rate=SAMPLE_RATE)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


class AsrModel:
    """One loaded Whisper model; `BatchedInferencePipeline` when batch_size > 1, VAD always on."""

    def __init__(self, options: AsrOptions) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.options = options
        self._model = WhisperModel(
            fetch_whisper(options.model, options.token),
            device=options.device,
            device_index=options.device_index,
            compute_type=options.compute_type,
            cpu_threads=options.cpu_threads,
        )
        self._batched = BatchedInferencePipeline(self._model) if options.batch_size > 1 else None

    def transcribe(self, audio: Waveform, *, words: bool = False) -> list[Segment]:
        """Segments in time order, clipped to the audio's duration; with `words`, each carries
        its word timings (what splitting a segment at a change of speaker needs)."""
        if len(audio) == 0:
            return []
        kwargs: dict[str, Any] = {
            "language": self.options.language,
            "vad_filter": True,
            "word_timestamps": words,
        }
        if self._batched is not None:
            raw, _ = self._batched.transcribe(audio, batch_size=self.options.batch_size, **kwargs)
        else:
            raw, _ = self._model.transcribe(audio, **kwargs)
        end = duration_s(audio)
        return [
            Segment(
                start_s=min(s.start, end),
                end_s=min(s.end, end),
                text=s.text.strip(),
                words=tuple(
                    Word(min(w.start, end), min(w.end, end), w.word) for w in s.words or ()
                ),
            )
            for s in raw
            if s.text.strip()
        ]
