"""Who the sites see: the cookies and the proxy (or geo settings) requests go out with.

Videos that need a signed-in, old-enough or member account, or another location, are set aside
with the fingerprint of this identity, and tried again once it changes: new cookies (a fresh
export of the same file counts), another browser profile, a proxy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ingest.infrastructure.config import Settings
from ingest.sites.ytdlp_options import ytdlp_params

# yt-dlp options that change the account or the location a request comes from.
_IDENTITY_OPTIONS = (
    "cookiefile", "cookiesfrombrowser", "usenetrc", "netrc_location", "netrc_cmd", "username",
    "proxy", "geo_verification_proxy", "geo_bypass", "geo_bypass_country", "geo_bypass_ip_block",
    "source_address", "impersonate",
)  # fmt: skip


def identity(settings: Settings) -> str:
    """A short fingerprint of the settings that decide who the sites see."""
    params = ytdlp_params(settings)
    facts: dict[str, Any] = {key: repr(params.get(key)) for key in _IDENTITY_OPTIONS}
    cookies = params.get("cookiefile")
    if cookies:
        facts["cookies_file"] = _file_state(Path(str(cookies)).expanduser())
    text = json.dumps(facts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_state(path: Path) -> list[int] | None:
    """A re-exported cookies file is new cookies, though its name is the same."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]
