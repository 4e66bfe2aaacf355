"""Device check: what one lent GPU machine does with the project's models, in a few minutes.

    python -m bench.device [--quick] [--out PATH]

Needs only torch, transformers, sentence-transformers and nvidia-ml-py (none of faster-whisper,
CTranslate2, pyannote, speechbrain, asyncpg, yt-dlp, silero-vad or PostgreSQL), no network and
no model files: every model is built from its real shape with random weights. It measures the
transformers ASR engine's throughput (x realtime: the engine itself, `workers.asr_transformers`,
built around each model, transcribing a video whose speech spans are handed to it, so no
voice-activity detection runs) for Whisper shaped like large-v3-turbo and distil-large-v3, the
embedder's (chunks/s) for a MiniLM and a 1536-d BERT-large shape, NVML's
GPU busy % during each measurement, and which of the project's packages are installed. It
prints JSON and writes it to --out, after every measurement, so a run cut short still leaves
its figures. Without CUDA, or with --quick, the same code runs tiny shapes and judges no target.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from bench.device_models import (
    WINDOW_S,
    BertShape,
    ScriptedDecoder,
    WhisperShape,
    asr_engine,
    build_embedder,
    build_whisper,
    chunk_texts,
    embed_step,
    noise_video,
    quiet_transformers,
    tokenize_step,
    tokens_per_chunk,
    whisper_processor,
)
from bench.device_report import (
    AsrRun,
    DeviceInfo,
    EmbedRun,
    Report,
    Timing,
    busy,
    device_info,
    judge,
    nvml_handle,
    stack,
)
from workers.asr import Span
from workers.chunking import Segment

T = TypeVar("T")
TOKENS_PER_WINDOW = 90  # English speech: ~2.5 words/s, ~1.2 tokens a word, 30 s windows


@dataclass(frozen=True, slots=True)
class Scale:
    name: str
    whisper: tuple[WhisperShape, ...]
    bert: tuple[BertShape, ...]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    new_tokens: int
    repeats: int  # batches in the video each ASR configuration times
    warm_up: bool  # one untimed call first (not worth its time with tiny shapes on a CPU)
    chunks: tuple[int, ...]  # per BERT shape
    words_per_chunk: int
    embed_batch: int
    embed_batches: tuple[tuple[str, int], ...]  # more (dtype, batch), beyond `dtypes`
    asr_budget_s: float  # past this, ASR configurations left are reported as skipped
    budget_s: float  # the same for embeddings


TURBO_HEADS = ((2, 4), (2, 11), (3, 3), (3, 6), (3, 11), (3, 14))  # large-v3-turbo's own
FULL = Scale(
    name="full",
    whisper=(
        WhisperShape("large-v3-turbo", 1280, 32, 4, 20, TURBO_HEADS),
        WhisperShape("distil-large-v3", 1280, 32, 2, 20, ((1, 0), (1, 4), (1, 8), (1, 12))),
    ),
    bert=(
        BertShape("minilm-l6", hidden=384, layers=6, heads=12, dimension=384, max_seq_length=256),
        BertShape(
            "bert-large-1536", hidden=1024, layers=24, heads=16, dimension=1536, max_seq_length=512
        ),
    ),
    dtypes=("bfloat16", "float16"),
    batches=(16, 32, 64),
    new_tokens=TOKENS_PER_WINDOW,
    repeats=2,
    warm_up=True,
    chunks=(16384, 2048),
    words_per_chunk=200,
    embed_batch=256,
    embed_batches=(("float32", 32),),  # as the embedder runs today: float32, batch 32
    asr_budget_s=300,
    budget_s=420,
)
TINY = Scale(
    name="tiny",
    whisper=(
        WhisperShape("tiny-turbo-layout", 64, 2, 2, 4, ((1, 0), (1, 1))),
        WhisperShape("tiny-distil-layout", 64, 2, 1, 4, ((0, 0), (0, 1))),
    ),
    bert=(
        BertShape("tiny-minilm", hidden=64, layers=2, heads=2, dimension=64, max_seq_length=256),
        BertShape("tiny-1536", hidden=64, layers=2, heads=2, dimension=96, max_seq_length=512),
    ),
    dtypes=("bfloat16", "float16"),
    batches=(2,),
    new_tokens=5,
    repeats=1,
    warm_up=False,
    chunks=(8, 8),
    words_per_chunk=200,
    embed_batch=4,
    embed_batches=(("float32", 2),),
    asr_budget_s=300,
    budget_s=400,
)


@dataclass(slots=True)
class Check:
    """One run's state: the device, its clock, and the report as it fills."""

    device: str
    nvml: Any  # an NVML device handle, or None
    report: Report
    out: Path
    warm_up: bool = True
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def timed(
        self, step: Callable[[], T], repeats: int, warm_up: Callable[[], object] | None = None
    ) -> tuple[Timing, T]:
        """A warm-up call (`warm_up`, or a call of `step`) unless the check runs without, then
        `repeats` timed calls of `step`; returns the timing and what the last call returned."""
        import torch

        if self.warm_up:
            (warm_up or step)()
        self.sync()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with busy(self.nvml) as sampler:
            start = time.perf_counter()
            for _ in range(repeats):
                done = step()
            self.sync()
            seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else None
        return Timing(round(seconds, 3), sampler.percent if sampler else None,
                      round(peak, 2) if peak is not None else None), done  # fmt: skip

    def add(self, run: AsrRun | EmbedRun) -> None:
        """Records a measurement and rewrites the JSON, so a run cut short keeps it."""
        if isinstance(run, AsrRun):
            self.report = replace(self.report, asr=(*self.report.asr, run))
        else:
            self.report = replace(self.report, embeddings=(*self.report.embeddings, run))
        self.save()
        print(json.dumps(asdict(run)), file=sys.stderr, flush=True)

    def save(self) -> None:
        report = replace(self.report, seconds=round(self.elapsed(), 1))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(asdict(report), indent=2) + "\n")


def failure(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    return f"error: {type(exc).__name__}: {str(exc)[:300]}"


def free_memory() -> None:
    """GPU memory back to the device: what a failed call's traceback held is collected first.
    Without CUDA there is nothing to give back (and a collection costs ~0.3 s a call)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


Configuration = tuple[str, bool, int]  # dtype, words, batch


def asr_configurations(scale: Scale) -> list[Configuration]:
    """Without and with word timings, each dtype and batch size."""
    return [(dtype, words, batch) for dtype in scale.dtypes for words in (False, True)
            for batch in scale.batches]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Whisper:
    """One shape's model in memory, its processor, and the decoder's script in its `generate`."""

    model: Any
    processor: Any
    decoder: ScriptedDecoder


def build_asr(shape: WhisperShape, device: str, new_tokens: int) -> Whisper:
    model = build_whisper(shape, device)
    return Whisper(model, whisper_processor(), ScriptedDecoder(model, new_tokens))


def measure_asr(
    check: Check, scale: Scale, shape: WhisperShape, configurations: list[Configuration]
) -> None:
    whisper = None
    video = noise_video(max(batch for *_, batch in configurations) * scale.repeats)
    for dtype, words, batch in configurations:
        run = AsrRun(shape.name, dtype, batch, words, windows=batch * scale.repeats)
        if check.elapsed() > scale.asr_budget_s:
            check.add(replace(run, status="skipped: time budget"))
            continue
        try:
            whisper = whisper or build_asr(shape, check.device, scale.new_tokens)
            run = asr_run(check, whisper, video, run)
        except Exception as exc:  # one configuration; the others still run
            run = replace(run, status=failure(exc))
        free_memory()  # after the traceback is gone: it holds what the engine had allocated
        check.add(run)
    del whisper
    free_memory()


def asr_run(check: Check, whisper: Whisper, video: tuple[Any, list[Span]], run: AsrRun) -> AsrRun:
    """One video of `run.windows` windows through the engine's `transcribe`, `run.batch` at a
    time (after a warm-up video of one batch)."""
    engine = asr_engine(whisper.model, whisper.processor, run.dtype, run.batch)
    audio, speech = video

    def transcribe(windows: int) -> Callable[[], list[Segment]]:
        return lambda: engine.transcribe(audio, words=run.words, speech=speech[:windows])

    timing, segments = check.timed(transcribe(run.windows), 1, transcribe(run.batch))
    return replace(
        run, status="ok", timing=timing, tokens_per_window=whisper.decoder.tokens,
        segments_per_window=round(len(segments) / run.windows, 1),
        words_per_window=round(sum(len(s.words) for s in segments) / run.windows, 1),
        # The kernel the model used, as transformers had it after the call.
        attention=str(whisper.model.config._attn_implementation),
        x_realtime=round(run.windows * WINDOW_S / timing.seconds, 1),
    )  # fmt: skip


def measure_embeddings(check: Check, scale: Scale, shape: BertShape, chunks: int) -> None:
    texts = chunk_texts(chunks, scale.words_per_chunk)
    with tempfile.TemporaryDirectory(prefix="device_bert_") as folder:
        model = None
        for dtype, batch in embed_configurations(scale):
            run = EmbedRun(shape.name, dtype, batch, shape.dimension, chunks=len(texts))
            if check.elapsed() > scale.budget_s:
                check.add(replace(run, status="skipped: time budget"))
                continue
            try:
                model = model or build_embedder(shape, Path(folder), check.device)
                run = embed_run(check, model, texts, run)
            except Exception as exc:  # one configuration; the others still run
                run = replace(run, status=failure(exc))
            free_memory()
            check.add(run)
        del model
        free_memory()


def embed_configurations(scale: Scale) -> list[tuple[str, int]]:
    return [*((dtype, scale.embed_batch) for dtype in scale.dtypes), *scale.embed_batches]


def embed_run(check: Check, model: Any, texts: list[str], run: EmbedRun) -> EmbedRun:
    step = embed_step(model, run.dtype, texts, run.batch)
    warm_up = embed_step(model, run.dtype, texts[: run.batch], run.batch)
    timing, done = check.timed(step, 1, warm_up)
    tokenized, _ = check.timed(tokenize_step(model, texts, run.batch), 1, warm_up=lambda: 0)
    return replace(run, status="ok", timing=timing,
                   tokens_per_chunk=round(tokens_per_chunk(model, texts), 1),
                   chunks_per_s=round(done / timing.seconds, 1),
                   tokenize_chunks_per_s=round(len(texts) / tokenized.seconds, 1))  # fmt: skip


def run_check(quick: bool, out: Path) -> Report:
    import torch

    quiet_transformers()
    cuda = torch.cuda.is_available()
    scale = TINY if quick or not cuda else FULL
    device = "cuda" if cuda else "cpu"
    handle = nvml_handle() if cuda else None
    info: DeviceInfo = device_info(device, handle)
    report = Report(scale=scale.name, device=info, stack=stack(), new_tokens=scale.new_tokens)
    check = Check(device, handle, report, out, warm_up=scale.warm_up)
    # Most wanted first: later ones are skipped when the time is up.
    for whisper in scale.whisper:
        measure_asr(check, scale, whisper, asr_configurations(scale))
    for bert, chunks in zip(scale.bert, scale.chunks, strict=True):
        measure_embeddings(check, scale, bert, chunks)
    check.report = judge(check.report, scale is FULL, scale.whisper[0].name, scale.bert[0].name)
    check.save()
    return replace(check.report, seconds=round(check.elapsed(), 1))


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    quick: Annotated[
        bool, typer.Option(help="Tiny shapes: a smoke test, not a measurement.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON goes.")] = Path("bench/device.json"),
) -> None:
    """Measure ASR and embedding throughput and GPU busy % on this machine; print JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run_check(quick, out)
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    app()
