"""Loading the models a run needs, once, before any video is taken."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.config import Settings, cuda_device_count
from workers.asr import AsrModel, AsrOptions
from workers.embedder import EmbedderOptions, TextEmbedder


class ModelLoadError(Exception):
    """A configured model cannot be loaded; nothing is processed (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Models:
    asr: tuple[AsrModel, ...]  # one per ASR worker, spread over the visible GPUs
    embedder: TextEmbedder


def load_asr_models(settings: Settings) -> tuple[AsrModel, ...]:
    device = settings.resolved_device()
    gpus = max(1, cuda_device_count()) if device == "cuda" else 1
    name = settings.resolved_asr_model()
    try:
        return tuple(
            AsrModel(
                AsrOptions(
                    model=name,
                    device=device,
                    compute_type=settings.resolved_compute_type(),
                    batch_size=settings.asr_batch_size,
                    language=settings.asr_language,
                    device_index=worker % gpus,
                )
            )
            for worker in range(settings.resolved_asr_workers())
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load ASR model {name!r}: {exc}") from exc


def load_embedder(settings: Settings) -> TextEmbedder:
    name = settings.embedding_model
    try:
        return TextEmbedder(
            EmbedderOptions(name, settings.resolved_device(), settings.embed_encode_batch)
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load embedding model {name!r}: {exc}") from exc


def load_models(settings: Settings) -> Models:
    """Blocking; fails fast on the first model that cannot be loaded."""
    return Models(asr=load_asr_models(settings), embedder=load_embedder(settings))
