"""Captions read as transcripts: WebVTT, SubRip, and YouTube's rolling automatic captions."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.captions import CaptionError, caption_file_for, parse_captions, read_caption_file
from workers.chunking import Segment

MANUAL_VTT = """WEBVTT - Interview, part one
Kind: captions
Language: en

NOTE
Transcribed by hand; speaker names are in voice spans.

STYLE
::cue(.loud) { font-weight: bold; }

NOTE one more comment, before the first cue

intro
00:00:01.000 --> 00:00:04.250 align:start position:0% line:90%
<v Roger Bingham>We are in New York City
and it&#39;s a &quot;cold&quot; day</v>

00:00:04.250 --> 00:00:06.000 position:50%,center size:80%
<v.loud Neil deGrasse Tyson>Cold &amp; windy &lt;brr&gt;</v>

00:00:06.500 --> 00:00:08.000
<i>Yes.</i>&nbsp;<b>Quite</b>   <c.yellow>so</c>.

00:00:08.000 --> 00:00:09.000
Yes.

NOTE a cue with no text at all follows

00:00:09.000 --> 00:00:10.000
<v Roger Bingham></v>

01:02.500 --> 01:04.000
- Short times, no hours.
- Second speaker line.
"""

SRT = (
    "\ufeff1\r\n"
    "00:00:00,500 --> 00:00:02,000\r\n"
    "<i>Welcome back</i> to the show.\r\n"
    "\r\n"
    "2\r\n"
    "00:00:02,000 --> 00:00:04,750\r\n"
    "{\\an8}Today: bees &amp; honey,\r\n"
    "and why they matter.\r\n"
    "\r\n"
    "3\r\n"
    "00:00:05,100 --> 00:00:07,000\r\n"
    '<font color="#ffff00">Let\'s begin.</font>\r\n'
)

# The first seconds of a YouTube automatic-caption track as yt-dlp writes it (`--write-auto-subs
# --sub-langs en`): two-line screens that roll up, the new line timed word by word, and 10 ms
# cues between screens that repeat the line just finished.
YOUTUBE_AUTO_VTT = "\n".join(
    [
        "WEBVTT",
        "Kind: captions",
        "Language: en",
        "",
        "00:00:00.080 --> 00:00:02.310 align:start position:0%",
        " ",
        "so<00:00:00.400><c> today</c><00:00:00.640><c> we're</c><00:00:00.880><c> going</c>"
        "<00:00:01.040><c> to</c><00:00:01.200><c> talk</c><00:00:01.600><c> about</c>",
        "",
        "00:00:02.310 --> 00:00:02.320 align:start position:0%",
        "so today we're going to talk about",
        " ",
        "",
        "00:00:02.320 --> 00:00:04.829 align:start position:0%",
        "so today we're going to talk about",
        "batching<00:00:02.960><c> in</c><00:00:03.120><c> the</c><00:00:03.280><c> inference</c>"
        "<00:00:03.840><c> server</c>",
        "",
        "00:00:04.829 --> 00:00:04.839 align:start position:0%",
        "batching in the inference server",
        " ",
        "",
        "00:00:04.839 --> 00:00:07.150 align:start position:0%",
        "batching in the inference server",
        "and<00:00:05.040><c> why</c><00:00:05.200><c> it</c><00:00:05.360><c> matters</c>"
        "<00:00:05.920><c> &gt;&gt;</c><00:00:06.160><c> right</c>",
        "",
        "00:00:07.150 --> 00:00:07.160 align:start position:0%",
        "and why it matters &gt;&gt; right",
        " ",
        "",
        # A pause, then a non-speech cue that rolls like the rest.
        "00:00:09.000 --> 00:00:10.470 align:start position:0%",
        " ",
        "[Music]",
        "",
        "00:00:10.470 --> 00:00:10.480 align:start position:0%",
        "[Music]",
        " ",
        "",
        "00:00:10.480 --> 00:00:12.990 align:start position:0%",
        "[Music]",
        "so<00:00:10.800><c> the</c><00:00:11.040><c> first</c><00:00:11.360><c> thing</c>",
        "",
    ]
)

YOUTUBE_WORDS = (
    "so today we're going to talk about batching in the inference server and why it matters "
    ">> right [Music] so the first thing"
)


def texts(segments: list[Segment]) -> list[str]:
    return [s.text for s in segments]


def test_manual_vtt_is_cleaned_of_markup_and_comments() -> None:
    segments = parse_captions(MANUAL_VTT, "vtt")

    assert texts(segments) == [
        'We are in New York City and it\'s a "cold" day',
        "Cold & windy <brr>",
        "Yes. Quite so.",
        "Yes.",  # said again, in captions that do not roll: kept
        "- Short times, no hours. - Second speaker line.",
    ]
    assert [(s.start_s, s.end_s) for s in segments] == [
        (1.0, 4.25),
        (4.25, 6.0),
        (6.5, 8.0),
        (8.0, 9.0),
        (62.5, 64.0),
    ]
    assert all(s.words == () and s.speaker is None for s in segments)


def test_cues_come_out_in_time_order() -> None:
    text = (
        "WEBVTT\n\n00:00:05.000 --> 00:00:06.000\nlater\n\n00:00:01.000 --> 00:00:02.000\nearlier\n"
    )

    assert texts(parse_captions(text, "vtt")) == ["earlier", "later"]


def test_srt_with_bom_crlf_and_formatting(tmp_path: Path) -> None:
    path = tmp_path / "episode.srt"
    path.write_bytes(SRT.encode("utf-8"))

    segments = read_caption_file(path)

    assert texts(segments) == [
        "Welcome back to the show.",
        "Today: bees & honey, and why they matter.",
        "Let's begin.",
    ]
    assert [(s.start_s, s.end_s) for s in segments] == [(0.5, 2.0), (2.0, 4.75), (5.1, 7.0)]


def test_srt_with_blank_lines_before_and_inside_cues() -> None:
    text = (
        "\n\n1\n00:00:01,000 --> 00:00:02,000\nfirst line\n   \nsecond paragraph\n\n"
        "2\n00:00:03,000 --> 00:00:04,000\nnext\n"
    )

    assert texts(parse_captions(text, "srt")) == ["first line second paragraph", "next"]


def test_youtube_automatic_captions_give_each_word_once() -> None:
    segments = parse_captions(YOUTUBE_AUTO_VTT, "vtt")

    assert " ".join(texts(segments)) == YOUTUBE_WORDS
    assert [(s.start_s, s.end_s) for s in segments] == [
        (0.08, 2.31),
        (2.32, 4.829),
        (4.839, 7.15),
        (9.0, 10.47),
        (10.48, 12.99),
    ]


def test_youtube_inline_timestamps_become_words() -> None:
    segments = parse_captions(YOUTUBE_AUTO_VTT, "vtt")

    first = segments[0].words
    assert [(w.start_s, w.end_s, w.text) for w in first[:3]] == [
        (0.08, 0.4, " so"),
        (0.4, 0.64, " today"),
        (0.64, 0.88, " we're"),
    ]
    assert first[-1].end_s == 2.31  # the last word lasts to the end of its cue
    assert segments[3].words == ()  # "[Music]" has no timestamps
    for segment in segments:
        if segment.words:
            assert "".join(w.text for w in segment.words).strip() == segment.text
            starts = [w.start_s for w in segment.words]
            assert starts == sorted(starts)
            assert segment.start_s <= starts[0] and segment.words[-1].end_s <= segment.end_s


def test_youtube_rolling_captions_converted_to_srt_are_deduplicated() -> None:
    # yt-dlp --convert-subs srt keeps the rolling screens but drops the word timestamps.
    text = """1
00:00:00,080 --> 00:00:02,310
so today we're going to talk about

2
00:00:02,310 --> 00:00:02,320
so today we're going to talk about

3
00:00:02,320 --> 00:00:04,829
so today we're going to talk about
batching in the inference server

4
00:00:04,829 --> 00:00:04,839
batching in the inference server

5
00:00:04,839 --> 00:00:07,150
batching in the inference server
and why it matters
"""
    segments = parse_captions(text, "srt")

    assert texts(segments) == [
        "so today we're going to talk about",
        "batching in the inference server",
        "and why it matters",
    ]
    assert all(s.words == () for s in segments)


def test_words_keep_the_spacing_of_the_line() -> None:
    text = (
        "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n"
        "New York <00:00:01.500><c>City</c><00:00:02.000><c>'s </c>lights\n"
    )
    (segment,) = parse_captions(text, "vtt")

    assert segment.text == "New York City's lights"
    assert [(w.start_s, w.end_s, w.text) for w in segment.words] == [
        (1.0, 1.5, " New York"),
        (1.5, 2.0, " City"),
        (2.0, 3.0, "'s lights"),
    ]


def test_file_in_latin_1_is_read(tmp_path: Path) -> None:
    path = tmp_path / "old.SRT"
    path.write_bytes("1\r\n00:00:01,000 --> 00:00:02,000\r\nCaf\xe9 cr\xe8me\r\n".encode("latin-1"))

    assert texts(read_caption_file(path)) == ["Café crème"]


def test_file_in_utf_16_is_read(tmp_path: Path) -> None:
    path = tmp_path / "windows.srt"
    path.write_bytes("1\r\n00:00:01,000 --> 00:00:02,000\r\nnaïve\r\n".encode("utf-16"))

    assert texts(read_caption_file(path)) == ["naïve"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("no-header.vtt", "00:00:01.000 --> 00:00:02.000\nhello\n", "not a valid VTT file"),
        ("garbage.srt", "this is not\na subtitle file\n", "not a valid SRT file"),
        ("empty.vtt", "", "not a valid VTT file"),
        ("empty.srt", "   \n", "not a valid SRT file"),
        ("header-only.vtt", "WEBVTT\n\nNOTE nothing yet\n", "no captions"),
        ("blank-cues.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n<c> </c>\n", "no captions"),
        ("bad-times.vtt", "WEBVTT\n\n00:00:xx.000 --> 00:00:02.000\nhello\n", "no captions"),
        ("notes.txt", "1\n00:00:01,000 --> 00:00:02,000\nhello\n", "not a caption file"),
    ],
)
def test_unusable_files_raise_caption_error(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")

    with pytest.raises(CaptionError) as raised:
        read_caption_file(path)

    assert str(raised.value).startswith(f"{name}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_file_raises_caption_error(tmp_path: Path) -> None:
    with pytest.raises(CaptionError, match=r"^gone\.vtt: cannot read it"):
        read_caption_file(tmp_path / "gone.vtt")


def test_parse_captions_rejects_text_in_the_wrong_format() -> None:
    with pytest.raises(CaptionError, match="not a valid VTT file"):
        parse_captions(SRT, "vtt")


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text("", encoding="utf-8")


def test_caption_file_beside_audio_without_language(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.en.vtt", "talk.VTT", "talk.de.srt", "other.vtt")

    assert caption_file_for(tmp_path / "talk.mp3", None) == tmp_path / "talk.VTT"


def test_caption_file_in_sorted_order_when_all_have_languages(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.fr.vtt", "talk.de.srt", "talk.en-US.srt")

    assert caption_file_for(tmp_path / "talk.mp3", None) == tmp_path / "talk.de.srt"


def test_caption_file_prefers_the_language(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.srt", "talk.en-US.srt", "talk.EN.vtt", "talk.fr.vtt")
    audio = tmp_path / "talk.mp3"

    assert caption_file_for(audio, "en") == tmp_path / "talk.EN.vtt"
    assert caption_file_for(audio, "en-us") == tmp_path / "talk.en-US.srt"
    assert caption_file_for(audio, "fr") == tmp_path / "talk.fr.vtt"
    assert caption_file_for(audio, "de") == tmp_path / "talk.srt"


def test_caption_file_of_the_same_base_language(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.srt", "talk.en-GB.vtt")

    assert caption_file_for(tmp_path / "talk.mp3", "en") == tmp_path / "talk.en-GB.vtt"


def test_caption_file_never_in_another_language(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.fr.vtt")

    assert caption_file_for(tmp_path / "talk.mp3", "en") is None
    assert caption_file_for(tmp_path / "talk.mp3", None) == tmp_path / "talk.fr.vtt"


def test_caption_file_needs_the_exact_stem(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.part2.srt", "talks.vtt", "Talk.vtt", "talk.en.vtt.bak")
    (tmp_path / "talk.srt").mkdir()

    assert caption_file_for(tmp_path / "talk.mp3", None) is None


def test_caption_file_with_dots_in_the_stem(tmp_path: Path) -> None:
    touch(tmp_path, "ep.01 [intro].m4a", "ep.01 [intro].en.srt", "ep.vtt")

    assert caption_file_for(tmp_path / "ep.01 [intro].m4a", "en") == (
        tmp_path / "ep.01 [intro].en.srt"
    )


def test_caption_file_in_a_missing_folder(tmp_path: Path) -> None:
    assert caption_file_for(tmp_path / "nowhere" / "talk.mp3", None) is None
