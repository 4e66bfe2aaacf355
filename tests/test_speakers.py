"""Speaker attribution: windows, overlap assignment, naming, the fast-path decision, OOM halving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ModelPaths, Speech
from workers.asr import Waveform, decode_audio
from workers.chunking import Segment, Word
from workers.diarization import DiarizationOptions, Diarizer, Turn
from workers.speakers import (
    Decision,
    SpeakerAttributor,
    SpeakerOptions,
    VoiceProfile,
    assign_speakers,
    spread_windows,
)
from workers.voice import Vectors, VoiceEncoder, VoiceOptions, normalize


def test_windows_are_spread_along_the_speech_inside_regions() -> None:
    regions = [(0.0, 10.0), (20.0, 20.3), (30.0, 40.0)]  # the 0.3 s one is too short to use
    windows = spread_windows(regions, count=4, window_s=2.0)
    assert len(windows) == 4
    assert all(b - a == pytest.approx(2.0) for a, b in windows)
    assert all(any(ra <= a and b <= rb for ra, rb in regions) for a, b in windows)
    assert windows[0][0] < 10 and windows[-1][0] >= 30  # both halves of the speech are heard


def test_windows_of_short_regions_shrink_and_no_speech_gives_none() -> None:
    assert spread_windows([(1.0, 2.0)], count=1, window_s=3.0) == [(1.0, 2.0)]
    assert spread_windows([], count=5, window_s=3.0) == []
    assert spread_windows([(0.0, 0.2)], count=5, window_s=3.0) == []


TURNS = [Turn(0.0, 5.0, "A"), Turn(5.0, 9.0, "B"), Turn(12.0, 15.0, "A")]


def test_each_segment_takes_the_speaker_it_overlaps_most() -> None:
    labelled = assign_speakers([Segment(1.0, 6.0, "mostly a"), Segment(6.0, 8.0, "b")], TURNS)
    assert [(s.speaker, s.confidence) for s in labelled] == [("A", 0.8), ("B", 1.0)]


def test_a_segment_straddling_a_turn_is_split_at_it_by_words() -> None:
    words = (Word(3.0, 4.0, " one"), Word(4.0, 4.9, " two"), Word(5.1, 6.0, " three"))
    (first, second) = assign_speakers([Segment(3.0, 6.0, "one two three", words=words)], TURNS)
    assert (first.text, first.speaker, first.end_s) == ("one two", "A", 4.9)
    assert (second.text, second.speaker, second.start_s) == ("three", "B", 5.1)


def test_speech_between_turns_goes_to_the_nearest_with_no_confidence() -> None:
    (segment,) = assign_speakers([Segment(10.5, 11.5, "gap")], TURNS)
    assert (segment.speaker, segment.confidence) == ("A", 0.0)  # 12.0 is nearer than 9.0


@pytest.fixture(scope="module")
def voice(models: ModelPaths, tmp_path_factory: pytest.TempPathFactory) -> VoiceEncoder:
    savedir = tmp_path_factory.mktemp("voice")
    return VoiceEncoder(VoiceOptions(str(models.voice), savedir=savedir, batch_size=32))


@pytest.fixture(scope="module")
def monologue(speech: Speech) -> Waveform:
    return decode_audio(speech.long)


def profile_of(voice: VoiceEncoder, audio: Waveform, name: str) -> VoiceProfile:
    windows = spread_windows([(0.0, len(audio) / 16000)], 8, 3.0)
    vectors = voice.embed([audio[int(a * 16000) : int(b * 16000)] for a, b in windows])
    return VoiceProfile(name, normalize(vectors.mean(axis=0)), len(vectors))


def attributor(
    voice: VoiceEncoder, profiles: Sequence[VoiceProfile], **options: object
) -> SpeakerAttributor:
    return SpeakerAttributor(SpeakerOptions(**options), voice, None, profiles)  # type: ignore[arg-type]


def host_check(voice: VoiceEncoder, profiles: Sequence[VoiceProfile]) -> SpeakerAttributor:
    return attributor(voice, profiles, hosts=("Host",), fastpath_threshold=-1.0)


def test_fast_path_taken_just_under_the_threshold_and_not_just_over(
    voice: VoiceEncoder, monologue: Waveform, speech: Speech
) -> None:
    host = profile_of(voice, decode_audio(speech.short), "Host")
    probe = host_check(voice, [host]).decide(monologue)
    assert probe.path == "fast" and probe.host == "Host" and probe.similarity is not None
    assert 0 < (probe.spread or 0) <= 1
    score = probe.similarity
    under = attributor(voice, [host], hosts=("Host",), fastpath_threshold=score - 1e-4)
    assert under.decide(monologue) == probe
    over = attributor(voice, [host], hosts=("Host",), fastpath_threshold=score + 1e-4)
    decision = over.decide(monologue)
    assert (decision.path, decision.host) == ("full", None)
    assert decision.similarity == pytest.approx(score)
    assert decision.reason is not None and "similarity" in decision.reason


def test_without_a_host_profile_the_full_path_is_taken(
    voice: VoiceEncoder, monologue: Waveform
) -> None:
    other = profile_of(voice, monologue, "Guest")
    decision = attributor(voice, [other], hosts=("Host",), fastpath_threshold=-1.0).decide(
        monologue
    )
    assert decision == Decision("full", reason="no host profile")


def test_a_failing_fast_path_falls_back_to_diarization_not_to_the_host(
    voice: VoiceEncoder, monologue: Waveform
) -> None:
    class Broken(VoiceEncoder):
        def embed(self, windows: Sequence[Waveform]) -> Vectors:
            raise RuntimeError("voice model crashed")

    broken = Broken.__new__(Broken)
    host = VoiceProfile("Host", normalize(np.ones(192, dtype=np.float32)), 1)
    decision = attributor(broken, [host], hosts=("Host",), fastpath_threshold=-1.0).decide(
        monologue
    )
    assert decision.path == "full" and decision.host is None
    assert decision.reason == "fast path failed: RuntimeError: voice model crashed"


def test_modes_off_and_always(voice: VoiceEncoder, monologue: Waveform) -> None:
    host = profile_of(voice, monologue, "Host")
    segments = [Segment(0.0, 2.0, "hello")]
    off = attributor(voice, [host], mode="off", hosts=("Host",), fastpath_threshold=-1.0)
    assert off.decide(monologue) == Decision("off")
    assert off.label(monologue, segments, Decision("off")) == segments
    always = attributor(voice, [host], mode="always", hosts=("Host",), fastpath_threshold=-1.0)
    assert always.decide(monologue).path == "full"


def test_clusters_matching_a_profile_take_its_name(
    voice: VoiceEncoder, monologue: Waveform, models: ModelPaths
) -> None:
    diarizer = Diarizer(DiarizationOptions(str(models.diarization)))
    host = profile_of(voice, monologue, "Host")
    options = SpeakerOptions(hosts=("Host",), match_threshold=-1.0)
    named = SpeakerAttributor(options, voice, diarizer, [host])
    segments = [Segment(0.5, 4.0, "a"), Segment(20.0, 24.0, "b")]
    labelled = named.label(monologue, segments, Decision("full"))
    assert {s.speaker for s in labelled} == {"Host"}
    assert all(0.0 <= (s.confidence or 0) <= 1.0 for s in labelled)
    strict = SpeakerAttributor(SpeakerOptions(match_threshold=1.01), voice, diarizer, [host])
    assert {s.speaker for s in strict.label(monologue, segments, Decision("full"))} == {
        "SPEAKER_00"
    }


class FlakyGpu(VoiceEncoder):
    """The real encoder, but batches above `limit` windows run out of memory."""

    limit = 4
    sizes: list[int]

    def _encode(self, batch: Sequence[Waveform]) -> Vectors:
        self.sizes.append(len(batch))
        if len(batch) > self.limit:
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._encode(batch)


def test_out_of_memory_halves_the_batch_and_keeps_the_results(
    models: ModelPaths, monologue: Waveform, tmp_path: Path, voice: VoiceEncoder
) -> None:
    windows = [monologue[i * 8000 : i * 8000 + 24000] for i in range(20)]
    flaky = FlakyGpu(VoiceOptions(str(models.voice), savedir=tmp_path, batch_size=32))
    flaky.sizes = []
    vectors = flaky.embed(windows)
    assert flaky.sizes[:4] == [20, 10, 5, 2]  # halved on each failure, never straight to one
    assert set(flaky.sizes[3:]) == {2} and flaky.batch_size == 2
    assert np.allclose(vectors, voice.embed(windows), atol=1e-4)


def test_other_errors_are_not_retried(models: ModelPaths, tmp_path: Path) -> None:
    class Failing(VoiceEncoder):
        def _encode(self, batch: Sequence[Waveform]) -> Vectors:
            raise ValueError("bad input")

    failing = Failing(VoiceOptions(str(models.voice), savedir=tmp_path, batch_size=8))
    with pytest.raises(ValueError, match="bad input"):
        failing.embed([np.zeros(16000, dtype=np.float32)] * 3)
    assert failing.batch_size == 8
