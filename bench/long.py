"""`python -m bench.long [MINUTES ...] [--diarize | --pyannote [--whole]]`: peak resident
memory and time of one video's steps (decode onto disk, voice activity, speech recognition in
blocks; with --diarize the ECAPA diarizer, with --pyannote pyannote's pipeline in 30-minute
blocks, or with --whole in one call as before blocks) at each length, each length in a fresh
process, stand-in models on the CPU. The last line compares the longest length with the
shortest: the peak's ratio (target ≤ 1.3) and the time's ratio to a linear time (target ≤ 1.25).
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.speech import SENTENCES, speak, wav_seconds
from tests.standins import write_diarization, write_voice, write_whisper
from workers.asr import AsrModel, AsrOptions, detect_speech, regions_of
from workers.decode import decode_to_file
from workers.diarization import SpeakerTurns


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_speech(folder: Path, minutes: float) -> Path:
    """A recording of `minutes`, a sample of synthetic speech over and over."""
    sample = speak(folder / "sample.wav", SENTENCES * 2, voice="en-gb-x-rp")
    repeats = max(0, round(minutes * 60 / wav_seconds(sample)) - 1)
    out = folder / f"{minutes:g}min.wav"
    subprocess.run(["sox", str(sample), str(out), "repeat", str(repeats)], check=True)
    return out


def diarizer_of(folder: Path, flags: Sequence[str]) -> SpeakerTurns | None:
    if "--diarize" in flags:
        from workers.clustering import ClusteringDiarizer
        from workers.voice import VoiceEncoder, VoiceOptions

        voice = VoiceOptions(str(write_voice(folder / "voice")), savedir=folder / "voice-run")
        return ClusteringDiarizer(VoiceEncoder(voice))
    if "--pyannote" in flags:
        from workers.diarization import DiarizationOptions, Diarizer

        options = DiarizationOptions(str(write_diarization(folder / "pyannote")))
        return Diarizer(replace(options, block_s=math.inf) if "--whole" in flags else options)
    return None


def probe(folder: Path, minutes: float, flags: Sequence[str]) -> dict[str, float]:
    """In this process: the models loaded, then one video of `minutes` through the steps."""
    asr = AsrModel(AsrOptions(str(write_whisper(folder / "asr")), batch_size=8))
    diarizer = diarizer_of(folder, flags)
    path = long_speech(folder, minutes)
    loaded = peak_mb()
    started = time.perf_counter()
    audio = decode_to_file(path, folder)
    path.unlink()
    speech = detect_speech(audio)
    segments = asr.transcribe(audio, words=diarizer is not None, speech=speech)
    if diarizer is not None:
        diarizer.diarize(audio, regions_of(speech))
    return {
        "minutes": minutes,
        "segments": len(segments),
        "seconds": round(time.perf_counter() - started, 1),
        "models_mb": round(loaded),
        "peak_rss_mb": round(peak_mb()),
        "above_models_mb": round(peak_mb() - loaded),
    }


def compare(first: dict[str, Any], last: dict[str, Any]) -> dict[str, float]:
    """The longest run against the shortest: memory should not grow, time only linearly."""
    linear_s = first["seconds"] * last["minutes"] / first["minutes"]
    return {
        "peak_ratio": round(last["peak_rss_mb"] / first["peak_rss_mb"], 2),
        "time_vs_linear": round(last["seconds"] / linear_s, 2),
    }


def main(args: list[str]) -> None:
    flags = [a for a in args if a.startswith("--")]
    lengths = [float(a) for a in args if not a.startswith("--")] or [15.0, 240.0]
    reports = []
    for minutes in lengths:
        command = [sys.executable, "-m", "bench.long", "--probe", str(minutes), *flags]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        reports.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(reports[-1]), flush=True)
    if len(reports) > 1:
        print(json.dumps(compare(reports[0], reports[-1])), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        with tempfile.TemporaryDirectory(prefix="ingest-bench-long-") as tmp:
            report = probe(Path(tmp), float(sys.argv[2]), sys.argv[3:])
        print(json.dumps(report))
    else:
        main(sys.argv[1:])
