"""Speech recognition with Whisper on torch (transformers): the engine for GPUs CTranslate2
cannot use, and for installs without it. It gives the segments and words the faster-whisper
engine gives: it hears the same clips, computed the same way, and shapes the tokens by
faster-whisper's rules (`workers.whisper_words`, `workers.whisper_align`).

- Input: the speech the voice-activity detector found, joined into the same clips of at most
  30 s (`whisper_clips`); each clip's log-mel features are computed from the clip alone and
  padded with zeros to 30 s, as faster-whisper's batched pipeline does. Clips are decoded in
  batches with timestamp tokens, greedily (faster-whisper searches 5 beams).
- Language: `options.language`, else the one detected on the video's first clip, which then
  holds for the whole video (English-only models take none).
- Segments: each clip's tokens cut at timestamp pairs, as faster-whisper cuts them.
- Words (with `words`): a forced decoder pass over each clip's text gives the alignment heads'
  cross-attention, time-warped into word times as faster-whisper's alignment does; the model
  keeps its SDPA attention throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil
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
from workers.whisper_align import Aligner
from workers.whisper_words import (
    Piece,
    Timed,
    Timing,
    WordSplitter,
    split_clip,
    time_words,
)

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

FRAMES_PER_S = 100  # log-mel frames; the encoder halves them
CLIP_FRAMES = 3000
HOP = SAMPLE_RATE // FRAMES_PER_S


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

        source = hub_id(options.model)
        if Path(source, "model.bin").is_file() and not _has_torch_weights(Path(source)):
            raise ValueError(
                f"{source} is a CTranslate2 folder; the transformers engine needs the model in "
                "transformers format (or set INGEST_ASR_ENGINE=faster-whisper)"
            )
        processor = WhisperProcessor.from_pretrained(source, token=options.token)
        model = WhisperForConditionalGeneration.from_pretrained(
            source,
            token=options.token,
            dtype=torch_dtype(options.device, options.compute_type),
            attn_implementation="sdpa",
        )
        self._adopt(options, model, processor)

    @classmethod
    def around(cls, options: AsrOptions, model: Any, processor: Any) -> TransformersAsrModel:
        """The engine around a Whisper and its WhisperProcessor already in memory (the device
        check builds them from a shape): moved to the options' device, its dtype kept."""
        engine = cls.__new__(cls)
        engine._adopt(options, model, processor)
        return engine

    def _adopt(self, options: AsrOptions, model: Any, processor: Any) -> None:
        self.options = options
        self._device = f"cuda:{options.device_index}" if options.device == "cuda" else "cpu"
        self._processor = processor
        self._model: Any = model.to(self._device).eval()
        generation: Any = model.generation_config
        self.multilingual = bool(getattr(generation, "is_multilingual", True))
        self._aligner = Aligner(self._model)
        self._eot = int(generation.eos_token_id)
        self._timestamp_begin = int(generation.no_timestamps_token_id) + 1

    def transcribe(
        self, audio: Samples, *, words: bool = False, speech: Sequence[Span] | None = None
    ) -> list[Segment]:
        """Segments in time order, clipped to the audio's duration; with `words`, each carries
        its word timings. `speech` is what `detect_speech` found, when the caller has it."""
        if len(audio) == 0:
            return []
        clips = whisper_clips(detect_speech(audio) if speech is None else speech)
        language = self.options.language if self.multilingual else None
        last_speech = 0.0
        segments: list[Segment] = []
        size = self.options.batch_size
        for first in range(0, len(clips), size):
            batch = clips[first : first + size]
            found, language, last_speech = self._batch(audio, batch, language, words, last_speech)
            segments += found
        return [segment for segment in segments if segment.text]

    def _batch(
        self,
        audio: Samples,
        batch: Sequence[Span],
        language: str | None,
        words: bool,
        last_speech: float,
    ) -> tuple[list[Segment], str | None, float]:
        """One batch of clips: its segments, the video's language (`language`, else the one
        detected on the batch's first clip) and the end of the last speech heard, which
        faster-whisper's word rules look back at."""
        import torch

        features = self._features(audio, batch)
        with torch.inference_mode():
            encoded = self._model.model.encoder(features)
            if self.multilingual and language is None:
                language = self._detect_language(encoded.last_hidden_state[:1])
            ids = self._generate(encoded, language)
        splitter = WordSplitter(self._processor.tokenizer.backend_tokenizer, self._eot, language)
        parts = [
            split_clip(row, self._timestamp_begin, clip)
            for row, clip in zip(ids, batch, strict=True)
        ]
        found: list[Timed] = [[(p, []) for p in clip] for clip in parts]
        if words:
            found, last_speech = self._words(
                parts, splitter, encoded.last_hidden_state, batch, language, last_speech
            )
        end = duration_s(audio)
        segments = [
            _segment(splitter, piece, timed, end) for clip in found for piece, timed in clip
        ]
        return segments, language, last_speech

    def _words(
        self,
        parts: list[list[Piece]],
        splitter: WordSplitter,
        hidden: Any,
        batch: Sequence[Span],
        language: str | None,
        last_speech: float,
    ) -> tuple[list[Timed], float]:
        """Each piece with its bounds moved to its words, and the words; the end of the last
        speech heard, which the rules for a word after a pause look back at."""
        texts = [[t for piece in clip for t in piece.tokens if t < self._eot] for clip in parts]
        frames = [int(ceil(b - a) * FRAMES_PER_S) for a, b in batch]  # as faster-whisper crops
        aligned = self._aligner.align(hidden, self._start_sequence(language), texts, frames)
        out: list[Timed] = []
        for pieces, alignment, clip in zip(parts, aligned, batch, strict=True):
            timed, last_speech = time_words(pieces, alignment, splitter, clip[0], last_speech)
            out.append(timed)
        return out, last_speech

    def _start_sequence(self, language: str | None) -> list[int]:
        """What the forced pass starts with: <|startoftranscript|>, then the language and the
        task where the model takes them."""
        generation: Any = self._model.generation_config
        start = int(generation.decoder_start_token_id)
        if not self.multilingual:
            return [start]
        language_id = generation.lang_to_id[f"<|{language}|>"]
        return [start, int(language_id), int(generation.task_to_id["transcribe"])]

    def _features(self, audio: Samples, batch: Sequence[Span]) -> Any:
        """Each clip's log-mel features from the clip alone (and 10 ms of silence, as
        faster-whisper pads it), zero beyond its end, 30 s long."""
        import torch

        clips = [np.pad(audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)], (0, HOP))
                 for a, b in batch]  # fmt: skip
        features = self._processor.feature_extractor(
            clips, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt",
            device=self._device,
        )["input_features"].to(self._device, self._model.dtype)  # fmt: skip
        ends = torch.tensor([len(clip) // HOP - 1 for clip in clips], device=self._device)
        inside = torch.arange(features.shape[-1], device=self._device)[None, :] < ends[:, None]
        features = (features * inside[:, None])[..., :CLIP_FRAMES]
        return torch.nn.functional.pad(features, (0, CLIP_FRAMES - features.shape[-1]))

    def _detect_language(self, hidden: Any) -> str:
        from transformers.modeling_outputs import BaseModelOutput

        encoded = BaseModelOutput(last_hidden_state=hidden)
        found = self._model.detect_language(encoder_outputs=encoded)
        token: str = self._processor.tokenizer.convert_ids_to_tokens(int(found[0]))
        return token.strip("<|>")

    def _generate(self, encoded: Any, language: str | None) -> list[list[int]]:
        """Each clip's text and timestamp tokens (the prompt and <|endoftext|> left out)."""
        import torch

        prompt = {"language": language, "task": "transcribe"} if self.multilingual else {}
        # The encoder hears all 30 s of every clip; saying so keeps generation from guessing.
        heard = torch.ones(encoded.last_hidden_state.shape[0], CLIP_FRAMES, dtype=torch.long,
                           device=self._device)  # fmt: skip
        out = self._model.generate(encoder_outputs=encoded, attention_mask=heard,
                                   return_timestamps=True, **prompt)  # fmt: skip
        sequences = out["sequences"] if isinstance(out, dict) else out
        eot, timestamps = self._eot, self._timestamp_begin
        return [[t for t in row if t < eot or t >= timestamps] for row in sequences.tolist()]


def _segment(splitter: WordSplitter, piece: Piece, words: list[Timing], end: float) -> Segment:
    """A piece as a segment, its times inside the audio."""
    return Segment(
        start_s=min(round(piece.start, 3), end),
        end_s=min(round(piece.end, 3), end),
        text=splitter.decode(piece.tokens).strip(),
        words=tuple(Word(min(w.start, end), min(w.end, end), w.word) for w in words),
    )


def _has_torch_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()
