"""yt-dlp options from the settings: pacing, identity (cookies, extractor arguments) and anything
else a yt-dlp user would pass on its command line.

yt-dlp's own command-line parser turns them into its API options, so every option means exactly
what yt-dlp's documentation says, and a setting yt-dlp rejects is a set-up error with yt-dlp's
message. Only the options the settings change are kept; the downloader's own (format, output
template, post-processing) stay as they are.
"""

from __future__ import annotations

import contextlib
import functools
import io
import optparse
import shlex
from collections.abc import Mapping
from typing import Any

from ingest.infrastructure.config import ConfigError, Settings


def ytdlp_args(settings: Settings) -> list[str]:
    """The settings as yt-dlp command-line arguments, the free-form INGEST_YTDLP_ARGS last."""
    args: list[str] = []
    pacing = [
        ("--sleep-requests", settings.ytdlp_sleep_requests),
        ("--sleep-interval", settings.ytdlp_sleep_min),
        ("--max-sleep-interval", settings.ytdlp_sleep_max),
        ("--sleep-subtitles", settings.ytdlp_sleep_subtitles),
    ]
    args += [arg for flag, value in pacing if value for arg in (flag, f"{value:g}")]
    optional = [
        ("--limit-rate", settings.ytdlp_rate_limit),
        ("--cookies", settings.cookies_file and str(settings.cookies_file)),
        ("--cookies-from-browser", settings.cookies_from_browser),
        ("--extractor-args", settings.ytdlp_extractor_args),
    ]
    args += [arg for flag, value in optional if value for arg in (flag, value)]
    return args + shlex.split(settings.ytdlp_args)


def ytdlp_params(settings: Settings) -> dict[str, Any]:
    """YoutubeDL options for the settings' arguments: those that differ from yt-dlp's defaults."""
    return _changed(tuple(ytdlp_args(settings)))


@functools.cache
def _changed(args: tuple[str, ...]) -> dict[str, Any]:
    given, defaults = _parse(list(args)), _parse([])
    return {key: value for key, value in given.items() if defaults.get(key) != value}


def _parse(args: list[str]) -> Mapping[str, Any]:
    import yt_dlp

    errors = io.StringIO()
    try:
        # Some of yt-dlp's checks print and exit instead of raising.
        with contextlib.redirect_stderr(errors):
            options: Mapping[str, Any] = yt_dlp.parse_options(args).ydl_opts
    except (SystemExit, ValueError, optparse.OptParseError) as exc:
        said = f"{errors.getvalue()}\n{exc}".strip().splitlines()[-1]
        message = said.split(" error: ", 1)[-1]
        raise ConfigError(f"invalid yt-dlp options {shlex.join(args)!r}: {message}") from None
    return options
