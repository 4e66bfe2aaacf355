"""Speech recognition with faster-whisper."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from workers.chunking import Segment, Word
from workers.vad import VadRules, speech_stamps

SAMPLE_RATE = 16000

Waveform = npt.NDArray[np.float32]


class Samples(Protocol):
    """A waveform as the model steps read it, by length and slices: an array in memory, or a
    decoded file read from disk a block at a time (`workers.decode.PcmFile`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Waveform: ...


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
    block_s: float = 600.0  # audio transcribed per call: bounds the memory of long videos


class SpeechRecognizer(Protocol):
    """What the GPU stage needs of an ASR engine (faster-whisper or transformers)."""

    @property
    def options(self) -> AsrOptions: ...

    def transcribe(
        self, audio: Samples, *, words: bool = False, speech: Sequence[Span] | None = None
    ) -> list[Segment]: ...


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


def duration_s(audio: Samples) -> float:
    return len(audio) / SAMPLE_RATE


Span = tuple[float, float]
CLIP_S = 30.0  # what Whisper hears at once
# Pauses shorter than this do not end a region of speech; with the detector's 0.4 s padding on
# each side, it is the 2 s of silence its defaults need to end one.
REGION_PAUSE_S = 1.2
# Audio per detector pass: the detector copies what it is given twice over, so hours at once
# would cost gigabytes.
VAD_BLOCK_S = 600.0


def detect_speech(audio: Samples) -> list[Span]:
    """Where the voice-activity detector (Silero, `workers.vad`) hears speech, in pieces of at
    most 30 s cut at short pauses: what faster-whisper's batched pipeline finds itself. The one
    pass per video: ASR and the speaker steps all take its result."""
    rules = VadRules(max_speech_s=CLIP_S, min_silence_ms=160)
    block = int(VAD_BLOCK_S * SAMPLE_RATE)
    pieces: list[Span] = []
    for first in range(0, len(audio), block):
        stamps = speech_stamps(audio[first : first + block], rules)
        pieces += [((first + a) / SAMPLE_RATE, (first + b) / SAMPLE_RATE) for a, b in stamps]
    return pieces


def regions_of(pieces: Sequence[Span]) -> list[Span]:
    """Stretches of speech for the speaker steps: pieces joined across short pauses."""
    return _joined(pieces, lambda region, piece: piece[0] - region[1] < REGION_PAUSE_S)


def speech_regions(audio: Samples) -> list[Span]:
    return regions_of(detect_speech(audio))


def whisper_clips(pieces: Sequence[Span]) -> list[Span]:
    """Pieces joined into clips of at most 30 s. The pauses between them stay in: Whisper is
    used to pauses, and every clip costs a whole 30 s window however little speech it holds."""
    fitting = [(a + i * CLIP_S, min(a + (i + 1) * CLIP_S, b))
               for a, b in pieces for i in range(max(1, math.ceil((b - a) / CLIP_S)))]  # fmt: skip
    return _joined(fitting, lambda clip, piece: piece[1] - clip[0] <= CLIP_S)


def _joined(pieces: Sequence[Span], joins: Callable[[Span, Span], bool]) -> list[Span]:
    out: list[Span] = []
    for piece in pieces:
        if out and joins(out[-1], piece):
            out[-1] = (out[-1][0], max(out[-1][1], piece[1]))
        else:
            out.append(piece)
    return out


class AsrModel:
    """One loaded Whisper model; `BatchedInferencePipeline` when batch_size > 1. It hears only
    the speech the voice-activity detector found."""

    def __init__(self, options: AsrOptions) -> None:
        if options.device == "cuda":  # before CTranslate2 first opens cuBLAS and cuDNN
            from workers.cuda_libs import preload_cuda_libraries

            preload_cuda_libraries()
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

    def transcribe(
        self, audio: Samples, *, words: bool = False, speech: Sequence[Span] | None = None
    ) -> list[Segment]:
        """Segments in time order, clipped to the audio's duration; with `words`, each carries
        its word timings (what splitting a segment at a change of speaker needs). `speech` is
        what `detect_speech` found, when the caller has it already."""
        if len(audio) == 0:
            return []
        if speech is None:
            speech = detect_speech(audio)
        if not speech:  # an empty list would make faster-whisper look for speech itself
            return []
        segments: list[Segment] = []
        language = self.options.language
        for block in _blocks(whisper_clips(speech), self.options.block_s):
            found, language = self._transcribe_block(audio, block, language, words)
            segments += found
        return segments

    def _transcribe_block(
        self, audio: Samples, clips: Sequence[Span], language: str | None, words: bool
    ) -> tuple[list[Segment], str]:
        """One block of clips, from its own slice of the audio: faster-whisper computes the
        features of all it is given at once, which for hours of audio is gigabytes."""
        first = int(clips[0][0] * SAMPLE_RATE)
        offset = first / SAMPLE_RATE
        piece = audio[first : int(clips[-1][1] * SAMPLE_RATE)]
        kwargs: dict[str, Any] = {"language": language, "vad_filter": False,
                                  "word_timestamps": words}  # fmt: skip
        if self._batched is not None:
            stamps = [{"start": a - offset, "end": b - offset} for a, b in clips]
            raw, info = self._batched.transcribe(
                piece, batch_size=self.options.batch_size, clip_timestamps=stamps, **kwargs
            )
        else:
            flat = [t - offset for clip in clips for t in clip]
            raw, info = self._model.transcribe(piece, clip_timestamps=flat, **kwargs)
        end = duration_s(audio)

        def at(t: float) -> float:
            return min(t + offset, end)

        found = [
            Segment(at(s.start), at(s.end), s.text.strip(),
                    words=tuple(Word(at(w.start), at(w.end), w.word) for w in s.words or ()))
            for s in raw
            if s.text.strip()
        ]  # fmt: skip
        # The language found in the first block holds for the rest of the video.
        return found, language or info.language


def _blocks(clips: Sequence[Span], block_s: float) -> list[list[Span]]:
    out: list[list[Span]] = []
    for clip in clips:
        if out and clip[1] - out[-1][0][0] <= block_s:
            out[-1].append(clip)
        else:
            out.append([clip])
    return out
