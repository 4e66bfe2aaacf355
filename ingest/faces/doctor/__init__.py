"""`ingest doctor`: checks a set-up before a long run and says how to fix each problem.

Each check is a small function returning a `Check`: the database (reached as a run reaches it,
but only looked at: pending migrations are reported, never applied), the data directory and its
disk, ffmpeg, yt-dlp (its age, the options the settings give it, its JavaScript runtime and
yt-dlp-ejs, a PO-token provider plugin), the device and its GPUs, the ASR engine a run
would choose and the CUDA libraries each engine needs, the diarizer a run would choose,
every configured model (loaded with the run's own loaders) and the metrics address.

`diagnose` runs the database, the local checks and the models side by side; the models load one
after another in a thread of their own, which is most of the time taken. Everything shown goes
through the log's secret masking, so a password in a database URL is never printed.
"""

from __future__ import annotations

import asyncio

from ingest.faces.doctor.database import check_database, service_tables
from ingest.faces.doctor.models import (
    check_cuda_libraries,
    check_device,
    check_model,
    configured_models,
    gpu_summary,
)
from ingest.faces.doctor.report import Check, fail, failed, lines, ok, records, warn
from ingest.faces.doctor.system import check_data_dir, check_disk, check_ffmpeg, check_metrics_addr
from ingest.faces.doctor.ytdlp import (
    MAX_YT_DLP_AGE_DAYS,
    check_ejs,
    check_js_runtime,
    check_po_token_provider,
    check_yt_dlp,
    check_ytdlp_options,
    ejs_check,
)
from ingest.infrastructure.config import Settings
from ingest.infrastructure.models import choose_asr_engine, choose_diarizer

__all__ = [
    "MAX_YT_DLP_AGE_DAYS",
    "Check",
    "check_cuda_libraries",
    "check_ejs",
    "check_js_runtime",
    "check_po_token_provider",
    "check_yt_dlp",
    "diagnose",
    "ejs_check",
    "fail",
    "failed",
    "gpu_summary",
    "lines",
    "ok",
    "records",
    "service_tables",
    "warn",
]


async def diagnose(settings: Settings, *, load_models: bool = True) -> list[Check]:
    """Every check, in a fixed order."""
    async with asyncio.TaskGroup() as tg:
        database = tg.create_task(check_database(settings))
        local = tg.create_task(asyncio.to_thread(_local_checks, settings))
        models = tg.create_task(asyncio.to_thread(_device_and_models, settings, load_models))
    return [*database.result(), *local.result(), *models.result(), check_metrics_addr(settings)]


def _local_checks(settings: Settings) -> list[Check]:
    return [
        check_data_dir(settings),
        check_disk(settings),
        check_ffmpeg(),
        check_yt_dlp(),
        check_ytdlp_options(settings),
        check_js_runtime(settings),
        check_ejs(),
        check_po_token_provider(settings),
    ]


def _device_and_models(settings: Settings, load_models: bool) -> list[Check]:
    # One thread for all of them: CUDA is probed once, before any model touches it, and each
    # model's load time is its own rather than shared with another load.
    choice = choose_diarizer(settings)
    engine = choose_asr_engine(settings)
    checks = [
        check_device(settings),
        ok("asr engine", f"{engine.engine}: {engine.reason}"),
        check_cuda_libraries(settings, engine),
        ok("diarizer", f"{choice.kind}: {choice.reason}"),
    ]
    if load_models:
        checks += [check_model(model, choice) for model in configured_models(settings, choice)]
    return checks
