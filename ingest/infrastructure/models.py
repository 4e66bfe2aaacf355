"""Loading the models a run needs, once, before any video is taken."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import structlog

from ingest.infrastructure.config import Settings, apply_process_environment, cuda_device_count
from workers.asr import AsrModel, AsrOptions, Samples, Span, SpeechRecognizer, detect_speech
from workers.clustering import ClusteringDiarizer, ClusteringOptions
from workers.diarization import DiarizationOptions, Diarizer, SpeakerTurns
from workers.embedder import EmbedderOptions, TextEmbedder
from workers.speakers import SpeakerAttributor, SpeakerOptions, VoiceProfile
from workers.voice import VoiceEncoder, VoiceOptions

T = TypeVar("T")
log = structlog.get_logger()


class ModelLoadError(Exception):
    """A configured model cannot be loaded; nothing is processed (exit status 2)."""


@dataclass(frozen=True, slots=True)
class GpuWorker:
    """The models of one GPU worker, all on the same device."""

    asr: SpeechRecognizer
    speakers: SpeakerAttributor
    # Voice activity: where the speech is, for ASR and speakers alike.
    vad: Callable[[Samples], list[Span]] = detect_speech


@dataclass(frozen=True, slots=True)
class DiarizerChoice:
    """Which diarizer a run uses, and why (logged once, shown by `ingest doctor`)."""

    kind: Literal["pyannote", "ecapa", "off"]
    reason: str
    explicit: bool = False  # chosen by INGEST_DIARIZER, not guessed: a failure to load is fatal


@dataclass(frozen=True, slots=True)
class AsrEngineChoice:
    """Which engine runs Whisper, and why (logged once, shown by `ingest doctor`)."""

    engine: Literal["faster-whisper", "transformers"]
    reason: str


@dataclass(frozen=True, slots=True)
class Models:
    workers: tuple[GpuWorker, ...]  # one per ASR worker, spread over the visible GPUs
    embedder: TextEmbedder
    diarizer: DiarizerChoice = DiarizerChoice("off", "no speaker models loaded")
    asr_engine: AsrEngineChoice = AsrEngineChoice("faster-whisper", "the default")


def _load(kind: str, name: str, loader: Callable[[], T]) -> T:
    """Hub models are downloaded on first use, with progress bars on stderr."""
    log.info("model_loading", kind=kind, model=name)
    started = time.perf_counter()
    try:
        model = loader()
    except Exception as exc:
        raise ModelLoadError(f"cannot load {kind} model {name!r}: {exc}") from exc
    log.info("model_loaded", kind=kind, model=name, seconds=round(time.perf_counter() - started, 1))
    return model


def _device(settings: Settings, worker: int) -> tuple[str, int]:
    device = settings.resolved_device()
    gpus = max(1, cuda_device_count()) if device == "cuda" else 1
    return device, worker % gpus


def _model_format(model: str) -> Literal["ctranslate2", "transformers"] | None:
    """The format of a local model folder; None for a hub id or size name."""
    folder = Path(model).expanduser()
    if (folder / "model.bin").is_file():
        return "ctranslate2"
    if any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file():
        return "transformers"
    return None


def choose_asr_engine(settings: Settings) -> AsrEngineChoice:
    """faster-whisper where it is installed and CTranslate2 can run the model (any CPU; a GPU
    it sees, with the cuBLAS and cuDNN it opens), else Whisper on torch."""
    if settings.asr_engine != "auto":
        return AsrEngineChoice(settings.asr_engine, f"INGEST_ASR_ENGINE={settings.asr_engine}")
    form = _model_format(settings.resolved_asr_model())
    if form == "transformers":
        return AsrEngineChoice("transformers", "INGEST_ASR_MODEL is a transformers folder")
    if not all(importlib.util.find_spec(name) for name in ("faster_whisper", "ctranslate2")):
        return AsrEngineChoice("transformers", "faster-whisper is not installed")
    if settings.resolved_device() == "cpu":
        return AsrEngineChoice("faster-whisper", "CTranslate2 runs on the CPU")
    if (count := cuda_device_count()) == 0:
        return AsrEngineChoice("transformers", "CTranslate2 sees no CUDA device")
    from workers.cuda_libs import preload_cuda_libraries

    missing = [lib.describe() for lib in preload_cuda_libraries() if not lib.ok]
    if missing and form is None:
        return AsrEngineChoice("transformers", f"CTranslate2 cannot run: {'; '.join(missing)}")
    return AsrEngineChoice("faster-whisper", f"CTranslate2 sees {count} CUDA device(s)")


def load_asr(
    settings: Settings, worker: int = 0, engine: AsrEngineChoice | None = None
) -> SpeechRecognizer:
    device, index = _device(settings, worker)
    options = AsrOptions(
        model=settings.resolved_asr_model(),
        device=device,
        compute_type=settings.resolved_compute_type(),
        batch_size=settings.asr_batch_size,
        language=settings.asr_language,
        device_index=index,
        token=settings.resolved_hf_token(),
    )
    if (engine or choose_asr_engine(settings)).engine == "transformers":
        from workers.asr_transformers import TransformersAsrModel

        return _load("ASR", options.model, lambda: TransformersAsrModel(options))
    return _load("ASR", options.model, lambda: AsrModel(options))


def load_voice(settings: Settings, worker: int = 0) -> VoiceEncoder:
    device, index = _device(settings, worker)
    options = VoiceOptions(
        model=settings.voice_model,
        savedir=settings.model_dir / "voice",
        device=f"cuda:{index}" if device == "cuda" else device,
        batch_size=settings.voice_batch_size,
    )
    apply_process_environment(settings)
    return _load("voice", options.model, lambda: VoiceEncoder(options))


def _pyannote_cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.yaml"), str)
    except ValueError:  # not a hub id
        return False


def choose_diarizer(settings: Settings) -> DiarizerChoice:
    """pyannote when it can be had (a local pipeline, a token, or a cached copy) or is asked for;
    otherwise ECAPA clustering, which needs no gated model."""
    if settings.diarization == "off":
        return DiarizerChoice("off", "INGEST_DIARIZATION=off")
    if settings.diarizer != "auto":
        return DiarizerChoice(settings.diarizer, f"INGEST_DIARIZER={settings.diarizer}", True)
    model = settings.diarization_model
    if Path(model).expanduser().exists():
        return DiarizerChoice("pyannote", f"local pipeline {model}", True)
    if not settings.is_default("diarization_model"):
        return DiarizerChoice("pyannote", f"INGEST_DIARIZATION_MODEL={model}", True)
    if settings.resolved_hf_token():
        return DiarizerChoice("pyannote", "a Hugging Face token is set")
    if _pyannote_cached(model):
        return DiarizerChoice("pyannote", f"{model} is in the Hugging Face cache")
    return DiarizerChoice(
        "ecapa",
        f"{model} is gated and no Hugging Face token is set (HF_TOKEN); "
        "speakers come from clustering ECAPA voice embeddings",
    )


def load_diarizer(settings: Settings, worker: int = 0) -> Diarizer:
    """The pyannote pipeline; a gated hub model without a token is explained, not just failed."""
    device, index = _device(settings, worker)
    token = settings.resolved_hf_token()
    options = DiarizationOptions(
        model=settings.diarization_model,
        device=f"cuda:{index}" if device == "cuda" else device,
        token=token,
    )
    apply_process_environment(settings)
    try:
        return _load("diarization", options.model, lambda: Diarizer(options))
    except ModelLoadError as exc:
        if token or Path(options.model).expanduser().exists():
            raise
        raise ModelLoadError(
            f"cannot load diarization model {options.model!r}: it is gated on Hugging Face and "
            f"no token is set; accept its terms at https://huggingface.co/{options.model}, "
            "set HF_TOKEN, or set INGEST_DIARIZER=ecapa (needs no token)"
        ) from exc


def load_speaker_turns(
    settings: Settings, worker: int, voice: VoiceEncoder, choice: DiarizerChoice
) -> tuple[SpeakerTurns, DiarizerChoice]:
    """The chosen diarizer. A pyannote pipeline that auto-detection picked but that will not
    load (a token without accepted terms, a broken cache) gives way to ECAPA clustering."""
    clustering = ClusteringOptions(threshold=settings.cluster_threshold)
    if choice.kind == "ecapa":
        return ClusteringDiarizer(voice, clustering), choice
    try:
        return load_diarizer(settings, worker), choice
    except ModelLoadError as exc:
        if choice.explicit:
            raise
        log.warning("pyannote_unavailable", error=str(exc))
        fallback = DiarizerChoice("ecapa", f"pyannote could not be loaded: {exc}")
        return ClusteringDiarizer(voice, clustering), fallback


def load_embedder(settings: Settings) -> TextEmbedder:
    options = EmbedderOptions(
        settings.embedding_model, settings.resolved_device(), settings.embed_encode_batch
    )
    return _load("embedding", options.model, lambda: TextEmbedder(options))


def load_embedding_model(model: str, like: TextEmbedder) -> TextEmbedder:
    """Another embedding model, on the device and with the batch size of `like`."""
    options = dataclasses.replace(like.options, model=model)
    return _load("embedding", model, lambda: TextEmbedder(options))


class EmbedderSlot:
    """The embedding model a run writes with. When the corpus switches models under a running
    writer (`ingest reembed`), the sink loads the corpus's new model here, once, and the embed
    stage takes it for the batches that follow."""

    def __init__(self, embedder: TextEmbedder) -> None:
        self.current = embedder
        self._lock = asyncio.Lock()

    async def follow(self, model: str) -> TextEmbedder:
        async with self._lock:
            if self.current.name != model:
                self.current = await asyncio.to_thread(load_embedding_model, model, self.current)
                log.warning("embedding_model_followed", model=model)
        return self.current


def speaker_options(settings: Settings) -> SpeakerOptions:
    return SpeakerOptions(
        mode=settings.diarization,
        hosts=settings.host_names,
        fastpath_threshold=settings.fastpath_threshold,
        match_threshold=settings.speaker_match_threshold,
        windows=settings.fastpath_windows,
    )


def load_worker(
    settings: Settings,
    worker: int,
    profiles: Sequence[VoiceProfile],
    choice: DiarizerChoice,
    engine: AsrEngineChoice | None = None,
) -> tuple[GpuWorker, DiarizerChoice]:
    voice, diarizer = None, None
    if choice.kind != "off":
        voice = load_voice(settings, worker)
        diarizer, choice = load_speaker_turns(settings, worker, voice, choice)
    attributor = SpeakerAttributor(speaker_options(settings), voice, diarizer, profiles)
    return GpuWorker(asr=load_asr(settings, worker, engine), speakers=attributor), choice


def load_models(settings: Settings, profiles: Sequence[VoiceProfile] = ()) -> Models:
    """Blocking; fails fast on the first model that cannot be loaded."""
    choice = choose_diarizer(settings)
    engine = choose_asr_engine(settings)
    log.info("asr_engine_chosen", engine=engine.engine, reason=engine.reason)
    workers: list[GpuWorker] = []
    for worker in range(settings.resolved_asr_workers()):
        loaded, choice = load_worker(settings, worker, profiles, choice, engine)
        workers.append(loaded)
    log.info("diarizer_chosen", diarizer=choice.kind, reason=choice.reason)
    return Models(
        workers=tuple(workers),
        embedder=load_embedder(settings),
        diarizer=choice,
        asr_engine=engine,
    )
