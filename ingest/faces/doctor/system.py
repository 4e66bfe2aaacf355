"""Files, programs and addresses: the data directory and its disk, ffmpeg, the metrics address."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import tempfile

from ingest.faces.doctor.report import GIB, Check, fail, ok, warn
from ingest.infrastructure.config import Settings
from ingest.infrastructure.endpoints import parse_addr
from ingest.infrastructure.logging import describe_error

# Downloads wait in the data dir as WAV files until transcribed, then as decoded samples (a 12 h
# video is ~1.3 GiB of either; up to INGEST_AUDIO_QUEUE_SIZE of them wait), and the embedded
# database grows there.
MIN_FREE_BYTES = 1 * GIB
LOW_FREE_BYTES = 20 * GIB


def check_data_dir(settings: Settings) -> Check:
    """Creates the folder when missing, as a run would, and a file in it."""
    folder = settings.data_dir.absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return fail(
            "data dir",
            f"{folder} is not writable: {describe_error(exc)}",
            "point INGEST_DATA_DIR at a folder this user can write, or fix its permissions",
        )
    return ok("data dir", f"{folder} is writable")


def check_disk(settings: Settings) -> Check:
    folder = settings.data_dir.absolute()
    # Measured where the folder is (or would be): its nearest existing ancestor.
    present = next(path for path in (folder, *folder.parents) if path.exists())
    free = shutil.disk_usage(present).free
    detail = f"{free / GIB:.1f} GiB free at {present}"
    fix = "free some space, or point INGEST_DATA_DIR at a bigger disk"
    if free < MIN_FREE_BYTES:
        return fail("disk", detail, fix)
    if free < LOW_FREE_BYTES:
        return warn("disk", f"{detail}; long videos wait there as WAV files", fix)
    return ok("disk", detail)


def check_ffmpeg() -> Check:
    """yt-dlp converts every download to WAV with ffmpeg, found on PATH."""
    path = shutil.which("ffmpeg")
    if path is None:
        return fail("ffmpeg", "not found on PATH", "install ffmpeg: apt-get install ffmpeg")
    try:
        result = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        fix = "reinstall ffmpeg: apt-get install --reinstall ffmpeg"
        return fail("ffmpeg", f"{path} -version failed: {describe_error(exc)}", fix)
    words = result.stdout.split()  # "ffmpeg version 5.1.6-0+deb12u1 Copyright ..."
    version = words[2] if len(words) > 2 else "(unknown version)"
    return ok("ffmpeg", f"{version} at {path}")


def check_metrics_addr(settings: Settings) -> Check:
    addr = settings.metrics_addr
    if not addr:
        return ok("metrics addr", "disabled (INGEST_METRICS_ADDR is empty)")
    fix = "pick another INGEST_METRICS_ADDR, or empty to disable"
    try:
        _bind_as_the_server_does(*parse_addr(addr))
    except (ValueError, OverflowError) as exc:
        return fail("metrics addr", f"{addr!r} is not HOST:PORT ({describe_error(exc)})", fix)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return fail("metrics addr", f"cannot listen on {addr}: {describe_error(exc)}", fix)
        if not settings.is_default("metrics_addr"):
            return fail("metrics addr", f"{addr} is in use", fix)
        return warn(
            "metrics addr",
            f"{addr} is in use by another process; a run will use another free port",
            "set INGEST_METRICS_ADDR to a free address to keep the port fixed",
        )
    return ok("metrics addr", f"{addr} is free")


def _bind_as_the_server_does(host: str, port: int) -> None:
    # The run's wsgiref server is a socketserver.TCPServer: IPv4 only, and SO_REUSEADDR, so a
    # port an earlier run left in TIME_WAIT is free to it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
