"""The installed yt-dlp release and its age: sites change what they serve faster than an old
release can follow, so how long ago the installed one came out says whether to update it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

# yt-dlp numbers releases by their date: 2026.10.26, a nightly 2026.10.26.233000.
_DATED = re.compile(r"(\d{4})\.(\d{1,2})\.(\d{1,2})(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class YtDlpRelease:
    version: str
    released: date | None  # None: a version that names no date (a build from source)

    def age_days(self, today: date | None = None) -> int | None:
        """Days since the release (`today` defaults to the local date); None if unknown."""
        if self.released is None:
            return None
        return ((today or date.today()) - self.released).days


def installed_release() -> YtDlpRelease:
    """The yt-dlp this process imports (ImportError when there is none)."""
    from yt_dlp.version import __version__

    return YtDlpRelease(str(__version__), release_date(str(__version__)))


def release_date(version: str) -> date | None:
    """The date a yt-dlp version names, or None."""
    match = _DATED.fullmatch(version.strip())
    if match is None:
        return None
    try:
        return date(*(int(part) for part in match.groups()))
    except ValueError:  # 2026.13.40: not a date after all
        return None
