"""The token-free diarizer: windows, clustering with an estimated number of speakers, smoothing,
turns, and the whole path on a two-voice dialogue."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ModelPaths, Speech
from tests.speech import SENTENCES, speak, wav_seconds
from workers.asr import Waveform
from workers.chunking import Segment
from workers.clustering import (
    ClusteringDiarizer,
    ClusteringOptions,
    cluster,
    sliding_windows,
    smooth,
    turns_of,
)
from workers.decode import decode_audio
from workers.diarization import Turn
from workers.speakers import Decision, SpeakerAttributor, SpeakerOptions
from workers.voice import Vectors, VoiceEncoder, VoiceOptions, normalize


def voices(rng: np.random.Generator, counts: Sequence[int], noise: float = 0.3) -> Vectors:
    """Rows around one random 192-d direction per speaker, speakers in turn."""
    centres = normalize(rng.standard_normal((len(counts), 192)).astype(np.float32))
    rows = [centres[i] + noise * rng.standard_normal(192) / np.sqrt(192) * 3 for i, n in
            enumerate(counts) for _ in range(n)]  # fmt: skip
    return normalize(np.asarray(rows, dtype=np.float32))


def truth(counts: Sequence[int]) -> list[int]:
    return [i for i, n in enumerate(counts) for _ in range(n)]


@pytest.mark.parametrize("counts", [(40,), (30, 25), (20, 15, 30), (10, 10, 10, 10, 10)])
def test_the_number_of_speakers_is_estimated(counts: tuple[int, ...]) -> None:
    vectors = voices(np.random.default_rng(len(counts)), counts)
    assert cluster(vectors, ClusteringOptions()).tolist() == truth(counts)


def test_long_videos_cluster_a_sample_and_place_every_window() -> None:
    counts = (900, 700, 400)
    vectors = voices(np.random.default_rng(7), counts)
    labels = cluster(vectors, ClusteringOptions(max_clustered=120))
    assert labels.tolist() == truth(counts)


def test_a_stray_window_is_not_a_speaker_of_its_own() -> None:
    rng = np.random.default_rng(3)
    vectors = np.concatenate([voices(rng, (30, 30)), voices(rng, (1,))])
    labels = cluster(vectors, ClusteringOptions())
    assert set(labels.tolist()) == {0, 1}


def test_one_window_or_none() -> None:
    assert cluster(voices(np.random.default_rng(0), (1,)), ClusteringOptions()).tolist() == [0]
    assert cluster(np.zeros((0, 192), dtype=np.float32), ClusteringOptions()).tolist() == []


def test_windows_cover_each_region_and_end_with_it() -> None:
    (long_region, short_region) = sliding_windows([(10.0, 14.2), (20.0, 21.0)], 1.5, 0.75)
    assert long_region[0] == (10.0, 11.5) and long_region[-1] == pytest.approx((12.7, 14.2))
    assert all(b - a == pytest.approx(1.5) for a, b in long_region)
    assert all(y[0] - x[0] <= 0.75 + 1e-9 for x, y in itertools.pairwise(long_region))
    assert short_region == [(20.0, 21.0)]


def test_smoothing_removes_one_window_turns_only() -> None:
    assert smooth([0, 0, 1, 0, 0]) == [0, 0, 0, 0, 0]
    assert smooth([0, 0, 1, 1, 0, 0]) == [0, 0, 1, 1, 0, 0]
    assert smooth([1, 0, 0]) == [1, 0, 0]  # an edge window has one neighbour only


def test_turns_split_at_midpoints_and_join_one_speaker() -> None:
    windows = [(0.0, 1.5), (0.75, 2.25), (1.5, 3.0), (2.25, 3.75)]
    turns = turns_of((0.0, 3.75), windows, [0, 0, 1, 1])
    assert turns == [Turn(0.0, 1.875, "ecapa_0"), Turn(1.875, 3.75, "ecapa_1")]


def _pitch_hz(window: Waveform) -> float:
    centred = window - window.mean()
    spectrum = np.fft.rfft(centred, 2 * len(centred))
    autocorrelation = np.fft.irfft(spectrum * np.conj(spectrum))[: len(centred)]
    low, high = 16000 // 400, 16000 // 60
    return 16000 / (low + int(np.argmax(autocorrelation[low:high])))


class PitchVoice(VoiceEncoder):
    """A voice model whose embedding is the window's pitch: the random-weight stand-in cannot
    tell voices apart, and this one tells the dialogue's low and high voice apart for sure, so
    the clustering and turn-making around it are checked against the truth."""

    def __init__(self) -> None:
        self.bins = np.arange(60.0, 400.0, 5.0)

    def embed(self, windows: Sequence[Waveform]) -> Vectors:
        pitch = np.array([_pitch_hz(w) for w in windows])
        bumps = np.exp(-(((self.bins[None, :] - pitch[:, None]) / 20) ** 2))
        return normalize(bumps.astype(np.float32))


@pytest.fixture(scope="module")
def turn_ends(speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """Where the dialogue's speakers change: it is three turns of two sentences each."""
    folder = tmp_path_factory.mktemp("turns")
    first = speak(folder / "a.wav", SENTENCES[0:2], "en-us+m3", 35)
    second = speak(folder / "b.wav", SENTENCES[2:4], "en-gb+f4", 75)
    return [wav_seconds(first), wav_seconds(first) + wav_seconds(second)]


def test_a_two_voice_dialogue_gives_two_speakers_changing_where_they_do(
    speech: Speech, turn_ends: list[float]
) -> None:
    turns = ClusteringDiarizer(PitchVoice()).diarize(decode_audio(speech.dialogue))
    assert [t.speaker for t in turns] == ["ecapa_0", "ecapa_1", "ecapa_0"]
    assert [t.end_s for t in turns[:2]] == pytest.approx(turn_ends, abs=1.0)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(turns))


def test_segments_of_a_dialogue_take_each_voice_s_label(
    speech: Speech, turn_ends: list[float]
) -> None:
    audio = decode_audio(speech.dialogue)
    speakers = SpeakerAttributor(
        SpeakerOptions(mode="always"), None, ClusteringDiarizer(PitchVoice()), []
    )
    middle = [Segment(1.0, 5.0, "one"), Segment(turn_ends[0] + 1, turn_ends[1] - 1, "two")]
    labelled = speakers.label(audio, middle, Decision("full"))
    assert [s.speaker for s in labelled] == ["SPEAKER_00", "SPEAKER_01"]
    assert all(s.confidence == 1.0 for s in labelled)


def test_the_real_voice_model_labels_every_segment(
    speech: Speech, models: ModelPaths, tmp_path: Path
) -> None:
    voice = VoiceEncoder(VoiceOptions(str(models.voice), savedir=tmp_path))
    speakers = SpeakerAttributor(SpeakerOptions(), voice, ClusteringDiarizer(voice), [])
    segments = [Segment(0.5, 4.0, "a"), Segment(9.0, 12.0, "b"), Segment(20.0, 24.0, "c")]
    labelled = speakers.label(decode_audio(speech.dialogue), segments, Decision("full"))
    assert [s.text for s in labelled] == ["a", "b", "c"]
    assert all(s.speaker and s.speaker.startswith("SPEAKER_") for s in labelled)


def test_silence_gives_no_turns(models: ModelPaths, tmp_path: Path) -> None:
    voice = VoiceEncoder(VoiceOptions(str(models.voice), savedir=tmp_path))
    assert ClusteringDiarizer(voice).diarize(np.zeros(16000 * 5, dtype=np.float32)) == []
