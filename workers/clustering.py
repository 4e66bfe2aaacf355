"""Who speaks when, without a gated model: ECAPA voice embeddings of short windows of the speech
the voice-activity detector found, clustered into speakers whose number is estimated.

Windows overlap by half, so every moment of speech is heard by two windows; each window owns
the time up to the midpoints with its neighbours. Agglomerative clustering (average linkage,
cosine) stops merging when two groups are less alike than the threshold, which is what
estimates the number of speakers. Long videos cluster an even sample of their windows and
give every window the nearest speaker, so memory stays bounded.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from workers.asr import Samples, speech_regions
from workers.diarization import Turn
from workers.voice import Vectors, VoiceEncoder, cut, normalize

Labels = npt.NDArray[np.int64]
Span = tuple[float, float]
MIN_WINDOW_S = 0.5  # shorter speech says too little about the voice to be placed


@dataclass(frozen=True, slots=True)
class ClusteringOptions:
    window_s: float = 1.5
    hop_s: float = 0.75
    threshold: float = 0.3  # mean cosine similarity below which two groups are two speakers
    max_clustered: int = 2000  # windows clustered exactly; the rest join the nearest speaker
    min_share: float = 0.05  # smaller clusters are stray windows of a larger one, not speakers


def sliding_windows(regions: Sequence[Span], window_s: float, hop_s: float) -> list[list[Span]]:
    """Per speech region, windows of `window_s` every `hop_s`, the last one ending with the
    region; a region shorter than a window is one window."""
    out: list[list[Span]] = []
    for start, end in regions:
        if end - start <= window_s:
            out.append([(start, end)])
            continue
        count = int(np.ceil((end - start - window_s) / hop_s)) + 1
        starts = [min(start + i * hop_s, end - window_s) for i in range(count)]
        out.append([(s, s + window_s) for s in starts])
    return out


def cluster(vectors: Vectors, options: ClusteringOptions) -> Labels:
    """A speaker index per row, numbered in order of first appearance."""
    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=np.int64)
    sample = np.linspace(0, len(vectors) - 1, min(len(vectors), options.max_clustered))
    sampled = vectors[np.unique(sample.round().astype(np.int64))]
    centroids = _centroids(sampled, _agglomerate(sampled, options.threshold), options.min_share)
    return _first_appearance(np.argmax(vectors @ centroids.T, axis=1))


def _agglomerate(vectors: Vectors, threshold: float) -> Labels:
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(vectors.astype(np.float64), method="average", metric="cosine")
    return np.asarray(fcluster(tree, t=1.0 - threshold, criterion="distance"), dtype=np.int64)


def _centroids(vectors: Vectors, labels: Labels, min_share: float) -> Vectors:
    """Unit centroids of the clusters big enough to be a speaker (the biggest one always is)."""
    sizes = Counter(labels.tolist())
    floor = max(2, min_share * len(labels))
    kept = [label for label, size in sizes.most_common() if size >= floor]
    kept = kept or [sizes.most_common(1)[0][0]]
    return np.stack([normalize(vectors[labels == label].mean(axis=0)) for label in kept])


def _first_appearance(labels: Labels) -> Labels:
    order = {label: i for i, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.asarray([order[label] for label in labels.tolist()], dtype=np.int64)


def smooth(labels: Sequence[int]) -> list[int]:
    """A window that disagrees with both neighbours, which agree, takes their speaker: one
    window is too short to be a turn of its own."""
    out = list(labels)
    for i in range(1, len(out) - 1):
        if out[i - 1] == out[i + 1] != out[i]:
            out[i] = out[i - 1]
    return out


def turns_of(region: Span, windows: Sequence[Span], labels: Sequence[int]) -> list[Turn]:
    """Turns of one region: each window owns the time up to the midpoints between its centre and
    its neighbours'; neighbouring windows of one speaker are one turn."""
    centres = [(a + b) / 2 for a, b in windows]
    bounds = [region[0], *((x + y) / 2 for x, y in itertools.pairwise(centres)), region[1]]
    turns: list[Turn] = []
    for i, label in enumerate(labels):
        speaker = f"ecapa_{label}"
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(turns[-1].start_s, bounds[i + 1], speaker)
        else:
            turns.append(Turn(bounds[i], bounds[i + 1], speaker))
    return turns


class ClusteringDiarizer:
    """Diarization from the voice model every speaker path already loads: no token needed."""

    def __init__(self, voice: VoiceEncoder, options: ClusteringOptions | None = None) -> None:
        self.voice = voice
        self.options = options or ClusteringOptions()

    @property
    def name(self) -> str:
        return f"ecapa-clustering:{self.voice.name}"

    def diarize(self, audio: Samples, regions: Sequence[Span] | None = None) -> list[Turn]:
        """Turns in time order; `regions` are the speech the voice-activity detector found
        (found here when not given)."""
        if regions is None:
            regions = speech_regions(audio)
        usable = [r for r in regions if r[1] - r[0] >= MIN_WINDOW_S]
        per_region = sliding_windows(usable, self.options.window_s, self.options.hop_s)
        flat = [w for windows in per_region for w in windows]
        if not flat:
            return []
        labels = cluster(self.voice.embed(cut(audio, flat)), self.options).tolist()
        turns: list[Turn] = []
        for region, windows in zip(usable, per_region, strict=True):
            own, labels = labels[: len(windows)], labels[len(windows) :]
            turns += turns_of(region, windows, smooth(own))
        return turns
