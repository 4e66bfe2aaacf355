"""Who is speaking: the monologue fast path, full diarization, and naming enrolled voices."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from workers.asr import Samples, duration_s, speech_regions
from workers.chunking import Segment, Word
from workers.diarization import SpeakerTurns, Turn
from workers.voice import Vectors, VoiceEncoder, cut, normalize

Mode = Literal["auto", "always", "off"]
PathTaken = Literal["fast", "full", "off"]
Regions = Sequence[tuple[float, float]]
MIN_WINDOW_S = 0.5  # shorter speech says little about the voice


@dataclass(frozen=True, slots=True)
class VoiceProfile:
    name: str
    centroid: Vectors  # unit norm
    count: int


@dataclass(frozen=True, slots=True)
class SpeakerOptions:
    mode: Mode = "auto"
    hosts: tuple[str, ...] = ()
    fastpath_threshold: float = 0.6
    match_threshold: float = 0.5
    windows: int = 6
    window_s: float = 3.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Which path a video takes, and why; stored on the video."""

    path: PathTaken
    host: str | None = None
    similarity: float | None = None
    spread: float | None = None  # share of the video between the first and last window
    reason: str | None = None


def spread_windows(
    regions: Sequence[tuple[float, float]], count: int, window_s: float
) -> list[tuple[float, float]]:
    """`count` windows of speech evenly spaced along the speech (not the clock), each inside
    one region and at most `window_s` long."""
    usable = [(a, b) for a, b in regions if b - a >= MIN_WINDOW_S]
    total = sum(b - a for a, b in usable)
    if not usable or count < 1:
        return []
    windows: list[tuple[float, float]] = []
    for i in range(count):
        target = (i + 0.5) / count * total
        for a, b in usable:
            if target <= b - a:
                center = a + target
                half = min(window_s, b - a) / 2
                start = min(max(a, center - half), b - 2 * half)
                windows.append((start, start + 2 * half))
                break
            target -= b - a
    return sorted(set(windows))


def centroid(vectors: Vectors) -> Vectors:
    return normalize(vectors.mean(axis=0))


class SpeakerAttributor:
    """Labels a video's segments; one per GPU worker, holding that worker's models."""

    def __init__(
        self,
        options: SpeakerOptions,
        voice: VoiceEncoder | None,
        diarizer: SpeakerTurns | None,
        profiles: Sequence[VoiceProfile],
    ) -> None:
        self.options, self.voice, self.diarizer = options, voice, diarizer
        self.profiles = {p.name: p for p in profiles}

    @property
    def on(self) -> bool:
        return self.options.mode != "off"

    def decide(self, audio: Samples, regions: Regions | None = None) -> Decision:
        """The fast path only when a host profile clearly matches; anything else (no profile,
        a low score, an error) means full diarization, never a guessed host label."""
        if self.options.mode == "off":
            return Decision("off")
        if self.options.mode == "always":
            return Decision("full", reason="diarization always")
        hosts = [self.profiles[h] for h in self.options.hosts if h in self.profiles]
        if not hosts:
            return Decision("full", reason="no host profile")
        try:
            host, similarity, spread = self._score_hosts(audio, hosts, regions)
        except Exception as exc:  # the fast path is an optimisation: its failure costs time only
            return Decision("full", reason=f"fast path failed: {type(exc).__name__}: {exc}")
        if host is None:
            return Decision("full", reason="no speech windows")
        if similarity >= self.options.fastpath_threshold:
            return Decision("fast", host, similarity, spread)
        reason = f"host similarity {similarity:.3f} < {self.options.fastpath_threshold}"
        return Decision("full", None, similarity, spread, reason)

    def _score_hosts(
        self, audio: Samples, hosts: Sequence[VoiceProfile], regions: Regions | None
    ) -> tuple[str | None, float, float]:
        assert self.voice is not None
        if regions is None:
            regions = speech_regions(audio)
        windows = spread_windows(regions, self.options.windows, self.options.window_s)
        if not windows:
            return None, 0.0, 0.0
        vectors = self.voice.embed(cut(audio, windows))
        scores = {h.name: float(np.mean(vectors @ h.centroid)) for h in hosts}
        best = max(scores, key=lambda name: scores[name])
        spread = (windows[-1][1] - windows[0][0]) / max(duration_s(audio), 1e-6)
        return best, scores[best], spread

    def label(
        self,
        audio: Samples,
        segments: Sequence[Segment],
        decision: Decision,
        regions: Regions | None = None,
    ) -> list[Segment]:
        if decision.path == "off":
            return list(segments)
        if decision.path == "fast":
            confidence = max(0.0, min(1.0, decision.similarity or 0.0))
            return [replace(s, speaker=decision.host, confidence=confidence) for s in segments]
        assert self.diarizer is not None
        turns = self.diarizer.diarize(audio, regions)
        names = self._name_clusters(audio, turns)
        return [
            replace(part, speaker=names.get(part.speaker or "", part.speaker))
            for part in assign_speakers(segments, turns)
        ]

    def _name_clusters(self, audio: Samples, turns: Sequence[Turn]) -> dict[str, str]:
        """Enrolled names for clusters whose voice matches a profile, SPEAKER_00… for the rest."""
        matches: dict[str, tuple[str, float]] = {}
        if self.voice is not None and self.profiles:
            for label in dict.fromkeys(t.speaker for t in turns):
                windows = _cluster_windows(turns, label, self.options)
                if not windows:
                    continue
                voice = centroid(self.voice.embed(cut(audio, windows)))
                scores = {p.name: float(voice @ p.centroid) for p in self.profiles.values()}
                name = max(scores, key=lambda n: scores[n])
                if scores[name] >= self.options.match_threshold:
                    matches[label] = (name, scores[name])
        return _resolve_names([t.speaker for t in turns], matches)


def _cluster_windows(
    turns: Sequence[Turn], label: str, options: SpeakerOptions
) -> list[tuple[float, float]]:
    own = sorted((t for t in turns if t.speaker == label), key=lambda t: t.start_s - t.end_s)
    regions = [(t.start_s, t.end_s) for t in own[: options.windows]]
    return [w for region in regions for w in spread_windows([region], 1, options.window_s)]


def _resolve_names(labels: Sequence[str], matches: dict[str, tuple[str, float]]) -> dict[str, str]:
    """A profile names at most one cluster (its best match); the others are numbered in order
    of first appearance."""
    best: dict[str, tuple[str, float]] = {}
    for label, (name, score) in matches.items():
        if name not in best or score > best[name][1]:
            best[name] = (label, score)
    named = {label: name for name, (label, _) in best.items()}
    numbered = [label for label in dict.fromkeys(labels) if label not in named]
    return named | {label: f"SPEAKER_{i:02d}" for i, label in enumerate(numbered)}


def assign_speakers(segments: Sequence[Segment], turns: Sequence[Turn]) -> list[Segment]:
    """Each segment takes the speaker whose turns overlap it most; one that straddles a change
    of speaker is split there when its word timings are known. Confidence is the share of the
    (sub)segment covered by its speaker's turns."""
    if not turns:
        return list(segments)
    index = _TurnIndex(turns)
    out: list[Segment] = []
    for segment in segments:
        parts = _split_by_words(segment, index) if segment.words else [segment]
        for part in parts:
            speaker, confidence = index.best_speaker(part.start_s, part.end_s)
            out.append(replace(part, speaker=speaker, confidence=confidence))
    return out


def _split_by_words(segment: Segment, index: _TurnIndex) -> list[Segment]:
    groups: list[tuple[str, list[Word]]] = []
    for word in segment.words:
        speaker, _ = index.best_speaker(word.start_s, word.end_s)
        if groups and groups[-1][0] == speaker:
            groups[-1][1].append(word)
        else:
            groups.append((speaker, [word]))
    if len(groups) < 2:
        return [segment]
    return [
        Segment(words[0].start_s, words[-1].end_s, "".join(w.text for w in words).strip(),
                words=tuple(words))
        for _, words in groups
    ]  # fmt: skip


class _TurnIndex:
    """Turns sorted by start, so that a stretch of time looks only at the turns near it rather
    than at all of them: a long video has tens of thousands of words and thousands of turns.

    Results equal a scan of every turn in the given order: overlaps are summed, and ties
    broken, in that order."""

    def __init__(self, turns: Sequence[Turn]) -> None:
        self.turns = list(turns)
        self.order = sorted(range(len(turns)), key=lambda i: turns[i].start_s)
        self.starts = [turns[i].start_s for i in self.order]
        # The latest end among the turns starting no later than each one: walking back from a
        # time, no earlier turn can reach it once this falls below it.
        self.reach = list(itertools.accumulate((turns[i].end_s for i in self.order), max))

    def best_speaker(self, start: float, end: float) -> tuple[str, float]:
        if end < start:  # no overlap is possible and distances are not ordered by start
            return self._nearest(start, end, range(len(self.turns)))
        before = bisect.bisect_left(self.starts, end)  # these start before `end`
        # Those reaching `start` may overlap; when none does, those ending last are nearest.
        near = self._reaching(before, min(start, self.reach[before - 1]) if before else start)
        overlap: dict[str, float] = {}
        for i in near:
            turn = self.turns[i]
            shared = min(end, turn.end_s) - max(start, turn.start_s)
            if shared > 0:
                overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
        if not overlap:
            # Speech the diarization missed goes to the nearest turn, with no confidence.
            if before < len(self.starts):  # and the turns starting first after it
                after = bisect.bisect_right(self.starts, self.starts[before])
                near += self.order[before:after]
            return self._nearest(start, end, near)
        speaker = max(overlap, key=lambda s: overlap[s])
        return speaker, min(1.0, overlap[speaker] / max(end - start, 1e-3))

    def _reaching(self, before: int, time: float) -> list[int]:
        """Turns among the first `before` that end at `time` or later (with some that do not),
        in the given order."""
        j = before
        while j > 0 and self.reach[j - 1] >= time:
            j -= 1
        return sorted(self.order[j:before])

    def _nearest(self, start: float, end: float, candidates: Iterable[int]) -> tuple[str, float]:
        def distance(i: int) -> tuple[float, int]:
            turn = self.turns[i]
            return max(turn.start_s - end, start - turn.end_s, 0.0), i

        return self.turns[min(candidates, key=distance)].speaker, 0.0
