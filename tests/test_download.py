"""The download stage against a local HTTP server: files, failures, cancellation."""

from __future__ import annotations

import asyncio
import shutil
import wave
from pathlib import Path

import anyio
import asyncpg
import pytest

from ingest.infrastructure.config import load_settings
from ingest.infrastructure.retry import Database
from ingest.sites.throttle import Governor
from ingest.sites.ytdlp_options import ytdlp_params
from ingest.stages.download import Downloader, DownloadOptions, audio_stem, download_stage
from ingest.stages.ledger import Ledger
from ingest.stages.messages import AudioFile, VideoJob
from tests.conftest import Speech
from tests.feeds import serve
from workers.decode import decode_audio

pytestmark = pytest.mark.anyio


def test_file_names_come_from_sanitised_ids() -> None:
    stem = audio_stem("../../etc/passwd; rm -rf / $(x) ü")
    assert "/" not in stem and " " not in stem and ".." not in stem
    assert audio_stem("a/b") != audio_stem("a_b")  # distinct ids never share a file


async def run_downloads(
    jobs: list[VideoJob], downloader: Downloader, ledger: Ledger
) -> list[AudioFile]:
    send, receive = anyio.create_memory_object_stream[VideoJob](len(jobs))
    out_send, out_receive = anyio.create_memory_object_stream[AudioFile](len(jobs))
    async with out_receive:
        async with send:
            for job in jobs:
                await send.send(job)
        governor = Governor(metrics=ledger.metrics)
        await download_stage(
            receive, out_send, downloader=downloader, ledger=ledger, governor=governor
        )
        return [audio async for audio in out_receive]


async def test_downloads_16k_mono_wav_and_records_failures(
    tmp_path: Path, speech: Speech, pool: asyncpg.Pool
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.short, site / "short.wav")
    downloader = Downloader(DownloadOptions(tmp_path / "audio", workers=3, retries=0))
    ledger = Ledger(Database(pool), total=2)
    with serve(site) as base:
        jobs = [VideoJob("ok", f"{base}/short.wav"), VideoJob("gone", f"{base}/missing.wav")]
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO videos (id, url) VALUES ($1, $2)", [(j.video_id, j.url) for j in jobs]
            )
        try:
            (audio,) = await run_downloads(jobs, downloader, ledger)
        finally:
            downloader.close()
    assert audio.job.video_id == "ok" and audio.owned and audio.path
    assert audio.path.name == f"{audio_stem('ok')}.wav"
    assert len(decode_audio(audio.path)) > 16000
    assert list(ledger.failures) == ["gone"] and "404" in ledger.failures["gone"]
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, status, attempts FROM videos ORDER BY id")
    assert [tuple(r) for r in rows] == [("gone", "failed", 0), ("ok", "discovered", 0)]


async def test_cancelling_stops_downloads_and_removes_partial_files(
    tmp_path: Path, speech: Speech, pool: asyncpg.Pool
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.long, site / "long.wav")  # ~1.7 MB at 100 kB/s: ~17 s
    audio_dir = tmp_path / "audio"
    downloader = Downloader(DownloadOptions(audio_dir, workers=2))
    with serve(site, bytes_per_second=100_000) as base:
        jobs = [VideoJob(f"slow-{i}", f"{base}/long.wav") for i in range(2)]
        stage = asyncio.create_task(
            run_downloads(jobs, downloader, Ledger(Database(pool), total=2))
        )
        with anyio.fail_after(20):
            while not list(audio_dir.glob("*.part")):  # noqa: ASYNC110 - a file, not an event
                await asyncio.sleep(0.05)
        stage.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stage
        # The threads stop at their next progress report, long before the downloads would end.
        with anyio.fail_after(30):
            await asyncio.to_thread(downloader.close)
    assert list(audio_dir.iterdir()) == []


def test_error_messages_are_one_plain_line() -> None:
    from ingest.infrastructure.logging import describe_error

    raw = RuntimeError("\x1b[0;31mERROR:\x1b[0m [generic] x: Unable to\n  download: HTTP 404")
    assert describe_error(raw) == "[generic] x: Unable to download: HTTP 404"
    assert describe_error(KeyError()) == "KeyError"


def test_the_users_yt_dlp_options_win_over_the_downloaders_defaults(tmp_path: Path) -> None:
    args = "-f worstaudio -R 7 --socket-timeout 4 --ppa 'ffmpeg:-v error'"
    ytdlp = ytdlp_params(load_settings(ytdlp_args=args))
    downloader = Downloader(DownloadOptions(tmp_path, socket_timeout=30, retries=3, ytdlp=ytdlp))
    plain = Downloader(DownloadOptions(tmp_path, socket_timeout=30, retries=3))
    try:
        given, defaults = downloader._ydl().params, plain._ydl().params
    finally:
        downloader.close()
        plain.close()
    assert (given["format"], given["retries"], given["socket_timeout"]) == ("worstaudio", 7, 4)
    assert given["fragment_retries"] == 3  # not given: the INGEST_DOWNLOAD_RETRIES setting
    assert given["postprocessor_args"] == {
        "completeaudio": ["-ar", "16000", "-ac", "1"],
        "ffmpeg": ["-v", "error"],
    }
    assert (defaults["format"], defaults["retries"], defaults["socket_timeout"]) == (
        "bestaudio/best",
        3,
        30,
    )
    assert given["noplaylist"] and given["progress_hooks"] == [downloader._check_cancelled]


@pytest.mark.parametrize(
    ("args", "rate"),
    [("--ppa 'ffmpeg:-v error'", 16000), ("--ppa 'CompleteAudio:-ar 8000 -ac 1'", 8000)],
    ids=["other post-processor arguments", "the conversion's own"],
)
async def test_the_users_conversion_arguments_replace_the_downloaders(
    tmp_path: Path, speech: Speech, pool: asyncpg.Pool, args: str, rate: int
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.short, site / "short.wav")
    ytdlp = ytdlp_params(load_settings(ytdlp_args=args))
    downloader = Downloader(DownloadOptions(tmp_path / "audio", workers=1, ytdlp=ytdlp))
    with serve(site) as base:
        job = VideoJob("talk", f"{base}/short.wav")
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO videos (id, url) VALUES ($1, $2)", job.video_id, job.url
            )
        try:
            (audio,) = await run_downloads([job], downloader, Ledger(Database(pool), total=1))
        finally:
            downloader.close()
    assert audio.path is not None
    with wave.open(str(audio.path)) as converted:
        assert (converted.getframerate(), converted.getnchannels()) == (rate, 1)
