"""Captions read as transcripts: WebVTT, SubRip, and YouTube's rolling automatic captions."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from ingest.infrastructure.config import CaptionsMode, load_settings
from ingest.infrastructure.retry import Database
from ingest.stages.download import Downloader, DownloadOptions
from ingest.stages.ledger import Ledger
from ingest.stages.messages import Captions, VideoJob
from tests.conftest import Speech
from tests.feeds import serve
from tests.test_download import run_downloads
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


def test_caption_file_of_one_language_in_sorted_order(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp3", "talk.en-US.srt", "talk.en.vtt")

    assert caption_file_for(tmp_path / "talk.mp3", None) == tmp_path / "talk.en-US.srt"


def test_caption_files_in_several_languages_and_none_asked_for(tmp_path: Path) -> None:
    # All but one are translations, and the names do not say which.
    touch(tmp_path, "talk.mp3", "talk.fr.vtt", "talk.de.srt", "talk.en-US.srt")

    assert caption_file_for(tmp_path / "talk.mp3", None) is None
    assert caption_file_for(tmp_path / "talk.mp3", "de") == tmp_path / "talk.de.srt"


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


# The captions of a video as the downloader finds them: the listings as yt-dlp's YouTube
# extractor builds them (`process_language` in yt_dlp/extractor/youtube/_video.py), each track
# in every subtitle format; the tracks themselves served from a local folder (the server
# ignores the query, so each track has a path of its own).

YOUTUBE_FORMATS = ("json3", "srv1", "srv2", "srv3", "ttml", "srt", "vtt")
TRACKS = {
    "de.vtt": "hallo und willkommen",  # YouTube's speech recognition, in the language spoken
    "en-from-de.vtt": "hello and welcome",  # ... machine-translated
    "fr-from-de.vtt": "bonjour et bienvenue",
    "creator-de.vtt": "Hallo und willkommen!",  # written by the creator
    "creator-en.vtt": "Hello and welcome!",
}


def vtt(text: str) -> str:
    return f"WEBVTT\n\n00:00:00.500 --> 00:00:02.000\n{text}\n"


def youtube_track(base: str, file: str, name: str, query: str) -> list[dict[str, Any]]:
    return [
        {
            "ext": fmt,
            "url": f"{base}/{file}?v=VIDEO&{query}&fmt={fmt}",
            "name": name,
            "impersonate": True,
        }
        for fmt in YOUTUBE_FORMATS
    ]


def youtube_automatic(base: str, spoken: str, others: Sequence[str]) -> dict[str, Any]:
    """A video spoken in `spoken`: its track under `spoken` and `spoken-orig` (no `tlang`), and
    YouTube's machine translation into each of `others` (`tlang`), in YouTube's order."""
    query = f"caps=asr&kind=asr&lang={spoken}"
    tracks: dict[str, Any] = {}
    for language in sorted([spoken, *others]):
        if language == spoken:
            tracks[f"{spoken}-orig"] = youtube_track(base, f"{spoken}.vtt", "(Original)", query)
            tracks[spoken] = youtube_track(base, f"{spoken}.vtt", spoken, query)
        else:
            file = f"{language}-from-{spoken}.vtt"
            tracks[language] = youtube_track(base, file, language, f"{query}&tlang={language}")
    return tracks


def youtube_creator(base: str, *languages: str) -> dict[str, Any]:
    return {
        lang: youtube_track(base, f"creator-{lang}.vtt", lang, f"lang={lang}") for lang in languages
    }


@pytest.fixture
def caption_site(tmp_path: Path) -> Iterator[str]:
    """The tracks at their paths; anything under /broken/ answers HTTP 500."""
    folder = tmp_path / "captions"
    folder.mkdir()
    for name, text in TRACKS.items():
        (folder / name).write_text(vtt(text), encoding="utf-8")

    def gate(path: str) -> tuple[int, dict[str, str]] | None:
        return (500, {}) if path.startswith("/broken/") else None

    with serve(folder, gate=gate) as base:
        yield base


def captions_of(
    info: Mapping[str, Any],
    tmp_path: Path,
    mode: CaptionsMode = "auto",
    language: str | None = None,
) -> Captions | None:
    options = DownloadOptions(tmp_path, workers=1, captions=mode, captions_language=language)
    downloader = Downloader(options)
    try:
        return downloader._captions(downloader._ydl(), info)
    finally:
        downloader.close()


def said(captions: Captions | None) -> tuple[str, str] | None:
    return None if captions is None else (captions.source, texts(list(captions.segments))[0])


def test_automatic_captions_in_the_language_spoken(caption_site: str, tmp_path: Path) -> None:
    info = {"automatic_captions": youtube_automatic(caption_site, "de", ["en", "fr"])}

    assert said(captions_of(info, tmp_path)) == (
        "automatic captions (de)",
        "hallo und willkommen",
    )
    assert captions_of(info, tmp_path, mode="manual") is None


def test_a_translation_only_into_a_language_asked_for(caption_site: str, tmp_path: Path) -> None:
    info = {"automatic_captions": youtube_automatic(caption_site, "de", ["en", "fr"])}

    assert said(captions_of(info, tmp_path, language="en")) == (
        "automatic captions (en, translated from de)",
        "hello and welcome",
    )
    assert said(captions_of(info, tmp_path, language="de")) == (
        "automatic captions (de)",
        "hallo und willkommen",
    )
    assert captions_of(info, tmp_path, language="es") is None


def test_an_original_track_yt_dlp_lists_once(caption_site: str, tmp_path: Path) -> None:
    # A language YouTube does not translate (Cantonese, say) is listed without `-orig`.
    query = "caps=asr&kind=asr&lang=de"
    info = {"automatic_captions": {"de": youtube_track(caption_site, "de.vtt", "de", query)}}

    assert said(captions_of(info, tmp_path)) == ("automatic captions (de)", "hallo und willkommen")


def test_creator_captions_in_the_language_spoken(caption_site: str, tmp_path: Path) -> None:
    automatic = youtube_automatic(caption_site, "de", ["en", "fr"])
    both = {"subtitles": youtube_creator(caption_site, "en", "de"), "automatic_captions": automatic}
    english = {"subtitles": youtube_creator(caption_site, "en"), "automatic_captions": automatic}

    assert said(captions_of(both, tmp_path, mode="manual")) == (
        "creator captions (de)",
        "Hallo und willkommen!",
    )
    assert captions_of(english, tmp_path, mode="manual") is None  # the creator's translation
    assert said(captions_of(english, tmp_path)) == (
        "automatic captions (de)",
        "hallo und willkommen",
    )
    assert said(captions_of(english, tmp_path, mode="manual", language="en")) == (
        "creator captions (en)",
        "Hello and welcome!",
    )


def test_creator_captions_when_the_language_spoken_is_unknown(
    caption_site: str, tmp_path: Path
) -> None:
    one = {"subtitles": youtube_creator(caption_site, "en")}
    two = {"subtitles": youtube_creator(caption_site, "en", "de")}
    told = {**two, "language": "de-AT"}  # as other extractors say it

    assert said(captions_of(one, tmp_path)) == ("creator captions (en)", "Hello and welcome!")
    assert captions_of(two, tmp_path) is None
    assert said(captions_of(told, tmp_path)) == ("creator captions (de)", "Hallo und willkommen!")


def test_captions_that_cannot_be_fetched_leave_speech_recognition(
    caption_site: str, tmp_path: Path
) -> None:
    info = {"automatic_captions": youtube_automatic(f"{caption_site}/broken", "de", ["en"])}

    with capture_logs() as logs:
        assert captions_of(info, tmp_path) is None

    (warning,) = [entry for entry in logs if entry["event"] == "captions_unavailable"]
    assert warning["log_level"] == "warning" and "500" in warning["error"]


def test_the_language_setting_defaults_to_the_language_spoken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INGEST_CAPTIONS_LANGUAGE", raising=False)
    assert load_settings().captions_language is None
    monkeypatch.setenv("INGEST_CAPTIONS_LANGUAGE", "")
    assert load_settings().captions_language is None
    monkeypatch.setenv("INGEST_CAPTIONS_LANGUAGE", "pt-BR")
    assert load_settings().captions_language == "pt-BR"


def video_page(folder: Path, track: str) -> None:
    """A web page with the audio and a caption track, as yt-dlp's generic extractor reads it."""
    (folder / "talk.html").write_text(
        "<html><head><title>Talk</title></head><body><video controls>"
        '<source src="short.wav" type="audio/wav">'
        f'<track kind="subtitles" srclang="de" src="{track}"></video></body></html>'
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("track", "captions"),
    [("creator-de.vtt", "creator captions (de)"), ("broken/de.vtt", None)],
    ids=["captions", "caption server failing"],
)
async def test_a_video_with_captions_or_without(
    tmp_path: Path, speech: Speech, pool: asyncpg.Pool, track: str, captions: str | None
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.short, site / "short.wav")
    for name, text in TRACKS.items():
        (site / name).write_text(vtt(text), encoding="utf-8")
    video_page(site, track)

    def gate(path: str) -> tuple[int, dict[str, str]] | None:
        return (500, {}) if path.startswith("/broken/") else None

    options = DownloadOptions(tmp_path / "audio", workers=1, retries=0, captions="manual")
    downloader = Downloader(options)
    ledger = Ledger(Database(pool), total=1)
    with serve(site, gate=gate) as base:
        job = VideoJob("talk", f"{base}/talk.html")
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO videos (id, url) VALUES ($1, $2)", job.video_id, job.url
            )
        try:
            with capture_logs() as logs:
                (audio,) = await run_downloads([job], downloader, ledger)
        finally:
            downloader.close()

    assert list(ledger.failures.items()) == []
    assert audio.path is not None and audio.path.exists()  # speakers need the audio either way
    assert (audio.captions and audio.captions.source) == captions
    unavailable = [entry for entry in logs if entry["event"] == "captions_unavailable"]
    assert len(unavailable) == (captions is None)
