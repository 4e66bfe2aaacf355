"""Failure classification against yt-dlp's own wording, wrapped the way yt-dlp raises it."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.client import RemoteDisconnected
from io import BytesIO
from pathlib import Path
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

from ingest.sites.errors import (
    COOKIES_FIX,
    EJS_FIX,
    FORMATS_FIX,
    GEO_FIX,
    IMPERSONATE_FIX,
    JS_RUNTIME_FIX,
    POT_FIX,
    Failure,
    Needs,
    attach_warnings,
    classify,
    parse_retry_after,
    site_of,
)
from ingest.sites.ytdlp_log import YtDlpLog
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
# utils/_utils.py `bug_reports_message`: what ExtractorError appends to its message unless the
# error was `expected`, i.e. when yt-dlp met something it does not understand.
BUG_REPORT = (
    "please report this issue on  https://github.com/yt-dlp/yt-dlp/issues?q= , filling out the "
    "appropriate issue template. Confirm you are on the latest version using  yt-dlp -U"
)
VIDEO = "dQw4w9WgXcQ"
# extractor/youtube/_video.py `_get_requested_clients`: no runtime, so only the clients that
# need none.
NO_JS_RUNTIME = (
    "No supported JavaScript runtime could be found. Only deno is enabled by default; to use "
    "another runtime add  --js-runtimes RUNTIME[:PATH]  to your command/config. YouTube "
    "extraction without a JS runtime has been deprecated, and some formats may be missing. See  "
    "https://github.com/yt-dlp/yt-dlp/wiki/EJS  for details on installing one"
)
# Warnings reach the YoutubeDL logger as InfoExtractor.report_warning words them (extractor/
# common.py): "[youtube] ", the video id when given, the message.
NO_JS_RUNTIME_WARNING = f"[youtube] {NO_JS_RUNTIME}"
# extractor/youtube/jsc/_director.py `__report_skipped_components`, through its 'jsc' logger
# (extractor/youtube/pot/_director.py YoutubeIEContentProviderLogger): a runtime, but no
# challenge solver script (yt-dlp-ejs) to run in it.
EJS_SKIPPED = (
    "[youtube] [jsc] Remote component challenge solver script (deno) was skipped. It may be "
    "required to solve JS challenges. You can enable the download with  --remote-components "
    "ejs:github  (recommended). For more information and alternatives, refer to  "
    "https://github.com/yt-dlp/yt-dlp/wiki/EJS"
)
# extractor/youtube/_video.py `_extract_formats_and_subtitles`, after the solvers gave up.
N_CHALLENGE_FAILED = (
    f"[youtube] {VIDEO}: n challenge solving failed: Some formats may be missing. {JS_HELP}"
)
SIGNATURE_FAILED = (
    f"[youtube] {VIDEO}: Signature solving failed: Some formats may be missing. {JS_HELP}"
)
# extractor/youtube/_video.py `_report_pot_format_skipped` (a warning for a client other than
# the default ones).
POT_SKIPPED = (
    f"[youtube] {VIDEO}: mweb client https formats require a GVS PO Token which was not "
    "provided. They will be skipped as they may yield HTTP Error 403. You can manually pass a "
    'GVS PO Token for this client with --extractor-args "youtube:po_token=mweb.gvs+XXX". For '
    "more information, refer to  https://github.com/yt-dlp/yt-dlp/wiki/PO-Token-Guide"
)
# Generic final errors. YoutubeDL.py `process_video_result`, when no format is left to match:
NO_FORMAT = "Requested format is not available. Use --list-formats for a list of available formats"
# extractor/youtube/_video.py `_extract_player_responses`, when no client got one (unexpected:
# it asks for a bug report).
NO_PLAYER_RESPONSE = "Failed to extract any player response"


def _id(value: object) -> str | None:
    return value[:50] if isinstance(value, str) else None


def extractor_error(
    msg: str, ie: str = "youtube", cause: BaseException | None = None
) -> ExtractorError:
    """As InfoExtractor.extract leaves it: named after the extractor and the video."""
    return ExtractorError(msg, expected=True, cause=cause, video_id="abc", ie=ie)


def unexpected(msg: str) -> DownloadError:
    """An ExtractorError yt-dlp did not expect (`expected` False: it appends BUG_REPORT
    itself), as YoutubeDL.trouble raises it."""
    return arrive(ExtractorError(msg, video_id=VIDEO, ie="youtube"))


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


def refused(status: int, reason: str, page: str = "webpage") -> str:
    """A request YouTube's extractor gave up on and went on without, as it warns of it.
    extractor/common.py `_request_webpage` raises 'Unable to download <page>: <HTTPError>
    (caused by <repr>)'; extractor/youtube/_base.py `_download_webpage_with_retries` reports it
    for a page (the watch page; 403 and 429 are not retried), extractor/youtube/_video.py
    `_extract_player_responses` for each player client's API request ('API page': _base.py
    `_call_api`)."""
    return (
        f"[youtube] {VIDEO}: Unable to download {page}: HTTP Error {status}: {reason} "
        f"(caused by <HTTPError {status}: {reason}>)"
    )


def refused_everywhere(status: int, reason: str) -> list[str]:
    """Every request refused: the watch page, the `next` API, the iframe API (for the player's
    URL), then three player clients' API requests."""
    page, api = refused(status, reason), refused(status, reason, "API page")
    return [page, api, page, api, api, api]


def refusing(status: int) -> Callable[[Any], Any]:
    """A YoutubeDL.urlopen that every server answers with `status`: real extractors, offline."""

    def urlopen(request: Any) -> Any:
        raise HTTPError(response(status, request if isinstance(request, str) else request.url))

    return urlopen


@pytest.mark.parametrize(
    ("error"),
    [
        # YouTube's reason, with extractor/youtube/_video.py's sign-in hint appended.
        extractor_error(f"Private video. Sign in if you've been granted access to this video. "
                        f"{YT_LOGIN_HINT}"),
        # YouTube's reasons, raised by extractor/youtube/_video.py `raise_no_formats`.
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
        (extractor_error(NO_JS_RUNTIME), JS_RUNTIME_FIX),
        # extractor/youtube/_video.py (a warning): a runtime, but the solver failed in it.
        (extractor_error(f"n challenge solving failed: Some formats may be missing. {JS_HELP}"),
         EJS_FIX),
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
    assert 'pip install -U "yt-dlp[default,deno]"' in EJS_FIX
    assert "INGEST_YTDLP_EXTRACTOR_ARGS='youtube:po_token=web.gvs+TOKEN'" in POT_FIX
    assert "INGEST_YTDLP_ARGS=" in GEO_FIX


@pytest.mark.parametrize(
    ("error", "needs", "reason"),
    [
        # YouTube's reason, cut and hinted by extractor/youtube/_video.py.
        (extractor_error(f"Sign in to confirm your age. This video may be inappropriate for some "
                         f"users. {YT_LOGIN_HINT}"), "cookies", "age-restricted"),
        # YouTube's reasons, raised by extractor/youtube/_video.py `raise_no_formats`.
        (extractor_error("Join this channel to get access to members-only content like this "
                         "video, and other exclusive perks."), "cookies", "members-only"),
        (extractor_error("This video is available to this channel's members on level: Gold "
                         "(or any higher level). Join this channel to get access to members-only "
                         "content and other exclusive perks."), "cookies", "members-only"),
        # extractor/common.py `raise_geo_restricted` default, as YoutubeDL.py reports it.
        (GeoRestrictedError("This video is not available from your location due to geo "
                            "restriction\nYou might want to use a VPN or a proxy server (with "
                            "--proxy) to workaround."),
         "location", "geo-blocked: not available from this location"),
        # extractor/youtube/_video.py: the subreason that makes it raise_geo_restricted.
        (extractor_error("Video unavailable. The uploader has not made this video available in "
                         "your country"),
         "location", "geo-blocked: not available from this location"),
    ],
    ids=lambda v: _id(str(v)) if isinstance(v, BaseException) else None,
)  # fmt: skip
def test_a_video_closed_to_us_alone_needs_the_user(
    error: BaseException, needs: Needs, reason: str
) -> None:
    fix = GEO_FIX if needs == "location" else COOKIES_FIX
    assert classify(arrive(error)) == Failure("video_needs_user", reason, fix, needs=needs)


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


# What yt-dlp warned of, then the generic error it ended with.
@pytest.mark.parametrize(
    ("warnings", "error", "reason"),
    [
        # Every request refused: no player client got a player response.
        (refused_everywhere(429, "Too Many Requests"), unexpected(NO_PLAYER_RESPONSE),
         "HTTP 429 Too Many Requests (in yt-dlp's warnings)"),
        (refused_everywhere(403, "Forbidden"), unexpected(NO_PLAYER_RESPONSE),
         "HTTP 403 from YouTube's pages (in yt-dlp's warnings)"),
        # The watch page refused; the clients that answered offered nothing that would do.
        ([refused(429, "Too Many Requests")], extractor_error(NO_FORMAT),
         "HTTP 429 Too Many Requests (in yt-dlp's warnings)"),
        ([refused(403, "Forbidden")], extractor_error(NO_FORMAT),
         "HTTP 403 from YouTube's pages (in yt-dlp's warnings)"),
        # A player client refused, then extractor/youtube/_base.py `extract_yt_initial_data`
        # (common.py `_search_regex`) found nothing to read.
        ([refused(403, "Forbidden", "API page")], unexpected("Unable to extract yt initial data"),
         "HTTP 403 from YouTube's pages (in yt-dlp's warnings)"),
    ],
    ids=lambda v: _id(str(v).removeprefix("ERROR: ")) if isinstance(v, BaseException) else None,
)  # fmt: skip
def test_a_generic_error_after_refused_requests_is_throttling(
    warnings: list[str], error: BaseException, reason: str
) -> None:
    assert classify(arrive(error), warnings) == Failure("throttled", reason)
    assert classify(arrive(error)).kind != "throttled"  # the final error alone does not say


@pytest.mark.parametrize(
    ("warnings", "error", "fix"),
    [
        # No runtime: yt-dlp falls back to the clients that need none, whose formats may not do.
        ([NO_JS_RUNTIME_WARNING], extractor_error(NO_FORMAT), JS_RUNTIME_FIX),
        # Nothing was solved without one: the runtime is the fix, not the solver.
        ([NO_JS_RUNTIME_WARNING, N_CHALLENGE_FAILED], extractor_error(NO_FORMAT), JS_RUNTIME_FIX),
        # A runtime, but no solver script for it that fits this yt-dlp.
        ([N_CHALLENGE_FAILED], extractor_error(NO_FORMAT), EJS_FIX),
        ([EJS_SKIPPED, N_CHALLENGE_FAILED], extractor_error(NO_FORMAT), EJS_FIX),
        # YoutubeDL.py `raise_no_formats` (unexpected: it asks for a bug report).
        ([SIGNATURE_FAILED], unexpected("No video formats found!"), EJS_FIX),
        # The formats left need a PO token, which YouTube's media servers enforce with a 403.
        ([POT_SKIPPED], media_error(403, GOOGLEVIDEO), POT_FIX),
        ([POT_SKIPPED], extractor_error(NO_FORMAT), POT_FIX),
    ],
    ids=lambda v: _id(str(v).removeprefix("ERROR: ")) if isinstance(v, BaseException) else None,
)  # fmt: skip
def test_a_generic_error_after_challenge_warnings_needs_the_user(
    warnings: list[str], error: BaseException, fix: str
) -> None:
    failure = classify(arrive(error), warnings)
    assert (failure.kind, failure.fix) == ("needs_user", fix)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (unexpected(NO_PLAYER_RESPONSE), "Failed to extract any player response"),
        # YouTube's reason (extractor/youtube/_video.py `raise_no_formats`) to a player client
        # it no longer serves.
        (extractor_error("The following content is not available on this app.. Watch on the "
                         "latest version of YouTube."),
         "The following content is not available on this app.. Watch on the latest version of "
         "YouTube."),
    ],
    ids=lambda v: _id(str(v).removeprefix("ERROR: ")) if isinstance(v, BaseException) else None,
)  # fmt: skip
def test_an_extractor_out_of_step_with_its_site_is_broken(
    error: BaseException, reason: str
) -> None:
    broken = Failure("extractor_broken", f"yt-dlp's YouTube extractor is broken ({reason})")
    assert classify(arrive(error)) == broken


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # Raised unexpected (asking for a bug report): what they say still decides.
        (unexpected(f"Sign in to confirm you're not a bot. {YT_LOGIN_HINT}"), "throttled"),
        (unexpected("Private video. Sign in if you've been granted access to this video"),
         "permanent"),
        (unexpected("Sign in to confirm your age. This video may be inappropriate for some users"),
         "video_needs_user"),
        (unexpected("Unable to download API page: HTTP Error 429: Too Many Requests"),
         "throttled"),
        (unexpected("Unable to download webpage: The read operation timed out"), "transient"),
    ],
    ids=lambda e: _id(str(e).removeprefix("ERROR: ")),
)  # fmt: skip
def test_a_bug_report_request_does_not_hide_a_clear_error(error: BaseException, kind: str) -> None:
    assert BUG_REPORT in str(error)
    assert classify(error).kind == kind


def test_a_bug_report_request_in_the_warnings_means_a_broken_extractor() -> None:
    said = YtDlpLog()
    with yt_dlp.YoutubeDL({"logger": said}) as ydl:
        ie = ydl.get_info_extractor("Youtube")
        ie._search_regex(r"(?!)", "", "player url", fatal=False)  # extractor/common.py
    assert list(said.warnings) == [f"[youtube] unable to extract player url; {BUG_REPORT}"]
    failure = classify(arrive(extractor_error(NO_FORMAT)), said.warnings)
    assert failure == Failure(
        "extractor_broken", "yt-dlp's YouTube extractor is broken (unable to extract player url)"
    )


@pytest.mark.parametrize(
    ("error"),
    [
        extractor_error(f"Private video. Sign in if you've been granted access to this video. "
                        f"{YT_LOGIN_HINT}"),
        extractor_error("Video unavailable. This video has been removed by the uploader"),
        extractor_error("Video unavailable. This video is no longer available due to a "
                        "copyright claim by Some Label"),
        webpage_error(429, f"https://www.youtube.com/watch?v={VIDEO}", "youtube"),
        extractor_error(f"Sign in to confirm your age. This video may be inappropriate for some "
                        f"users. {YT_LOGIN_HINT}"),
        extractor_error("Premieres in 2 hours"),
        TransportError("Connection to www.youtube.com timed out. (connect timeout=20.0)"),
    ],
    ids=lambda e: _id(str(e).removeprefix("ERROR: ")),
)  # fmt: skip
def test_warnings_never_override_a_clear_final_error(error: BaseException) -> None:
    everything = [
        *refused_everywhere(429, "Too Many Requests"), *refused_everywhere(403, "Forbidden"),
        NO_JS_RUNTIME_WARNING, EJS_SKIPPED, N_CHALLENGE_FAILED, POT_SKIPPED,
        f"[youtube] unable to extract player url; {BUG_REPORT}",
    ]  # fmt: skip
    assert classify(arrive(error), everything) == classify(arrive(error))


def test_warnings_travel_with_their_exception() -> None:
    error = unexpected(NO_PLAYER_RESPONSE)
    message = str(error)
    attach_warnings(error, refused_everywhere(429, "Too Many Requests"))
    assert classify(error).kind == "throttled"
    assert str(error) == message  # still yt-dlp's own, for the ledger
    with pytest.raises(RuntimeError) as wrapped:
        raise RuntimeError("the download failed") from error
    assert classify(wrapped.value).kind == "throttled"


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
    assert classify(arrive(geo.value)).needs == "location"
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
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl, pytest.raises(DownloadError) as raised:
        ydl.extract_info(f"{status_server}/{status}/episode.mp3")
    failure = classify(raised.value)
    raised.value.exc_info[1].close()  # the HTTPError holds the connection
    assert (failure.kind, failure.retry_after_s) == (kind, retry_after_s)


def test_the_real_extractor_warns_of_a_missing_po_token_as_above() -> None:
    said = YtDlpLog()
    with yt_dlp.YoutubeDL({"logger": said}) as ydl:
        ydl.get_info_extractor("Youtube")._report_pot_format_skipped(VIDEO, "mweb", "https")
    assert list(said.warnings) == [POT_SKIPPED]


@pytest.mark.parametrize(("status", "reason"), [(429, "Too Many Requests"), (403, "Forbidden")])
def test_the_real_youtube_extractor_warns_then_fails_as_above(status: int, reason: str) -> None:
    said = YtDlpLog()
    # Without a JavaScript runtime too: its warning comes first and does not hide the refusals.
    params = {"logger": said, "cachedir": False, "js_runtimes": {}}
    with yt_dlp.YoutubeDL(params) as ydl:
        ydl.urlopen = refusing(status)
        with pytest.raises(DownloadError) as raised:
            ydl.extract_info(f"https://www.youtube.com/watch?v={VIDEO}", download=False)
    assert str(raised.value) == f"ERROR: [youtube] {VIDEO}: {NO_PLAYER_RESPONSE}; {BUG_REPORT}"
    assert set(said.warnings) == {*refused_everywhere(status, reason), NO_JS_RUNTIME_WARNING}
    assert classify(raised.value).kind == "extractor_broken"
    assert classify(raised.value, said.warnings).kind == "throttled"


def _missing_key(url: str) -> Any:
    player_response: dict[str, Any] = {}
    return player_response["streamingData"]


def _wrong_type(url: str) -> Any:
    duration: Any = None
    return duration + 1


@pytest.mark.parametrize(
    ("crash", "said"),
    [
        # InfoExtractor.extract wraps a KeyError in an ExtractorError it did not expect.
        (_missing_key, "An extractor error has occurred. (caused by KeyError('streamingData'))"),
        # Anything else an extractor raises goes through YoutubeDL as it is.
        (_wrong_type, "TypeError: unsupported operand type(s) for +: 'NoneType' and 'int'"),
    ],
)
def test_an_extractor_that_crashes_is_broken(
    crash: Callable[[str], Any], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with yt_dlp.YoutubeDL({"logger": YtDlpLog()}) as ydl:
        monkeypatch.setattr(ydl.get_info_extractor("Youtube"), "_real_extract", crash)
        with pytest.raises((DownloadError, TypeError)) as raised:
            ydl.extract_info(f"https://www.youtube.com/watch?v={VIDEO}", download=False)
    reason = f"yt-dlp's YouTube extractor is broken ({said})"
    assert classify(raised.value) == Failure("extractor_broken", reason)


def test_the_downloader_hands_on_what_yt_dlp_warned_of(tmp_path: Path) -> None:
    from ingest.stages.download import Downloader, DownloadOptions
    from ingest.stages.messages import VideoJob

    job = VideoJob("yt", f"https://www.youtube.com/watch?v={VIDEO}")
    downloader = Downloader(DownloadOptions(audio_dir=tmp_path, workers=1))
    try:
        ydl = downloader._ydl()  # this thread's, which `download` uses
        ydl.params["cachedir"] = False
        ydl.urlopen = refusing(429)
        with pytest.raises(DownloadError) as throttled:
            downloader.download(job)
        ydl.urlopen = refusing(404)
        with pytest.raises(DownloadError) as not_found:
            downloader.download(job)
    finally:
        downloader.close()
    assert str(throttled.value) == f"ERROR: [youtube] {VIDEO}: {NO_PLAYER_RESPONSE}; {BUG_REPORT}"
    assert classify(throttled.value) == Failure(
        "throttled", "HTTP 429 Too Many Requests (in yt-dlp's warnings)"
    )
    # Each download keeps its own: the 429s of the first are gone from the second, whose
    # final 404 (the `next` API's) decides.
    assert not any("429" in warning for warning in not_found.value.ytdlp_warnings)
    assert classify(not_found.value) == Failure("permanent", "HTTP 404: not found")


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
