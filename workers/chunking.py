"""Cutting a transcript into search-sized chunks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


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
    """A search unit: consecutive segments of one speaker, numbered from 0 in time order."""

    seg_index: int
    start_s: float
    end_s: float
    text: str
    speaker: str | None = None
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    target_chars: int = 800
    max_seconds: float = 90.0


def chunk_segments(
    segments: Iterable[Segment], options: ChunkingOptions = ChunkingOptions()
) -> list[Chunk]:
    """Greedily joins segments until a chunk would exceed the target length or duration.

    A chunk never spans a change of speaker. Indexes depend only on the segments, so the same
    transcript always gives the same (video_id, seg_index) keys.
    """
    groups: list[list[Segment]] = []
    for segment in segments:
        if not segment.text.strip():
            continue
        if groups and not _starts_new_chunk(groups[-1], segment, options):
            groups[-1].append(segment)
        else:
            groups.append([segment])
    return [_join(index, group) for index, group in enumerate(groups)]


def _starts_new_chunk(group: Sequence[Segment], segment: Segment, options: ChunkingOptions) -> bool:
    if segment.speaker != group[0].speaker:
        return True
    chars = sum(len(s.text.strip()) + 1 for s in group) + len(segment.text.strip())
    return chars > options.target_chars or segment.end_s - group[0].start_s > options.max_seconds


def _join(index: int, group: Sequence[Segment]) -> Chunk:
    return Chunk(
        seg_index=index,
        start_s=group[0].start_s,
        end_s=max(s.end_s for s in group),
        text=" ".join(s.text.strip() for s in group),
        speaker=group[0].speaker,
        confidence=_confidence(group),
    )


def _confidence(group: Sequence[Segment]) -> float | None:
    """The segments' confidences weighted by their durations."""
    rated = [(s.confidence, max(s.end_s - s.start_s, 1e-3)) for s in group]
    if any(c is None for c, _ in rated):
        return None
    total = sum(w for _, w in rated)
    return sum((c or 0.0) * w for c, w in rated) / total
