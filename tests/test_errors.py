"""Failure classification against yt-dlp's own wording, wrapped the way yt-dlp raises it."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.client import RemoteDisconnected
from io import BytesIO
from typing import Any

import av.error
import pytest
import yt_dlp
from yt_dlp.networking import Response
from yt_dlp.networking.exceptions import HTTPError, IncompleteRead, TransportError
from yt_dlp.utils import (
    ContentTooShortError,
    DownloadError,
    ExtractorError,
    GeoRestrictedError,
    UnsupportedError,
    UserNotLive,
)

from ingest.infrastructure.errors import (
    COOKIES_FIX,
    FORMATS_FIX,
    IMPERSONATE_FIX,
    JS_RUNTIME_FIX,
    POT_FIX,
    Failure,
    classify,
    parse_retry_after,
    site_of,
)
from tests.feeds import serve

# extractor/youtube/_base.py `_youtube_login_hint`, built on extractor/common.py `_login_hint`
# ('cookies'): appended by extractor/youtube/_video.py to every reason that says "sign in".
YT_LOGIN_HINT = (
    "Use --cookies-from-browser or --cookies for the authentication. "
    "See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how "
    "to manually pass cookies. Also see  "
    "https://github.com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies  for tips on "
    "effectively exporting YouTube cookies"
)
# extractor/common.py `_login_hint`, 'cookies' (what raise_login_required appends elsewhere).
COOKIES_HINT = (
    "Use --cookies-from-browser or --cookies for the authentication. "
    "See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how "
    "to manually pass cookies"
)
# extractor/youtube/_video.py `help_message` (the EJS wiki URL is from jsc/_builtin/ejs.py).
JS_HELP = (
    "Ensure you have a supported JavaScript runtime and challenge solver script distribution "
    "installed. Review any warnings presented before this message. For more details, refer to  "
    "https://github.com/yt-dlp/yt-dlp/wiki/EJS"
)
GOOGLEVIDEO = "https://rr3---sn-4g5e6nzl.googlevideo.com/videoplayback?expire=1700000000&itag=251"


def _id(value: object) -> str | None:
    return value[:50] if isinstance(value, str) else None


def extractor_error(
    msg: str, ie: str = "youtube", cause: BaseException | None = None
) -> ExtractorError:
    """As InfoExtractor.extract leaves it: named after the extractor and the video."""
    return ExtractorError(msg, expected=True, cause=cause, video_id="abc", ie=ie)


def arrive(error: BaseException, held: BaseException | None = None) -> DownloadError:
    """As YoutubeDL.trouble raises it: "ERROR: " and the message, the original in `exc_info`
    (for a network error, the HTTPError or TransportError being handled)."""
    if isinstance(error, DownloadError) and held is None:
        return error  # arrived already
    held = held or error
    return DownloadError(f"ERROR: {error}", exc_info=(type(held), held, None))


def response(status: int, url: str, headers: dict[str, str] | None = None) -> Response:
    return Response(BytesIO(b""), url, headers or {}, status=status)


def webpage_error(status: int, url: str, ie: str, headers: dict[str, str] | None = None) -> Any:
    """extractor/common.py `_request_webpage`: 'Unable to download webpage: <HTTPError>'."""
    http = HTTPError(response(status, url, headers))
    return arrive(extractor_error(f"Unable to download webpage: {http}", ie, cause=http), http)


def media_error(status: int, url: str, headers: dict[str, str] | None = None) -> DownloadError:
    """YoutubeDL.py `process_info`: 'unable to download video data: <HTTPError>'."""
    http = HTTPError(response(status, url, headers))
    return arrive(DownloadError(f"unable to download video data: {http}"), http)


@pytest.mark.parametrize(
    ("error"),
    [
        # YouTube's reason, with extractor/youtube/_video.py's sign-in hint appended.
        extractor_error(f"Private video. Sign in if you've been granted access to this video. "
                        f"{YT_LOGIN_HINT}"),
        # YouTube's reasons, raised by extractor/youtube/_video.py `raise_no_formats`.
        extractor_error("Join this channel to get access to members-only content like this "
                        "video, and other exclusive perks."),
        extractor_error("This video is available to this channel's members on level: Gold "
                        "(or any higher level). Join this channel to get access to members-only "
                        "content and other exclusive perks."),
        extractor_error("Video unavailable. This video has been removed by the uploader"),
        extractor_error("Video unavailable. This video is no longer available because the "
                        "YouTube account associated with this video has been terminated."),
        extractor_error("Video unavailable. This video is no longer available due to a "
                        "copyright claim by Some Label"),
        extractor_error("Video unavailable"),  # extractor/youtube/_video.py test 'skip'
        extractor_error("This video is not available."),  # extractor/youtube/_video.py 'skip'
        extractor_error("This video does not exist."),  # extractor/youtube/_video.py 'skip'
        # extractor/youtube/_video.py test 'skip'
        extractor_error("This video has been removed for violating YouTube's policy on hate "
                        "speech."),
        # extractor/common.py `raise_geo_restricted` default, as YoutubeDL.py reports it.
        GeoRestrictedError("This video is not available from your location due to geo "
                           "restriction\nYou might want to use a VPN or a proxy server (with "
                           "--proxy) to workaround."),
        # extractor/youtube/_video.py: the subreason that makes it raise_geo_restricted.
        extractor_error("Video unavailable. The uploader has not made this video available in "
                        "your country"),
        UnsupportedError("http://example.org/page.html"),  # utils/_utils.py
        extractor_error("'abc' is not a valid URL", "generic"),  # extractor/generic.py
        extractor_error("This video is DRM protected"),  # extractor/common.py `report_drm`
        extractor_error("No video formats found!", "generic"),  # YoutubeDL.py raise_no_formats
        # YoutubeDL.py `process_video_result`, for any site but YouTube.
        extractor_error("Requested format is not available. Use --list-formats for a list of "
                        "available formats", "generic"),
        webpage_error(404, "http://example.org/episode.mp3", "generic"),
        media_error(410, "https://cdn.example.org/episode.mp3"),
        webpage_error(403, "https://example.org/page", "generic"),  # forbidden, not YouTube's
    ],
    ids=lambda e: _id(str(e).removeprefix("ERROR: ")),
)  # fmt: skip
def test_permanent(error: BaseException) -> None:
    assert classify(arrive(error)).kind == "permanent"


def test_corrupt_media_and_too_long_are_permanent() -> None:
    from ingest.stages.download import PermanentDownloadError
    from workers.audio import too_long

    corrupt = av.error.InvalidDataError(
        1094995529, "Invalid data found when processing input", "x.wav"
    )
    assert classify(corrupt) == Failure("permanent", "invalid media data")
    reason = too_long(7200.0, 3600.0)
    assert reason is not None
    assert classify(PermanentDownloadError(reason)) == Failure("permanent", reason)


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        # YouTube's reason, cut and hinted by extractor/youtube/_video.py.
        (extractor_error(f"Sign in to confirm your age. This video may be inappropriate for some "
                         f"users. {YT_LOGIN_HINT}"), COOKIES_FIX),
        # extractor/common.py `raise_login_required` default, with the 'cookies' hint.
        (extractor_error(f"This video is only available for registered users. {COOKIES_HINT}",
                         "vimeo"), COOKIES_FIX),
        # extractor/youtube/_base.py `_check_login_required`.
        (extractor_error(f"Login details are needed to download this content. {YT_LOGIN_HINT}",
                         "youtube:tab"), COOKIES_FIX),
        # extractor/youtube/_base.py (a warning; the run's logger may raise it).
        (extractor_error("The provided YouTube account cookies are no longer valid. They have "
                         "likely been rotated in the browser as a security measure. For tips on "
                         "how to effectively export YouTube cookies, refer to  https://github.com"
                         "/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies ."),
         COOKIES_FIX),
        # extractor/youtube/_video.py (a warning).
        (extractor_error("No supported JavaScript runtime could be found. Only deno is enabled by "
                         "default; to use another runtime add  --js-runtimes RUNTIME[:PATH]  to "
                         "your command/config. YouTube extraction without a JS runtime has been "
                         "deprecated, and some formats may be missing. See  https://github.com/"
                         "yt-dlp/yt-dlp/wiki/EJS  for details on installing one"), JS_RUNTIME_FIX),
        # extractor/youtube/_video.py (a warning).
        (extractor_error(f"n challenge solving failed: Some formats may be missing. {JS_HELP}"),
         JS_RUNTIME_FIX),
        # extractor/youtube/_video.py `_report_pot_format_skipped` (despite its "HTTP Error 403").
        (extractor_error('abc: web client https formats require a GVS PO Token which was not '
                         'provided. They will be skipped as they may yield HTTP Error 403. You '
                         'can manually pass a GVS PO Token for this client with --extractor-args '
                         '"youtube:po_token=web.gvs+XXX". For more information, refer to  '
                         'https://github.com/yt-dlp/yt-dlp/wiki/PO-Token-Guide'), POT_FIX),
        (extractor_error("PO Token Required"), POT_FIX),  # extractor/youtube/_video.py 'skip'
        # YoutubeDL.py `process_video_result`: on YouTube, formats vanish without JS or a token.
        (extractor_error("Requested format is not available. Use --list-formats for a list of "
                         "available formats"), FORMATS_FIX),
        # extractor/generic.py, a Cloudflare 403.
        (extractor_error('Got HTTP Error 403 caused by Cloudflare anti-bot challenge; see  '
                         'https://github.com/yt-dlp/yt-dlp#impersonation  for how to install the '
                         'required impersonation dependency, and try again with  '
                         '--extractor-args "generic:impersonate"', "generic"), IMPERSONATE_FIX),
    ],
    ids=lambda v: _id(str(v)) if isinstance(v, BaseException) else None,
)  # fmt: skip
def test_needs_user(error: BaseException, fix: str) -> None:
    failure = classify(arrive(error))
    assert (failure.kind, failure.fix) == ("needs_user", fix)
    assert failure.retry_after_s is None


def test_the_fixes_name_our_settings() -> None:
    assert "INGEST_COOKIES_FILE" in COOKIES_FIX
    assert "INGEST_COOKIES_FROM_BROWSER=firefox" in COOKIES_FIX
    assert 'pip install "yt-dlp[default,deno]"' in JS_RUNTIME_FIX
    assert "INGEST_YTDLP_EXTRACTOR_ARGS='youtube:po_token=web.gvs+TOKEN'" in POT_FIX


@pytest.mark.parametrize(
    ("error"),
    [
        # YouTube's bot check, with either apostrophe, hinted by extractor/youtube/_video.py.
        extractor_error(f"Sign in to confirm you\u2019re not a bot. {YT_LOGIN_HINT}"),
        extractor_error(f"Sign in to confirm you're not a bot. {YT_LOGIN_HINT}"),
        # extractor/youtube/_video.py, YouTube's "try again later" reason and its explanation.
        extractor_error("This content isn't available, try again later. The current session has "
                        "been rate-limited by YouTube for up to an hour. It is recommended to use "
                        "`-t sleep` to add a delay between video requests to avoid exceeding the "
                        "rate limit. For more information, refer to  https://github.com/yt-dlp/"
                        "yt-dlp/wiki/Extractors#this-content-isnt-available-try-again-later"),
        # extractor/youtube/_video.py
        extractor_error("All player responses are invalid. Your IP is likely being blocked by "
                        "Youtube"),
        # extractor/youtube/_video.py, a captcha interstitial.
        extractor_error("Video unavailable. YouTube is requiring a captcha challenge before "
                        "playback"),
        webpage_error(429, "https://www.youtube.com/watch?v=abc", "youtube"),
        media_error(429, GOOGLEVIDEO),
        webpage_error(429, "https://example.org/feed.xml", "generic"),
    ],
    ids=lambda e: _id(str(e).removeprefix("ERROR: ")),
)  # fmt: skip
def test_throttled(error: BaseException) -> None:
    failure = classify(arrive(error))
    assert failure.kind == "throttled"
    assert failure.retry_after_s is None  # none of them said how long


@pytest.mark.parametrize(
    ("error"),
    [
        # networking/common.py wraps what the socket raised in a TransportError; extractor/
        # common.py `_request_webpage` reports it as 'Unable to download webpage: <error>'.
        ConnectionResetError(104, "Connection reset by peer"),
        RemoteDisconnected("Remote end closed connection without response"),
        socket.gaierror(-3, "Temporary failure in name resolution"),
        TimeoutError("timed out"),
    ],
    ids=lambda e: _id(str(e)),
)
def test_one_off_network_errors_are_transient(error: BaseException) -> None:
    transport = TransportError(cause=error)
    wrapped = extractor_error(f"Unable to download webpage: {transport}", cause=transport)
    assert classify(arrive(wrapped, transport)).kind == "transient"
    assert classify(error).kind == "transient"


@pytest.mark.parametrize(
    ("error"),
    [
        media_error(403, GOOGLEVIDEO),  # an expired signed URL: fetched afresh on the next try
        webpage_error(403, "https://www.youtube.com/youtubei/v1/player", "youtube"),
        webpage_error(500, "https://www.youtube.com/watch?v=abc", "youtube"),
        webpage_error(502, "https://example.org/feed.xml", "generic"),
        media_error(503, "https://cdn.example.org/episode.mp3"),
        IncompleteRead(partial=1024, expected=4096),  # networking/exceptions.py
        # YoutubeDL.py `process_info`: 'content too short (expected ... bytes and served ...)'.
        arrive(DownloadError("content too short (expected 4096 bytes and served 1024)"),
               ContentTooShortError(1024, 4096)),
        TransportError("Connection to www.youtube.com timed out. (connect timeout=20.0)"),
    ],
    ids=lambda e: _id(str(e).removeprefix("ERROR: ")),
)  # fmt: skip
def test_transient(error: BaseException) -> None:
    assert classify(arrive(error)).kind == "transient"


@pytest.mark.parametrize(
    ("error"),
    [
        extractor_error("Premieres in 2 hours"),  # YouTube's reason, via raise_no_formats
        extractor_error("This live event will begin in 3 hours."),  # likewise
        UserNotLive(video_id="@channel"),  # utils/_utils.py: 'The channel is not currently live'
    ],
    ids=lambda e: _id(str(e)),
)
def test_not_yet(error: BaseException) -> None:
    assert classify(arrive(error)).kind == "not_yet"


def test_live_streams_from_the_downloader_are_not_yet() -> None:
    from ingest.stages.download import NotYetAvailable

    assert classify(NotYetAvailable("upcoming stream")) == Failure("not_yet", "upcoming stream")


def test_unknown_errors_are_permanent_unless_they_look_like_the_network() -> None:
    assert classify(RuntimeError("something nobody has seen before")).kind == "permanent"
    assert classify(KeyError("formats")).kind == "permanent"
    assert classify(OSError(101, "Network is unreachable")).kind == "transient"


def test_the_real_extractor_methods_give_the_wording_above() -> None:
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl:
        ie = ydl.get_info_extractor("Youtube")
        assert ie._youtube_login_hint == YT_LOGIN_HINT
        with pytest.raises(ExtractorError) as login:
            ie.raise_login_required(method="cookies")
        with pytest.raises(GeoRestrictedError) as geo:
            ie.raise_geo_restricted()
        with pytest.raises(ExtractorError) as gone:
            ie.raise_no_formats("Video unavailable", expected=True, video_id="abc")
    assert str(login.value).endswith(COOKIES_HINT)
    assert classify(arrive(login.value)).fix == COOKIES_FIX
    assert classify(arrive(geo.value)).kind == "permanent"
    assert classify(arrive(gone.value)).kind == "permanent"


def _in(seconds: float) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


def test_retry_after_is_read_through_the_whole_chain() -> None:
    url = "https://www.youtube.com/watch?v=abc"
    # DownloadError -> .exc_info[1] (the HTTPError) -> .response.headers
    failure = classify(webpage_error(429, url, "youtube", {"Retry-After": "60"}))
    assert (failure.kind, failure.retry_after_s) == ("throttled", 60.0)
    # ExtractorError -> .cause, with an HTTP-date
    http = HTTPError(response(429, url, {"retry-after": _in(120)}))
    failure = classify(extractor_error(f"Unable to download webpage: {http}", cause=http))
    assert failure.kind == "throttled"
    assert failure.retry_after_s == pytest.approx(120, abs=3)
    # __cause__ only, on the media host
    with pytest.raises(RuntimeError) as raised:
        raise RuntimeError("the download failed") from HTTPError(
            response(429, GOOGLEVIDEO, {"Retry-After": "7"})
        )
    assert classify(raised.value) == Failure("throttled", "HTTP 429 Too Many Requests", "", 7.0)


def test_a_503_that_says_when_to_come_back_is_throttling() -> None:
    # RFC 9110: Retry-After on a 503 is how long the service expects to be unavailable; the
    # whole site waits, rather than each video spending its retries.
    unavailable = webpage_error(503, "https://example.org/", "generic", {"Retry-After": "30"})
    assert classify(unavailable) == Failure("throttled", "HTTP 503 with Retry-After", "", 30.0)
    assert classify(webpage_error(503, "https://example.org/", "generic")).kind == "transient"
    error = webpage_error(500, "https://example.org/", "generic", {"Retry-After": "30"})
    assert classify(error) == Failure("transient", "HTTP 500: server error")


def test_parse_retry_after() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # RFC 9110's example
    at = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()
    assert parse_retry_after(date, now=at - 30) == 30.0
    assert parse_retry_after(date, now=at + 30) == 0.0  # in the past: go now
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(_in(300)) == pytest.approx(300, abs=3)
    for nonsense in ("soon", "", "nan", "inf"):
        assert parse_retry_after(nonsense) is None


def _status_of(path: str) -> tuple[int, dict[str, str]]:
    """`/<status>/...` answers that status, a 429 with Retry-After: 7."""
    status = int(path.split("/")[1])
    return status, {"Retry-After": "7"} if status == 429 else {}


@pytest.fixture(scope="module")
def status_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("status"), gate=_status_of) as base_url:
        yield base_url


@pytest.mark.parametrize(
    ("status", "kind", "retry_after_s"),
    [(429, "throttled", 7.0), (404, "permanent", None), (503, "transient", None)],
)
def test_real_yt_dlp_against_a_local_server(
    status_server: str, status: int, kind: str, retry_after_s: float | None
) -> None:
    started = time.perf_counter()
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl, pytest.raises(DownloadError) as raised:
        ydl.extract_info(f"{status_server}/{status}/episode.mp3")
    failure = classify(raised.value)
    raised.value.exc_info[1].close()  # the HTTPError holds the connection
    assert (failure.kind, failure.retry_after_s) == (kind, retry_after_s)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("url", "site"),
    [
        ("https://www.youtube.com/watch?v=abc", "youtube.com"),
        ("https://m.youtube.com/watch?v=abc", "youtube.com"),
        ("https://music.youtube.com/watch?v=abc", "youtube.com"),
        ("https://youtu.be/abc", "youtube.com"),
        ("https://www.youtube-nocookie.com/embed/abc", "youtube.com"),
        (GOOGLEVIDEO, "youtube.com"),
        ("https://youtubei.googleapis.com/youtubei/v1/player", "youtube.com"),
        ("www.youtube.com/@channel", "youtube.com"),  # no scheme: yt-dlp takes it as https
        ("https://WWW.Example.ORG:8443/feed.xml", "example.org"),
        ("https://feeds.bbci.co.uk/podcasts/x.rss", "bbci.co.uk"),
        ("https://media.abc.net.au/a.mp3", "abc.net.au"),
        ("https://cdn.host.example.com./a.mp3", "example.com"),
        ("http://127.0.0.1:8000/feed.xml", "127.0.0.1"),
        ("http://[::1]:8000/feed.xml", "::1"),
        ("http://localhost:8000/a.wav", "localhost"),
        ("/srv/audio/a.wav", "local"),
        ("./a.wav", "local"),
        ("file:///srv/audio/a.wav", "local"),
        ("FILE:/srv/a.wav", "local"),
        ("", "local"),
    ],
)
def test_site_of(url: str, site: str) -> None:
    assert site_of(url) == site
