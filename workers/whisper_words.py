"""Whisper's tokens into timed segments and words, by the rules of faster-whisper's batched
pipeline, for the transformers engine, which runs where faster-whisper is not installed
(the tests hold the two to the same results).

- A clip's tokens are cut at each pair of timestamps; a clip without a pair is one segment
  from the clip's start to its last timestamp (to the clip's end when that is <|0.00|>), and
  text after the last pair that no timestamp closes is dropped.
- Words: the alignment path gives each word the time the path enters its first token's row
  and the next word's; words far longer than the median are cut at sentence ends,
  punctuation joins its word, a first word after a long pause is shortened, and a segment's
  bounds move to its first and last words unless those stretch past them.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from workers.whisper_align import Alignment

TIME_PRECISION = 0.02  # seconds per timestamp token
FRAMES_PER_S = 50  # encoder frames
PREPENDED = "\"'“¿([{-"
# Full-width marks too, as Chinese and Japanese text has them.
APPENDED = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001
SENTENCE_ENDS = ".。!！?？"  # noqa: RUF001
UNSPACED = {"zh", "ja", "th", "lo", "my", "yue"}  # words split at character ends, not spaces


@dataclass(frozen=True, slots=True)
class Piece:
    """A segment of one clip, in seconds of the audio, with its tokens (timestamps included)."""

    start: float
    end: float
    tokens: tuple[int, ...]


Timed = list[tuple["Piece", list["Timing"]]]  # one clip's pieces, each with its words


@dataclass(slots=True)
class Timing:
    """A word while the rules move its times: a working record, mutated in place."""

    word: str
    tokens: list[int]
    start: float
    end: float


class WordSplitter:
    """Decodes tokens and groups them into words as faster-whisper's tokenizer does."""

    def __init__(self, backend: Any, eot: int, language: str | None) -> None:
        self._backend = backend  # a `tokenizers.Tokenizer`: special tokens decode to nothing
        self.eot = eot
        self._unspaced = language in UNSPACED

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = self._backend.decode([token for token in tokens if token < self.eot])
        return text

    def words(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        pieces, groups = self._on_characters(tokens)
        if self._unspaced:
            return pieces, groups
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for piece, group in zip(pieces, groups, strict=True):
            starts_word = group[0] >= self.eot or piece.startswith(" ")
            if starts_word or piece.strip() in string.punctuation or not words:
                words.append(piece)
                word_tokens.append(group)
            else:
                words[-1] += piece
                word_tokens[-1].extend(group)
        return words, word_tokens

    def _on_characters(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Tokens grouped where they decode to whole characters."""
        full = self._backend.decode(tokens)
        words: list[str] = []
        groups: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            decoded = self._backend.decode(current)
            broken = decoded.find("\ufffd")
            at = broken + offset
            if broken < 0 or (at < len(full) and full[at] == "\ufffd"):
                words.append(decoded)
                groups.append(current)
                current = []
                offset += len(decoded)
        return words, groups


def split_clip(
    tokens: Sequence[int], timestamp_begin: int, clip: tuple[float, float]
) -> list[Piece]:
    """One clip's segments from its text and timestamp tokens."""
    offset, duration = clip[0], clip[1] - clip[0]

    def at(token: int) -> float:
        return (token - timestamp_begin) * TIME_PRECISION

    pairs = [i for i in range(1, len(tokens))
             if tokens[i] >= timestamp_begin and tokens[i - 1] >= timestamp_begin]  # fmt: skip
    if not pairs:
        stamps = [token for token in tokens if token >= timestamp_begin]
        last = at(stamps[-1]) if stamps and stamps[-1] != timestamp_begin else duration
        return [Piece(offset, offset + last, tuple(tokens))]
    if len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]:
        pairs.append(len(tokens))
    cuts = [0, *pairs]
    return [Piece(offset + at(tokens[a]), offset + at(tokens[b - 1]), tuple(tokens[a:b]))
            for a, b in pairwise(cuts)]  # fmt: skip


def time_words(
    pieces: list[Piece],
    alignment: Alignment,
    splitter: WordSplitter,
    start: float,
    last_speech: float,
) -> tuple[Timed, float]:
    """One clip's pieces, bounds moved, with their words (`start`: the clip's), and the end of
    the last speech heard, which the rule for a first word after a pause looks back at."""
    text = [token for piece in pieces for token in piece.tokens if token < splitter.eot]
    timings = word_timings(alignment, text, splitter)
    limits = limit_durations(timings)
    timed: Timed = []
    for piece, words in zip(pieces, assign_words(pieces, timings, start, splitter.eot),
                            strict=True):  # fmt: skip
        moved, last_speech = snap(piece, words, limits, last_speech)
        timed.append((moved, words))
    return timed, last_speech


def word_timings(alignment: Alignment, text: list[int], splitter: WordSplitter) -> list[Timing]:
    """Each word of a clip's text with the times (from the clip's start) the alignment path
    enters its first token's row and the next word's."""
    words, word_tokens = splitter.words([*text, splitter.eot])
    if len(word_tokens) <= 1:
        return []
    bounds = np.pad(np.cumsum([len(tokens) for tokens in word_tokens[:-1]]), (1, 0))
    rows = np.array([row for row, _ in alignment.alignments])
    frames = np.array([frame for _, frame in alignment.alignments])
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    times = frames[jumps] / FRAMES_PER_S
    return [Timing(word, tokens, float(times[a]), float(times[b]))
            for word, tokens, a, b in zip(words, word_tokens, bounds[:-1], bounds[1:],
                                          strict=False)]  # fmt: skip


def limit_durations(timings: list[Timing]) -> tuple[float, float]:
    """Cuts words over twice the median duration at sentence ends and joins punctuation to
    its word; the median and the longest duration allowed."""
    durations = np.array([t.end - t.start for t in timings])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        for before, timing in pairwise(timings):
            if timing.end - timing.start > longest:
                if timing.word in SENTENCE_ENDS:
                    timing.end = timing.start + longest
                elif before.word in SENTENCE_ENDS:
                    timing.start = timing.end - longest
    _merge_punctuation(timings)
    return median, longest


def _merge_punctuation(timings: list[Timing]) -> None:
    following = len(timings) - 1
    for i in range(len(timings) - 2, -1, -1):
        previous, after = timings[i], timings[following]
        if previous.word.startswith(" ") and previous.word.strip() in PREPENDED:
            after.word = previous.word + after.word
            after.tokens = previous.tokens + after.tokens
            previous.word, previous.tokens = "", []
        else:
            following = i
    previous_index = 0
    for j in range(1, len(timings)):
        previous, after = timings[previous_index], timings[j]
        if not previous.word.endswith(" ") and after.word in APPENDED:
            previous.word += after.word
            previous.tokens = previous.tokens + after.tokens
            after.word, after.tokens = "", []
        else:
            previous_index = j


def assign_words(
    pieces: list[Piece], timings: list[Timing], start: float, eot: int
) -> list[list[Timing]]:
    """Each piece's words, in seconds of the audio (`start`: the clip's, to the 10 ms)."""
    offset = int(start * 100) / 100
    index = 0
    out: list[list[Timing]] = []
    for piece in pieces:
        count, saved = sum(token < eot for token in piece.tokens), 0
        words: list[Timing] = []
        while index < len(timings) and saved < count:
            timing = timings[index]
            if timing.word:
                words.append(Timing(timing.word, timing.tokens, round(offset + timing.start, 2),
                                    round(offset + timing.end, 2)))  # fmt: skip
            saved += len(timing.tokens)
            index += 1
        out.append(words)
    return out


def snap(piece: Piece, words: list[Timing], limits: tuple[float, float],
         last_speech: float) -> tuple[Piece, float]:  # fmt: skip
    """The piece with its bounds moved to its words (or its overlong edge words cut to the
    bounds), and the end of the last speech heard."""
    if not words:
        return piece, last_speech
    median, longest = limits
    first, last = words[0], words[-1]
    second = words[1] if len(words) > 1 else None
    long_first = first.end - first.start > longest
    long_pair = second is not None and second.end - first.start > longest * 2
    if first.end - last_speech > median * 4 and (long_first or long_pair):
        if second is not None and second.end - second.start > longest:
            first.end = second.start = max(second.end / 2, second.end - longest)
        first.start = max(0.0, first.end - longest)
    start, end = piece.start, piece.end
    if start < first.end and start - 0.5 > first.start:
        first.start = max(0.0, min(first.end - median, start))
    else:
        start = first.start
    if end > last.start and end + 0.5 < last.end:
        last.end = max(last.start + median, end)
    else:
        end = last.end
    return Piece(start, end, piece.tokens), end
