"""Captions (WebVTT or SubRip subtitles) as a transcript, in place of speech recognition.

webvtt-py reads both formats (cue blocks, timings, header, NOTE and STYLE blocks); this module
turns its cues into `Segment`s: markup stripped, entities unescaped, and YouTube's rolling
automatic captions, which show every line twice, reduced to each line once. Their inline word
timestamps become `Word`s.
"""

from __future__ import annotations

import codecs
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Literal

import webvtt
from webvtt.errors import MalformedCaptionError, MalformedFileError

from workers.chunking import Segment, Word

CaptionFormat = Literal["vtt", "srt"]

CAPTION_SUFFIXES: dict[str, CaptionFormat] = {".vtt": "vtt", ".srt": "srt"}

# A cue this short cannot be read: YouTube's rolling captions put one of 10 ms between two
# screens, repeating the line just finished.
_TRANSITION_S = 0.05

# Not `<[^>]*>`: from every `<` without a `>` that scans to the end of the line (quadratic).
_TAG = re.compile(r"<[^<>]*>")
# The karaoke timestamps of YouTube's automatic captions: `word<00:00:01.520><c> next</c>`.
_TIMESTAMP_TAG = re.compile(r"<((?:\d+:)?\d{1,2}:\d{2}\.\d{3})>")
# Positioning codes such as {\an8} that SubRip files copy from ASS.
_ASS_OVERRIDE = re.compile(r"\{\\[^{}]*\}")
# `talk.vtt`, `talk.en.vtt`, `talk.en-US.srt`, `talk.zh-Hans.vtt`, after the audio's stem; the
# language must look like a tag, so `talk.part2.srt` is not taken for `talk.mp3`.
_CAPTION_NAME = re.compile(
    r"(?:\.(?P<lang>[a-z]{2,3}(?:-[a-z0-9]{2,8})*))?\.(?P<ext>vtt|srt)", re.IGNORECASE
)


class CaptionError(Exception):
    """A caption file that cannot be read or holds no captions."""


@dataclass(frozen=True, slots=True)
class _Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]  # as written, markup included; only lines with some text

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(_clean(line) for line in self.lines)


def parse_captions(text: str, fmt: CaptionFormat) -> list[Segment]:
    """Timed segments of a caption file's text, in time order, without empty cues.

    Raises `CaptionError` if the text is not in the format; a text with no cues gives [].
    """
    cues = sorted(_read_cues(text, fmt), key=lambda cue: cue.start_s)
    if _is_rolling(cues):
        cues = _unroll(cues)
    return [_segment(cue) for cue in cues if cue.lines]


def caption_file_for(audio: Path, language: str | None = None) -> Path | None:
    """The caption file beside `audio` with its stem: `talk.vtt`, `talk.srt`, `talk.en.vtt`...

    With a language, its file is preferred (exact tag, then the same base language: `en-US` for
    `en`), then one without a language; a file in another language is never chosen, as it is a
    translation rather than a transcript. Without one, a file without a language is preferred,
    then one in the only language there is: files in several languages give none, as all but
    one of them are translations and the names do not say which. Ties go to the first name in
    sorted order.
    """
    beside = _captions_beside(audio)
    languages = {_base(lang) for lang, _ in beside if lang is not None}
    if language is None and len(languages) > 1 and all(lang for lang, _ in beside):
        return None
    ranked = sorted(
        (rank, path.name, path)
        for lang, path in beside
        if (rank := _rank(lang, language)) is not None
    )
    return ranked[0][2] if ranked else None


def read_caption_file(path: Path) -> list[Segment]:
    """The segments of a .vtt or .srt file (UTF-8, BOM or not; Latin-1 if not UTF-8).

    Raises `CaptionError`, naming the file, if it cannot be read, is malformed or holds no text.
    """
    fmt = CAPTION_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CaptionError(f"{path.name}: not a caption file (.vtt or .srt)")
    try:
        segments = parse_captions(_read_text(path), fmt)
    except CaptionError as exc:
        raise CaptionError(f"{path.name}: {exc}") from exc
    if not segments:
        raise CaptionError(f"{path.name}: no captions in the file")
    return segments


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaptionError(f"cannot read it: {exc.strerror}") from exc
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Some Windows subtitle editors save UTF-16; read as Latin-1 it would be NULs.
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Older SubRip files are often in a Windows code page; Latin-1 reads any byte.
        return data.decode("latin-1")


def _read_cues(text: str, fmt: CaptionFormat) -> list[_Cue]:
    # webvtt-py wants the header or the first cue index on the very first line.
    text = text.lstrip("\ufeff").lstrip()
    if fmt == "srt":
        # A blank-looking line in SubRip ends a cue; webvtt-py only ends one at an empty line.
        text = "\n".join(line.rstrip() for line in text.splitlines())
    try:
        captions = webvtt.from_buffer([text], format=fmt).captions
    except (MalformedFileError, MalformedCaptionError) as exc:
        expected = "a WEBVTT header" if fmt == "vtt" else "a numbered cue at the start"
        raise CaptionError(f"not a valid {fmt.upper()} file: expected {expected}") from exc
    return [_cue(caption) for caption in captions]


def _cue(caption: webvtt.Caption) -> _Cue:
    start = caption.start_time.in_milliseconds() / 1000
    end = caption.end_time.in_milliseconds() / 1000
    lines = tuple(line for line in caption.lines if _clean(line))
    return _Cue(start, max(start, end), lines)


def _clean(raw: str) -> str:
    """The text of a cue line: tags out (voice names too), entities unescaped, spaces collapsed.

    Entities are unescaped after the tags are gone, so an escaped `&lt;b&gt;` stays as text.
    """
    return " ".join(_plain(raw).split())


def _plain(raw: str) -> str:
    return html.unescape(_TAG.sub("", _ASS_OVERRIDE.sub("", raw)))


def _is_rolling(cues: Sequence[_Cue]) -> bool:
    """Whether the captions roll, each screen repeating the last line of the one before, as
    YouTube's automatic captions do (in VTT, or in SRT converted from it).

    Decided for the whole file rather than cue by cue, so a line really said twice in
    ordinary captions is kept.
    """
    repeats = sum(
        1 for prev, cue in pairwise(cues) if prev.lines and cue.texts[:1] == prev.texts[-1:]
    )
    return repeats >= 2 and 2 * repeats >= len(cues) - 1


def _unroll(cues: Sequence[_Cue]) -> list[_Cue]:
    """Each cue without the lines still on screen from the cue before; transition cues out."""
    out: list[_Cue] = []
    screen: tuple[str, ...] = ()
    for cue in cues:
        texts = cue.texts
        if cue.end_s - cue.start_s >= _TRANSITION_S:
            out.append(replace(cue, lines=cue.lines[_overlap(screen, texts) :]))
        screen = texts
    return out


def _overlap(before: Sequence[str], after: Sequence[str]) -> int:
    """How many of the first lines of `after` are the last lines of `before`."""
    for count in range(min(len(before), len(after)), 0, -1):
        if tuple(after[:count]) == tuple(before[-count:]):
            return count
    return 0


def _segment(cue: _Cue) -> Segment:
    return Segment(cue.start_s, cue.end_s, " ".join(cue.texts), words=_words(cue))


def _words(cue: _Cue) -> tuple[Word, ...]:
    """Words timed by the cue's inline timestamps; none when it has none.

    The text before a line's first timestamp starts where the line's timing is last known:
    the cue's start, or the last timestamp of the line above. Each word ends where the next one
    starts, the last one at the end of the cue.
    """
    if not any(_TIMESTAMP_TAG.search(line) for line in cue.lines):
        return ()
    words: list[Word] = []
    start = cue.start_s
    for line in cue.lines:
        line_words = _line_words(line, start, cue.end_s)
        words.extend(line_words)
        start = line_words[-1].start_s if line_words else start
    return tuple(words)


def _line_words(line: str, start_s: float, end_s: float) -> list[Word]:
    parts = _TIMESTAMP_TAG.split(line)  # text, timestamp, text, timestamp, ..., text
    starts = [start_s, *(min(max(_seconds(t), start_s), end_s) for t in parts[1::2])]
    ends = [*starts[1:], end_s]
    words: list[Word] = []
    spaced = True  # a line's first word follows the line before after a space
    for begin, end, piece in zip(starts, ends, (_plain(p) for p in parts[0::2]), strict=True):
        text = " ".join(piece.split())
        if text:
            space = " " if spaced or piece[:1].isspace() else ""
            words.append(Word(begin, max(begin, end), space + text))
        spaced = piece[-1:].isspace() or (spaced and not text)
    return words


def _seconds(timestamp: str) -> float:
    seconds = 0.0
    for field in timestamp.split(":"):
        seconds = seconds * 60 + float(field)
    return seconds


def _captions_beside(audio: Path) -> list[tuple[str | None, Path]]:
    """(language or None, path) of each caption file named after `audio`, in its folder."""
    prefix = audio.stem
    try:
        with os.scandir(audio.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix) and e.is_file()]
    except OSError:
        return []
    matches = ((_CAPTION_NAME.fullmatch(name, len(prefix)), name) for name in names)
    return [(match["lang"], audio.parent / name) for match, name in matches if match]


def _rank(lang: str | None, wanted: str | None) -> int | None:
    """Lower is better; None for a file not to be chosen."""
    if wanted is None:
        return 0 if lang is None else 1
    if lang is None:
        return 2
    if lang.lower() == wanted.lower():
        return 0
    if _base(lang) == _base(wanted):
        return 1
    return None


def _base(tag: str) -> str:
    return tag.split("-")[0].split("_")[0].lower()
