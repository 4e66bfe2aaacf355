"""The device check's report: the machine, the installed stack, every measurement, NVML's busy
% during it, and the targets judged on them. Standard library only at import (torch and NVML
are imported where asked)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

# Module → distribution, for every package the project runs on.
STACK = {
    "faster_whisper": "faster-whisper", "ctranslate2": "ctranslate2",
    "pyannote.audio": "pyannote.audio", "speechbrain": "speechbrain", "asyncpg": "asyncpg",
    "yt_dlp": "yt-dlp", "pgserver": "pgserver", "av": "av", "silero_vad": "silero-vad",
    "uvloop": "uvloop",
    "prometheus_client": "prometheus-client", "pynvml": "nvidia-ml-py", "torch": "torch",
    "transformers": "transformers", "sentence_transformers": "sentence-transformers",
}  # fmt: skip
ASR_TARGET = 600.0  # x realtime, large-v3-turbo shape
EMBED_TARGET = 20_000.0  # chunks/s, MiniLM shape
BUSY_TARGET = 90.0  # % of the time a kernel runs
METHOD = (
    "ASR: the transformers engine itself (workers/asr_transformers.py, TransformersAsrModel."
    "around a WhisperForConditionalGeneration with random weights and SDPA attention, built "
    "from the shape, and a WhisperProcessor with Whisper's token layout), transcribing a video "
    "of windows * 30 s of noise with batch_size=batch: per batch, log-mel features on the GPU, "
    "one encoder pass, the language detected once per video (no language set, as by default), "
    "generate(encoder_outputs, return_timestamps=True), segments cut at timestamp pairs. The "
    "speech spans, one per 30 s window, are handed to transcribe(speech=...): the "
    "voice-activity detector is not timed. A logits processor put into the model's generate "
    "holds the decoder to a script of `new_tokens` tokens of timestamped segments ending like "
    "a finished window, then <|endoftext|>, standing in for trained weights (random ones end "
    "windows in ways that make generate decode the remainder again). x_realtime = windows * "
    "30 s / seconds for the whole video, batch after batch.",
    "Word timings are the engine's own too: a forced decoder pass over each window's text with "
    "hooks computing the alignment heads' cross-attention beside SDPA (workers/whisper_align.py), "
    "dynamic time warping on the host, then faster-whisper's word rules "
    "(workers/whisper_words.py). The model stays on SDPA: `attention` is its kernel after the "
    "run.",
    "Embeddings: sentence-transformers Transformer (random BertModel, WordPiece vocabulary of "
    "30522) + mean Pooling (+ Dense to 1536) + Normalize; encode(normalize_embeddings=True, "
    "convert_to_numpy=True) as workers/embedder.py calls it, on ~200-word chunks; "
    "tokenize_chunks_per_s is the tokenizer alone, batch by batch, on the host. The float32 "
    "batch-32 rows are what the embedder runs today (no dtype set, INGEST_EMBED_ENCODE_BATCH).",
    "busy_percent: mean of NVML utilisation.gpu sampled every 0.2 s over the timed part; "
    "timings after one warm-up call (an ASR video of one batch), with "
    "torch.cuda.synchronize().",
)


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    busy_percent: float | None
    peak_memory_gib: float | None


@dataclass(frozen=True, slots=True)
class AsrRun:
    shape: str
    dtype: str
    batch: int
    words: bool
    windows: int  # timed windows: one video, `batch` at a time
    status: str = "pending"
    timing: Timing | None = None
    tokens_per_window: int | None = None  # generated, as the decoder script has them
    segments_per_window: float | None = None
    words_per_window: float | None = None
    attention: str | None = None  # the model's attention kernel after the run
    x_realtime: float | None = None


@dataclass(frozen=True, slots=True)
class EmbedRun:
    shape: str
    dtype: str
    batch: int
    dimension: int
    chunks: int
    status: str = "pending"
    timing: Timing | None = None
    tokens_per_chunk: float | None = None
    chunks_per_s: float | None = None
    tokenize_chunks_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class Package:
    module: str
    importable: bool
    version: str | None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device: str
    gpu: str | None
    memory_gib: float | None
    capability: str | None
    driver: str | None
    cuda_driver: str | None
    torch: str
    torch_cuda: str | None
    nvml: bool
    cpus: int
    python: str


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    unit: str
    target: float
    value: float | None
    met: bool | None  # None: not judged (tiny shapes, or nothing measured)
    basis: str


@dataclass(frozen=True, slots=True)
class Report:
    scale: str
    device: DeviceInfo
    stack: tuple[Package, ...]
    new_tokens: int  # decoder tokens per 30 s window
    asr: tuple[AsrRun, ...] = ()
    embeddings: tuple[EmbedRun, ...] = ()
    targets: tuple[Target, ...] = ()
    targets_judged: bool = False
    note: str = "targets not judged: run not finished"
    method: tuple[str, ...] = METHOD
    seconds: float = 0.0


def stack() -> tuple[Package, ...]:
    return tuple(_package(module, dist) for module, dist in STACK.items())


def _package(module: str, dist: str) -> Package:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or one hidden on purpose
        found = False
    try:
        version = importlib.metadata.version(dist) if found else None
    except importlib.metadata.PackageNotFoundError:
        version = None
    return Package(module, found, version)


def device_info(device: str, handle: Any) -> DeviceInfo:
    import torch

    gpu = memory = capability = driver = cuda_driver = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu, memory = props.name, round(props.total_memory / 2**30, 1)
        capability = f"{props.major}.{props.minor}"
    if handle is not None:
        import pynvml

        driver = str(pynvml.nvmlSystemGetDriverVersion())
        version = int(pynvml.nvmlSystemGetCudaDriverVersion())
        cuda_driver = f"{version // 1000}.{version % 1000 // 10}"
    return DeviceInfo(
        device=device, gpu=gpu, memory_gib=memory, capability=capability, driver=driver,
        cuda_driver=cuda_driver, torch=torch.__version__, torch_cuda=torch.version.cuda,
        nvml=handle is not None, cpus=os.cpu_count() or 0, python=platform.python_version(),
    )  # fmt: skip


def judge(report: Report, judged: bool, asr_shape: str, embed_shape: str) -> Report:
    """The targets, on the best configuration of each: ASR without and with word timings on
    the large-v3-turbo shape, embeddings on the MiniLM shape, GPU busy % during those runs."""
    plain = _best_asr(report, asr_shape, words=False)
    worded = _best_asr(report, asr_shape, words=True)
    embed = max((r for r in report.embeddings if r.shape == embed_shape and r.chunks_per_s),
                key=lambda r: r.chunks_per_s or 0.0, default=None)  # fmt: skip
    targets: tuple[Target, ...] = (
        _target("asr_x_realtime", "x realtime", ASR_TARGET, plain,
                plain.x_realtime if plain else None),
        _target("asr_words_x_realtime", "x realtime", ASR_TARGET, worded,
                worded.x_realtime if worded else None),
        _target("embed_chunks_per_s", "chunks/s", EMBED_TARGET, embed,
                embed.chunks_per_s if embed else None),
        _target("gpu_busy_asr", "%", BUSY_TARGET, plain, _busy(plain)),
        _target("gpu_busy_embed", "%", BUSY_TARGET, embed, _busy(embed)),
    )  # fmt: skip
    if judged:
        targets = tuple(replace(t, met=t.value >= t.target if t.value is not None else None)
                        for t in targets)  # fmt: skip
    note = "targets judged" if judged else "targets not judged: tiny shapes (--quick or no CUDA)"
    return replace(report, targets=targets, targets_judged=judged, note=note)


def _best_asr(report: Report, shape: str, words: bool) -> AsrRun | None:
    runs = [r for r in report.asr if r.shape == shape and r.words == words and r.x_realtime]
    return max(runs, key=lambda r: r.x_realtime or 0.0, default=None)


def _busy(run: AsrRun | EmbedRun | None) -> float | None:
    return run.timing.busy_percent if run and run.timing else None


def _target(
    name: str, unit: str, target: float, run: AsrRun | EmbedRun | None, value: float | None
) -> Target:
    basis = "nothing measured"
    if run is not None:
        words = f", words={run.words}" if isinstance(run, AsrRun) else ""
        basis = f"best run: {run.shape} {run.dtype} batch {run.batch}{words}"
    return Target(name, unit, target, value, None, basis)


class BusySampler:
    """NVML's GPU utilisation, sampled every 0.2 s in a thread while a measurement runs."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import pynvml

        while not self._stop.wait(0.2):
            self._samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def percent(self) -> float | None:
        return round(sum(self._samples) / len(self._samples), 1) if self._samples else None


@contextmanager
def busy(handle: Any) -> Iterator[BusySampler | None]:
    if handle is None:
        yield None
        return
    with BusySampler(handle) as sampler:
        yield sampler


def nvml_handle() -> Any:
    """The NVML handle of CUDA device 0 (matched by UUID), or None without NVML."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "")) or "?"
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        same = [h for h in handles if uuid in str(pynvml.nvmlDeviceGetUUID(h))]
        return (same or handles)[0]
    except Exception:  # without NVML the figures stand; busy % is left out
        return None
