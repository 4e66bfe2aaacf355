"""yt-dlp's audio extraction, refusing a download whose audio ends before its header says.

Imported only when a downloader is built: yt-dlp is slow to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yt_dlp.postprocessor import FFmpegExtractAudioPP

from workers.audio import check_complete, stated_duration


class FFmpegCompleteAudioPP(FFmpegExtractAudioPP):  # type: ignore[misc]
    """Converts like `FFmpegExtractAudioPP` (its arguments go under the key `completeaudio`),
    then compares the result with what the downloaded file stated: ffmpeg converts a cut file
    without complaint, and the converted file no longer knows it was cut."""

    def run(self, info: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        stated = _stated(Path(info["filepath"]))
        files, info = super().run(info)
        check_complete(stated, _stated(Path(info["filepath"])) or 0.0)
        return files, info


def _stated(path: Path) -> float | None:
    try:
        return stated_duration(path)
    except Exception:  # unreadable here: ffmpeg's conversion names the real problem
        return None
