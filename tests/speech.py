"""Synthetic speech for tests: espeak-ng voices resampled by sox to 16 kHz mono WAV."""

from __future__ import annotations

import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

SENTENCES = (
    "Good morning everyone, and thank you for joining the weekly planning meeting.",
    "Today we will review the progress on the speech ingestion service.",
    "The first item on the agenda is the latency of the transcription queue.",
    "We would like to bring that number down by batching requests more aggressively.",
    "Each transcript segment is embedded and stored together with its timestamps.",
    "Users can search for a topic and jump directly to the right moment.",
)


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def speak(out: Path, sentences: Sequence[str], voice: str = "en-us", pitch: int = 50) -> Path:
    """One WAV of the sentences with 0.4 s of silence after each."""
    with tempfile.TemporaryDirectory(prefix="speech_") as tmp:
        parts: list[str] = []
        silence = f"{tmp}/silence.wav"
        _run("sox", "-n", "-r", "16000", "-c", "1", "-b", "16", silence, "trim", "0", "0.4")
        for i, sentence in enumerate(sentences):
            raw, part = f"{tmp}/{i}.raw.wav", f"{tmp}/{i}.wav"
            _run("espeak-ng", "-v", voice, "-p", str(pitch), "-w", raw, sentence)
            _run("sox", raw, "-r", "16000", "-c", "1", "-b", "16", part)
            parts += [part, silence]
        _run("sox", *parts, str(out))
    return out


def dialogue(
    out: Path, sentences: Sequence[str], first: tuple[str, int], second: tuple[str, int]
) -> Path:
    """Two voices (espeak voice, pitch) taking turns every two sentences."""
    with tempfile.TemporaryDirectory(prefix="dialogue_") as tmp:
        turns = [
            speak(Path(tmp) / f"{i}.wav", sentences[i : i + 2], *(first if i % 4 == 0 else second))
            for i in range(0, len(sentences), 2)
        ]
        _run("sox", *map(str, turns), str(out))
    return out


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return float(w.getnframes() / w.getframerate())
