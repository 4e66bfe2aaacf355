"""Loading the models a run needs, once, before any video is taken."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ingest.config import Settings, apply_process_environment, cuda_device_count
from workers.asr import AsrModel, AsrOptions
from workers.diarization import DiarizationOptions, Diarizer
from workers.embedder import EmbedderOptions, TextEmbedder
from workers.speakers import SpeakerAttributor, SpeakerOptions, VoiceProfile
from workers.voice import VoiceEncoder, VoiceOptions

T = TypeVar("T")


class ModelLoadError(Exception):
    """A configured model cannot be loaded; nothing is processed (exit status 2)."""


@dataclass(frozen=True, slots=True)
class GpuWorker:
    """The models of one GPU worker, all on the same device."""

    asr: AsrModel
    speakers: SpeakerAttributor


@dataclass(frozen=True, slots=True)
class Models:
    workers: tuple[GpuWorker, ...]  # one per ASR worker, spread over the visible GPUs
    embedder: TextEmbedder


def _load(kind: str, name: str, loader: Callable[[], T]) -> T:
    try:
        return loader()
    except Exception as exc:
        raise ModelLoadError(f"cannot load {kind} model {name!r}: {exc}") from exc


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


def load_diarizer(settings: Settings, worker: int = 0) -> Diarizer:
    device, index = _device(settings, worker)
    options = DiarizationOptions(
        model=settings.diarization_model,
        device=f"cuda:{index}" if device == "cuda" else device,
        token=settings.hf_token,
    )
    apply_process_environment(settings)
    return _load("diarization", options.model, lambda: Diarizer(options))


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


def load_worker(settings: Settings, worker: int, profiles: Sequence[VoiceProfile]) -> GpuWorker:
    speakers_on = settings.diarization != "off"
    voice = load_voice(settings, worker) if speakers_on else None
    diarizer = load_diarizer(settings, worker) if speakers_on else None
    attributor = SpeakerAttributor(speaker_options(settings), voice, diarizer, profiles)
    return GpuWorker(asr=load_asr(settings, worker), speakers=attributor)


def load_models(settings: Settings, profiles: Sequence[VoiceProfile] = ()) -> Models:
    """Blocking; fails fast on the first model that cannot be loaded."""
    workers = tuple(
        load_worker(settings, worker, profiles) for worker in range(settings.resolved_asr_workers())
    )
    return Models(workers=workers, embedder=load_embedder(settings))
