"""What a failure means for the pipeline: `classify` sorts any exception into one of five kinds.

- permanent: the video can never be ingested as it is (private, members-only, removed, copyright,
  geo-restricted, not a supported URL, no audio, corrupt media, too long, HTTP 404/410). Only this
  kind fails a video, at once and without retries.
- needs_user: the site wants something only the user can give: a sign-in or age check (cookies,
  or credentials for an HTTP 401), fresh cookies, a JavaScript runtime, a PO token. The site is
  paused for the rest of the run and `fix` says what to configure; the video stays to do.
- throttled: the site says "slow down" (HTTP 429, a 503 with Retry-After, the bot check, "try
  again later", one-off errors coming in a burst: see ingest.infrastructure.throttle). The
  whole site pauses for `retry_after_s` (the server's Retry-After) or else a backoff; the video
  is handed back and tried again without spending one of its attempts.
- transient: a one-off network or server error (timeouts, resets, HTTP 5xx, YouTube's expired
  media URLs): retried with backoff, a bounded number of times.
- not_yet: an upcoming premiere or a live stream: skipped, and looked at again by a later
  listing; never a failure.

yt-dlp wraps what went wrong: a `DownloadError` keeps the original in `.exc_info`, an
`ExtractorError` keeps it in `.cause`. So the whole chain is read: its lower-cased messages, and
its classes, matched by name along each class's MRO so that importing this module does not load
yt-dlp (about 200 ms).
"""

from __future__ import annotations

import email.utils
import ipaddress
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Literal
from urllib.parse import urlsplit

Kind = Literal["permanent", "needs_user", "throttled", "transient", "not_yet"]

COOKIES_FIX = (
    "set INGEST_COOKIES_FILE to a Netscape cookies.txt exported from a logged-in browser, "
    "or INGEST_COOKIES_FROM_BROWSER=firefox"
)
JS_RUNTIME_FIX = (
    'pip install "yt-dlp[default,deno]" (make install does it); `ingest doctor` checks it'
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


@dataclass(frozen=True, slots=True)
class Failure:
    kind: Kind
    reason: str  # short and human: what went wrong
    fix: str = ""  # what the user should configure (needs_user only)
    retry_after_s: float | None = None  # the server's Retry-After (throttled only)


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: Kind
    reason: str
    markers: tuple[str, ...]
    fix: str = ""


# Classes, matched by name anywhere in an exception's MRO; an empty reason takes the message.
_BY_CLASS: dict[str, tuple[Kind, str]] = {
    "PermanentDownloadError": ("permanent", ""),  # ingest.stages.download: too long
    "NotYetAvailable": ("not_yet", ""),  # ingest.stages.download: live or upcoming
    "UnsupportedError": ("permanent", "unsupported URL"),
    "GeoRestrictedError": ("permanent", "geo-restricted: not available from this location"),
    "UserNotLive": ("not_yet", "the channel is not live yet"),
    "DownloadCancelled": ("transient", "download cancelled"),
    # one-off errors that keep coming (ingest.infrastructure.throttle)
    "FailureBurst": ("throttled", ""),
}

# Matched in order against the chain's lower-cased text; the first rule that matches decides.
# Order matters: YouTube appends its sign-in hint ("Use --cookies-from-browser or --cookies") to
# the bot check and to private videos, so throttled and permanent come before needs_user.
_RULES = (
    _Rule("not_yet", "upcoming premiere", ("premieres in", "premiere will begin", "will premiere")),
    _Rule("not_yet", "live event not started or still live", (
        "live event", "is_upcoming", "not currently live")),
    _Rule("throttled", "YouTube's bot check", ("not a bot", "captcha")),
    _Rule("throttled", "rate-limited: try again later", ("try again later",)),
    _Rule("throttled", "HTTP 429 Too Many Requests", ("http error 429", "too many requests")),
    _Rule("throttled", "rate-limited", ("rate-limited", "rate limit", "likely being blocked")),
    _Rule("permanent", "too long", ("ingest_max_duration",)),
    _Rule("permanent", "private video", ("private video", "is private")),
    _Rule("permanent", "members-only", (
        "members-only", "members only", "join this channel", "channel's members")),
    _Rule("permanent", "geo-restricted: not available from this location", (
        "from your location", "in your country", "geo restriction")),
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
    _Rule("needs_user", "age-restricted: sign-in required", (
        "confirm your age", "age-restricted", "age restricted", "inappropriate",
        "age verification", "age_verification", "age_check"), COOKIES_FIX),
    _Rule("needs_user", "PO token required", ("po token",), POT_FIX),
    _Rule("needs_user", "no JavaScript runtime to solve YouTube's challenges", (
        "javascript runtime", "n challenge solving failed", "signature solving failed",
        "challenge solver"), JS_RUNTIME_FIX),
    _Rule("needs_user", "sign-in required", (
        "sign in", "login required", "login details", "registered users", "--cookies",
        "requires authentication", "log in to"), COOKIES_FIX),
)  # fmt: skip

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


def classify(exc: BaseException) -> Failure:
    """What `exc` means for the video and its site; see the module docstring."""
    chain = _chain(exc)
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain).lower().replace("\u2019", "'")
    failure = (
        _by_class(chain)
        or _by_text(text)
        or _by_formats(chain, text)
        or _by_status(chain, text)
        or _by_network(chain, text)
        # Unknown and not network-looking: permanent. A retry would most likely fail the same
        # way, and a failed video is visible (ledger, `ingest status`) and can be re-queued,
        # whereas an unknown error retried forever would hide a bug.
        or Failure("permanent", _first_line(exc))
    )
    if failure.kind == "throttled":
        return replace(failure, retry_after_s=_retry_after(chain))
    return failure


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
            if cls.__name__ in _BY_CLASS:
                kind, reason = _BY_CLASS[cls.__name__]
                return Failure(kind, reason or _first_line(exc))
    return None


def _by_text(text: str) -> Failure | None:
    for rule in _RULES:
        if any(marker in text for marker in rule.markers):
            return Failure(rule.kind, rule.reason, rule.fix)
    return None


def _by_formats(chain: Sequence[BaseException], text: str) -> Failure | None:
    """No format to download: on YouTube they vanish without a JS runtime or PO token."""
    if not any(marker in text for marker in _NO_FORMATS):
        return None
    if _on_youtube(chain, text):
        return Failure("needs_user", "YouTube offered no usable format", FORMATS_FIX)
    return Failure("permanent", "no audio or video formats")


def _by_status(chain: Sequence[BaseException], text: str) -> Failure | None:
    """HTTP statuses. A 403 from YouTube is an expired signed media URL, fetched afresh on the
    next attempt; elsewhere a 403 is the server's deliberate refusal (authorisation, hotlink
    protection) that a retry does not change: permanent, like the other 4xx but 408 and 429."""
    status = _status(chain, text)
    if status is None:
        return None
    if status == 429:
        return Failure("throttled", "HTTP 429 Too Many Requests")
    if status == 403 and _on_youtube(chain, text):
        return Failure("transient", "HTTP 403 from YouTube (an expired media URL)")
    if status == 401:  # the server asks who we are: only the user's credentials change that
        return Failure("needs_user", "HTTP 401: the server wants a signed-in user", LOGIN_FIX)
    if status == 503 and _retry_after(chain) is not None:  # "come back in N s": throttling
        return Failure("throttled", "HTTP 503 with Retry-After")
    if status == 408 or status >= 500:
        return Failure("transient", f"HTTP {status}: server error")
    if status >= 400:
        return Failure("permanent", f"HTTP {status}: {_HTTP_REASONS.get(status, 'client error')}")
    return None


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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_error(exc: BaseException) -> str:
    """One plain line: the exception's own message, its type when it has none."""
    message = " ".join(_ANSI.sub("", str(exc)).split()).removeprefix("ERROR: ")
    return message or type(exc).__name__
