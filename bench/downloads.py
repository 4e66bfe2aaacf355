"""Concurrent downloads (the real yt-dlp path) against one at a time, over a throttled server."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.pipeline import write_template
from bench.results import Figure
from ingest.stages.download import Downloader, DownloadOptions
from ingest.stages.messages import VideoJob
from tests.feeds import serve


async def _download_all(downloader: Downloader, jobs: list[VideoJob]) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    await asyncio.gather(
        *(loop.run_in_executor(downloader.executor, downloader.download, job) for job in jobs)
    )
    return time.perf_counter() - started


def downloads(files: int, rate: int) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-dl-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        for i in range(files):
            write_template(site / f"{i}.wav", 3.0)  # 96 kB: about 1 s each at 100 kB/s
        timings = {}
        with serve(site, bytes_per_second=rate) as base:
            for workers in (1, 24):
                options = DownloadOptions(Path(tmp) / f"audio{workers}", workers=workers)
                options.audio_dir.mkdir()
                downloader = Downloader(options)
                jobs = [VideoJob(f"{workers}-{i}", f"{base}/{i}.wav") for i in range(files)]
                try:
                    timings[workers] = asyncio.run(_download_all(downloader, jobs))
                finally:
                    downloader.close()
    return [
        Figure(
            bench="downloads",
            name=f"24-way ÷ 1-way speed-up ({files} files, {rate // 1000} kB/s each)",
            value=timings[1] / timings[24],
            unit="x",
            target=5.0,
            detail={"one_way_s": round(timings[1], 2), "24_way_s": round(timings[24], 2)},
        )
    ]
