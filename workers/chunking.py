"""Cutting a transcript into search-sized chunks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# A sentence ends with its punctuation, perhaps followed by closing quotes or brackets.
_SENTENCE_END = re.compile("[.!?\u2026\u3002\uff01\uff1f][\"')\\]\u201d\u2019]*$")


@dataclass(frozen=True, slots=True)
class Word:
    start_s: float
    end_s: float
    text: str  # with its leading space, as Whisper writes it


@dataclass(frozen=True, slots=True)
class Segment:
    """A transcribed stretch of speech, in seconds from the start of the audio."""

    start_s: float
    end_s: float
    text: str
    speaker: str | None = None
    confidence: float | None = None  # of the speaker label, 0..1
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """A search unit: consecutive segments, numbered from 0 in time order, from its first word
    to its last. `speaker` is who speaks most of it; `speakers` everyone heard in it, that one
    first (more than one only where a short turn was joined to a neighbour)."""

    seg_index: int
    start_s: float
    end_s: float
    text: str
    speaker: str | None = None
    confidence: float | None = None  # the share of the chunk heard as `speaker`, 0..1
    speakers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    target_chars: int = 800
    max_seconds: float = 90.0
    min_chars: int | None = None  # None: a tenth of the target

    @property
    def floor(self) -> int:
        return self.target_chars // 10 if self.min_chars is None else self.min_chars


Group = list[Segment]


def chunk_segments(
    segments: Iterable[Segment], options: ChunkingOptions = ChunkingOptions()
) -> list[Chunk]:
    """Chunks of about the target length, never longer than `max_seconds`, ending at a sentence
    end where one allows it. A change of speaker ends a chunk, except that a chunk shorter than
    the minimum joins a neighbour: alone, a "Yes." or a half sentence is noise to search.

    Indexes depend only on the segments, so the same transcript always gives the same
    (video_id, seg_index) keys.
    """
    spoken = [s for s in segments if s.text.strip()]
    groups = _join_short(_cut(spoken, options), options)
    return [_chunk(index, group) for index, group in enumerate(groups)]


def _cut(segments: Sequence[Segment], options: ChunkingOptions) -> list[Group]:
    groups: list[Group] = []
    current: Group = []
    for segment in segments:
        if current and current[-1].speaker != segment.speaker:
            groups.append(current)
            current = []
        while current and _too_long([*current, segment], options):
            at = _sentence_cut(current, options.floor)
            groups.append(current[:at])
            current = current[at:]
        current.append(segment)
    return [*groups, current] if current else groups


def _sentence_cut(group: Group, floor: int) -> int:
    """Where a full chunk ends: after its last sentence end that leaves it at least `floor`
    long, the rest starting the next chunk; with none, after all of it."""
    for at in range(len(group), 0, -1):
        if _SENTENCE_END.search(group[at - 1].text.strip()) and _chars(group[:at]) >= floor:
            return at
    return len(group)


def _join_short(groups: Sequence[Group], options: ChunkingOptions) -> list[Group]:
    """Each chunk below the minimum joins the neighbour that suits it best, as long as the
    result stays within `max_seconds`; a short one joined forwards is looked at again."""
    ahead = list(groups)
    out: list[Group] = []
    for i, group in enumerate(ahead):
        before = out[-1] if out else None
        after = ahead[i + 1] if i + 1 < len(ahead) else None
        side = None if _chars(group) >= options.floor else _side(before, group, after, options)
        if side == "before" and before is not None:
            out[-1] = before + group
        elif side == "after" and after is not None:
            ahead[i + 1] = group + after
        else:
            out.append(group)
    return out


Side = Literal["before", "after"]


def _side(
    before: Group | None, group: Group, after: Group | None, options: ChunkingOptions
) -> Side | None:
    """The neighbour of the same speaker first, then the nearer in time, then the shorter
    result."""
    choices: list[tuple[tuple[bool, float, int], Side]] = []
    if before and not _too_long(before + group, options, chars=False):
        changes = before[-1].speaker != group[0].speaker
        choices.append(((changes, _start(group) - _end(before), _chars(before + group)), "before"))
    if after and not _too_long(group + after, options, chars=False):
        changes = after[0].speaker != group[-1].speaker
        choices.append(((changes, _start(after) - _end(group), _chars(group + after)), "after"))
    return min(choices)[1] if choices else None


def _too_long(group: Group, options: ChunkingOptions, *, chars: bool = True) -> bool:
    if chars and _chars(group) > options.target_chars:
        return True
    return _end(group) - _start(group) > options.max_seconds


def _chars(group: Group) -> int:
    return sum(len(s.text.strip()) for s in group) + len(group) - 1


def _start(group: Group) -> float:
    """When its first word starts: more exact than a segment's start, where it is known."""
    return min(s.words[0].start_s if s.words else s.start_s for s in group)


def _end(group: Group) -> float:
    return max(s.words[-1].end_s if s.words else s.end_s for s in group)


def _chunk(index: int, group: Group) -> Chunk:
    time: dict[str | None, float] = {}
    for s in group:  # in time order, so that a tie goes to who spoke first
        time[s.speaker] = time.get(s.speaker, 0.0) + _duration(s)
    speaker = max(time, key=lambda name: time[name])
    heard = dict.fromkeys([speaker, *time])
    return Chunk(
        seg_index=index,
        start_s=_start(group),
        end_s=_end(group),
        text=" ".join(s.text.strip() for s in group),
        speaker=speaker,
        confidence=_confidence(group, speaker),
        speakers=tuple(name for name in heard if name is not None),
    )


def _duration(segment: Segment) -> float:
    return max(segment.end_s - segment.start_s, 1e-3)


def _confidence(group: Sequence[Segment], speaker: str | None) -> float | None:
    """The segments' confidences weighted by their durations, where another speaker's count as
    none."""
    if any(s.confidence is None for s in group):
        return None
    total = sum(_duration(s) for s in group)
    own = sum((s.confidence or 0.0) * _duration(s) for s in group if s.speaker == speaker)
    return own / total
