"""Speaker attribution: windows, overlap assignment, naming, the fast-path decision, OOM halving."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import asyncpg
import numpy as np
import pytest

from ingest.infrastructure.models import GpuWorker
from ingest.infrastructure.retry import Database
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, TranscribedVideo, VideoJob
from ingest.stages.transcribe import transcribe_stage
from tests.conftest import ModelPaths, Speech
from workers.asr import AsrModel, AsrOptions, Waveform, detect_speech, regions_of, whisper_clips
from workers.chunking import ChunkingOptions, Segment, Word
from workers.clustering import ClusteringDiarizer
from workers.decode import decode_audio
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


def reference_assign(segments: Sequence[Segment], turns: Sequence[Turn]) -> list[Segment]:
    """The plain reading of the rules: every word and segment against every turn."""

    def best(start: float, end: float) -> tuple[str, float]:
        overlap: dict[str, float] = {}
        for t in turns:
            shared = min(end, t.end_s) - max(start, t.start_s)
            if shared > 0:
                overlap[t.speaker] = overlap.get(t.speaker, 0.0) + shared
        if not overlap:
            nearest = min(turns, key=lambda t: max(t.start_s - end, start - t.end_s, 0.0))
            return nearest.speaker, 0.0
        speaker = max(overlap, key=lambda s: overlap[s])
        return speaker, min(1.0, overlap[speaker] / max(end - start, 1e-3))

    out = []
    for segment in segments:
        groups: list[tuple[str, list[Word]]] = []
        for word in segment.words:
            speaker, _ = best(word.start_s, word.end_s)
            if groups and groups[-1][0] == speaker:
                groups[-1][1].append(word)
            else:
                groups.append((speaker, [word]))
        parts = [segment]
        if len(groups) > 1:
            parts = [
                Segment(ws[0].start_s, ws[-1].end_s, "".join(w.text for w in ws).strip(),
                        words=tuple(ws))
                for _, ws in groups
            ]  # fmt: skip
        for part in parts:
            speaker, confidence = best(part.start_s, part.end_s)
            out.append(replace(part, speaker=speaker, confidence=confidence))
    return out


def random_case(rng: random.Random, turns: int, segments: int) -> tuple[list[Segment], list[Turn]]:
    """Times on a coarse grid, so that turns share starts and ends and words tie; turns may
    overlap, leave gaps, or take no time; some words take no time; turns come in any order."""

    def time() -> float:
        return rng.randrange(0, 400) * 0.25

    spans = [sorted((time(), time())) for _ in range(turns)]
    some = [Turn(a, b, rng.choice("ABCD")) for a, b in spans]
    rng.shuffle(some)
    out = []
    for _ in range(segments):
        starts = sorted(time() for _ in range(rng.randrange(0, 6)))
        words = tuple(Word(a, a + rng.choice((0.0, 0.25, 0.5, 1.5)), " w") for a in starts)
        a, b = sorted((time(), time()))
        out.append(Segment(a, b, "w", words=words))
    return out, some


def test_the_sweep_gives_what_comparing_every_pair_gives() -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        segments, turns = random_case(rng, rng.randrange(1, 12), rng.randrange(0, 12))
        assert assign_speakers(segments, turns) == reference_assign(segments, turns)


def test_a_long_video_is_labelled_quickly() -> None:
    rng = random.Random(7)
    turns, t = [], 0.0
    for i in range(5000):  # turns of one to twenty seconds with pauses between some
        length = rng.uniform(1.0, 20.0)
        turns.append(Turn(t, t + length, f"S{i % 7}"))
        t += length + rng.choice((0.0, 0.0, 0.4, 2.0))
    words = [Word(i * t / 50_000, i * t / 50_000 + 0.3, " w") for i in range(50_000)]
    segments = [
        Segment(ws[0].start_s, ws[-1].end_s, "w", words=tuple(ws))
        for ws in (words[i : i + 20] for i in range(0, len(words), 20))
    ]
    started = time.perf_counter()
    labelled = assign_speakers(segments, turns)
    assert time.perf_counter() - started < 10.0  # comparing every pair takes minutes
    assert len(labelled) >= len(segments)
    sample = segments[::250]
    assert assign_speakers(sample, turns) == reference_assign(sample, turns)


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


class VadCalls:
    """Counts the voice-activity detector's passes: each one fetches its model first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import faster_whisper.vad

        self.count = 0
        real = faster_whisper.vad.get_vad_model

        def counted() -> object:
            self.count += 1
            return real()

        monkeypatch.setattr(faster_whisper.vad, "get_vad_model", counted)


@pytest.mark.anyio
@pytest.mark.parametrize("batch_size", [4, 1])
async def test_the_voice_activity_detector_runs_once_per_video(
    batch_size: int,
    models: ModelPaths,
    voice: VoiceEncoder,
    speech: Speech,
    pool: asyncpg.Pool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asr = AsrModel(AsrOptions(str(models.asr), batch_size=batch_size))
    options = SpeakerOptions(mode="always")
    worker = GpuWorker(asr, SpeakerAttributor(options, voice, ClusteringDiarizer(voice), []))
    shutil.copy(speech.dialogue, tmp_path / "d.wav")
    audio = AudioFile(VideoJob("d", "d"), tmp_path / "d.wav", owned=False, download_s=0.0)
    calls = VadCalls(monkeypatch)
    send, receive = anyio.create_memory_object_stream[AudioFile](1)
    out_send, out_receive = anyio.create_memory_object_stream[TranscribedVideo](1)
    async with out_receive:
        async with send:
            await send.send(audio)
        ledger = Ledger(Database(pool), total=1)
        await transcribe_stage(
            receive, out_send, workers=[worker], chunking=ChunkingOptions(), ledger=ledger
        )
        (video,) = [v async for v in out_receive]
    assert calls.count == 1
    assert video.chunks and all(c.speaker for c in video.chunks)
    assert "test transcript" in video.chunks[0].text  # what the stand-in Whisper always says
    assert all(c.end_s <= video.duration_s for c in video.chunks)


def test_speech_is_cut_into_whisper_clips_and_speaker_regions() -> None:
    pieces = [(0.0, 10.0), (10.0, 25.0), (25.5, 29.0), (40.0, 45.0), (45.5, 110.0)]
    assert whisper_clips(pieces) == [
        (0.0, 29.0), (40.0, 45.0), (45.5, 75.5), (75.5, 105.5), (105.5, 110.0)
    ]  # fmt: skip
    assert regions_of(pieces) == [(0.0, 29.0), (40.0, 110.0)]
    assert whisper_clips([]) == [] and regions_of([]) == []


@pytest.mark.parametrize("batch_size", [4, 1])
def test_long_audio_is_transcribed_block_by_block_in_place(
    batch_size: int, models: ModelPaths, monologue: Waveform
) -> None:
    found = detect_speech(monologue)
    clips = whisper_clips(found)
    assert len(clips) >= 2
    whole = AsrModel(AsrOptions(str(models.asr), batch_size=batch_size))
    blocks = AsrModel(AsrOptions(str(models.asr), batch_size=batch_size, block_s=1.0))
    expected = whole.transcribe(monologue, words=True, speech=found)
    got = blocks.transcribe(monologue, words=True, speech=found)  # one clip per block
    assert [s.text for s in got] == [s.text for s in expected] and got
    # Each block's times are back on the video's clock: inside the clips, the last one heard.
    # (The stand-in's timestamps are random weights' guesses, so they are not compared.)
    assert all(any(a - 0.02 <= s.start_s <= s.end_s <= b + 0.02 for a, b in clips) for s in got)
    assert got[-1].start_s >= clips[-1][0] - 0.02
    assert all(s.start_s <= w.start_s <= w.end_s <= s.end_s + 0.02 for s in got for w in s.words)


def test_decoding_gives_the_samples_faster_whisper_gives(speech: Speech) -> None:
    from faster_whisper import decode_audio as whole_then_converted

    for path in (speech.long, speech.dialogue):
        expected = whole_then_converted(str(path), sampling_rate=16000)
        assert np.array_equal(decode_audio(path), expected)


def test_audio_longer_than_its_header_states_still_decodes_whole(tmp_path: Path) -> None:
    from workers.decode import PcmFile

    fd, _ = tempfile.mkstemp(dir=tmp_path)
    samples = PcmFile(fd)  # decoding reserves nothing from what a header states
    pcm = np.arange(-5000, 5000, dtype=np.int16).reshape(1, -1)
    for _ in range(7):
        samples.append(pcm)
    assert np.array_equal(samples[:], np.tile(pcm[0], 7).astype(np.float32) / 32768.0)
