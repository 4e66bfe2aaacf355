"""Long audio diarized in blocks: where blocks are cut, how block speakers are linked, and the
real pyannote pipeline (random weights) run block by block."""

from __future__ import annotations

import itertools
import wave
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import ModelPaths, Speech
from workers.asr import Waveform
from workers.diarization import (
    BlockSpeaker,
    DiarizationOptions,
    Diarizer,
    Turn,
    block_bounds,
    link_speakers,
)

RATE = 16000
BLOCK_S = 20.0


def unit(*values: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    vector = np.asarray(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def speaker(block: int, first_s: float, centroid: Any, speech_s: float = 10.0) -> BlockSpeaker:
    return BlockSpeaker(block, f"S{block}_{first_s}", first_s, speech_s, np.asarray(centroid))


# Linking


def test_two_blocks_with_the_voices_in_swapped_order_share_labels() -> None:
    a, b = unit(1, 0, 0, 0.1), unit(0, 1, 0, 0.1)
    speakers = [
        speaker(0, 0.0, a),
        speaker(0, 5.0, b),
        speaker(1, 20.0, b + 0.05 * unit(0, 0, 1, 0)),
        speaker(1, 25.0, a + 0.05 * unit(0, 0, 1, 0)),
    ]
    assert link_speakers(speakers, 0.5) == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01", "SPEAKER_00"]


def test_a_nan_or_zero_centroid_stays_its_own_speaker() -> None:
    a = unit(1, 0.2, 0)
    nan = np.full(3, np.nan)
    speakers = [
        speaker(0, 0.0, a),
        speaker(1, 20.0, nan),
        speaker(1, 21.0, a),
        speaker(2, 40.0, np.zeros(3)),
        speaker(2, 41.0, nan),
    ]
    labels = link_speakers(speakers, 0.5)
    assert labels == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00", "SPEAKER_02", "SPEAKER_03"]
    # Even a threshold that merges everything leaves them apart.
    assert link_speakers(speakers, -1.0) == labels


def test_two_speakers_of_one_block_are_never_merged() -> None:
    a = unit(1, 0, 0)
    speakers = [
        speaker(0, 0.0, a, speech_s=2.0),  # earlier, but less speech than its twin
        speaker(0, 3.0, a + 0.01 * unit(0, 1, 0), speech_s=9.0),
        speaker(1, 20.0, a),
    ]
    labels = link_speakers(speakers, 0.5)
    assert labels[0] != labels[1]
    assert labels[1] == labels[2]  # the bigger one keeps the link
    assert labels == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]
    # One block alone: nothing merges whatever the threshold.
    alike = [speaker(0, float(i), a) for i in range(4)]
    assert len(set(link_speakers(alike, -1.0))) == 4


def test_labels_are_numbered_by_first_appearance() -> None:
    a, b, c = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    speakers = [  # listed out of time order, as nothing guarantees the order
        speaker(2, 50.0, a),
        speaker(1, 30.0, c),
        speaker(0, 9.0, a),
        speaker(0, 2.0, b),
    ]
    assert link_speakers(speakers, 0.5) == ["SPEAKER_01", "SPEAKER_02", "SPEAKER_01", "SPEAKER_00"]
    assert link_speakers([], 0.5) == []


# Cutting


def covers(blocks: Sequence[tuple[float, float]], duration_s: float) -> bool:
    joined = all(x[1] == y[0] for x, y in itertools.pairwise(blocks))
    return blocks[0][0] == 0.0 and blocks[-1][1] == duration_s and joined


def test_short_audio_is_one_block() -> None:
    assert block_bounds(100.0, 1800.0, None) == [(0.0, 100.0)]
    assert block_bounds(2700.0, 1800.0, [(0.0, 2700.0)]) == [(0.0, 2700.0)]  # 1.5 blocks
    assert block_bounds(0.0, 1800.0, None) == [(0.0, 0.0)]


def test_no_block_is_tiny() -> None:
    for duration_s in (2701.0, 3700.0, 4499.0, 5399.0, 5500.0, 4 * 3600.0):
        blocks = block_bounds(duration_s, 1800.0, None)
        assert len(blocks) >= 2 and covers(blocks, duration_s)
        assert all(900.0 < b - a <= 2700.0 for a, b in blocks), (duration_s, blocks)
    blocks = block_bounds(3 * 1800.0 + 100.0, 1800.0, None)
    assert blocks == [(0.0, 1800.0), (1800.0, 3600.0), (3600.0, 5500.0)]  # remainder absorbed


def test_cuts_fall_in_the_silence_nearest_the_nominal_place() -> None:
    regions = [(0.0, 1790.0), (1795.0, 1801.0), (1805.0, 3590.0), (3620.0, 5500.0)]
    blocks = block_bounds(5500.0, 1800.0, regions)
    assert blocks == [(0.0, 1803.0), (1803.0, 3605.0), (3605.0, 5500.0)]
    # Out of reach of any pause, or without regions: the nominal place.
    nominal = [(0.0, 1800.0), (1800.0, 3600.0), (3600.0, 5500.0)]
    far = [(0.0, 1000.0), (1001.0, 3000.0), (3010.0, 5500.0)]
    assert block_bounds(5500.0, 1800.0, far) == nominal
    assert block_bounds(5500.0, 1800.0, None) == block_bounds(5500.0, 1800.0, []) == nominal
    # Regions out of order and overlapping still leave only true pauses.
    tangled = [(1805.0, 3590.0), (0.0, 1000.0), (900.0, 1790.0), (1795.0, 1801.0)]
    assert block_bounds(5500.0, 1800.0, tangled)[0] == (0.0, 1803.0)


# Through Diarizer, with a scripted pipeline: the linking's effect on real output objects


class ScriptedPipeline:
    """Stands in for pyannote's pipeline: per call, the next block's (start, end, label) turns
    and centroids, in pyannote 4's output shape."""

    def __init__(self, blocks: list[tuple[list[tuple[float, float, str]], dict[str, Any]]]):
        self.blocks = blocks
        self.lengths: list[int] = []

    def __call__(self, file: dict[str, Any], **kwargs: Any) -> SimpleNamespace:
        from pyannote.core import Annotation, Segment

        self.lengths.append(int(file["waveform"].shape[-1]))
        turns, centroids = self.blocks[len(self.lengths) - 1]
        annotation = Annotation()
        for start, end, label in turns:
            annotation[Segment(start, end)] = label
        rows = [centroids[label] for label in annotation.labels()]
        return SimpleNamespace(
            speaker_diarization=annotation,
            exclusive_speaker_diarization=annotation,
            speaker_embeddings=np.asarray(rows).reshape(len(rows), -1),
        )


def scripted(pipeline: ScriptedPipeline, block_s: float) -> Diarizer:
    diarizer = Diarizer.__new__(Diarizer)
    diarizer.options = DiarizationOptions("scripted", block_s=block_s)
    diarizer._pipeline = pipeline
    diarizer._call_options = {}
    return diarizer


def test_block_turns_are_offset_and_linked_across_blocks() -> None:
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    pipeline = ScriptedPipeline(
        [
            (
                [(1.0, 4.0, "SPEAKER_00"), (5.0, 10.7, "SPEAKER_01")],  # past the block
                {"SPEAKER_00": a, "SPEAKER_01": b},
            ),
            (
                [(0.5, 3.0, "SPEAKER_00"), (4.0, 12.0, "SPEAKER_01")],
                {"SPEAKER_00": b, "SPEAKER_01": a},
            ),
        ]
    )
    audio = np.zeros(int(25 * RATE), dtype=np.float32)
    turns = scripted(pipeline, 10.0).diarize(audio, [(0.0, 9.0), (11.0, 25.0)])
    assert pipeline.lengths == [10 * RATE, 15 * RATE]  # cut in the pause at 10 s
    assert turns == [
        Turn(1.0, 4.0, "SPEAKER_00"),
        Turn(5.0, 10.0, "SPEAKER_01"),  # clipped to its block
        Turn(10.5, 13.0, "SPEAKER_01"),
        Turn(14.0, 22.0, "SPEAKER_00"),
    ]


def test_one_block_keeps_the_pipelines_labels() -> None:
    pipeline = ScriptedPipeline(
        [
            (
                [(3.0, 4.0, "SPEAKER_00"), (1.0, 2.0, "SPEAKER_01")],
                {"SPEAKER_00": [np.nan], "SPEAKER_01": [1.0]},
            )
        ]
    )
    turns = scripted(pipeline, 1800.0).diarize(np.zeros(5 * RATE, dtype=np.float32))
    assert turns == [Turn(1.0, 2.0, "SPEAKER_01"), Turn(3.0, 4.0, "SPEAKER_00")]
    assert pipeline.lengths == [5 * RATE]


# The real pipeline, random weights: speakers are arbitrary, the blocks are not


def read_wav(path: Path) -> Waveform:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def loud_regions(audio: Waveform, frame: int = RATE // 20) -> list[tuple[float, float]]:
    """Runs of frames above a fixed level: the speech regions, as a detector would give."""
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    loud = np.sqrt((frames**2).mean(axis=1)) > 0.01
    regions: list[tuple[float, float]] = []
    for is_loud, run in itertools.groupby(enumerate(loud.tolist()), key=lambda x: x[1]):
        indices = [i for i, _ in run]
        if is_loud:
            regions.append((indices[0] * frame / RATE, (indices[-1] + 1) * frame / RATE))
    return regions


class SliceOnly:
    """A waveform that can only be measured and sliced, as a disk-backed one; records reads."""

    def __init__(self, samples: Waveform) -> None:
        self._samples = samples
        self.reads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: slice, /) -> Waveform:
        assert isinstance(index, slice) and index.step is None
        self.reads.append((index.start, index.stop))
        return self._samples[index].copy()


@pytest.fixture(scope="module")
def long_audio(speech: Speech) -> Waveform:
    """~65 s: a monologue then another voice."""
    return np.concatenate([read_wav(speech.long), read_wav(speech.medium)])


@pytest.fixture(scope="module")
def blocked(models: ModelPaths) -> Diarizer:
    return Diarizer(DiarizationOptions(str(models.diarization), block_s=BLOCK_S))


@pytest.fixture
def calls(blocked: Diarizer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Samples per pipeline call, counted around the real pipeline's __call__."""
    lengths: list[int] = []
    kind = type(blocked._pipeline)
    real = kind.__call__

    def counted(self: Any, file: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        lengths.append(int(file["waveform"].shape[-1]))
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(kind, "__call__", counted)
    return lengths


def check_turns(turns: Sequence[Turn], duration_s: float) -> None:
    assert turns
    assert all(0.0 <= t.start_s < t.end_s <= duration_s for t in turns)
    assert all(x.end_s <= y.start_s for x, y in itertools.pairwise(turns))  # ordered, apart
    assert any(t.start_s > BLOCK_S for t in turns)  # later blocks were heard too


def test_the_pipeline_runs_once_per_block(
    blocked: Diarizer, long_audio: Waveform, calls: list[int]
) -> None:
    duration_s = len(long_audio) / RATE
    assert 60.0 < duration_s < 75.0
    blocks = block_bounds(duration_s, BLOCK_S, None)
    turns = blocked.diarize(long_audio)
    assert len(calls) == len(blocks) >= 3
    assert sum(calls) == len(long_audio)
    check_turns(turns, duration_s)
    assert all(t.speaker.startswith("SPEAKER_") for t in turns)


def test_audio_that_is_only_sliced_is_read_a_block_at_a_time(
    blocked: Diarizer, long_audio: Waveform, calls: list[int]
) -> None:
    duration_s = len(long_audio) / RATE
    regions = loud_regions(long_audio)
    blocks = block_bounds(duration_s, BLOCK_S, regions)
    assert len(blocks) >= 3
    assert not any(ra < a < rb for a, _ in blocks[1:] for ra, rb in regions)  # cut in pauses
    audio = SliceOnly(long_audio)
    turns = blocked.diarize(audio, regions)
    assert audio.reads == [(round(a * RATE), round(b * RATE)) for a, b in blocks]
    assert all(b - a <= 1.5 * BLOCK_S * RATE for a, b in audio.reads)
    assert calls == [b - a for a, b in audio.reads]
    check_turns(turns, duration_s)
