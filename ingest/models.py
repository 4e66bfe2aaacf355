"""Loading the models a run needs, once, before any video is taken."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import structlog

from ingest.config import Settings, apply_process_environment, cuda_device_count
from workers.asr import AsrModel, AsrOptions
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

    asr: AsrModel
    speakers: SpeakerAttributor


@dataclass(frozen=True, slots=True)
class DiarizerChoice:
    """Which diarizer a run uses, and why (logged once, shown by `ingest doctor`)."""

    kind: Literal["pyannote", "ecapa", "off"]
    reason: str
    explicit: bool = False  # chosen by INGEST_DIARIZER, not guessed: a failure to load is fatal


@dataclass(frozen=True, slots=True)
class Models:
    workers: tuple[GpuWorker, ...]  # one per ASR worker, spread over the visible GPUs
    embedder: TextEmbedder
    diarizer: DiarizerChoice = DiarizerChoice("off", "no speaker models loaded")


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


def load_asr(settings: Settings, worker: int = 0) -> AsrModel:
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


def speaker_options(settings: Settings) -> SpeakerOptions:
    return SpeakerOptions(
        mode=settings.diarization,
        hosts=settings.host_names,
        fastpath_threshold=settings.fastpath_threshold,
        match_threshold=settings.speaker_match_threshold,
        windows=settings.fastpath_windows,
    )


def load_worker(
    settings: Settings, worker: int, profiles: Sequence[VoiceProfile], choice: DiarizerChoice
) -> tuple[GpuWorker, DiarizerChoice]:
    voice, diarizer = None, None
    if choice.kind != "off":
        voice = load_voice(settings, worker)
        diarizer, choice = load_speaker_turns(settings, worker, voice, choice)
    attributor = SpeakerAttributor(speaker_options(settings), voice, diarizer, profiles)
    return GpuWorker(asr=load_asr(settings, worker), speakers=attributor), choice


def load_models(settings: Settings, profiles: Sequence[VoiceProfile] = ()) -> Models:
    """Blocking; fails fast on the first model that cannot be loaded."""
    choice = choose_diarizer(settings)
    workers: list[GpuWorker] = []
    for worker in range(settings.resolved_asr_workers()):
        loaded, choice = load_worker(settings, worker, profiles, choice)
        workers.append(loaded)
    log.info("diarizer_chosen", diarizer=choice.kind, reason=choice.reason)
    return Models(workers=tuple(workers), embedder=load_embedder(settings), diarizer=choice)
