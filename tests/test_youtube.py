"""YouTube's own paths, driven by what yt-dlp's YouTube extractors return, recorded in
tests/fixtures/youtube/ in the shapes the installed yt-dlp (2026.11.23) gives:

- channel.json: what YoutubeTabIE._real_extract returns, by URL. A bare channel URL gives a
  playlist of its tabs (Videos, Live, Shorts: extractor/youtube/_tab.py `_real_extract`), each a
  playlist of flat `url` entries as `_extract_video` and the shorts lockup build them
  (`live_status`, `availability`, `release_timestamp`); a Playlists tab gives `url` entries of
  YoutubeTab playlists (`_extract_lockup_view_model`), each listed by an extraction of its own.
- video.json: what YoutubeIE._real_extract returns for a video spoken in English: its creator's
  captions (en, de, pt-BR), YouTube's automatic ones (en-orig, en), their machine translations
  (de, fr, pt) and those of the creator's tracks (de-en, fr-en, en-de, en-pt-BR: yt-dlp adds
  them when it lists or writes subtitles), as extractor/youtube/_video.py `process_language`
  builds them, in three of the seven formats it lists; its audio formats carry the language
  spoken, as yt-dlp sets it, and YoutubeDL copies the chosen one's onto the video.
- failures.json: what yt-dlp warned of on the way, as our logger gets it, then the error the
  extraction ended with (YouTube's reasons as `raise_no_formats` raises them; the timeout as the
  real extractor gave it with every request timing out), or what it returned when the warnings
  were all it said. An error is raised again as the ExtractorError it was (its message and
  `expected`; not its cause, which the classification does not need).

Only the extractors' `_real_extract` is replaced: YoutubeDL's own processing (flat extraction,
playlist items, format selection, how errors are wrapped) and the project's code above it run
unchanged. Any request yt-dlp would make fails the test, but for caption tracks, which are
answered here; nothing reaches the network.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
import pytest
import yt_dlp
from yt_dlp.extractor.youtube import YoutubeIE, YoutubeTabIE

from db.listings import record_listing
from db.videos import DiscoveredVideo, record_discovered
from ingest.infrastructure.config import load_settings
from ingest.infrastructure.retry import Database, RetryPolicy
from ingest.orchestration.discovery import discover
from ingest.orchestration.pipeline import PipelineOptions
from ingest.sites.errors import JS_RUNTIME_FIX
from ingest.sites.throttle import Governor, SiteStatus
from ingest.stages.download import Downloader, DownloadOptions, Fetched, download_stage
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, VideoJob
from ingest.stages.sources import list_source
from tests.test_claims import alive_claims, claim_all
from tests.test_discovery import session, stored

FIXTURES = Path(__file__).parent / "fixtures" / "youtube"
CHANNEL = "https://www.youtube.com/@ExampleTalks"
VIDEO = "Vx7pQ2mLk9E"
VIDEO_URL = f"https://www.youtube.com/watch?v={VIDEO}"
# The channel's tabs, in the recording's order.
UPLOADS = ["Pr3mQ9wLk2E", "Hn3kQ8vZp2E", "b7TzW1qLx9A", "Kd8sLmQ2vN0", "a1B2c3D4e5F"]
STREAMS = ["Up5tRmA0bCd", "L1veN0wAbCd", "StrmEd01xYz", "StrmEd02xYz"]
SHORTS = ["Sh0rtA1b2C3", "Sh0rtD4e5F6"]


def recording(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class AudioWanted(Exception):
    """yt-dlp was about to download the audio (YoutubeDL.process_info)."""


class _Reply:
    def __init__(self, text: str) -> None:
        self._body = text.encode()

    def read(self) -> bytes:
        return self._body


def caption_text(url: str) -> str:
    """A WebVTT track that says which track it is: its `lang`, `kind` and `tlang`."""
    query = parse_qs(urlsplit(url).query)
    said = " ".join(f"{key}={query.get(key, ['-'])[0]}" for key in ("lang", "kind", "tlang"))
    return f"WEBVTT\n\n00:00:00.500 --> 00:00:02.000\n{said}\n"


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The caption tracks yt-dlp fetched (answered as `caption_text`); any other request, or a
    track in another format than WebVTT, fails the test. Downloading audio raises AudioWanted."""
    urls: list[str] = []

    def urlopen(ydl: Any, request: Any) -> _Reply:
        url = request if isinstance(request, str) else request.url
        if not url.startswith("https://www.youtube.com/api/timedtext?"):
            pytest.fail(f"a request to the network: {url}")
        if parse_qs(urlsplit(url).query).get("fmt") != ["vtt"]:
            pytest.fail(f"a caption track fetched in another format than WebVTT: {url}")
        urls.append(url)
        return _Reply(caption_text(url))

    def process_info(ydl: Any, info: Mapping[str, Any]) -> None:
        raise AudioWanted(info["format_id"])

    monkeypatch.setattr(yt_dlp.YoutubeDL, "urlopen", urlopen)
    monkeypatch.setattr(yt_dlp.YoutubeDL, "process_info", process_info)
    return urls


def replay_tabs(monkeypatch: pytest.MonkeyPatch, recordings: Mapping[str, Any]) -> list[str]:
    """YoutubeTabIE answers each URL with its recording; returns the URLs it was asked for."""
    asked: list[str] = []

    def real_extract(ie: Any, url: str) -> Any:
        asked.append(url)
        if url not in recordings:
            pytest.fail(f"no recording of {url}")
        return copy.deepcopy(recordings[url])

    monkeypatch.setattr(YoutubeTabIE, "_real_extract", real_extract)
    return asked


def replay_video(monkeypatch: pytest.MonkeyPatch, recorded: Mapping[str, Any]) -> None:
    """YoutubeIE warns as recorded, then raises the recorded error or returns the recorded
    info dict, as the real extractor would from inside `_real_extract`."""

    def real_extract(ie: Any, url: str) -> Any:
        for warning in recorded.get("warnings", []):
            ie._downloader.report_warning(warning)  # already "[youtube] <id>: ..."
        if (error := recorded.get("error")) is not None:
            raise yt_dlp.utils.ExtractorError(error["message"], expected=error["expected"])
        return copy.deepcopy(recorded["result"])

    monkeypatch.setattr(YoutubeIE, "_real_extract", real_extract)


# Listing a channel


def test_a_bare_channel_url_lists_its_videos_then_its_streams_then_its_shorts(
    monkeypatch: pytest.MonkeyPatch, fetched: list[str]
) -> None:
    """README: without a tab, a channel URL takes all three tabs, one after the other; each
    video once, under its id, at its watch URL (a short's too), with what the flat entry says."""
    asked = replay_tabs(monkeypatch, recording("channel.json"))

    listed = list_source(CHANNEL)

    assert asked == [CHANNEL]  # the tabs came nested: no further extraction
    assert [video.record.id for video in listed] == [*UPLOADS, *STREAMS, *SHORTS]
    assert {video.record.url for video in listed} == {
        f"https://www.youtube.com/watch?v={video.record.id}" for video in listed
    }
    by_id = {video.record.id: video.record for video in listed}
    assert by_id["Hn3kQ8vZp2E"].title == "Consensus without leaders"
    assert by_id["Hn3kQ8vZp2E"].duration_s == 2712
    assert by_id["Sh0rtA1b2C3"].extractor == "Youtube"
    assert [by_id[i].live_status for i in STREAMS] == [
        "is_upcoming",
        "is_live",
        "was_live",
        "was_live",
    ]
    assert fetched == []


def test_a_window_of_a_channel_takes_the_first_of_each_tab(
    monkeypatch: pytest.MonkeyPatch, fetched: list[str]
) -> None:
    """`first` is yt-dlp's playlist_items, which applies at every level of the nesting: the
    first tabs, and the first videos of each. The discovery's windows (50) exceed the three
    tabs, so none is lost there; a window below three would drop tabs."""
    replay_tabs(monkeypatch, recording("channel.json"))

    listed = list_source(CHANNEL, first=2)

    assert [video.record.id for video in listed] == [*UPLOADS[:2], *STREAMS[:2]]


def test_a_tab_of_playlists_lists_each_playlist_once_per_video(
    monkeypatch: pytest.MonkeyPatch, fetched: list[str]
) -> None:
    """Entries that are YoutubeTab URLs (a Playlists tab) are extracted in turn; a video in two
    playlists is listed once, where it first appears."""
    asked = replay_tabs(monkeypatch, recording("channel.json"))

    listed = list_source(f"{CHANNEL}/playlists")

    assert len(asked) == 3 and all("playlist?list=PL" in url for url in asked[1:])
    assert [video.record.id for video in listed] == ["Hn3kQ8vZp2E", "b7TzW1qLx9A", "a1B2c3D4e5F"]


def ended(recordings: dict[str, Any], video_id: str) -> dict[str, Any]:
    """The recordings, with the stream `video_id` of the Live tab since ended, as a later
    listing shows it."""
    later = copy.deepcopy(recordings)
    for entry in later[CHANNEL]["entries"][1]["entries"]:
        if entry["id"] == video_id:
            entry.update(live_status="was_live", duration=4211, release_timestamp=None)
    return later


async def statuses(pool: asyncpg.Pool, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    rows = await pool.fetch("SELECT id, status, error FROM videos WHERE id = ANY($1)", list(ids))
    return {row["id"]: (row["status"], row["error"]) for row in rows}


@pytest.mark.anyio
async def test_upcoming_and_live_entries_are_skipped_until_a_listing_shows_they_ended(
    monkeypatch: pytest.MonkeyPatch, fetched: list[str], pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """README: live and upcoming streams (and premieres) are `skipped` with the reason and taken
    once a later listing shows they ended; members-only videos are listed like any other (they
    are set aside when their download says so)."""
    recordings = recording("channel.json")
    replay_tabs(monkeypatch, recordings)
    run = session(pool, tmp_path)

    assert await discover([CHANNEL], run) == ([CHANNEL], [])

    assert await stored(pool, CHANNEL) == [*UPLOADS, *STREAMS, *SHORTS]
    skipped = {"Pr3mQ9wLk2E": "is_upcoming", "Up5tRmA0bCd": "is_upcoming", "L1veN0wAbCd": "is_live"}
    found = await statuses(pool, [*UPLOADS, *STREAMS, *SHORTS])
    assert {i: s for i, s in found.items() if s[0] == "skipped"} == {
        i: ("skipped", f"skipped: {why}") for i, why in skipped.items()
    }
    replay_tabs(monkeypatch, ended(recordings, "Up5tRmA0bCd"))
    await discover([CHANNEL], run)
    claims = await alive_claims(pool, "host:1:me")
    expected = [i for i in [*UPLOADS, *STREAMS, *SHORTS] if i not in ("Pr3mQ9wLk2E", "L1veN0wAbCd")]
    assert await claim_all(claims, [CHANNEL]) == expected


# Choosing captions


def settings_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str
) -> DownloadOptions:
    """The downloader's options as a run builds them from INGEST_* settings (speakers off, so
    captions spare the audio), with nothing else of the environment's."""
    for name in ("INGEST_CAPTIONS", "INGEST_CAPTIONS_LANGUAGE", "INGEST_ASR_LANGUAGE"):
        monkeypatch.delenv(name, raising=False)
    env = {"INGEST_DIARIZATION": "off", "INGEST_YTDLP_SLEEP_REQUESTS": "0", **env}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(data_dir=tmp_path)
    return PipelineOptions.from_settings(settings).download


def video_without(*creator: str) -> dict[str, Any]:
    """The recorded video, without the creator's captions in those languages."""
    info: dict[str, Any] = recording("video.json")
    for language in creator:
        del info["subtitles"][language]
    return info


def download(
    options: DownloadOptions, info: Mapping[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Fetched | None:
    """The video through the real downloader and yt-dlp: what it fetched, or None when it went
    on to the audio (captions did not do)."""
    replay_video(monkeypatch, {"result": info})
    downloader = Downloader(options)
    try:
        return downloader.download(VideoJob(VIDEO, VIDEO_URL))
    except AudioWanted:
        return None
    finally:
        downloader.close()


def source_of(fetched: Fetched | None) -> tuple[str, str] | None:
    """Where the transcript came from, as recorded with it, and the track's own words."""
    if fetched is None or fetched.captions is None:
        return None
    return fetched.captions.source, fetched.captions.segments[0].text


def case_id(value: object) -> str:
    """ "captions=auto+captions_language=fr", "without en", "creator captions (en)", "audio"."""
    if isinstance(value, dict):
        return "+".join(f"{k.removeprefix('INGEST_').lower()}={v}" for k, v in value.items())
    if isinstance(value, tuple) and (not value or " " not in value[0]):
        return f"without {','.join(value)}" if value else "all tracks"
    return str(value[0]) if isinstance(value, tuple) else "audio"


CREATOR_EN = ("creator captions (en)", "lang=en kind=- tlang=-")
AUTOMATIC_EN = ("automatic captions (en)", "lang=en kind=asr tlang=-")


@pytest.mark.parametrize(
    ("env", "without", "chosen"),
    [
        # The language spoken (en, from the audio format yt-dlp picked), the creator's first.
        ({"INGEST_CAPTIONS": "manual"}, (), CREATOR_EN),
        ({"INGEST_CAPTIONS": "auto"}, (), CREATOR_EN),
        ({"INGEST_CAPTIONS": "auto"}, ("en",), AUTOMATIC_EN),
        # The creator's German and Portuguese are translations of what is said: never taken.
        ({"INGEST_CAPTIONS": "manual"}, ("en",), None),
        ({"INGEST_CAPTIONS": "off"}, (), None),
        # A language asked for: its untranslated track, a regional one for a bare code...
        ({"INGEST_CAPTIONS": "auto", "INGEST_CAPTIONS_LANGUAGE": "de"}, (),
         ("creator captions (de)", "lang=de kind=- tlang=-")),
        ({"INGEST_CAPTIONS": "manual", "INGEST_CAPTIONS_LANGUAGE": "pt"}, (),
         ("creator captions (pt-BR)", "lang=pt-BR kind=- tlang=-")),
        ({"INGEST_CAPTIONS": "auto", "INGEST_CAPTIONS_LANGUAGE": "pt-BR"}, (),
         ("creator captions (pt-BR)", "lang=pt-BR kind=- tlang=-")),
        # ... else, in auto mode, YouTube's translation of its automatic track into it.
        ({"INGEST_CAPTIONS": "auto", "INGEST_CAPTIONS_LANGUAGE": "fr"}, (),
         ("automatic captions (fr, translated from en)", "lang=en kind=asr tlang=fr")),
        ({"INGEST_CAPTIONS": "auto", "INGEST_CAPTIONS_LANGUAGE": "de"}, ("de",),
         ("automatic captions (de, translated from en)", "lang=en kind=asr tlang=de")),
        ({"INGEST_CAPTIONS": "manual", "INGEST_CAPTIONS_LANGUAGE": "fr"}, (), None),
        ({"INGEST_CAPTIONS": "auto", "INGEST_CAPTIONS_LANGUAGE": "es"}, (), None),
        # The speech recognition's language, when set, is the captions' too.
        ({"INGEST_CAPTIONS": "auto", "INGEST_CAPTIONS_LANGUAGE": "fr",
          "INGEST_ASR_LANGUAGE": "de"}, (), ("creator captions (de)", "lang=de kind=- tlang=-")),
    ],
    ids=lambda v: case_id(v),
)  # fmt: skip
def test_the_caption_track_each_setting_chooses(
    env: dict[str, str],
    without: tuple[str, ...],
    chosen: tuple[str, str] | None,
    monkeypatch: pytest.MonkeyPatch,
    fetched: list[str],
    tmp_path: Path,
) -> None:
    """One track fetched, in WebVTT, when one is chosen; otherwise the audio is downloaded for
    speech recognition."""
    options = settings_download(monkeypatch, tmp_path, **env)

    got = download(options, video_without(*without), monkeypatch)

    assert source_of(got) == chosen
    assert len(fetched) == (chosen is not None)


@pytest.mark.parametrize("mode", ["manual", "auto"])
@pytest.mark.parametrize(
    "without",
    [(), ("en",), ("en", "de", "pt-BR")],
    ids=["all creator tracks", "no creator English", "no creator tracks"],
)
def test_no_translation_without_a_language_asked_for(
    mode: str,
    without: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    fetched: list[str],
    tmp_path: Path,
) -> None:
    """README: without INGEST_CAPTIONS_LANGUAGE, YouTube's machine translations are never
    taken, even when the track in the language spoken is gone and only translations are left."""
    info = video_without(*without)
    for name in ("en", "en-orig"):
        del info["automatic_captions"][name]
    options = settings_download(monkeypatch, tmp_path, INGEST_CAPTIONS=mode)

    got = download(options, info, monkeypatch)

    assert not any("tlang=" in url for url in fetched)
    assert (got is None) == ("en" in without)


def test_captions_and_the_audio_when_speakers_are_wanted(
    monkeypatch: pytest.MonkeyPatch, fetched: list[str], tmp_path: Path
) -> None:
    """README: speakers are attributed from the audio, so with diarization on the audio is
    downloaded even when captions are the transcript."""
    options = settings_download(
        monkeypatch, tmp_path, INGEST_CAPTIONS="auto", INGEST_DIARIZATION="auto"
    )

    assert download(options, video_without(), monkeypatch) is None  # it went on to the audio
    assert len(fetched) == 1 and "lang=en" in fetched[0]


# Live statuses of a full extraction


@pytest.mark.parametrize(
    ("live_status", "refused"),
    [("is_live", "live stream"), ("is_upcoming", "upcoming stream"), ("post_live", None),
     ("was_live", None)],
)  # fmt: skip
def test_a_full_extraction_still_live_is_not_downloaded(
    live_status: str,
    refused: str | None,
    monkeypatch: pytest.MonkeyPatch,
    fetched: list[str],
    tmp_path: Path,
) -> None:
    """download.py: a live or upcoming stream is refused before anything is fetched (skipped by
    the stage); one that ended is downloaded, post_live (ended, YouTube still processing it)
    included."""
    from ingest.sites.errors import classify
    from ingest.stages.download import NotYetAvailable

    info = {**video_without(), "live_status": live_status, "is_live": live_status == "is_live"}
    options = settings_download(monkeypatch, tmp_path, INGEST_CAPTIONS="off")
    replay_video(monkeypatch, {"result": info})
    downloader = Downloader(options)
    try:
        with pytest.raises((NotYetAvailable, AudioWanted)) as raised:
            downloader.download(VideoJob(VIDEO, VIDEO_URL))
    finally:
        downloader.close()
    if refused is None:
        assert isinstance(raised.value, AudioWanted)
    else:
        assert (classify(raised.value).kind, str(raised.value)) == ("not_yet", refused)


# Failures: what yt-dlp said, and what the user sees


async def claimed(pool: asyncpg.Pool, video_id: str, url: str) -> VideoJob:
    """The video listed and claimed as a run claims it: its job carries the claim's lease."""
    async with pool.acquire() as conn:
        await record_discovered(conn, [DiscoveredVideo(video_id, url)])
        await record_listing(conn, "channel", [video_id])
    claims = await alive_claims(pool, "host:1:me")
    stop = asyncio.Event()
    jobs = [job async for job in claims.jobs(["channel"], stop)]
    assert [job.video_id for job in jobs] == [video_id]
    return jobs[0]


async def download_stage_of(
    job: VideoJob, pool: asyncpg.Pool, governor: Governor, tmp_path: Path
) -> tuple[list[AudioFile], Ledger]:
    """One video through the real download stage, one try (no backoff), the site's governor
    given: what came out, and the run's ledger."""
    options = DownloadOptions(tmp_path / "audio", workers=1, retry=RetryPolicy(attempts=1))
    downloader, ledger = Downloader(options), Ledger(Database(pool), total=1)
    send, receive = anyio.create_memory_object_stream[VideoJob](1)
    out_send, out_receive = anyio.create_memory_object_stream[AudioFile](1)
    try:
        async with out_receive:
            async with send:
                await send.send(job)
            await download_stage(
                receive, out_send, downloader=downloader, ledger=ledger, governor=governor
            )
            return [audio async for audio in out_receive], ledger
    finally:
        downloader.close()


async def row_of(pool: asyncpg.Pool, video_id: str) -> tuple[Any, ...]:
    row = await pool.fetchrow(
        "SELECT status, error, failure_class, attempts, retry_at IS NOT NULL AS again"
        " FROM videos WHERE id = $1",
        video_id,
    )
    assert row is not None
    return tuple(row)


def site(status: SiteStatus) -> tuple[bool, bool, str, str]:
    return status.paused, status.blocked, status.reason, status.fix


OPEN = (False, False, "", "")


# (recording, the video's row, the site's state, whether this run claims the video again)
FAILURES: list[tuple[str, tuple[Any, ...], tuple[bool, bool, str, str], bool]] = [
    # Throttling: the site pauses; the video goes back, its attempt not spent, to be claimed
    # again in this run once the site reopens.
    ("bot_check", ("discovered", None, None, 0, False),
     (True, False, "YouTube's bot check", ""), True),
    ("http_429", ("discovered", None, None, 0, False),
     (True, False, "HTTP 429 Too Many Requests (in yt-dlp's warnings)", ""), True),
    ("http_403", ("discovered", None, None, 0, False),
     (True, False, "HTTP 403 from YouTube's pages (in yt-dlp's warnings)", ""), True),
    # The site needs the user: blocked with the fix; the video stays to do.
    ("no_js_runtime", ("discovered", None, None, 0, False),
     (True, True, "no JavaScript runtime to solve YouTube's challenges", JS_RUNTIME_FIX),
     False),
    # A one-off network error: failed, and tried again later on the schedule.
    ("timeout", ("failed", "download: [youtube] T1m3dOutAbC: Unable to download API page: The "
                 "read operation timed out (caused by TransportError('The read operation timed "
                 "out'))", "transient", 1, True), OPEN, False),
    # This video alone: failed for good, or set aside until the cookies change.
    ("private", ("failed", "download: [youtube] Pr1vat3V1dA: Video unavailable. This video "
                 "is private", "permanent", 1, False), OPEN, False),
    ("members_only", ("failed", "download: [youtube] M3mb3rs0nLy: Join this channel to get "
                      "access to members-only content like this video, and other exclusive "
                      "perks.", "needs_cookies", 1, False), OPEN, False),
    ("age_restricted", ("failed", "download: [youtube] Ag3R3str1ct: Sign in to confirm your "
                        "age. This video may be inappropriate for some users. Use "
                        "--cookies-from-browser or --cookies for the authentication. See "
                        "https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-"
                        "yt-dlp for how to manually pass cookies. Also see https://github."
                        "com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies for "
                        "tips on effectively exporting YouTube cookies", "needs_cookies", 1,
                        False), OPEN, False),
    # Not yet: skipped with the reason, never a failure.
    ("premiere", ("skipped", "skipped: upcoming premiere", None, 0, False), OPEN, False),
    ("live_event", ("skipped", "skipped: live event not started or still live", None, 0,
                    False), OPEN, False),
]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "row", "youtube", "claimed_again"), FAILURES, ids=[case[0] for case in FAILURES]
)
async def test_what_a_user_sees_after_a_recorded_failure(
    name: str,
    row: tuple[Any, ...],
    youtube: tuple[bool, bool, str, str],
    claimed_again: bool,
    monkeypatch: pytest.MonkeyPatch,
    fetched: list[str],
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """The video's row (status, error, failure class, attempts, a retry scheduled) as `ingest
    status` shows it, the site's state as the progress display shows it, and whether this run
    claims the video again."""
    recorded = recording("failures.json")[name]
    replay_video(monkeypatch, recorded)
    video_id = parse_qs(urlsplit(recorded["url"]).query)["v"][0]
    job = await claimed(pool, video_id, recorded["url"])
    governor = Governor()

    out, ledger = await download_stage_of(job, pool, governor, tmp_path)

    assert out == [] and fetched == []
    assert await row_of(pool, video_id) == row
    assert site(governor.site_status("youtube.com")) == youtube
    if youtube[0]:
        assert (video_id in ledger.returned) != claimed_again
    assert (await ledger.settle(asyncio.Event()) == 1) == claimed_again


def test_the_recorded_wording_is_the_installed_yt_dlps() -> None:
    """The recordings' sign-in hint is what this yt-dlp's YouTube extractor appends to YouTube's
    reasons: a newer wording that the rules no longer match would show here first."""
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl:
        hint = ydl.get_info_extractor("Youtube")._youtube_login_hint
    hinted = [
        r["error"]["message"]
        for r in recording("failures.json").values()
        if "error" in r and "--cookies" in r["error"]["message"]
    ]
    assert len(hinted) == 2 and all(message.endswith(f". {hint}") for message in hinted)
