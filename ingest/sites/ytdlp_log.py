"""The logger every YoutubeDL of ours gets: yt-dlp writes to stderr unless given one."""

from __future__ import annotations

from collections import deque
from typing import Any

import structlog

log = structlog.get_logger()


class YtDlpLog:
    """Routes yt-dlp's own messages to our debug log; failures reach us as exceptions. Keeps the
    latest warnings: yt-dlp often says what went wrong only there, before a generic final error
    (`ingest.sites.errors.attach_warnings` lets them travel with it)."""

    KEPT = 50  # plenty for one extraction: YouTube's warns about twice per player client

    def __init__(self) -> None:
        self.warnings: deque[str] = deque(maxlen=self.KEPT)

    @staticmethod
    def of(ydl: Any) -> YtDlpLog:
        """The log of a YoutubeDL built with one (the downloader's are)."""
        logger = ydl.params["logger"]
        assert isinstance(logger, YtDlpLog)
        return logger

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        log.debug("yt_dlp_warning", message=msg)
        self.warnings.append(msg)

    def error(self, msg: str) -> None:
        log.debug("yt_dlp_error", message=msg)
