"""Who speaks when: the pyannote.audio speaker-diarization pipeline.

Long audio is diarized in blocks, each cut in a pause where the voice-activity regions allow, and
the speakers of the blocks are linked into global speakers by clustering their centroid
embeddings (average linkage, cosine); two speakers of one block are never one person.
"""

from __future__ import annotations

import bisect
import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from workers.asr import SAMPLE_RATE, Samples

Span = tuple[float, float]
Vector = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True, slots=True)
class Turn:
    start_s: float
    end_s: float
    speaker: str  # the pipeline's cluster label


class SpeakerTurns(Protocol):
    """A diarizer: pyannote's pipeline, or ECAPA clustering (workers/clustering.py)."""

    @property
    def name(self) -> str: ...

    def diarize(self, audio: Samples, regions: Sequence[Span] | None = None) -> list[Turn]: ...


@dataclass(frozen=True, slots=True)
class DiarizationOptions:
    model: str  # a hub id, a local pipeline folder or its config.yaml
    device: str = "cpu"
    token: str | None = None  # for gated hub models
    # Audio per pipeline call: pyannote clusters all (chunk, speaker) embeddings of a call at
    # once, in memory that grows with the square of its length: one call on a 4 h video would
    # need 64 times what a 30 min block does.
    block_s: float = 1800.0
    # Cosine similarity of two blocks' speaker centroids above which they are one person.
    # A centroid averages a block's worth of a voice, so is steadier than the single-chunk
    # embeddings pyannote's own clustering compares; 0.5 (60 degrees apart) errs towards keeping
    # voices apart: one person split in two is an extra label, two merged lose who said what.
    link_threshold: float = 0.5


@dataclass(frozen=True, slots=True)
class BlockSpeaker:
    """One speaker of one block, as the linking sees it."""

    block: int
    label: str  # the pipeline's label within its block
    first_s: float  # start of its first turn, in the whole audio
    speech_s: float  # its seconds of turns: the bigger of two same-block speakers stays linked
    centroid: Vector = field(compare=False, repr=False)  # NaN when pyannote had no clean speech


def block_bounds(duration_s: float, block_s: float, regions: Sequence[Span] | None) -> list[Span]:
    """Consecutive blocks of about `block_s` covering the audio, each cut in the pause nearest
    its nominal place; a remainder under half a block joins the last block."""
    if duration_s <= 1.5 * block_s:
        return [(0.0, duration_s)]
    count = int(np.ceil(duration_s / block_s - 0.5))
    gaps = _gaps(regions, duration_s) if regions is not None else []
    cuts = [_cut_near(k * block_s, gaps, 0.1 * block_s) for k in range(1, count)]
    edges = [0.0, *cuts, duration_s]
    return list(itertools.pairwise(edges))


def _gaps(regions: Sequence[Span], duration_s: float) -> list[Span]:
    """The silences around and between the speech regions, in time order."""
    gaps: list[Span] = []
    reached = 0.0
    for start, end in sorted(regions):
        if start > reached:
            gaps.append((reached, start))
        reached = max(reached, end)
    if reached < duration_s:
        gaps.append((reached, duration_s))
    return gaps


def _cut_near(nominal_s: float, gaps: Sequence[Span], reach_s: float) -> float:
    """The middle of the pause whose middle is nearest `nominal_s` within `reach_s`: cutting a
    word would hand each half to a different block. Without one, `nominal_s` itself."""
    middles = [(a + b) / 2 for a, b in gaps]
    i = bisect.bisect_left(middles, nominal_s)
    near = [m for m in middles[max(0, i - 1) : i + 1] if abs(m - nominal_s) <= reach_s]
    return min(near, key=lambda m: abs(m - nominal_s), default=nominal_s)


def link_speakers(speakers: Sequence[BlockSpeaker], threshold: float) -> list[str]:
    """A global label per block speaker: SPEAKER_00, SPEAKER_01, … in order of first turn."""
    groups = _split_same_block(speakers, _cluster_centroids(speakers, threshold))
    firsts: dict[int, float] = {}
    for speaker, group in zip(speakers, groups, strict=True):
        firsts[group] = min(firsts.get(group, speaker.first_s), speaker.first_s)
    order = sorted(firsts, key=lambda g: (firsts[g], g))
    names = {group: f"SPEAKER_{i:02d}" for i, group in enumerate(order)}
    return [names[group] for group in groups]


def _cluster_centroids(speakers: Sequence[BlockSpeaker], threshold: float) -> list[int]:
    """A group per speaker; a centroid that is NaN or zero says nothing, so joins nothing."""
    groups = list(range(len(speakers)))
    usable = [i for i, s in enumerate(speakers) if _usable(s.centroid)]
    if len(usable) < 2:
        return groups
    from scipy.cluster.hierarchy import fcluster, linkage

    vectors = np.stack([speakers[i].centroid for i in usable]).astype(np.float64)
    tree = linkage(vectors, method="average", metric="cosine")
    flat = fcluster(tree, t=1.0 - threshold, criterion="distance")
    for i, cluster in zip(usable, flat.tolist(), strict=True):
        groups[i] = len(speakers) + int(cluster)  # above the singletons' numbers
    return groups


def _usable(centroid: Vector) -> bool:
    return bool(np.all(np.isfinite(centroid))) and bool(np.any(centroid != 0))


def _split_same_block(speakers: Sequence[BlockSpeaker], groups: Sequence[int]) -> list[int]:
    """Within a group, one speaker per block (the one with most speech, then the earliest); the
    others become groups of their own: one block never holds the same person twice."""
    out = list(groups)
    ranked = sorted(range(len(speakers)), key=lambda i: (-speakers[i].speech_s, i))
    kept: set[tuple[int, int]] = set()
    for i in ranked:
        if (groups[i], speakers[i].block) in kept:
            out[i] = -1 - i  # unique, and apart from the clustered and singleton numbers
        else:
            kept.add((groups[i], speakers[i].block))
    return out


@dataclass(frozen=True, slots=True)
class BlockTurns:
    """What one pipeline call found."""

    turns: list[Turn]  # in the whole audio's time, local labels
    centroids: dict[str, Vector]  # by local label


def _block_speakers(block: int, result: BlockTurns) -> list[BlockSpeaker]:
    """The block's speakers that have turns, in order of their first turn."""
    speech: dict[str, float] = {}
    firsts: dict[str, float] = {}
    for turn in result.turns:
        speech[turn.speaker] = speech.get(turn.speaker, 0.0) + turn.end_s - turn.start_s
        firsts.setdefault(turn.speaker, turn.start_s)
    missing = np.full(1, np.nan)  # a speaker the pipeline gave no centroid
    return [
        BlockSpeaker(
            block, label, firsts[label], speech[label], result.centroids.get(label, missing)
        )
        for label in firsts
    ]


def link_blocks(results: Sequence[BlockTurns], threshold: float) -> list[Turn]:
    """The blocks' turns under global labels, in time order."""
    speakers = [s for b, r in enumerate(results) for s in _block_speakers(b, r)]
    labels = link_speakers(speakers, threshold)
    names = {(s.block, s.label): name for s, name in zip(speakers, labels, strict=True)}
    return [
        Turn(t.start_s, t.end_s, names[(b, t.speaker)])
        for b, r in enumerate(results)
        for t in r.turns
    ]


def _unpack(output: Any) -> tuple[Any, Any, Any]:
    """(exclusive view, view whose labels order the embeddings, embeddings) of a pipeline call:
    pyannote 4 returns an output object, 3.x an (annotation, embeddings) pair."""
    if isinstance(output, tuple):
        annotation, embeddings = output
        return annotation, annotation, embeddings
    exclusive = getattr(output, "exclusive_speaker_diarization", output)
    return exclusive, getattr(output, "speaker_diarization", output), output.speaker_embeddings


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
        # 3.x returns the centroids only when asked; 4 always does, and warns at the argument.
        asks = "return_embeddings" in inspect.signature(pipeline.apply).parameters
        self._call_options: dict[str, Any] = {"return_embeddings": True} if asks else {}

    @property
    def name(self) -> str:
        return self.options.model

    def diarize(self, audio: Samples, regions: Sequence[Span] | None = None) -> list[Turn]:
        """Turns without overlap, in time order. The waveform is passed in memory, a block at a
        time: given a path, pyannote 4 decodes again and runs several times slower. pyannote
        finds speech with its own segmentation model; `regions` only place the block cuts."""
        duration_s = len(audio) / SAMPLE_RATE
        blocks = block_bounds(duration_s, self.options.block_s, regions)
        results = [self._diarize_block(audio, start, end) for start, end in blocks]
        if len(results) == 1:  # the pipeline's own labels, as before blocks
            return sorted(results[0].turns, key=lambda t: t.start_s)
        turns = link_blocks(results, self.options.link_threshold)
        return sorted(turns, key=lambda t: t.start_s)

    def _diarize_block(self, audio: Samples, start_s: float, end_s: float) -> BlockTurns:
        import torch

        a, b = round(start_s * SAMPLE_RATE), round(end_s * SAMPLE_RATE)
        samples = np.ascontiguousarray(audio[a:b], dtype=np.float32)
        output = self._pipeline(
            {"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE},
            **self._call_options,
        )
        exclusive, ordered, embeddings = _unpack(output)
        turns = _offset_turns(exclusive, a / SAMPLE_RATE, len(samples) / SAMPLE_RATE)
        labels = [str(label) for label in ordered.labels()]
        rows = [] if embeddings is None else list(np.asarray(embeddings))
        return BlockTurns(turns, dict(zip(labels, rows, strict=False)))


def _offset_turns(annotation: Any, offset_s: float, length_s: float) -> list[Turn]:
    """A block's turns in the whole audio's time, clipped to the block so that turns of
    neighbouring blocks never overlap."""
    spans = [
        (float(segment.start), min(float(segment.end), length_s), str(label))
        for segment, _, label in annotation.itertracks(yield_label=True)
    ]
    return [Turn(offset_s + a, offset_s + b, label) for a, b, label in spans if a < b]
