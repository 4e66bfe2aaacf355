"""Voice-activity detection with the Silero model: faster-whisper's copy where faster-whisper
is installed (ONNX, about five times faster), else the silero-vad package's, on torch, for an
install without CTranslate2 (the transformers engine's). Both cut speech by the same rules."""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

RATE = 16000  # the model's: callers resample to it
_WINDOW = 512  # samples per decision at that rate


@dataclass(frozen=True, slots=True)
class VadRules:
    """How probabilities become pieces of speech; the defaults are faster-whisper's."""

    max_speech_s: float
    min_silence_ms: int
    threshold: float = 0.5
    min_speech_ms: int = 0
    speech_pad_ms: int = 400


Stamps = list[tuple[int, int]]  # (first, end) sample of each piece
Detector = Callable[[npt.NDArray[np.float32], VadRules], Stamps]


def speech_stamps(audio: npt.NDArray[np.float32], rules: VadRules) -> Stamps:
    """Where Silero hears speech, in samples at `RATE`."""
    return _detector()(audio, rules)


@functools.cache
def _detector() -> Detector:
    try:
        import faster_whisper.vad  # noqa: F401  (it imports CTranslate2 and PyAV too)
    except ImportError:
        return _silero_package
    return _faster_whisper


def _faster_whisper(audio: npt.NDArray[np.float32], rules: VadRules) -> Stamps:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        threshold=rules.threshold,
        min_speech_duration_ms=rules.min_speech_ms,
        max_speech_duration_s=rules.max_speech_s,
        min_silence_duration_ms=rules.min_silence_ms,
        speech_pad_ms=rules.speech_pad_ms,
    )
    return [(s["start"], s["end"]) for s in get_speech_timestamps(audio, options, RATE)]


def _silero_package(audio: npt.NDArray[np.float32], rules: VadRules) -> Stamps:
    """The package's model over the whole block in one call, then its own rules, set as
    faster-whisper sets them (at the 30 s limit, the last pause long enough is the cut)."""
    import torch

    # Whole windows, at least one: the model refuses less.
    size = max(1, math.ceil(len(audio) / _WINDOW)) * _WINDOW
    padded = np.pad(audio.astype(np.float32, copy=False), (0, size - len(audio)))
    with _one_torch_thread():
        probs = _silero_model().audio_forward(torch.from_numpy(padded)[None], RATE)
    found = _silero().get_speech_timestamps_from_probs(
        probs[0].tolist(),
        sampling_rate=RATE,
        threshold=rules.threshold,
        min_speech_duration_ms=rules.min_speech_ms,
        max_speech_duration_s=rules.max_speech_s,
        min_silence_duration_ms=rules.min_silence_ms,
        speech_pad_ms=rules.speech_pad_ms,
        use_max_poss_sil_at_max_speech=False,
        audio_length_samples=len(audio),
    )
    return [(int(s["start"]), int(s["end"])) for s in found]


_loaded = threading.local()  # the model keeps its recurrent state between windows: one a thread


def _silero_model() -> Any:
    if getattr(_loaded, "model", None) is None:
        silero = _silero()
        with warnings.catch_warnings():  # the package ships TorchScript, which torch deprecates
            warnings.filterwarnings(
                "ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning
            )
            _loaded.model = silero.load_silero_vad()
    return _loaded.model


def _silero() -> Any:
    """The silero_vad module. Importing it sets torch's thread count to 1; the count is put
    back."""
    with _one_torch_thread():
        import silero_vad
    return silero_vad


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this thread, as Silero wants: its steps are tiny, and on a busy
    machine more threads make it ten times slower. torch keeps the count per thread (a new
    thread starts with the last one set anywhere); the one this thread had is put back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
