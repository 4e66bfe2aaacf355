"""Bad input: each gets a clear error on its own video, and nothing else is affected."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import asyncpg
import pytest

from ingest.stages.sources import SourceError, list_source, source_key
from tests.conftest import Speech
from tests.feeds import Item, serve, write_feed
from tests.speech import wav_seconds
from tests.test_backfill import ingest

HOSTILE = "'; DROP TABLE videos; -- $(touch /tmp/ingest-pwned) ../../etc/passwd ü🎙️\u202e"


async def rows(database_url: str) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetch(
            "SELECT id, title, status, error, attempts, chunk_count, failure_class, retry_at"
            " FROM videos"
        )
    finally:
        await conn.close()
    return {r["id"].removeprefix("generic:"): r for r in found}


def cut(source: Path, target: Path) -> Path:
    """The first half of the file's bytes: what an interrupted copy leaves behind."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.fixture
def bad_site(tmp_path: Path, speech: Speech) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.short, site / "ok.wav")
    shutil.copy(speech.medium, site / "hostile.wav")
    shutil.copy(speech.long, site / "long.wav")
    (site / "page.html").write_text("<html><body><p>No audio here.</p></body></html>")
    (site / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 40)
    (site / "empty.wav").write_bytes(b"")
    cut(speech.medium, site / "truncated.wav")
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(site / "silence.wav"),
         "trim", "0", "5"],
        check=True,
    )  # fmt: skip
    return site


def test_each_bad_item_fails_alone_with_a_clear_error(
    bad_site: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    env = {
        **ingest_env,
        "INGEST_MAX_DURATION": "30",
        "INGEST_RETRY_ATTEMPTS": "2",
        "INGEST_RETRY_BACKOFF_SECONDS": "0.1",
        "INGEST_BACKFILL_RETRY_WAIT": "0",  # failures that may heal: left for later
    }
    with serve(bad_site) as base:
        items = [
            Item("ok", "Fine", "ok.wav"),
            Item("unreachable", "Nobody home", "http://127.0.0.1:9/x.wav"),
            Item("missing", "Gone", "missing.wav"),
            Item("html", "A web page", "page.html"),
            Item("corrupt", "Garbage", "corrupt.wav"),
            Item("empty", "Zero bytes", "empty.wav"),
            Item("truncated", "Cut short", "truncated.wav"),
            Item("silence", "Nothing said", "silence.wav"),
            Item("ok", "Fine, listed twice", "ok.wav"),
            Item(HOSTILE, HOSTILE, "hostile.wav"),
            Item("long", "Too long", "long.wav"),
        ]
        feed = write_feed(bad_site, base, items)
        result = ingest(env, "backfill", feed)
        assert result.returncode == 1, result.stderr
        assert "3 done, 7 failed of 10 videos" in result.stdout

        videos = asyncio.run(rows(database_url))
        assert len(videos) == 10  # the duplicate entry is one video
        assert {k for k, v in videos.items() if v["status"] == "done"} == {"ok", "silence", HOSTILE}
        assert videos["silence"]["chunk_count"] == 0  # no speech is not an error
        assert videos[HOSTILE]["title"] == HOSTILE and videos[HOSTILE]["chunk_count"] >= 1
        assert not Path("/tmp/ingest-pwned").exists()
        errors = {k: v["error"] for k, v in videos.items() if v["status"] == "failed"}
        assert errors["unreachable"].startswith("download: ")
        assert "refused" in errors["unreachable"].lower()
        assert "404" in errors["missing"]
        assert errors["long"].startswith("decode: too long: 53 s of audio")
        truncated = re.fullmatch(
            r"download: truncated: ([\d.]+) s of audio where the file states ([\d.]+) s",
            errors["truncated"],
        )
        assert truncated, errors["truncated"]
        whole = wav_seconds(bad_site / "hostile.wav")
        assert float(truncated[1]) == pytest.approx(whole / 2, abs=0.11)
        assert float(truncated[2]) == pytest.approx(whole, abs=0.051)
        for name in ("html", "corrupt", "empty"):
            assert errors[name].startswith(("download: ", "decode: ")), errors[name]
        assert all(v["attempts"] == 1 for v in videos.values())
        classes = {k: (v["failure_class"], v["retry_at"] is not None) for k, v in videos.items()}
        assert classes == {
            "ok": (None, False), "silence": (None, False), HOSTILE: (None, False),
            # A host that may come back, a server that sent nothing ("Did not get any data
            # blocks"), a download that may have been cut: tried again later.
            "unreachable": ("transient", True), "empty": ("transient", True),
            "truncated": ("decode", True),
            **dict.fromkeys(("missing", "html", "corrupt", "long"), ("permanent", False)),
        }  # fmt: skip

        again = ingest(env, "backfill", feed)
        # Nothing is due yet: the three that may heal are still to do, and the run says so.
        assert again.returncode == 4, again.stdout
        assert "0 done, 3 failed of 3 videos" in again.stdout
        assert "3 failed but may heal" in again.stdout
        retried = ingest(env, "backfill", feed, "--retry-failed")
        assert "0 done, 7 failed of 7 videos" in retried.stdout
    attempts = {k: v["attempts"] for k, v in asyncio.run(rows(database_url)).items()}
    assert attempts == {k: (2 if k in errors else 1) for k in attempts}


def test_truncated_local_files_fail_alone(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(speech.short, folder / "whole.wav")
    cut(speech.medium, folder / "cut-wav.wav")
    flac = tmp_path / "medium.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(speech.medium), str(flac)], check=True)
    cut(flac, folder / "cut-flac.flac")

    result = ingest(ingest_env, "backfill", str(folder))
    assert result.returncode == 1, result.stderr
    assert "1 done, 2 failed of 3 videos" in result.stdout
    videos = {v["title"]: v for v in asyncio.run(rows(database_url)).values()}
    assert videos["whole"]["status"] == "done"
    for name in ("cut-wav", "cut-flac"):
        assert videos[name]["status"] == "failed"
        assert videos[name]["error"].startswith("decode: truncated: "), videos[name]["error"]
        assert videos[name]["error"].endswith(f"the file states {wav_seconds(speech.medium):.1f} s")


def sparse_wav(path: Path, hours: float) -> Path:
    """A valid 16 kHz mono WAV of `hours` of silence, taking almost no disk (a sparse file)."""
    with wave.open(str(path), "wb") as header:
        header.setnchannels(1)
        header.setsampwidth(2)
        header.setframerate(16000)
        header.setnframes(int(hours * 3600 * 16000))
        header.writeframesraw(b"")
    size = path.stat().st_size + int(hours * 3600 * 16000) * 2
    with path.open("r+b") as file:
        file.truncate(size)
    return path


def test_very_long_audio_is_refused_before_it_is_decoded(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    """Thirteen hours would be 3.0 GB as samples: the refusal comes from the header, so the
    peak memory of the whole run stays below what decoding it would take."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(speech.short, folder / "short.wav")
    sparse_wav(folder / "thirteen-hours.wav", hours=13)
    measure = (
        "import resource, subprocess, sys;"
        "r = subprocess.run([sys.executable, '-m', 'ingest', 'backfill', sys.argv[1]]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
    )
    env = {k: v for k, v in ingest_env.items() if k != "INGEST_MAX_DURATION"}
    result = subprocess.run(
        [sys.executable, "-c", measure, str(folder)], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert "1 done, 1 failed of 2 videos" in result.stdout, result.stderr
    peak_bytes = int(result.stdout.split()[-1])
    assert peak_bytes < 3.0e9, peak_bytes
    videos = {v["title"]: v for v in asyncio.run(rows(database_url)).values()}
    assert videos["short"]["status"] == "done"
    assert videos["thirteen-hours"]["error"] == (
        "decode: too long: 46800 s of audio, INGEST_MAX_DURATION is 43200 s"
    )


@pytest.mark.parametrize(
    "source", ["~no-such-user-here/talks", "x" * 300, "talk\x00.wav"], ids=["user", "long", "nul"]
)
def test_a_source_no_file_system_can_hold_is_not_a_local_path(source: str) -> None:
    """Named in `ingest search --source` or a backfill: kept as given, or refused as a source
    with a clear message, never a crash in the file system's calls."""
    assert source_key(source) == source
    with pytest.raises(SourceError, match="neither an existing file or folder nor a URL"):
        list_source(source)
