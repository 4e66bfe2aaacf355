"""Who speaks when: the pyannote.audio speaker-diarization pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workers.asr import SAMPLE_RATE, Waveform


@dataclass(frozen=True, slots=True)
class Turn:
    start_s: float
    end_s: float
    speaker: str  # the pipeline's cluster label


class SpeakerTurns(Protocol):
    """A diarizer: pyannote's pipeline, or ECAPA clustering (workers/clustering.py)."""

    @property
    def name(self) -> str: ...

    def diarize(
        self, audio: Waveform, regions: Sequence[tuple[float, float]] | None = None
    ) -> list[Turn]: ...


@dataclass(frozen=True, slots=True)
class DiarizationOptions:
    model: str  # a hub id, a local pipeline folder or its config.yaml
    device: str = "cpu"
    token: str | None = None  # for gated hub models


class Diarizer:
    def __init__(self, options: DiarizationOptions) -> None:
        import torch
        from pyannote.audio import Pipeline

        self.options = options
        pipeline = Pipeline.from_pretrained(options.model, token=options.token)
        if pipeline is None:
            raise ValueError(f"{options.model} is not a pyannote pipeline (or needs HF_TOKEN)")
        pipeline.to(torch.device(options.device))
        self._pipeline: Any = pipeline

    @property
    def name(self) -> str:
        return self.options.model

    def diarize(
        self, audio: Waveform, regions: Sequence[tuple[float, float]] | None = None
    ) -> list[Turn]:
        """Turns without overlap, in time order. The waveform is passed in memory: given a path,
        pyannote 4 decodes again and runs several times slower. pyannote finds speech with its
        own segmentation model, so `regions` is not needed."""
        import torch

        output = self._pipeline(
            {"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE}
        )
        # pyannote 4 returns both views; 3.x returns the annotation itself.
        annotation = getattr(output, "exclusive_speaker_diarization", output)
        turns = [
            Turn(float(segment.start), float(segment.end), str(label))
            for segment, _, label in annotation.itertracks(yield_label=True)
        ]
        return sorted(turns, key=lambda t: t.start_s)
