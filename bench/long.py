"""`python -m bench.long [MINUTES ...] [--diarize]`: peak resident memory of one video's model
steps (decode, voice activity, speech recognition in blocks, and with --diarize the ECAPA
diarizer) at each length, each length in a fresh process, stand-in models on the CPU.

The waveform itself is held whole (4 bytes a sample: 0.9 GB for 4 h); what the steps add on top
of it should not grow with the length.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.speech import SENTENCES, speak, wav_seconds
from tests.standins import write_voice, write_whisper
from workers.asr import AsrModel, AsrOptions, decode_audio, detect_speech, regions_of


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_speech(folder: Path, minutes: float) -> Path:
    """A recording of `minutes`, a sample of synthetic speech over and over."""
    sample = speak(folder / "sample.wav", SENTENCES * 2, voice="en-gb-x-rp")
    repeats = max(0, round(minutes * 60 / wav_seconds(sample)) - 1)
    out = folder / f"{minutes:g}min.wav"
    subprocess.run(["sox", str(sample), str(out), "repeat", str(repeats)], check=True)
    return out


def probe(folder: Path, minutes: float, diarize: bool) -> dict[str, float]:
    """In this process: the models loaded, then one video of `minutes` through the steps."""
    asr = AsrModel(AsrOptions(str(write_whisper(folder / "asr")), batch_size=8))
    diarizer = None
    if diarize:
        from workers.clustering import ClusteringDiarizer
        from workers.voice import VoiceEncoder, VoiceOptions

        voice = VoiceOptions(str(write_voice(folder / "voice")), savedir=folder / "voice-run")
        diarizer = ClusteringDiarizer(VoiceEncoder(voice))
    path = long_speech(folder, minutes)
    loaded = peak_mb()
    started = time.perf_counter()
    audio = decode_audio(path)
    path.unlink()
    speech = detect_speech(audio)
    segments = asr.transcribe(audio, words=diarize, speech=speech)
    if diarizer is not None:
        diarizer.diarize(audio, regions_of(speech))
    return {
        "minutes": minutes,
        "segments": len(segments),
        "seconds": round(time.perf_counter() - started, 1),
        "models_mb": round(loaded),
        "waveform_mb": round(audio.nbytes / 2**20),
        "peak_rss_mb": round(peak_mb()),
        "above_models_and_waveform_mb": round(peak_mb() - loaded - audio.nbytes / 2**20),
    }


def main(args: list[str]) -> None:
    diarize = "--diarize" in args
    lengths = [float(a) for a in args if not a.startswith("--")] or [15.0, 240.0]
    for minutes in lengths:
        command = [sys.executable, "-m", "bench.long", "--probe", str(minutes)]
        result = subprocess.run(
            command + (["--diarize"] if diarize else []), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        with tempfile.TemporaryDirectory(prefix="ingest-bench-long-") as tmp:
            report = probe(Path(tmp), float(sys.argv[2]), "--diarize" in sys.argv)
        print(json.dumps(report))
    else:
        main(sys.argv[1:])
