from workers.chunking import ChunkingOptions, Segment, chunk_segments


def seg(start: float, end: float, text: str, speaker: str | None = None) -> Segment:
    return Segment(start, end, text, speaker)


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
    chunks = chunk_segments([seg(0, 5, "x" * 300), seg(5, 6, "short")], ChunkingOptions(100, 60))
    assert [c.text for c in chunks] == ["x" * 300, "short"]


def test_never_spans_a_speaker_change() -> None:
    segments = [seg(0, 1, "a", "S1"), seg(1, 2, "b", "S1"), seg(2, 3, "c", "S2"), seg(3, 4, "d")]
    chunks = chunk_segments(segments, ChunkingOptions(target_chars=1000, max_seconds=100))
    assert [(c.text, c.speaker) for c in chunks] == [("a b", "S1"), ("c", "S2"), ("d", None)]


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
