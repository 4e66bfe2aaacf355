"""Metrics, health and logs of a real backfill process; the dashboard against a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from db.embedded import start_embedded, stop_embedded
from tests.conftest import Speech, pg_folder
from tests.feeds import Item, fill, serve, write_feed
from tests.observing import Running, Samples, health, scrape, start, value

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ingest.json"


@contextmanager
def channel(tmp_path: Path, speech: Speech, copies: int, rate: int) -> Iterator[str]:
    """A throttled feed of `copies` videos plus one that is missing; yields its URL."""
    site = tmp_path / "site"
    site.mkdir()
    items = fill(site, (speech.medium, speech.long, speech.short), copies)
    items.append(Item("gone", "Missing", "gone.wav"))
    with serve(site, bytes_per_second=rate) as base:
        yield write_feed(site, base, items)


def watch(process: Running, timeout: float = 180) -> list[Samples]:
    """Scrapes every 0.2 s until the process exits."""
    port = process.metrics_port()
    snapshots: list[Samples] = []
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        samples = scrape(port)
        if samples:
            snapshots.append(samples)
        time.sleep(0.2)
    return snapshots


def test_metrics_move_as_a_backfill_progresses_and_logs_are_json(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str]
) -> None:
    env = {**ingest_env, "INGEST_METRICS_ADDR": "127.0.0.1:0"}
    with channel(tmp_path, speech, copies=3, rate=400_000) as feed:
        process = start(env, "backfill", feed)
        snapshots = watch(process)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1  # the missing video failed, the others are done
    assert len(snapshots) > 5

    audio = [value(s, "ingest_audio_seconds_total") or 0.0 for s in snapshots]
    assert audio[0] == 0.0 and audio[-1] > 0 and audio == sorted(audio)
    downloads = [
        value(s, "ingest_stage_items_total", stage="download", outcome="ok") for s in snapshots
    ]
    assert max(d or 0 for d in downloads) >= 2
    assert any((value(s, "ingest_stage_in_flight", stage="download") or 0) > 0 for s in snapshots)
    assert any(
        (value(s, "ingest_stage_failures_total", stage="download", kind="http_4xx") or 0) == 1
        for s in snapshots
    )
    last = snapshots[-1]
    assert value(last, "ingest_queue_capacity", queue="audio") == 24
    assert value(last, "ingest_queue_depth", queue="audio") is not None
    assert value(last, "ingest_gpu_available") == 0
    assert any((value(s, "ingest_videos", status="done") or 0) >= 1 for s in snapshots)
    build = [k for k in last if k[0] == "ingest_build_info"]
    assert build and dict(build[0][1])["asr_model"] == env["INGEST_ASR_MODEL"]

    events = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert events, "no log lines"
    per_video = [e for e in events if e["event"] in ("video_done", "video_failed")]
    assert {e["video_id"] for e in per_video} == {
        "generic:v0",
        "generic:v1",
        "generic:v2",
        "generic:gone",
    }
    done = [e for e in per_video if e["event"] == "video_done"]
    assert all({"download_s", "decode_s", "transcribe_s"} <= e.keys() for e in done)


def test_healthz_turns_unhealthy_when_the_database_stops(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str]
) -> None:
    pgdata = pg_folder() / "pgdata"
    uri = start_embedded(pgdata)
    env = {**ingest_env, "DATABASE_URL": uri, "INGEST_METRICS_ADDR": "127.0.0.1:0"}
    with channel(tmp_path, speech, copies=2, rate=50_000) as feed:
        process = start(env, "backfill", feed)
        try:
            port = process.metrics_port()
            deadline = time.monotonic() + 60
            while health(port) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert health(port) == 200
            stop_embedded(pgdata)  # this test process holds the server's only handle
            deadline = time.monotonic() + 20
            while health(port) == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert health(port) == 503  # downloads go on meanwhile: the process is still up
        finally:
            process.kill()
            process.communicate()
            shutil.rmtree(pgdata.parent, ignore_errors=True)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 12
    return queries


def prometheus_query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@contextmanager
def prometheus(tmp_path: Path, target_port: int) -> Iterator[int]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (scripts/install.sh installs it)"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ingest\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         "--web.listen-address=127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert server.stderr is not None
    # Read to the end all along, so that its log never fills the pipe and blocks it.
    drain = threading.Thread(target=server.stderr.read, daemon=True)
    with server.stderr:
        try:
            port = listening_port(server.stderr)
            drain.start()
            yield port
        finally:
            server.terminate()
            server.wait(timeout=30)
            if drain.is_alive():
                drain.join(timeout=30)


def listening_port(log: IO[str]) -> int:
    """The port Prometheus bound when told to take any: it logs the address it listens on."""
    for line in log:
        if 'msg="Listening on"' in line:
            found = re.search(r"address=\S+:(\d+)", line)
            assert found, line
            return int(found.group(1))
    raise AssertionError("prometheus ended before it listened")


def test_every_dashboard_query_returns_data_in_a_real_prometheus(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str]
) -> None:
    env = {**ingest_env, "INGEST_METRICS_ADDR": "127.0.0.1:0"}
    with channel(tmp_path, speech, copies=6, rate=150_000) as feed:
        process = start(env, "backfill", feed)
        try:
            with prometheus(tmp_path, process.metrics_port()) as prom_port:
                until_scraped_twice(prom_port, process)
                empty = []
                for expr in dashboard_queries():
                    result = prometheus_query(prom_port, expr)
                    assert result["status"] == "success", (expr, result)
                    if not result["data"]["result"]:
                        empty.append(expr)
                assert empty == []
        finally:
            process.kill()
            process.communicate()


def until_scraped_twice(prom_port: int, process: Running) -> None:
    """Until Prometheus holds stored chunks and a few more scrapes, so every rate has two points."""
    deadline = time.monotonic() + 120
    stored = 0.0
    while stored < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        result = prometheus_query(prom_port, "sum(ingest_chunks_written_total)")
        samples = result["data"]["result"]
        stored = float(samples[0]["value"][1]) if samples else 0.0
    time.sleep(3)
    assert process.poll() is None, "the run ended before the queries could be checked"


def test_deployment_files_validate(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    compose = shutil.which("docker-compose")
    assert promtool and compose, "scripts/install.sh installs prometheus and docker-compose"
    check = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / ".env").write_text("")
    config = subprocess.run(
        [compose, "-f", str(tmp_path / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env={"INGEST_SOURCES": "https://example.org/feed.xml"},
    )  # fmt: skip
    assert config.returncode == 0, config.stderr
    for service in ("postgres", "ingest", "prometheus", "grafana"):
        assert f"  {service}:" in config.stdout
    assert "pgvector/pgvector:pg16" in config.stdout and "capabilities:" in config.stdout


def test_a_backfill_without_a_terminal_logs_its_plan_and_an_estimate_as_each_video_ends(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str]
) -> None:
    """A backfill run by a service manager or cron has no progress display: its log must say how
    much there is to do, how much is done after each video, and the time left."""
    folder = tmp_path / "talks"
    folder.mkdir()
    for name, voice in (("a.wav", speech.short), ("b.wav", speech.medium), ("c.wav", speech.long)):
        shutil.copy(voice, folder / name)
    process = start(ingest_env, "backfill", str(folder))
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, out + err
    assert "3 done, 0 failed of 3 videos" in out
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (planned,) = [e for e in events if e["event"] == "backfill_planned"]
    ends = [e for e in events if e["event"] in ("video_done", "progress")]
    assert [e["event"] for e in ends] == ["video_done", "progress"] * 3  # one after each video
    audio_s = sum(e["audio_s"] for e in ends if e["event"] == "video_done")
    assert (planned["videos"], planned["not_yet_done"], planned["unknown_length"]) == (3, 3, 0)
    assert planned["audio_hours"] == pytest.approx(audio_s / 3600, abs=0.005)
    progress = [e for e in ends if e["event"] == "progress"]
    assert [(e["done"], e["failed"], e["total"]) for e in progress] == [
        (1, 0, 3), (2, 0, 3), (3, 0, 3)
    ]  # fmt: skip
    estimates = [e["eta_s"] for e in progress]
    assert all(isinstance(eta, int) for eta in estimates), estimates
    assert estimates[0] > 0 and estimates[-1] == 0, estimates  # audio left after the first
