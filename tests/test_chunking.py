"""Chunks for search: target length, sentence ends, a minimum length, exact times."""

import random

import pytest

from ingest.infrastructure.config import load_settings
from ingest.orchestration.pipeline import PipelineOptions
from workers.chunking import ChunkingOptions, Segment, Word, chunk_segments


def seg(
    start: float, end: float, text: str, speaker: str | None = None, confidence: float | None = None
) -> Segment:
    return Segment(start, end, text, speaker, confidence)


def test_no_segments_gives_no_chunks() -> None:
    assert chunk_segments([]) == []


def test_joins_segments_up_to_the_target_length() -> None:
    segments = [seg(i, i + 1, "word " * 4) for i in range(10)]  # 20 chars each once stripped
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=50, max_seconds=100))
    assert [c.seg_index for c in chunks] == list(range(len(chunks)))
    assert all(len(c.text) <= 50 for c in chunks)
    assert len(chunks) == 5
    assert chunks[0].start_s == 0 and chunks[0].end_s == 2
    assert " ".join(c.text for c in chunks) == " ".join(s.text.strip() for s in segments)


def test_a_segment_longer_than_the_target_is_its_own_chunk() -> None:
    options = ChunkingOptions(100, 60, min_chars=0)
    chunks = chunk_segments([seg(0, 5, "x" * 300), seg(5, 6, "short")], options)
    assert [c.text for c in chunks] == ["x" * 300, "short"]


def test_a_change_of_speaker_ends_a_chunk_long_enough() -> None:
    a, b, c = "a" * 30, "b" * 30, "c" * 60
    segments = [seg(0, 1, a, "S1"), seg(1, 2, b, "S1"), seg(2, 3, c, "S2"), seg(3, 4, c)]
    chunks = chunk_segments(segments, ChunkingOptions(1000, 100, min_chars=60))
    assert [(c.text, c.speaker, c.speakers) for c in chunks] == [
        (f"{a} {b}", "S1", ("S1",)), (c, "S2", ("S2",)), (c, None, ())
    ]  # fmt: skip


def test_limits_chunk_duration() -> None:
    segments = [seg(i * 10, i * 10 + 10, "t") for i in range(6)]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=1000, max_seconds=30))
    assert all(c.end_s - c.start_s <= 30 for c in chunks)
    assert len(chunks) == 2


def test_skips_blank_segments_and_indexes_are_stable() -> None:
    segments = [seg(0, 1, "  "), seg(1, 2, " hello "), seg(2, 3, ""), seg(3, 4, "world")]
    options = ChunkingOptions(target_chars=5, max_seconds=60)
    first = chunk_segments(segments, options)
    assert first == chunk_segments(list(segments), options)
    assert [(c.seg_index, c.text, c.start_s) for c in first] == [(0, "hello", 1), (1, "world", 3)]


LONG_A = "This is what the first speaker has to say about it, at some length. " * 2
LONG_B = "And the second speaker answers with another long and careful sentence. " * 2


def test_a_short_turn_joins_a_neighbour_across_a_change_of_speaker_naming_both() -> None:
    segments = [
        seg(0, 10, LONG_A, "A", 0.9),
        seg(10.5, 11, "Yes.", "B", 1.0),  # nearer to what follows than to what came before
        seg(11, 20, LONG_A, "A", 0.8),
    ]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=200, max_seconds=60))
    assert [c.text for c in chunks] == [LONG_A.strip(), f"Yes. {LONG_A.strip()}"]
    second = chunks[1]
    # `speaker` stays one name, the one heard most, so that filtering by speaker still matches.
    assert (second.speaker, second.speakers) == ("A", ("A", "B"))
    assert second.confidence == pytest.approx(0.8 * 9 / 9.5)  # B's half second counts as not A
    assert (second.start_s, second.end_s) == (10.5, 20)


def test_a_minimum_set_in_the_settings_is_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    segments = [
        seg(0, 10, LONG_A, "A"),
        seg(10.2, 12, "Yes, I agree with that.", "B"),  # 23 characters, nearer to A's turn
        seg(15, 25, LONG_B, "C"),
    ]

    def speakers() -> list[tuple[str, ...]]:
        options = PipelineOptions.from_settings(load_settings(chunk_chars=200)).chunking
        return [c.speakers for c in chunk_segments(segments, options)]

    monkeypatch.delenv("INGEST_CHUNK_MIN_CHARS", raising=False)
    assert speakers() == [("A",), ("B",), ("C",)]  # the default: a tenth of 200
    monkeypatch.setenv("INGEST_CHUNK_MIN_CHARS", "30")
    assert speakers() == [("A", "B"), ("C",)]


def test_a_short_turn_prefers_a_neighbour_of_its_own_speaker() -> None:
    segments = [
        seg(0, 10, LONG_A, "A"),
        seg(10.5, 11, "Go on.", "A"),  # cut off by the target, though nearer to B's turn
        seg(11, 20, LONG_B, "B"),
    ]
    options = ChunkingOptions(target_chars=len(LONG_A.strip()) + 3, max_seconds=60)
    chunks = chunk_segments(segments, options)
    assert [(c.text, c.speakers) for c in chunks] == [
        (f"{LONG_A.strip()} Go on.", ("A",)), (LONG_B.strip(), ("B",))
    ]  # fmt: skip


def test_a_short_turn_between_two_others_joins_the_nearer() -> None:
    segments = [seg(0, 10, LONG_A, "A"), seg(10.1, 11, "Right.", "B"), seg(13, 20, LONG_A, "C")]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=200, max_seconds=60))
    assert [c.speakers for c in chunks] == [("A", "B"), ("C",)]


def test_no_chunk_is_below_the_minimum_unless_joining_would_break_the_time_limit() -> None:
    rng = random.Random(11)
    words = ["yes.", "well", "so", "the point is", "right?", "and then we went there."]
    segments, t = [], 0.0
    for _ in range(400):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 4)))
        length = rng.uniform(0.3, 4.0)
        segments.append(seg(t, t + length, text, rng.choice("ABC")))
        t += length + rng.choice((0.0, 0.5, 30.0))
    options = ChunkingOptions(target_chars=200, max_seconds=40, min_chars=60)
    chunks = chunk_segments(segments, options)
    assert " ".join(c.text for c in chunks) == " ".join(s.text for s in segments)
    assert all(c.end_s - c.start_s <= 40 for c in chunks)
    for i, chunk in enumerate(chunks):
        if len(chunk.text) < 60:  # only where both neighbours are too far away in time
            neighbours = chunks[max(i - 1, 0) : i] + chunks[i + 1 : i + 2]
            assert all(
                max(n.end_s, chunk.end_s) - min(n.start_s, chunk.start_s) > 40 for n in neighbours
            )
    assert any(len(c.speakers) > 1 for c in chunks)


def test_a_transcript_shorter_than_the_minimum_is_one_chunk() -> None:
    chunks = chunk_segments([seg(0, 1, "Hi.", "A"), seg(1, 2, "Hello.", "B")])
    # A tie in speaking time goes to who spoke first.
    assert [(c.text, c.speaker, c.speakers) for c in chunks] == [("Hi. Hello.", "A", ("A", "B"))]


def test_a_short_chunk_far_from_the_others_in_time_stays_alone() -> None:
    segments = [seg(0, 10, LONG_A, "A"), seg(100, 101, "Hello?", "A")]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=200, max_seconds=60))
    assert [c.text for c in chunks] == [LONG_A.strip(), "Hello?"]


def test_chunks_end_at_sentence_ends_where_possible() -> None:
    # Caption lines: sentences run across them.
    lines = ["We looked at the data", "and found nothing. Then we", "looked again and",
             "found it.", "That was the start", "of the whole project. After", "that it grew",
             "quickly."]  # fmt: skip
    segments = [seg(i, i + 1, line) for i, line in enumerate(lines * 3)]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=100, max_seconds=60))
    assert len(chunks) > 3
    assert all(c.text.endswith(".") for c in chunks)
    assert all(len(c.text) <= 100 for c in chunks)


def test_without_sentence_ends_chunks_are_cut_at_the_target() -> None:
    segments = [seg(i, i + 1, "and so on and so forth") for i in range(20)]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=100, max_seconds=60))
    assert all(80 <= len(c.text) <= 100 for c in chunks[:-1])


def test_a_chunk_runs_from_its_first_word_to_its_last() -> None:
    words = (Word(1.3, 1.6, " Hello"), Word(1.7, 2.4, " there."))
    later = (Word(3.1, 3.5, " And"), Word(3.6, 4.2, " you?"))
    segments = [
        Segment(1.0, 3.0, "Hello there.", "A", words=words),
        Segment(3.0, 5.0, "And you?", "A", words=later),
        Segment(5.0, 6.0, "Fine.", "A"),  # no word timings: its own bounds
    ]
    (chunk,) = chunk_segments(segments, ChunkingOptions(target_chars=100, min_chars=0))
    assert (chunk.start_s, chunk.end_s) == (1.3, 6.0)
    (first,) = chunk_segments(segments[:2], ChunkingOptions(target_chars=100, min_chars=0))
    assert (first.start_s, first.end_s) == (1.3, 4.2)
