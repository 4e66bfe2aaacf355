"""A new user's first run: default settings, no Hugging Face token, two runs on one machine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from db.embedded import start_embedded, stop_embedded
from ingest.infrastructure.config import Settings
from ingest.infrastructure.models import load_models
from tests.conftest import ModelPaths, Speech
from tests.observing import start
from tests.speech import wav_seconds
from tests.test_backfill import ingest
from workers.clustering import ClusteringDiarizer

DEFAULT_METRICS = Settings.model_fields["metrics_addr"].default


def first_run_env(ingest_env: dict[str, str], tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """Default settings on a machine without a token: the embedded database, the default
    metrics address and diarizer, an empty Hugging Face home (no stored token, nothing cached).
    Only the models are local stand-ins, because the hub cannot be reached from tests."""
    unset = ("DATABASE_URL", "INGEST_METRICS_ADDR", "INGEST_DIARIZATION_MODEL", "HF_TOKEN")
    env = {k: v for k, v in ingest_env.items() if k not in unset}
    (tmp_path / "hf-home").mkdir()
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), "INGEST_DATA_DIR": str(data_dir)}


def events(stderr: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in stderr.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


@contextlib.contextmanager
def default_port_taken() -> Iterator[None]:
    """Another process holds the default metrics port (if one already does, so much the same)."""
    host, port = DEFAULT_METRICS.rsplit(":", 1)
    with socket.socket() as holder:
        with contextlib.suppress(OSError):
            holder.bind((host, int(port)))
            holder.listen()
        yield


@pytest.fixture
def folder(tmp_path: Path, speech: Speech) -> Path:
    channel = tmp_path / "channel"
    channel.mkdir()
    for path in (speech.dialogue, speech.short, speech.medium, speech.host):
        shutil.copy(path, channel / path.name)
    return channel


# Copies of the short voice after the four: videos left for a second run to claim (see below).
SHORT_COPIES = 6


@pytest.fixture
def crowded(folder: Path, speech: Speech) -> Path:
    """The four voices, the dialogue first in the listing (in the order of names), then copies
    of the short one."""
    for i in range(SHORT_COPIES):
        shutil.copy(speech.short, folder / f"short-{i}.wav")
    return folder


def audio_of(folder: Path) -> float:
    return sum(wav_seconds(path) for path in folder.iterdir())


async def video_rows(pgdata: Path) -> list[asyncpg.Record]:
    uri = start_embedded(pgdata)
    try:
        conn = await asyncpg.connect(uri)
        try:
            return list(await conn.fetch("SELECT id, status, attempts, speaker_path FROM videos"))
        finally:
            await conn.close()
    finally:
        stop_embedded(pgdata)


# A run holds at most seven videos ahead of its models with one download and one decoded video
# queued: the model call's, the decoded one waiting, the decoder's, the queue's, the download's,
# the job queue's and the one on its way there. A local file downloads at once, so the first
# run to load its models claims seven at once, and the others stay for the second until the
# first has done its first (the dialogue, the slowest): both runs work at once.
ONE_AT_A_TIME = {"INGEST_DOWNLOAD_WORKERS": "1", "INGEST_AUDIO_QUEUE_SIZE": "1"}


@pytest.mark.timing
@pytest.mark.anyio
async def test_two_first_runs_at_once_without_a_token(
    crowded: Path, ingest_env: dict[str, str], tmp_path: Path, outside_data_dir: Path
) -> None:
    folder, videos = crowded, 4 + SHORT_COPIES
    env = {**first_run_env(ingest_env, tmp_path, outside_data_dir), **ONE_AT_A_TIME}
    with default_port_taken():
        runs = [start(env, "backfill", str(folder)) for _ in range(2)]
        outputs = [run.communicate(timeout=240) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
        (chosen,) = events(stderr, "diarizer_chosen")
        assert chosen["diarizer"] == "ecapa" and "no Hugging Face token" in str(chosen["reason"])
        (busy,) = events(stderr, "metrics_port_busy")
        assert busy["wanted"] == DEFAULT_METRICS and busy["serving"] != DEFAULT_METRICS
        (planned,) = events(stderr, "backfill_planned")
        assert planned["unknown_length"] == 0
    assert planned["audio_hours"] == pytest.approx(audio_of(folder) / 3600, abs=0.01)

    done = [int(stdout.split(" done")[0]) for stdout, _ in outputs]
    assert sum(done) == videos and min(done) >= 1, done  # between them, each video once
    rows = await video_rows(outside_data_dir / "pgdata")
    assert len(rows) == videos
    assert all((r["status"], r["attempts"], r["speaker_path"]) == ("done", 1, "full") for r in rows)

    search = ingest(env, "search", "planning meeting", "--json")
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert hits and all(str(h["speaker"]).startswith("SPEAKER_") for h in hits)


def test_asking_for_pyannote_without_access_is_one_clear_line(
    speech: Speech, ingest_env: dict[str, str], tmp_path: Path, outside_data_dir: Path
) -> None:
    env = {**first_run_env(ingest_env, tmp_path, outside_data_dir), "INGEST_DIARIZER": "pyannote"}
    result = ingest(env, "backfill", str(speech.short))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "pyannote/speaker-diarization-3.1" in line and "HF_TOKEN" in line
    assert "INGEST_DIARIZER=ecapa" in line and "Traceback" not in result.stderr


def test_a_busy_address_the_user_chose_is_a_setup_error(
    speech: Speech, ingest_env: dict[str, str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        addr = f"127.0.0.1:{holder.getsockname()[1]}"
        result = ingest({**ingest_env, "INGEST_METRICS_ADDR": addr}, "backfill", str(speech.short))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"cannot serve metrics at '{addr}'" in line and "Traceback" not in result.stderr


def test_status_estimates_what_is_left(
    folder: Path, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    first = ingest(ingest_env, "backfill", str(folder), "--limit", "1")
    assert first.returncode == 0, first.stderr
    report = json.loads(ingest(ingest_env, "status", "--json").stdout)
    assert report["counts"] == {**report["counts"], "done": 1, "discovered": 3}
    left = audio_of(folder) - report["audio_seconds"]
    assert report["todo_audio_hours"] == pytest.approx(left / 3600, rel=1e-3)
    assert report["eta_seconds"] > 0
    text = ingest(ingest_env, "status").stdout
    assert "to do: " in text and "left" in text


def cached_pyannote(hf_home: Path) -> None:
    """What a download of the pipeline leaves in the Hugging Face cache, as far as it is asked."""
    repo = hf_home / "hub" / "models--pyannote--speaker-diarization-3.1"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "snapshots" / "0123abc" / "config.yaml").write_text("pipeline: {}\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")


CHOOSE = (
    "from ingest.infrastructure.config import load_settings;"
    "from ingest.infrastructure.models import choose_diarizer;"
    "c = choose_diarizer(load_settings()); print(c.kind, c.explicit, c.reason)"
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "ecapa False pyannote/speaker-diarization-3.1 is gated and no Hugging Face token"),
        ({"HF_TOKEN": "hf_abc"}, "pyannote False a Hugging Face token is set"),
        ({"cached": "yes"}, "pyannote False pyannote/speaker-diarization-3.1 is in the"),
        ({"INGEST_DIARIZATION_MODEL": "local"}, "pyannote True local pipeline"),
        ({"INGEST_DIARIZER": "ecapa", "HF_TOKEN": "hf_abc"}, "ecapa True INGEST_DIARIZER=ecapa"),
        ({"INGEST_DIARIZER": "pyannote"}, "pyannote True INGEST_DIARIZER=pyannote"),
        ({"INGEST_DIARIZATION": "off", "HF_TOKEN": "hf_abc"}, "off False INGEST_DIARIZATION=off"),
    ],
)
def test_which_diarizer_runs_and_why(
    given: dict[str, str],
    expected: str,
    ingest_env: dict[str, str],
    tmp_path: Path,
    outside_data_dir: Path,
) -> None:
    env = {**first_run_env(ingest_env, tmp_path, outside_data_dir), **given}
    if env.pop("cached", None):
        cached_pyannote(tmp_path / "hf-home")
    if env.get("INGEST_DIARIZATION_MODEL") == "local":
        env["INGEST_DIARIZATION_MODEL"] = ingest_env["INGEST_DIARIZATION_MODEL"]
    result = subprocess.run(
        [sys.executable, "-c", CHOOSE], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith(expected)


def test_a_token_that_does_not_open_pyannote_gives_way_to_ecapa(
    models: ModelPaths, tmp_path: Path
) -> None:
    settings = Settings(
        hf_token="hf_not_a_real_token",
        device="cpu",
        data_dir=tmp_path,
        asr_model=str(models.asr),
        embedding_model=str(models.embedding),
        voice_model=str(models.voice),
    )
    loaded = load_models(settings)
    assert loaded.diarizer.kind == "ecapa"
    assert loaded.diarizer.reason.startswith("pyannote could not be loaded: ")
    assert isinstance(loaded.workers[0].speakers.diarizer, ClusteringDiarizer)


def test_a_whisper_size_name_is_fetched_through_the_hub_cache(
    models: ModelPaths, tmp_path: Path
) -> None:
    """`INGEST_ASR_MODEL=base` names a repository the first run downloads (with progress);
    offline, the copy in the cache is what loads."""
    repo = tmp_path / "hf-home" / "hub" / "models--Systran--faster-whisper-base"
    shutil.copytree(models.asr, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    script = "from workers.asr import fetch_whisper; print(fetch_whisper('base'))"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert Path(result.stdout.strip()) == repo / "snapshots" / "0123abc"
    missing = subprocess.run(
        [sys.executable, "-c", script.replace("'base'", "'small'")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "Systran/faster-whisper-small" in missing.stderr
