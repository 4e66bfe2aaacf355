"""What a failure means for the pipeline: `classify` sorts any exception into one of seven kinds.

- permanent: the video can never be ingested as it is (private, removed, copyright, not a
  supported URL, no audio, corrupt media, too long, HTTP 404/410). The video fails, at once and
  without retries.
- video_needs_user: this one video is closed to us as we are, not the site: age-restricted or
  members-only (`needs` "cookies": a signed-in account, a member's for members-only), or
  geo-blocked (`needs` "location": a proxy in a country that has it). `fix` says what to
  configure; the site goes on.
- needs_user: the site wants something only the user can give: a sign-in (cookies, or
  credentials for an HTTP 401), fresh cookies, a JavaScript runtime, an up-to-date challenge
  solver (yt-dlp-ejs), a PO token. The site is paused for the rest of the run and `fix` says
  what to configure; the video stays to do.
- extractor_broken: the site changed and yt-dlp's extractor for it no longer copes: yt-dlp asks
  for a bug report ("please report this issue ... yt-dlp -U"), an extractor crashed (an
  `ExtractorError` yt-dlp did not expect, or a KeyError/TypeError from inside one), or YouTube
  answers that "the following content is not available on this app". A property of the site
  and of the installed yt-dlp, which an update usually fixes.
- throttled: the site says "slow down" (HTTP 429, a 503 with Retry-After, the bot check, "try
  again later", one-off errors coming in a burst: see ingest.sites.throttle). The
  whole site pauses for `retry_after_s` (the server's Retry-After) or else a backoff; the video
  is handed back and tried again without spending one of its attempts.
- transient: a one-off network or server error (timeouts, resets, HTTP 5xx, YouTube's expired
  media URLs): retried with backoff, a bounded number of times.
- not_yet: an upcoming premiere or a live stream: skipped, and looked at again by a later
  listing; never a failure.

yt-dlp wraps what went wrong: a `DownloadError` keeps the original in `.exc_info`, an
`ExtractorError` keeps it in `.cause`. So the whole chain is read: its lower-cased messages, and
its classes, matched by name along each class's MRO so that importing this module does not load
yt-dlp (about 200 ms). The first rule that matches decides, so order matters: YouTube appends its
sign-in hint ("Use --cookies-from-browser or --cookies") to the bot check and to private videos,
so the bot check is throttled and a private video permanent before any sign-in rule is tried.

yt-dlp often says what went wrong only in warnings, before a generic final error ("Failed to
extract any player response", "Requested format is not available", an "Unable to extract" with
its bug-report request, a 403 from YouTube). `classify(exc, warnings)` reads them, as does a
plain `classify(exc)` of an exception that carries them (`attach_warnings`, which the download
stage does). They never override a clear final error (private, removed, an HTTP 429, a network
error); a generic one is re-read: HTTP 429s, or 403s of YouTube's pages and player API, make it
throttled; a missing JavaScript runtime, unsolved challenges or a missing PO token make it
needs_user with the fix they call for; yt-dlp's own bug-report request makes it
extractor_broken.
"""

from __future__ import annotations

import email.utils
import ipaddress
import itertools
import math
import os
import re
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Literal
from urllib.parse import urlsplit

Kind = Literal[
    "permanent",
    "video_needs_user",
    "needs_user",
    "extractor_broken",
    "throttled",
    "transient",
    "not_yet",
]
Needs = Literal["", "cookies", "location"]

COOKIES_FIX = (
    "set INGEST_COOKIES_FILE to a Netscape cookies.txt exported from a logged-in browser, "
    "or INGEST_COOKIES_FROM_BROWSER=firefox"
)
JS_RUNTIME_FIX = (
    'pip install "yt-dlp[default,deno]" (make install does it); `ingest doctor` checks it'
)
EJS_FIX = (
    'pip install -U "yt-dlp[default,deno]" (yt-dlp-ejs must match yt-dlp); '
    "`ingest doctor` checks it"
)
POT_FIX = (
    "install a PO-token provider plugin (pip install bgutil-ytdlp-pot-provider) or pass one "
    "with INGEST_YTDLP_EXTRACTOR_ARGS='youtube:po_token=web.gvs+TOKEN'"
)
# YouTube hides its formats from a client that cannot solve its JavaScript challenges, or that
# lacks a PO token; the runtime is the usual cause, so it comes first.
FORMATS_FIX = f"{JS_RUNTIME_FIX}; if formats are still missing, {POT_FIX}"
LOGIN_FIX = f"{COOKIES_FIX}; or put the account in ~/.netrc and set INGEST_YTDLP_ARGS=--netrc"
IMPERSONATE_FIX = (
    'pip install "yt-dlp[default,curl-cffi]" and set '
    "INGEST_YTDLP_EXTRACTOR_ARGS='generic:impersonate'"
)
GEO_FIX = (
    "a proxy in a country where the video is available: "
    'INGEST_YTDLP_ARGS="--proxy socks5://HOST:PORT"'
)
# Where `attach_warnings` leaves them on an exception, for `classify`.
WARNINGS_ATTRIBUTE = "ytdlp_warnings"


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    reason: str  # short and human: what went wrong
    fix: str = ""  # what the user should configure (needs_user, video_needs_user)
    retry_after_s: float | None = None  # the server's Retry-After (throttled only)
    needs: Needs = ""  # what would open the video to us (video_needs_user only)


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: Kind
    reason: str
    markers: tuple[str, ...]
    fix: str = ""
    needs: Needs = ""


_GEO_BLOCKED = Failure(
    "video_needs_user", "geo-blocked: not available from this location", GEO_FIX, needs="location"
)

# Classes, matched by name anywhere in an exception's MRO; an empty reason takes the message.
_BY_CLASS: dict[str, Failure] = {
    "PermanentDownloadError": Failure("permanent", ""),  # ingest.stages.download: too long
    "NotYetAvailable": Failure("not_yet", ""),  # ingest.stages.download: live or upcoming
    "UnsupportedError": Failure("permanent", "unsupported URL"),
    "GeoRestrictedError": _GEO_BLOCKED,
    "UserNotLive": Failure("not_yet", "the channel is not live yet"),
    "DownloadCancelled": Failure("transient", "download cancelled"),
    # one-off errors that keep coming (ingest.sites.throttle)
    "FailureBurst": Failure("throttled", ""),
}

# The site says "slow down": in a final error, or in the warnings before a generic one.
_THROTTLE_RULES = (
    _Rule("throttled", "YouTube's bot check", ("not a bot", "captcha")),
    _Rule("throttled", "rate-limited: try again later", ("try again later",)),
    _Rule("throttled", "HTTP 429 Too Many Requests", ("http error 429", "too many requests")),
    _Rule("throttled", "rate-limited", ("rate-limited", "rate limit", "likely being blocked")),
)
# What YouTube's formats need from us, in the order that decides: without a runtime nothing is
# solved (the runtime, then); challenges failing with one mean yt-dlp-ejs does not fit yt-dlp.
_CHALLENGE_RULES = (
    _Rule("needs_user", "no JavaScript runtime to solve YouTube's challenges", (
        "no supported javascript runtime", "without a js runtime"), JS_RUNTIME_FIX),
    _Rule("needs_user", "YouTube's JavaScript challenges went unsolved", (
        "n challenge solving failed", "signature solving failed", "challenge solver",
        "challenge request"), EJS_FIX),
    _Rule("needs_user", "PO token required", ("po token",), POT_FIX),
)  # fmt: skip
# Matched in order against the chain's lower-cased text; the first rule that matches decides.
_RULES = (
    _Rule("not_yet", "upcoming premiere", ("premieres in", "premiere will begin", "will premiere")),
    _Rule("not_yet", "live event not started or still live", (
        "live event", "is_upcoming", "not currently live")),
    *_THROTTLE_RULES,
    _Rule("permanent", "too long", ("ingest_max_duration",)),
    _Rule("permanent", "private video", ("private video", "is private")),
    _Rule("video_needs_user", "members-only", (
        "members-only", "members only", "join this channel", "channel's members"),
        COOKIES_FIX, "cookies"),
    _Rule(_GEO_BLOCKED.kind, _GEO_BLOCKED.reason, (
        "from your location", "in your country", "geo restriction"), GEO_FIX, "location"),
    _Rule("permanent", "copyright claim", ("copyright",)),
    _Rule("permanent", "removed or account terminated", (
        "has been removed", "been terminated", "account associated", "no longer available",
        "violating youtube")),
    _Rule("permanent", "video unavailable", (
        "video unavailable", "video is unavailable", "video is not available", "does not exist")),
    _Rule("permanent", "unsupported URL", ("unsupported url", "is not a valid url", "invalid url")),
    _Rule("permanent", "DRM protected", ("drm protected",)),
    _Rule("permanent", "invalid media data", ("invalid data", "invaliddataerror")),
    _Rule("needs_user", "Cloudflare anti-bot challenge", ("cloudflare anti-bot",),
          IMPERSONATE_FIX),
    _Rule("needs_user", "the YouTube cookies are no longer valid (rotated by the browser)", (
        "cookies are no longer valid",), COOKIES_FIX),
    _Rule("video_needs_user", "age-restricted", (
        "confirm your age", "age-restricted", "age restricted", "inappropriate",
        "age verification", "age_verification", "age_check"), COOKIES_FIX, "cookies"),
    *_CHALLENGE_RULES,
    _Rule("needs_user", "sign-in required", (
        "sign in", "login required", "login details", "registered users", "--cookies",
        "requires authentication", "log in to"), COOKIES_FIX),
)  # fmt: skip

# yt-dlp's request for a bug report (utils/_utils.py `bug_reports_message`, which ends "Confirm
# you are on the latest version using  yt-dlp -U"), its note on an extractor it knows to be
# broken (YoutubeDL.py), and YouTube's answer to a player client it no longer serves.
_BROKEN_TEXT = (
    "please report this issue", "yt-dlp -u", "yt-dlp --update", "marked as broken",
    "is not available on this app",
)  # fmt: skip
_BUG_REPORT = re.compile(r"[;.,]?\s*please report this issue.*", re.IGNORECASE | re.DOTALL)
_EXTRACTOR_PREFIX = re.compile(r"\[([\w:.-]+)\] (?:[^\s:]+: )?")  # "[youtube] <id>: "
_EXTRACTOR_DIR = f"{os.sep}yt_dlp{os.sep}extractor{os.sep}"
# extractor/common.py `_request_webpage`'s "<errnote>: HTTP Error 403: Forbidden", which
# YouTube's extractor reports as a warning when the watch page or a player client's API
# request is refused, going on to the next client.
_PAGE_REFUSED = re.compile(r"unable to download [^:|]*: http error 403")

_NO_FORMATS = ("requested format is not available", "no video formats found")
_YOUTUBE_TEXT = ("[youtube", "youtube.com", "youtu.be", "googlevideo.com", "youtube-nocookie")
_NETWORK_CLASSES = frozenset(
    {"TransportError", "IncompleteRead", "HTTPException", "ContentTooShortError", "SSLError"}
)
_NETWORK_TEXT = (
    "timed out", "timeout", "connection reset", "reset by peer", "connection refused",
    "connection aborted", "remote end closed", "remotedisconnected", "broken pipe",
    "network is unreachable", "temporary failure", "name or service not known",
    "incompleteread", "incomplete read", "content too short", "did not get any data",
    "unable to continue", "eof occurred",
)  # fmt: skip
_HTTP_STATUS = re.compile(r"http error (\d{3})")
_HTTP_REASONS = {403: "forbidden", 404: "not found", 410: "gone"}


def classify(exc: BaseException, warnings: Sequence[str] = ()) -> Failure:
    """What `exc` means for the video and its site, in light of the `warnings` yt-dlp gave on
    the way (and of those `exc` carries: `attach_warnings`); see the module docstring."""
    chain = _chain(exc)
    text = _lower(" | ".join(f"{type(e).__name__}: {e}" for e in chain))
    failure = (
        _by_class(chain)
        or _by_rules(_RULES, text)
        or _by_status(chain, text)
        or _by_network(chain, text)
        # What is left is generic: what yt-dlp warned of on the way says more.
        or _by_warnings([*warnings, *_attached(chain)])
        or _by_formats(chain, text)
        or _by_youtube_403(chain, text)
        or _by_breakage(chain)
        # Unknown and not network-looking: permanent. A retry would most likely fail the same
        # way, and a failed video is visible (ledger, `ingest status`) and can be re-queued,
        # whereas an unknown error retried forever would hide a bug.
        or Failure("permanent", _first_line(exc))
    )
    if failure.kind == "throttled":
        return replace(failure, retry_after_s=_retry_after(chain))
    return failure


def caused_by(exc: BaseException, class_name: str) -> bool:
    """Whether an exception of that class (by name, along its MRO) is anywhere in `exc`'s chain."""
    return any(_is_a(link, (class_name,)) for link in _chain(exc))


def attach_warnings(exc: BaseException, warnings: Iterable[str]) -> None:
    """Lets what yt-dlp warned of during the call that raised `exc` travel with it, as
    `exc.ytdlp_warnings` (a tuple), so that any later `classify(exc)` reads it. The exception
    stays yt-dlp's own (type and message: what the ledger records)."""
    setattr(exc, WARNINGS_ATTRIBUTE, tuple(warnings))


def _attached(chain: Sequence[BaseException]) -> tuple[str, ...]:
    for exc in chain:
        warnings = getattr(exc, WARNINGS_ATTRIBUTE, None)
        if isinstance(warnings, tuple):
            return warnings
    return ()


def _lower(text: str) -> str:
    return text.lower().replace("\u2019", "'")


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` first, then what it wraps, breadth first, each once."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if not any(current is s for s in seen):
            seen.append(current)
            todo.extend(_wrapped(current))
    return seen


def _wrapped(exc: BaseException) -> list[BaseException]:
    exc_info = getattr(exc, "exc_info", None)  # yt-dlp: a sys.exc_info() tuple
    held = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else None
    found = (held, getattr(exc, "cause", None), exc.__cause__, exc.__context__)
    return [e for e in found if isinstance(e, BaseException)]


def _is_a(exc: BaseException, names: Iterable[str]) -> bool:
    wanted = set(names)
    return any(cls.__name__ in wanted for cls in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().removeprefix("ERROR: ").splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _by_class(chain: Sequence[BaseException]) -> Failure | None:
    for exc in chain:
        for cls in type(exc).__mro__:
            if (found := _BY_CLASS.get(cls.__name__)) is not None:
                return found if found.reason else replace(found, reason=_first_line(exc))
    return None


def _by_rules(rules: Iterable[_Rule], text: str) -> Failure | None:
    for rule in rules:
        if any(marker in text for marker in rule.markers):
            return Failure(rule.kind, rule.reason, rule.fix, needs=rule.needs)
    return None


def _by_warnings(warnings: Sequence[str]) -> Failure | None:
    """A generic final error, re-read in light of what yt-dlp warned of before it."""
    texts = [_lower(warning) for warning in warnings]
    said = " | ".join(texts)
    if refused := _by_rules(_THROTTLE_RULES, said):
        return replace(refused, reason=f"{refused.reason} (in yt-dlp's warnings)")
    if any(text.startswith("[youtube") and _PAGE_REFUSED.search(text) for text in texts):
        return Failure("throttled", "HTTP 403 from YouTube's pages (in yt-dlp's warnings)")
    if needed := _by_rules(_CHALLENGE_RULES, said):
        return needed
    broken = (w for w, text in zip(warnings, texts, strict=True) if _says_broken(text))
    return next((_broken(warning) for warning in broken), None)


def _by_formats(chain: Sequence[BaseException], text: str) -> Failure | None:
    """No format to download: on YouTube they vanish without a JS runtime or PO token."""
    if not any(marker in text for marker in _NO_FORMATS):
        return None
    if _on_youtube(chain, text):
        return Failure("needs_user", "YouTube offered no usable format", FORMATS_FIX)
    return Failure("permanent", "no audio or video formats")


def _by_status(chain: Sequence[BaseException], text: str) -> Failure | None:
    """HTTP statuses. A 403 elsewhere than YouTube is the server's deliberate refusal
    (authorisation, hotlink protection) that a retry does not change: permanent, like the other
    4xx but 408 and 429. YouTube's is generic (`_by_youtube_403`), its warnings may say more."""
    status = _status(chain, text)
    if status is None or (status == 403 and _on_youtube(chain, text)):
        return None
    if status == 429:
        return Failure("throttled", "HTTP 429 Too Many Requests")
    if status == 401:  # the server asks who we are: only the user's credentials change that
        return Failure("needs_user", "HTTP 401: the server wants a signed-in user", LOGIN_FIX)
    if status == 503 and _retry_after(chain) is not None:  # "come back in N s": throttling
        return Failure("throttled", "HTTP 503 with Retry-After")
    if status == 408 or status >= 500:
        return Failure("transient", f"HTTP {status}: server error")
    if status >= 400:
        return Failure("permanent", f"HTTP {status}: {_HTTP_REASONS.get(status, 'client error')}")
    return None


def _by_youtube_403(chain: Sequence[BaseException], text: str) -> Failure | None:
    """A 403 from YouTube with nothing said before it: an expired signed media URL, fetched
    afresh on the next attempt."""
    if _status(chain, text) == 403 and _on_youtube(chain, text):
        return Failure("transient", "HTTP 403 from YouTube (an expired media URL)")
    return None


def _by_breakage(chain: Sequence[BaseException]) -> Failure | None:
    told = next((exc for exc in chain if _says_broken(_lower(str(exc)))), None)
    culprit = told or next((exc for exc in chain if _crashed(exc)), None)
    if culprit is None:
        return None
    line = _first_line(culprit)
    if not _is_a(culprit, ("YoutubeDLError",)):  # a bare error: its type says what happened
        line = f"{type(culprit).__name__}: {line}"
    return _broken(line, *_extractor_of(chain))


def _says_broken(text: str) -> bool:
    return any(marker in text for marker in _BROKEN_TEXT)


def _crashed(exc: BaseException) -> bool:
    """An exception nobody expected inside a yt-dlp extractor: yt-dlp's own ExtractorError with
    `expected` False (what InfoExtractor.extract makes of a KeyError), or a plain error (a
    TypeError, say) that came out of one."""
    if _is_a(exc, ("ExtractorError",)):
        return getattr(exc, "expected", True) is False
    if _is_a(exc, ("YoutubeDLError",)) or isinstance(exc, OSError):
        return False
    frames = traceback.walk_tb(exc.__traceback__)
    return any(_EXTRACTOR_DIR in frame.f_code.co_filename for frame, _ in frames)


def _extractor_of(chain: Sequence[BaseException]) -> tuple[str, str]:
    """Which extractor failed, on which video, as yt-dlp's ExtractorError says. Not all of them
    name it (InfoExtractor.extract leaves the KeyError it wraps unnamed): then the extractor the
    error came out of, its frame's `self`."""
    held = [exc for exc in chain if _is_a(exc, ("ExtractorError",))]
    frames = (frame for exc in chain for frame, _ in traceback.walk_tb(exc.__traceback__))
    named = (getattr(exc, "ie", None) for exc in held)
    ran = (getattr(frame.f_locals.get("self"), "IE_NAME", None) for frame in frames)
    video_id = _first_str(getattr(exc, "video_id", None) for exc in held)
    return _first_str(itertools.chain(named, ran)), video_id


def _first_str(values: Iterable[object]) -> str:
    return next((value for value in values if isinstance(value, str) and value), "")


def _broken(line: str, name: str = "", video_id: str = "") -> Failure:
    """From "[youtube] <id>: what it said; please report this issue ...": "yt-dlp's YouTube
    extractor is broken (what it said)"."""
    match = _EXTRACTOR_PREFIX.match(line)
    said = line[match.end() :] if match else line.removeprefix(f"{video_id}: ")
    name = match.group(1) if match else name
    said = _BUG_REPORT.sub("", said).strip()
    which = "YouTube " if name.split(":")[0] == "youtube" else f"{name} " if name else ""
    return Failure("extractor_broken", f"yt-dlp's {which}extractor is broken ({said[:120]})")


def _status(chain: Sequence[BaseException], text: str) -> int | None:
    for exc in chain:
        status = getattr(exc, "status", None) or getattr(exc, "code", None)
        if _is_a(exc, ("HTTPError",)) and isinstance(status, int):
            return status
    match = _HTTP_STATUS.search(text)
    return int(match.group(1)) if match else None


def _by_network(chain: Sequence[BaseException], text: str) -> Failure | None:
    network = any(
        isinstance(exc, TimeoutError | ConnectionError) or _is_a(exc, _NETWORK_CLASSES)
        for exc in chain
    )
    if network or any(marker in text for marker in _NETWORK_TEXT):
        return Failure("transient", f"network error: {_first_line(chain[0])}")
    return None


def _on_youtube(chain: Sequence[BaseException], text: str) -> bool:
    if any(marker in text for marker in _YOUTUBE_TEXT):
        return True
    return any(site_of(url) == "youtube.com" for url in map(_response_url, chain) if url)


def _response_url(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    url = getattr(response, "url", None) or getattr(exc, "url", None)
    return url if isinstance(url, str) else None


def _retry_after(chain: Sequence[BaseException]) -> float | None:
    for exc in chain:
        value = _header(exc, "Retry-After")
        if value is not None and (seconds := parse_retry_after(value)) is not None:
            return seconds
    return None


def _header(exc: BaseException, name: str) -> str | None:
    """A response header from an HTTP error: yt-dlp's `err.response.headers` (an
    `email.message.Message`, case-insensitive), or urllib's `err.headers`."""
    for holder in (getattr(exc, "response", None), exc):
        get = getattr(getattr(holder, "headers", None), "get", None)
        value = get(name) if callable(get) else None
        if isinstance(value, str):
            return value
    return None


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date (RFC 9110)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


# Hosts whose throttling is YouTube's, whatever their registrable part.
_YOUTUBE_SITES = frozenset({"youtube.com", "youtu.be", "youtube-nocookie.com", "googlevideo.com"})
_YOUTUBE_HOSTS = frozenset({"youtubei.googleapis.com"})
# Not the Public Suffix List (that would be a dependency): the two-label public suffixes we are
# likely to meet; under these a site keeps three labels, elsewhere it keeps two.
_TWO_LABEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "com.au", "net.au", "org.au", "co.nz",
    "co.jp", "ne.jp", "or.jp", "co.kr", "co.in", "co.za", "com.br", "com.cn", "com.mx",
    "com.tr", "com.ar", "com.sg", "com.tw", "com.hk",
})  # fmt: skip


def site_of(url: str) -> str:
    """The site a request belongs to, for throttling: the host's registrable part, lower-cased
    (the last two labels, three under a known two-label suffix such as co.uk); every YouTube
    host is "youtube.com"; an IP address or localhost as it is; a file path or `file:` URL (or
    anything else without a host) "local"."""
    host = _host(url)
    if host is None:
        return "local"
    if host in _YOUTUBE_HOSTS:
        return "youtube.com"
    if host == "localhost" or _is_ip(host):
        return host
    labels = host.split(".")
    keep = 3 if ".".join(labels[-2:]) in _TWO_LABEL_SUFFIXES else 2
    site = ".".join(labels[-keep:])
    return "youtube.com" if site in _YOUTUBE_SITES else site


def _host(url: str) -> str | None:
    url = url.strip()
    if url.lower().startswith("file:") or url.startswith(("/", ".", "~", "\\")):
        return None
    if re.match(r"[A-Za-z]:[\\/]", url):  # a Windows path
        return None
    try:  # "www.youtube.com/watch?v=x" has no scheme, and yt-dlp takes it as https
        host = urlsplit(url if "://" in url else f"//{url}").hostname
    except ValueError:
        return None
    return (host or "").rstrip(".") or None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_transient(exc: BaseException) -> bool:
    """A one-off failure worth retrying (network, server-side). Throttling is not retried here:
    the throttle governor pauses the whole site instead (ingest.sites.throttle)."""
    return classify(exc).kind == "transient"
