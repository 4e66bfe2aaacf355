"""The transformers engine's own workings on the random-weight stand-in: the attention
implementation it keeps, the language it holds for a video, how it cuts a clip's tokens into
segments, and its time warping. One engine for the module (~10 s to load); each test ~1-5 s."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers.models.whisper.generation_whisper import _dynamic_time_warping

from tests.conftest import Speech
from workers import whisper_words
from workers.asr import AsrOptions, detect_speech
from workers.asr_transformers import TransformersAsrModel
from workers.decode import decode_audio
from workers.whisper_align import Alignment, warp


@pytest.fixture(scope="module")
def engine(hf_whisper: Path) -> TransformersAsrModel:
    return TransformersAsrModel(AsrOptions(str(hf_whisper), batch_size=2))


@pytest.fixture(scope="module")
def long_audio(speech: Speech) -> tuple[Any, list[tuple[float, float]]]:
    audio = decode_audio(speech.long)
    return audio, detect_speech(audio)


def attention(engine: TransformersAsrModel) -> set[str]:
    """The attention implementation of the model and of every config under it."""
    model = engine._model
    configs = [model.config, model.model.config, model.model.encoder.config,
               model.model.decoder.config]  # fmt: skip
    return {config._attn_implementation for config in configs}


def test_word_timings_leave_the_model_on_sdpa(
    engine: TransformersAsrModel,
    long_audio: tuple[Any, list[tuple[float, float]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The alignment pass computes its heads' cross-attention beside SDPA, so the model's
    attention implementation never changes (transformers' own token timestamps switch it to
    eager for good), and a pass that fails leaves no hook behind. ~6 s."""
    audio, speech = long_audio[0], long_audio[1][:2]
    assert attention(engine) == {"sdpa"}
    before = engine.transcribe(audio, speech=speech)
    switches: list[Any] = []
    monkeypatch.setattr(engine._model, "set_attn_implementation", switches.append)
    with_words = engine.transcribe(audio, words=True, speech=speech)
    assert switches == [] and attention(engine) == {"sdpa"}
    assert engine.transcribe(audio, speech=speech) == before
    assert [s.text for s in with_words] == [s.text for s in before]
    assert all(s.words for s in with_words)

    def broken(*args: Any) -> None:
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr("workers.whisper_align._capture", broken)
        with pytest.raises(RuntimeError, match="out of memory"):
            engine.transcribe(audio, words=True, speech=speech[:1])
    layers = engine._model.model.decoder.layers
    assert not any(layer.encoder_attn._forward_pre_hooks for layer in layers)
    assert engine.transcribe(audio, words=True, speech=speech) == with_words


class Spy:
    """Counts language detections (answering `answer` when given) and records the language
    of every generate call."""

    def __init__(self, engine: TransformersAsrModel, answer: str | None = None) -> None:
        self.detections = 0
        self.languages: list[str | None] = []
        self.calls: list[dict[str, Any]] = []
        self._detect, self._generate = engine._model.detect_language, engine._model.generate
        self._answer = engine._processor.tokenizer.convert_tokens_to_ids(f"<|{answer}|>")
        self._fixed = answer is not None

    def detect(self, **kwargs: Any) -> Any:
        self.detections += 1
        found = self._detect(**kwargs)
        return found * 0 + self._answer if self._fixed else found

    def generate(self, **kwargs: Any) -> Any:
        self.languages.append(kwargs.get("language"))
        self.calls.append(kwargs)
        return self._generate(**kwargs)


def spy_on(engine: TransformersAsrModel, patch: pytest.MonkeyPatch, answer: str | None) -> Spy:
    spy = Spy(engine, answer)
    patch.setattr(engine._model, "detect_language", spy.detect)
    patch.setattr(engine._model, "generate", spy.generate)
    return spy


def test_the_language_is_detected_once_per_video(
    engine: TransformersAsrModel,
    long_audio: tuple[Any, list[tuple[float, float]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One clip per batch, so several batches: the language found on the first clip holds
    for all of them; a language in the options is never detected. ~6 s."""
    audio, speech = long_audio
    monkeypatch.setattr(engine, "options", replace(engine.options, batch_size=1))
    spy = spy_on(engine, monkeypatch, "de")
    assert engine.transcribe(audio, speech=speech)
    assert spy.detections == 1
    assert len(spy.languages) >= 2 and set(spy.languages) == {"de"}

    monkeypatch.setattr(engine, "options", replace(engine.options, language="fr"))
    spy = spy_on(engine, monkeypatch, None)
    assert engine.transcribe(audio, speech=speech)
    assert spy.detections == 0 and set(spy.languages) == {"fr"}


def test_an_english_only_model_is_given_no_language(
    hf_whisper: Path,
    tmp_path: Path,
    long_audio: tuple[Any, list[tuple[float, float]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """English-only models refuse a language or a task, and none is detected, whatever the
    options say. The same weights, configured as the hub's English-only models are. ~3 s."""
    for path in hf_whisper.iterdir():
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "generation_config.json").unlink()
    generation = json.loads((hf_whisper / "generation_config.json").read_text())
    # As the hub's English-only configs have it: no languages, no tasks.
    for key in ("lang_to_id", "task_to_id"):
        del generation[key]
    generation |= {"is_multilingual": False,
                   "forced_decoder_ids": [[1, generation["no_timestamps_token_id"]]]}  # fmt: skip
    (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    english = TransformersAsrModel(AsrOptions(str(tmp_path), language="de"))
    spy = spy_on(english, monkeypatch, None)
    audio, speech = long_audio
    found = english.transcribe(audio, words=True, speech=speech[:2])
    assert [s.text for s in found] == ["test transcript"] and found[0].words
    assert spy.detections == 0 and spy.languages == [None]
    assert all("task" not in call for call in spy.calls)


def test_a_clip_is_cut_into_segments_as_faster_whisper_cuts_it(hf_whisper: Path) -> None:
    """faster-whisper's batched pipeline: a segment ends at each pair of timestamps; a clip
    without a pair is one segment from the clip's start to its last timestamp (to the clip's
    end when that is <|0.00|>), and text after the last pair that no timestamp closes is
    dropped. Instant."""
    tokenizer = Tokenizer.from_file(str(hf_whisper / "tokenizer.json"))
    stamp = tokenizer.token_to_id("<|0.00|>") or 0
    test, transcript = tokenizer.encode(" test").ids, tokenizer.encode(" transcript").ids

    def at(seconds: float) -> list[int]:
        return [stamp + round(seconds / 0.02)]

    def cut(tokens: list[int]) -> list[tuple[float, float, str]]:
        pieces = whisper_words.split_clip(tokens, stamp, (10.0, 14.5))
        return [(round(p.start, 3), round(p.end, 3), tokenizer.decode(list(p.tokens)).strip())
                for p in pieces]  # fmt: skip

    pairs = [*at(0.4), *test, *at(1.0), *at(1.0), *transcript, *at(2.5)]
    assert cut(pairs) == [(10.4, 11.0, "test"), (11.0, 12.5, "transcript")]
    assert cut([*at(0.4), *test, *transcript]) == [(10.0, 10.4, "test transcript")]
    assert cut([*at(0.0), *test, *transcript]) == [(10.0, 14.5, "test transcript")]
    assert cut([*at(0.0), *test, *transcript, *at(3.0)]) == [(10.0, 13.0, "test transcript")]
    unclosed = [*at(0.0), *test, *at(1.0), *at(1.2), *transcript]
    assert cut(unclosed) == [(10.0, 11.0, "test")]
    assert cut([]) == [(10.0, 14.5, "")]


MARKED_TEXT = {
    "en": ' "Good morning, everyone!" Today we will review (the progress) on the speech '
    "ingestion service. Each transcript segment is embedded? Yes.",
    "ja": "こんにちは。今日は、音声の「取り込み」について話します！元気ですか？",  # noqa: RUF001
}


def random_clip(rng: np.random.Generator, text: list[int], stamp: int) -> list[int]:
    """The text as one clip's tokens: cut into up to four segments at random, with rising
    timestamps in pairs; sometimes the last timestamp is left out, sometimes every pair."""
    cuts = sorted(rng.choice(np.arange(1, len(text)), size=3, replace=False).tolist())
    parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    times = np.cumsum(rng.integers(0, 200, size=2 * len(parts)))
    tokens: list[int] = []
    for part, (start, end) in zip(parts, times.reshape(-1, 2), strict=True):
        tokens += [stamp + int(start), *part, stamp + int(end)]
    shape = rng.integers(3)
    if shape == 1:
        tokens.pop()
    if shape == 2:
        tokens = [token for token in tokens if token < stamp][:-1] + tokens[-1:]
    return tokens


def random_path(rng: np.random.Generator, rows: int) -> list[tuple[int, int]]:
    """A warping path as speech gives them: each row held for a few frames, some for many
    (pauses, drawn-out words), at a pace that varies from clip to clip."""
    pace = rng.choice([0.5, 1.0, 4.0])
    held = rng.choice([3, 15, 120], size=rows, p=[0.7, 0.2, 0.1]) * rng.random(rows) * pace
    starts = np.cumsum([0, *(np.maximum(held, 1).astype(int))])
    return [(row, frame) for row in range(rows) for frame in range(starts[row], starts[row + 1])]


@pytest.mark.parametrize("language", ["en", "ja"])
def test_the_word_rules_are_faster_whispers(hf_whisper: Path, language: str) -> None:
    """The ported rules against faster-whisper's own on the same random clips and alignment
    paths: segment cuts and bounds, words (punctuation joined, full-width marks, Japanese cut
    at characters), their times after the rules for long words and pauses, and the end of the
    last speech carried from clip to clip. 100 clips, ~2 s."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel
    from faster_whisper.tokenizer import Tokenizer as FasterTokenizer

    defaults = inspect.signature(BatchedInferencePipeline.transcribe).parameters
    assert defaults["prepend_punctuations"].default == whisper_words.PREPENDED
    assert defaults["append_punctuations"].default == whisper_words.APPENDED
    backend = Tokenizer.from_file(str(hf_whisper / "tokenizer.json"))
    theirs = FasterTokenizer(backend, True, task="transcribe", language=language)
    splitter = whisper_words.WordSplitter(backend, theirs.eot, language)
    text = backend.encode(MARKED_TEXT[language]).ids
    rng = np.random.default_rng(len(language))
    ours_last = their_last = 0.0
    for _ in range(100):
        tokens = random_clip(rng, text, theirs.timestamp_begin)
        start = float(rng.choice([0.0, rng.uniform(0, 300)]))
        clip = (start, start + float(rng.uniform(3, 30)))
        frames = int(np.ceil(clip[1] - clip[0]) * 100)
        aligned = Alignment(random_path(rng, len(text) + 1), rng.random(len(text)).tolist())
        pieces = whisper_words.split_clip(tokens, theirs.timestamp_begin, clip)
        timed, ours_last = whisper_words.time_words(pieces, aligned, splitter, clip[0], ours_last)

        model = FasterWhisperModel(aligned)
        parts, _, _ = WhisperModel._split_segments_by_timestamps(
            model, theirs, tokens, clip[0], frames, clip[1] - clip[0], 0
        )
        parts = [{**part, "seek": int(clip[0] * 100)} for part in parts]
        their_last = WhisperModel.add_word_timestamps(
            model, [parts], theirs, None, [frames], whisper_words.PREPENDED,
            whisper_words.APPENDED, their_last,
        )  # fmt: skip
        assert ours_last == pytest.approx(their_last)
        assert len(timed) == len(parts)
        for (piece, words), part in zip(timed, parts, strict=True):
            assert (piece.start, piece.end) == pytest.approx((part["start"], part["end"]))
            assert piece.tokens == tuple(part["tokens"])
            assert [w.word for w in words] == [w["word"] for w in part["words"]]
            times = [t for w in part["words"] for t in (w["start"], w["end"])]
            assert [t for w in words for t in (w.start, w.end)] == pytest.approx(times)


class FasterWhisperModel:
    """What faster-whisper's segment and word code reads of its `WhisperModel`, with an
    alignment given beforehand as its CTranslate2 model's `align`."""

    frames_per_second = 100
    tokens_per_second = 50
    time_precision = 0.02
    input_stride = 2

    def __init__(self, aligned: Alignment) -> None:
        self.model = self
        self._aligned = aligned

    def align(self, *args: Any, **kwargs: Any) -> list[Alignment]:
        return [self._aligned]

    def find_alignment(self, *args: Any, **kwargs: Any) -> Any:
        from faster_whisper import WhisperModel

        return WhisperModel.find_alignment(self, *args, **kwargs)


def test_the_time_warping_is_openai_whispers() -> None:
    """The batched warping takes the reference loop's path (OpenAI Whisper's, as transformers
    ships it) for each matrix, ties included (rounded costs make them common), alone or
    padded into a batch with larger ones. ~1 s."""
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (7, 40), (40, 7), (30, 750), (25, 300)]
    matrices = [np.round(rng.normal(size=shape), 1).astype(np.float32) for shape in shapes]
    expected = []
    for matrix in matrices:
        rows, columns = _dynamic_time_warping(matrix)
        expected.append(list(zip(rows.tolist(), columns.tolist(), strict=True)))
        assert warp([matrix]) == [expected[-1]]
    assert warp(matrices) == expected
    assert warp(matrices[::-1]) == expected[::-1]


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"config\.json|preprocessor_config|file"):
        TransformersAsrModel(AsrOptions(str(tmp_path)))
