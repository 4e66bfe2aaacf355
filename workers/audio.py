"""What an audio file states about itself, and whether its audio is all there."""

from __future__ import annotations

import wave
from pathlib import Path

# A streamed WAV leaves its data size at 0 or all ones: it states nothing.
_UNSTATED_WAV_BYTES = 0xFFFF_0000


class TruncatedAudio(ValueError):
    """The file ends before the duration its own header states: a cut download or copy."""


def stated_duration(path: Path) -> float | None:
    """The duration the file's header states, read without decoding (None when it says none).

    A cut WAV file is one PyAV sizes by its length, so a WAV's own data-size field is read too.
    """
    import av

    with av.open(str(path)) as container:
        by_container = None if container.duration is None else container.duration / av.time_base
    stated = [d for d in (by_container, _wav_header_duration(path)) if d]
    return max(stated) if stated else None


def _wav_header_duration(path: Path) -> float | None:
    try:
        with wave.open(str(path)) as header:
            frames, rate = header.getnframes(), header.getframerate()
            size = frames * header.getsampwidth() * header.getnchannels()
    except (wave.Error, EOFError, OSError):  # not a PCM WAV file: the container speaks
        return None
    if not 0 < size < _UNSTATED_WAV_BYTES or not rate:
        return None
    return float(frames / rate)


def too_long(stated_s: float | None, limit_s: float | None) -> str | None:
    """Why audio of this stated length is refused (None when it is not, or nothing is known)."""
    if stated_s and limit_s and stated_s > limit_s:
        return f"too long: {stated_s:.0f} s of audio, INGEST_MAX_DURATION is {limit_s:.0f} s"
    return None


def check_complete(stated_s: float | None, decoded_s: float) -> None:
    """Raises `TruncatedAudio` when clearly less audio was decoded than the header states;
    encoder padding and rounding make a fraction of a second either way normal."""
    if stated_s is None:
        return
    if stated_s - decoded_s > max(1.0, 0.01 * stated_s):
        raise TruncatedAudio(
            f"truncated: {decoded_s:.1f} s of audio where the file states {stated_s:.1f} s"
        )
