"""The real model paths on CPU: Whisper stand-in sequential vs batched, MiniLM throughput."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.results import Figure
from tests.speech import SENTENCES, speak
from tests.standins import minilm_path, write_whisper
from workers.asr import AsrModel, AsrOptions, duration_s
from workers.decode import decode_audio
from workers.embedder import EmbedderOptions, TextEmbedder


def asr(quick: bool) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-asr-") as tmp:
        model_dir = write_whisper(Path(tmp) / "asr")
        repeats = 2 if quick else 6
        audio = decode_audio(speak(Path(tmp) / "speech.wav", SENTENCES * repeats))
        seconds = {}
        for batch in (1, 8):
            model = AsrModel(AsrOptions(str(model_dir), batch_size=batch))
            model.transcribe(audio[: 16000 * 5])  # warm-up
            started = time.perf_counter()
            model.transcribe(audio)
            seconds[batch] = time.perf_counter() - started
    length = duration_s(audio)
    return [
        Figure("models", f"ASR real-time factor, batch {batch} (stand-in Whisper, CPU)",
               length / s, unit="x realtime", detail={"audio_s": round(length, 1)})
        for batch, s in seconds.items()
    ]  # fmt: skip


def embeddings(quick: bool) -> list[Figure]:
    texts = [f"{s} (variant {i})" for i in range(40 if quick else 200) for s in SENTENCES]
    figures = []
    for batch in (8, 32, 128):
        model = TextEmbedder(EmbedderOptions(str(minilm_path()), batch_size=batch))
        model.encode(texts[:64])  # warm-up
        started = time.perf_counter()
        model.encode(texts)
        rate = len(texts) / (time.perf_counter() - started)
        figures.append(
            Figure("models", f"MiniLM sentences/s, batch {batch} (CPU)", rate, unit="/s")
        )
    return figures
