"""Speech recognition with Whisper on torch (transformers): the engine for GPUs CTranslate2
cannot use. It gives the same timed segments and words as the faster-whisper engine.

The speech the voice-activity detector finds is cut into the same clips of at most 30 s
(Whisper's context) as the faster-whisper engine hears, and the clips are decoded in batches.
Timestamp tokens give the segments; with `words`, the cross-attention alignment (token
timestamps) gives the words.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.asr import (
    SAMPLE_RATE,
    AsrOptions,
    Samples,
    Span,
    detect_speech,
    duration_s,
    whisper_clips,
)
from workers.chunking import Segment, Word

# Whisper's size names, as faster-whisper takes them, and where their transformers weights are.
HUB_MODELS = {
    "tiny": "openai/whisper-tiny", "tiny.en": "openai/whisper-tiny.en",
    "base": "openai/whisper-base", "base.en": "openai/whisper-base.en",
    "small": "openai/whisper-small", "small.en": "openai/whisper-small.en",
    "medium": "openai/whisper-medium", "medium.en": "openai/whisper-medium.en",
    "large-v1": "openai/whisper-large", "large-v2": "openai/whisper-large-v2",
    "large-v3": "openai/whisper-large-v3", "large": "openai/whisper-large-v3",
    "large-v3-turbo": "openai/whisper-large-v3-turbo", "turbo": "openai/whisper-large-v3-turbo",
    "distil-large-v2": "distil-whisper/distil-large-v2",
    "distil-large-v3": "distil-whisper/distil-large-v3",
    "distil-medium.en": "distil-whisper/distil-medium.en",
    "distil-small.en": "distil-whisper/distil-small.en",
}  # fmt: skip


def torch_dtype(device: str, compute_type: str) -> Any:
    """Half precision on a GPU (bfloat16 when asked for), full precision on a CPU, where half
    precision is slow or unsupported."""
    import torch

    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if "bfloat16" in compute_type else torch.float16


def hub_id(model: str) -> str:
    return model if Path(model).expanduser().is_dir() else HUB_MODELS.get(model, model)


class TransformersAsrModel:
    """One loaded Whisper in transformers format (a hub id, a size name or a local folder)."""

    def __init__(self, options: AsrOptions) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.options = options
        source = hub_id(options.model)
        if Path(source, "model.bin").is_file() and not _has_torch_weights(Path(source)):
            raise ValueError(
                f"{source} is a CTranslate2 folder; the transformers engine needs the model in "
                "transformers format (or set INGEST_ASR_ENGINE=faster-whisper)"
            )
        self._device = f"cuda:{options.device_index}" if options.device == "cuda" else "cpu"
        self._processor = WhisperProcessor.from_pretrained(source, token=options.token)
        model = WhisperForConditionalGeneration.from_pretrained(
            source,
            token=options.token,
            dtype=torch_dtype(options.device, options.compute_type),
            attn_implementation="sdpa",
        )
        self._model: Any = model.to(self._device).eval()  # type: ignore[arg-type]
        generation: Any = model.generation_config
        self._timestamp_begin = int(generation.no_timestamps_token_id) + 1
        self._first_special = int(generation.eos_token_id)  # <|endoftext|>, then the others
        # English-only models refuse to be told a language or task.
        multilingual = getattr(generation, "is_multilingual", True)
        self._prompt = {"language": options.language, "task": "transcribe"} if multilingual else {}

    def transcribe(
        self, audio: Samples, *, words: bool = False, speech: Sequence[Span] | None = None
    ) -> list[Segment]:
        """Segments in time order, clipped to the audio's duration; with `words`, each carries
        its word timings. `speech` is what `detect_speech` found, when the caller has it."""
        if len(audio) == 0:
            return []
        cuts = whisper_clips(detect_speech(audio) if speech is None else speech)
        segments: list[Segment] = []
        size = self.options.batch_size
        for first in range(0, len(cuts), size):
            batch = cuts[first : first + size]
            for window, decoded in zip(batch, self._decode(audio, batch, words), strict=True):
                segments += self._segments(window, *decoded)
        end = duration_s(audio)
        return [_clip(segment, end) for segment in segments if segment.text]

    def _decode(
        self, audio: Samples, batch: Sequence[Span], words: bool
    ) -> list[tuple[list[int], list[float] | None]]:
        """Token ids (timestamp tokens included) and, with `words`, each token's time."""
        import torch

        clips = [audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] for start, end in batch]
        features = self._processor.feature_extractor(
            clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True,
            device=self._device,
        )  # fmt: skip
        with torch.inference_mode():
            out = self._model.generate(
                features["input_features"].to(self._device, self._model.dtype),
                attention_mask=features["attention_mask"].to(self._device),
                return_timestamps=True,
                return_token_timestamps=words,
                **self._prompt,
            )
        sequences = out["sequences"] if isinstance(out, dict) else out
        times = out["token_timestamps"].tolist() if words else [None] * len(batch)
        return list(zip(sequences.tolist(), times, strict=True))

    @property
    def _specials(self) -> tuple[int, int]:
        return self._first_special, self._timestamp_begin

    def _segments(self, window: Span, ids: list[int], times: list[float] | None) -> list[Segment]:
        offset, length = window[0], window[1] - window[0]
        return [
            Segment(
                start_s=offset + start,
                end_s=offset + end,
                text=self._text(span).strip(),
                words=self._words(offset, span, start, end) if times else (),
            )
            for start, end, span in _spans(ids, times, self._specials, length)
        ]

    def _text(self, span: Sequence[tuple[int, float]]) -> str:
        text: str = self._processor.tokenizer.decode([token for token, _ in span],
                                                     skip_special_tokens=True)  # fmt: skip
        return text

    def _words(
        self, offset: float, span: Sequence[tuple[int, float]], start: float, end: float
    ) -> tuple[Word, ...]:
        """Tokens joined into words at leading spaces; a word lasts from its first token's time
        to the next word's, kept in order and inside its segment."""
        groups: list[list[tuple[int, float]]] = []
        for token, at in span:
            piece = self._text([(token, at)])
            if not piece:
                continue
            if not groups or piece.startswith(" "):
                groups.append([])
            groups[-1].append((token, at))
        starts = [min(max(group[0][1], start), end) for group in groups]
        starts = np.maximum.accumulate(np.asarray(starts or [0.0])).tolist()
        ends = [*starts[1:], end]
        return tuple(
            Word(offset + s, offset + e, self._text(group))
            for group, s, e in zip(groups, starts, ends, strict=False)
        )


def _spans(
    ids: Sequence[int], times: Sequence[float] | None, specials: tuple[int, int], length: float
) -> Iterator[tuple[float, float, list[tuple[int, float]]]]:
    """(start, end, text tokens with their times) of each timestamped segment of one window.
    A segment left open by the window's end (no closing timestamp) ends with the window.
    `specials` are the first special token and the first timestamp token."""
    first_special, timestamp_begin = specials
    stamps = list(times) if times is not None else [0.0] * len(ids)
    start: float | None = None
    span: list[tuple[int, float]] = []
    for token, at in zip(ids, stamps, strict=False):
        if token < first_special:
            span.append((token, at))
            continue
        if token < timestamp_begin:  # padding, <|endoftext|>: no text, no time
            continue
        stamp = min((token - timestamp_begin) * 0.02, length)
        if span:
            begin = start or 0.0
            yield begin, max(stamp, begin), span
            span = []
        start = stamp
    if span:
        begin = start or 0.0
        yield begin, max(length, begin), span


def _clip(segment: Segment, end: float) -> Segment:
    return Segment(
        start_s=min(segment.start_s, end),
        end_s=min(segment.end_s, end),
        text=segment.text,
        words=tuple(Word(min(w.start_s, end), min(w.end_s, end), w.text) for w in segment.words),
    )


def _has_torch_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()
