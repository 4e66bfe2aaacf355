"""yt-dlp options from the settings: pacing, identity (cookies, extractor arguments) and anything
else a yt-dlp user would pass on its command line.

yt-dlp's own command-line parser turns them into its API options, so every option means exactly
what yt-dlp's documentation says, and a setting yt-dlp rejects is a set-up error with yt-dlp's
message. Only the options the settings change are kept. Those the downloader has defaults of its
own for (format, retries, socket timeout, post-processor arguments) are kept whenever given, as
the user's choice wins over the downloader's; those that would change what the downloader
writes, or keep it from downloading, are a set-up error naming the option.
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
    """YoutubeDL options for the settings' arguments: those that differ from yt-dlp's defaults,
    and those the downloader has defaults for whenever given. Raises `ConfigError` for an option
    yt-dlp rejects or the downloader cannot work with."""
    return _changed(tuple(ytdlp_args(settings)))


@functools.cache
def _changed(args: tuple[str, ...]) -> dict[str, Any]:
    given, defaults = _parse(list(args)), _parse([])
    explicit = _given(args)
    changed = {
        key: value for key, value in given.items() if defaults.get(key) != value or key in explicit
    }
    _refuse(changed)
    return changed


# The options the downloader has defaults of its own for, and two arguments setting each of them
# to two different values.
_OWN_DEFAULTS = ("format", "retries", "fragment_retries", "socket_timeout")
_PROBES = (
    ["-f", "probe-a", "--retries", "1", "--fragment-retries", "1", "--socket-timeout", "1"],
    ["-f", "probe-b", "--retries", "2", "--fragment-retries", "2", "--socket-timeout", "2"],
)


def _given(args: tuple[str, ...]) -> set[str]:
    """Which of `_OWN_DEFAULTS` the arguments set, even to yt-dlp's default value (`-R 10`): the
    last occurrence of an option wins, so after either probe an option the arguments set has
    the same value, and one they do not set has the probe's."""
    first, second = (_parse([*probe, *args]) for probe in _PROBES)
    return {key for key in _OWN_DEFAULTS if first.get(key) == second.get(key)}


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


def _refusals(why: str, **options: str) -> dict[str, tuple[str, str]]:
    return {key: (option, why) for key, option in options.items()}


# YoutubeDL options (and the command-line options that set them) the downloader cannot work
# with, checked in this order: printing options also simulate, and name the problem better.
_REFUSED = {
    **_refusals(
        "the downloader names its own files",
        outtmpl="-o/--output",
        paths="-P/--paths",
    ),
    **_refusals(
        "standard output is the downloader's",
        forceprint="--print",
        print_to_file="--print-to-file",
        forcejson="-j/--dump-json",
        dump_single_json="-J/--dump-single-json",
        forceurl="-g/--get-url",
        forcetitle="-e/--get-title",
        forceid="--get-id",
        forcethumbnail="--get-thumbnail",
        forcedescription="--get-description",
        forceduration="--get-duration",
        forcefilename="--get-filename",
        forceformat="--get-format",
    ),
    **_refusals(
        "the downloader needs the audio",
        simulate="-s/--simulate",
        skip_download="--skip-download",
        listformats="-F/--list-formats",
        listsubtitles="--list-subs",
        list_thumbnails="--list-thumbnails",
    ),
    **_refusals(
        "the downloader needs all of the audio",
        download_ranges="--download-sections",
        test="--test",
    ),
    **_refusals(
        "the downloader reads captions itself (INGEST_CAPTIONS)",
        writesubtitles="--write-subs",
        writeautomaticsub="--write-auto-subs",
    ),
    **_refusals(
        "the downloader keeps only the audio it converts",
        writeinfojson="--write-info-json",
        writedescription="--write-description",
        writethumbnail="--write-thumbnail",
        write_all_thumbnails="--write-all-thumbnails",
        writelink="--write-link",
        writeurllink="--write-url-link",
        writewebloclink="--write-webloc-link",
        writedesktoplink="--write-desktop-link",
        keepvideo="-k/--keep-video",
        keep_fragments="--keep-fragments",
    ),
    **_refusals(
        "each failure must reach the downloader, to be recorded and retried",
        ignoreerrors="-i/--ignore-errors",
    ),
    **_refusals(
        "the database decides what to download (ingest backfill --limit, --reprocess)",
        download_archive="--download-archive",
        force_write_download_archive="--force-download-archive",
        break_on_existing="--break-on-existing",
        break_on_reject="--break-on-reject",
        max_downloads="--max-downloads",
    ),
    **_refusals(
        "the downloader takes each video it is given: one the filter rejects would fail",
        match_filter="--match-filters",
        daterange="--date/--datebefore/--dateafter",
        matchtitle="--match-title",
        rejecttitle="--reject-title",
        min_filesize="--min-filesize",
        max_filesize="--max-filesize",
        min_views="--min-views",
        max_views="--max-views",
        age_limit="--age-limit",
    ),
}

# The options that add each post-processor; others come from --use-postprocessor.
_POSTPROCESSOR_OPTIONS = {
    "FFmpegExtractAudio": "-x/--extract-audio",
    "Exec": "--exec",
    "FFmpegVideoRemuxer": "--remux-video",
    "FFmpegVideoConvertor": "--recode-video",
    "FFmpegEmbedSubtitle": "--embed-subs",
    "FFmpegSubtitlesConvertor": "--convert-subs",
    "FFmpegThumbnailsConvertor": "--convert-thumbnails",
    "EmbedThumbnail": "--embed-thumbnail",
    "FFmpegMetadata": "--embed-metadata",
    "SponsorBlock": "--sponsorblock-mark/--sponsorblock-remove",
    "ModifyChapters": "--remove-chapters/--sponsorblock-remove",
    "FFmpegSplitChapters": "--split-chapters",
    "XAttrMetadata": "--xattrs",
}


def _refuse(params: Mapping[str, Any]) -> None:
    for key, (option, why) in _REFUSED.items():
        # Only a value asks for something: `--no-simulate` makes `simulate` False.
        if params.get(key) is not None and params[key] is not False:
            raise ConfigError(f"INGEST_YTDLP_ARGS: {option} is not allowed: {why}")
    for postprocessor in params.get("postprocessors") or []:
        name = postprocessor.get("key", "")
        # FFmpegConcat joins a playlist's videos (the downloader takes one video at a time);
        # MetadataParser rewrites fields of the metadata, not the file.
        if name not in ("FFmpegConcat", "MetadataParser"):
            option = _POSTPROCESSOR_OPTIONS.get(name, f"--use-postprocessor {name}")
            why = "the downloader converts the audio itself, and nothing else may change it"
            raise ConfigError(f"INGEST_YTDLP_ARGS: {option} is not allowed: {why}")
