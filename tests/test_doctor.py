"""`ingest doctor` as a user runs it: a good set-up passes, and each broken piece is named.

Real processes throughout: the embedded PostgreSQL and a second cluster on TCP with passwords,
the stand-in models loaded by the real loaders, a PATH without ffmpeg, a port another socket holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import pynvml
import pytest
import torch

from ingest.faces.doctor import (
    MAX_YT_DLP_AGE_DAYS,
    check_cuda_libraries,
    check_ejs,
    check_js_runtime,
    check_po_token_provider,
    check_yt_dlp,
    ejs_check,
    gpu_summary,
    service_tables,
)
from ingest.infrastructure.config import Settings, cuda_device_count
from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.models import AsrEngineChoice
from ingest.sites.ytdlp_version import YtDlpRelease, installed_release, release_date
from tests.conftest import pg_folder
from tests.observing import closed_port
from tests.pgtcp import TcpPostgres, tcp_postgres
from tests.test_backfill import ingest
from tests.test_gpu import FakeNvml, machine
from workers.cuda_libs import CudaLibrary

PASSWORD = "secret-pw-7c41e9"
READER_PASSWORD = "reader-pw-52b0d3"
WRONG_PASSWORD = "wrong-pw-e803aa"
LINE = re.compile(r"(ok|warn|fail) {2,}(\S+(?: \S+)*) {2,}(.*)")
GOOD_SET_UP = [
    "database",
    "postgresql",
    "pgvector",
    "migrations",
    "database writes",
    "data dir",
    "disk",
    "ffmpeg",
    "yt-dlp",
    "yt-dlp options",
    "js runtime",
    "yt-dlp-ejs",
    "po token provider",
    "device",
    "asr engine",
    "cuda libraries",
    "diarizer",
    "asr model",
    "embedding model",
    "voice model",
    "diarization model",
    "metrics addr",
]


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return ingest(env, "doctor", *args)


def report(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """Each line's check name → (status, detail and fix), in order."""
    rows = {}
    for line in result.stdout.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a check line: {line!r}"
        rows[match[2]] = (match[1], match[3])
    return rows


def assert_fails_only(result: subprocess.CompletedProcess[str], check: str, *says: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    rows = report(result)
    assert [name for name, (status, _) in rows.items() if status == "fail"] == [check], rows
    for words in says:
        assert words in rows[check][1]
    assert "Traceback" not in result.stderr


def test_a_good_set_up_passes(ingest_env: dict[str, str], outside_data_dir: Path) -> None:
    env = {k: v for k, v in ingest_env.items() if k != "DATABASE_URL"}  # embedded PostgreSQL
    env["INGEST_DATA_DIR"] = str(outside_data_dir)
    env["INGEST_METRICS_ADDR"] = "127.0.0.1:0"

    result = doctor(env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = report(result)
    assert list(rows) == GOOD_SET_UP
    assert {status for status, _ in rows.values()} <= {"ok", "warn"}
    assert rows["database"] == (
        "ok",
        f"connected to embedded PostgreSQL in {outside_data_dir}/pgdata",
    )
    assert rows["migrations"][0] == "warn" and "ingest migrate" in rows["migrations"][1]
    assert rows["diarizer"][1].startswith("pyannote: local pipeline")
    if cuda_device_count() == 0:
        assert rows["device"][0] == "ok" and "no GPU" in rows["device"][1]
        assert rows["asr engine"] == ("ok", "faster-whisper: CTranslate2 runs on the CPU")
        assert rows["cuda libraries"] == ("ok", "not needed on a CPU")
    for model in ("asr model", "embedding model", "voice model", "diarization model"):
        assert rows[model][0] == "ok" and " loaded in " in rows[model][1], rows[model]
    assert rows["metrics addr"] == ("ok", f"{env['INGEST_METRICS_ADDR']} is free")
    assert rows["js runtime"][0] == "ok" and rows["js runtime"][1].startswith("deno ")
    assert rows["yt-dlp-ejs"][0] == "ok"
    assert rows["po token provider"][1].startswith("none; if YouTube answers 403")

    as_json = doctor(env, "--json", "--skip-models")
    assert as_json.returncode == 0, as_json.stderr
    checks = json.loads(as_json.stdout)
    assert [c["check"] for c in checks] == [n for n in GOOD_SET_UP if not n.endswith(" model")]
    for check in checks:
        assert set(check) == {"check", "status", "detail", "fix"}
        assert check["status"] in {"ok", "warn"}
        assert (check["fix"] is None) == (check["status"] == "ok")


def test_unloadable_models_are_named(ingest_env: dict[str, str], tmp_path: Path) -> None:
    for folder in ("empty", "hf-home"):
        (tmp_path / folder).mkdir()
    env = {k: v for k, v in ingest_env.items() if k != "INGEST_DIARIZATION_MODEL"}
    env |= {
        "INGEST_ASR_MODEL": str(tmp_path / "empty"),
        "INGEST_EMBEDDING_MODEL": "ingest-tests/never-downloaded",
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty cache: nothing from the hub is there
        "HF_TOKEN": "hf_doctor_test_token",  # makes auto-detection guess pyannote
    }
    result = doctor(env)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = report(result)
    assert [name for name, (status, _) in rows.items() if status == "fail"] == [
        "asr model",
        "embedding model",
    ]
    assert f"cannot load ASR model '{tmp_path / 'empty'}'" in rows["asr model"][1]
    assert "check the folder INGEST_ASR_MODEL names" in rows["asr model"][1]
    assert rows["embedding model"][1].startswith(
        "ingest-tests/never-downloaded is not downloaded and the hub is offline"
    )
    assert rows["diarizer"] == ("ok", "pyannote: a Hugging Face token is set")
    status, said = rows["diarization model"]  # guessed, so a run gives way to ECAPA
    assert status == "warn" and "a run falls back to ECAPA clustering" in said
    assert "INGEST_DIARIZER=ecapa" in said
    assert rows["voice model"][0] == "ok"
    assert "hf_doctor_test_token" not in result.stdout + result.stderr


def path_without(folder: Path, *hidden: str) -> str:
    """A PATH of one folder linking every program on this PATH except `hidden`."""
    folder.mkdir()
    for directory in filter(None, os.environ["PATH"].split(os.pathsep)):
        for program in sorted(Path(directory).glob("*")) if Path(directory).is_dir() else []:
            link = folder / program.name
            if program.name not in hidden and not os.path.lexists(link):
                link.symlink_to(program)
    return str(folder)


def test_missing_ffmpeg(ingest_env: dict[str, str], tmp_path: Path) -> None:
    env = {**ingest_env, "PATH": path_without(tmp_path / "bin", "ffmpeg")}
    result = doctor(env, "--skip-models")
    assert_fails_only(result, "ffmpeg", "not found on PATH; install ffmpeg: apt-get install ffmpeg")


def test_a_data_dir_that_cannot_be_written(ingest_env: dict[str, str], tmp_path: Path) -> None:
    # Tests run as root, which ignores permission bits: a chmod 0o500 folder stays writable.
    # Nobody, root included, can create a folder beneath a regular file.
    (tmp_path / "a-file").write_text("")
    env = {**ingest_env, "INGEST_DATA_DIR": str(tmp_path / "a-file" / "data")}
    result = doctor(env, "--skip-models")
    assert_fails_only(result, "data dir", "is not writable: [Errno 20] Not a directory")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another socket listens on for the length of a test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_metrics_address_in_use(ingest_env: dict[str, str], busy_port: int) -> None:
    env = {**ingest_env, "INGEST_METRICS_ADDR": f"127.0.0.1:{busy_port}"}
    result = doctor(env, "--skip-models")
    assert_fails_only(
        result,
        "metrics addr",
        f"127.0.0.1:{busy_port} is in use; pick another INGEST_METRICS_ADDR, or empty to disable",
    )


def test_the_default_metrics_address_in_use_is_a_warning(ingest_env: dict[str, str]) -> None:
    env = {k: v for k, v in ingest_env.items() if k != "INGEST_METRICS_ADDR"}
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 9108))
            sock.listen()
        except OSError:
            pass  # something else holds it already, which is just as busy
        result = doctor(env, "--skip-models")
    assert result.returncode == 0, result.stdout + result.stderr
    status, said = report(result)["metrics addr"]
    assert status == "warn" and "a run will use another free port" in said


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is visible")
def test_cuda_asked_for_without_a_gpu(ingest_env: dict[str, str]) -> None:
    result = doctor({**ingest_env, "INGEST_DEVICE": "cuda"}, "--skip-models")
    assert_fails_only(result, "device", "INGEST_DEVICE=cuda but no CUDA device is visible")


@pytest.fixture(scope="session")
def tcp_server() -> Iterator[TcpPostgres]:
    """PostgreSQL on 127.0.0.1 asking for passwords. `ingest` owns the databases `corpus` and
    `empty` (pgvector created by the superuser; only the first is ever migrated) and `novector`
    (without it); `reader` owns nothing."""
    folder = pg_folder()
    try:
        with tcp_postgres(folder) as server:
            asyncio.run(_provision(server))
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _provision(server: TcpPostgres) -> None:
    conn = await asyncpg.connect(server.admin_url())
    try:
        await conn.execute(f"CREATE ROLE ingest LOGIN PASSWORD '{PASSWORD}'")
        await conn.execute(f"CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'")
        for database in ("corpus", "novector", "empty"):
            await conn.execute(f"CREATE DATABASE {database} OWNER ingest")
    finally:
        await conn.close()
    for database in ("corpus", "empty"):
        conn = await asyncpg.connect(server.admin_url(database))
        try:
            await conn.execute("CREATE EXTENSION vector")
        finally:
            await conn.close()


def test_the_right_password_passes_and_is_never_shown(
    tcp_server: TcpPostgres, ingest_env: dict[str, str]
) -> None:
    env = {**ingest_env, "DATABASE_URL": tcp_server.url("ingest", PASSWORD, "corpus")}
    before = doctor(env, "--skip-models")
    assert before.returncode == 0, before.stdout + before.stderr
    rows = report(before)
    shown = f"postgresql://ingest:***@127.0.0.1:{tcp_server.port}/corpus"
    assert rows["database"] == ("ok", f"connected to {shown}")
    assert rows["pgvector"][0] == "ok" and rows["database writes"][0] == "ok"

    assert ingest(env, "migrate").returncode == 0
    after = doctor(env, "--skip-models", "--json")
    assert after.returncode == 0, after.stdout + after.stderr
    checks = {c["check"]: c for c in json.loads(after.stdout)}
    assert checks["migrations"]["status"] == "ok"
    tables = len(service_tables())  # schema_migrations and those the migrations create
    assert checks["database writes"] == {
        "check": "database writes",
        "status": "ok",
        "detail": f"ingest may create tables in schema public; its {tables} tables",
        "fix": None,
    }
    for result in (before, after):
        assert PASSWORD not in result.stdout + result.stderr

    reader = {**env, "DATABASE_URL": tcp_server.url("reader", READER_PASSWORD, "corpus")}
    rows = report(doctor(reader, "--skip-models"))
    assert [name for name, (status, _) in rows.items() if status == "fail"] == [
        "migrations",
        "database writes",
    ]
    assert rows["migrations"][1].startswith("reader may not read schema_migrations")


# Each URL is made from the running server and a port on which nothing answers.
BROKEN_DATABASES: list[tuple[str, Callable[[TcpPostgres, int], str], str, tuple[str, ...]]] = [
    (
        "wrong password",
        lambda s, _: s.url("ingest", WRONG_PASSWORD, "corpus"),
        "database",
        ("authentication failed for user ingest; check the password in DATABASE_URL",),
    ),
    (
        "server down",
        lambda s, closed: s.url("ingest", PASSWORD, "corpus", port=closed),
        "database",
        ("cannot connect to 127.0.0.1:", "is PostgreSQL running?"),
    ),
    (
        "no such database",
        lambda s, _: s.url("ingest", PASSWORD, "nosuch"),
        "database",
        ('database "nosuch" does not exist; create it',),
    ),
    (
        "no pgvector, no superuser",
        lambda s, _: s.url("ingest", PASSWORD, "novector"),
        "pgvector",
        ("an admin runs CREATE EXTENSION vector; in database novector",),
    ),
    (
        "no right to create tables",
        lambda s, _: s.url("reader", READER_PASSWORD, "empty"),
        "database writes",
        ("reader may not create tables in schema public; an admin runs GRANT CREATE ON SCHEMA",),
    ),
]


@pytest.mark.parametrize(
    ("url", "check", "says"),
    [case[1:] for case in BROKEN_DATABASES],
    ids=[case[0] for case in BROKEN_DATABASES],
)
def test_a_broken_database_is_named(
    tcp_server: TcpPostgres,
    ingest_env: dict[str, str],
    url: Callable[[TcpPostgres, int], str],
    check: str,
    says: tuple[str, ...],
) -> None:
    with closed_port() as closed:
        result = doctor({**ingest_env, "DATABASE_URL": url(tcp_server, closed)}, "--skip-models")
    assert_fails_only(result, check, *says)
    for password in (PASSWORD, READER_PASSWORD, WRONG_PASSWORD):
        assert password not in result.stdout + result.stderr


def test_each_gpu_with_its_memory_and_the_driver() -> None:
    nvml = machine()
    sampler = GpuSampler(Metrics(), nvml, lambda: "2,MIG-aaaa-0000")
    assert gpu_summary(sampler) == (
        "GPU 0: NVIDIA H100 80GB HBM3, 80 GiB; GPU 1: NVIDIA H100 MIG 3g.40gb, 40 GiB; "
        "driver 570.86.15"
    )
    no_driver = GpuSampler(Metrics(), FakeNvml([], pynvml.NVMLError_LibraryNotFound()))
    assert gpu_summary(no_driver) == "no GPU (NVML: NVML Shared Library Not Found)"


def test_cuda_libraries_of_the_chosen_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, device="cuda")  # type: ignore[call-arg]
    monkeypatch.setattr("ingest.faces.doctor.models.cuda_device_count", lambda: 1)
    found = CudaLibrary("cuBLAS 12", "/site/nvidia/cublas/lib", True, ("libcublas.so.12",))
    missing = CudaLibrary("cuDNN 9", None, error="pip install nvidia-cudnn-cu12==9.*")
    monkeypatch.setattr("workers.cuda_libs.preload_cuda_libraries", lambda: (found, missing))
    check = check_cuda_libraries(settings, AsrEngineChoice("faster-whisper", "asked for"))
    assert check.status == "fail" and "INGEST_ASR_ENGINE=transformers" in check.fix
    assert check.detail.startswith(
        "faster-whisper: cuBLAS 12 (/site/nvidia/cublas/lib), cuDNN 9 missing: pip install"
    )
    assert "transformers: torch " in check.detail
    on_torch = check_cuda_libraries(settings, AsrEngineChoice("transformers", "asked for"))
    assert on_torch.status == ("ok" if torch.cuda.is_available() else "fail")


def settings_with(ytdlp_args: str = "", ytdlp_extractor_args: str | None = None) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, ytdlp_args=ytdlp_args, ytdlp_extractor_args=ytdlp_extractor_args
    )


def test_yt_dlp_releases_are_dated() -> None:
    assert release_date("2026.10.26") == date(2026, 10, 26)
    assert release_date("2026.01.05.233000") == date(2026, 1, 5)  # a nightly
    assert release_date("2026.13.40") is None and release_date("1.2.3.dev0") is None
    release = YtDlpRelease("2026.10.26", date(2026, 10, 26))
    assert release.age_days(date(2026, 12, 2)) == 37
    assert YtDlpRelease("0.0.dev", None).age_days() is None
    installed = installed_release()
    assert installed.released == release_date(installed.version) is not None


def test_an_old_yt_dlp_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    released = date(2026, 9, 1)
    old = YtDlpRelease("2026.09.01", released)
    monkeypatch.setattr("ingest.faces.doctor.ytdlp.installed_release", lambda: old)

    recent = check_yt_dlp(today=released + timedelta(days=MAX_YT_DLP_AGE_DAYS))
    assert (recent.status, recent.detail) == ("ok", "2026.09.01, released 60 days ago")
    stale = check_yt_dlp(today=date(2026, 12, 2))
    assert stale.status == "warn" and stale.detail.startswith("2026.09.01, released 92 days ago")
    assert 'pip install -U "yt-dlp[default,deno]"' in stale.fix


def fake_program(folder: Path, name: str, says: str) -> Path:
    """An executable `name` in `folder` that prints `says` whatever it is asked."""
    folder.mkdir(exist_ok=True)
    program = folder / name
    program.write_text(f"#!/bin/sh\necho '{says}'\n")
    program.chmod(0o755)
    return program


def test_a_deno_too_old_or_missing(tmp_path: Path) -> None:
    old = fake_program(tmp_path / "old", "deno", "deno 2.1.4 (stable, release, x86_64)")
    new = fake_program(tmp_path / "new", "deno", "deno 2.3.1 (stable, release, x86_64)")

    check = check_js_runtime(settings_with(ytdlp_args=f"--js-runtimes deno:{old}"))
    assert check.status == "warn"
    assert check.detail.startswith(f"deno 2.1.4 at {old} is older than 2.3.0")
    assert "YouTube downloads need one" in check.detail
    check = check_js_runtime(settings_with(ytdlp_args=f"--js-runtimes deno:{new}"))
    assert (check.status, check.detail) == ("ok", f"deno 2.3.1 at {new}")
    check = check_js_runtime(settings_with(ytdlp_args=f"--js-runtimes deno:{tmp_path}/gone"))
    assert check.status == "warn" and check.detail.startswith("deno not found")


def test_a_runtime_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = fake_program(tmp_path / "bin", "node", "v20.11.0")
    monkeypatch.setenv("PATH", f"{node.parent}{os.pathsep}{os.environ['PATH']}")

    check = check_js_runtime(settings_with(ytdlp_args="--no-js-runtimes --js-runtimes node"))
    assert check.status == "warn"
    assert check.detail.startswith(f"node 20.11.0 at {node} is older than 22.0.0")
    assert 'INGEST_YTDLP_ARGS="--js-runtimes node"' in check.fix


def test_yt_dlp_ejs_must_be_the_release_yt_dlp_expects() -> None:
    assert check_ejs().status == "ok"  # as installed
    assert ejs_check("0.8.3", "0.8.0").status == "ok"  # a patch release: yt-dlp takes it
    older = ejs_check("0.7.2", "0.8.0")
    assert older.status == "warn" and older.detail.startswith("0.7.2, but this yt-dlp runs only")
    assert 'pip install "yt-dlp-ejs==0.8.0"' in older.fix
    missing = ejs_check(None, "0.8.0")
    assert missing.status == "warn" and missing.detail.startswith("not installed")


def test_a_po_token_given_instead_of_a_provider() -> None:
    settings = settings_with(ytdlp_extractor_args="youtube:po_token=web.gvs+SECRET")
    check = check_po_token_provider(settings)
    assert (check.status, check.detail) == ("ok", "none; a token is set in the extractor arguments")


PROVIDER_PLUGIN = """
    from yt_dlp.extractor.youtube.pot.provider import PoTokenProvider, register_provider


    @register_provider
    class DoctorTestPTP(PoTokenProvider):
        PROVIDER_VERSION = "1.2.3"
        BUG_REPORT_LOCATION = "nowhere"

        def is_available(self):
            return True

        def _real_request_pot(self, request):
            raise NotImplementedError
"""


def test_a_po_token_provider_plugin(ingest_env: dict[str, str], tmp_path: Path) -> None:
    # Where pip puts a plugin package: a yt_dlp_plugins namespace folder on sys.path.
    plugins = tmp_path / "site" / "yt_dlp_plugins" / "extractor"
    plugins.mkdir(parents=True)
    (plugins / "getpot_doctor_test.py").write_text(textwrap.dedent(PROVIDER_PLUGIN))
    env = {**ingest_env, "PYTHONPATH": str(tmp_path / "site")}

    result = doctor(env, "--skip-models")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report(result)["po token provider"] == ("ok", "DoctorTest 1.2.3")


def test_yt_dlp_options_the_downloader_refuses(ingest_env: dict[str, str]) -> None:
    env = {**ingest_env, "INGEST_YTDLP_ARGS": "--proxy socks5://u:pw@127.0.0.1:1080 -o x.%(ext)s"}
    result = doctor(env, "--skip-models")
    assert_fails_only(
        result,
        "yt-dlp options",
        "INGEST_YTDLP_ARGS: -o/--output is not allowed: the downloader names its own files",
    )
    assert report(result)["js runtime"][0] == "ok"  # yt-dlp's default runtime, deno


def test_json_names_the_failing_check_and_never_the_password(
    tcp_server: TcpPostgres, ingest_env: dict[str, str]
) -> None:
    """What a script reading `doctor --json` relies on: a non-zero exit, the failing check by
    name with what is wrong and how to fix it, every other check still there, and the
    password nowhere in the output."""
    env = {**ingest_env, "DATABASE_URL": tcp_server.url("ingest", WRONG_PASSWORD, "corpus")}
    result = doctor(env, "--json", "--skip-models")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = json.loads(result.stdout)
    failed = [c for c in checks if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["database"], checks
    assert "authentication failed for user ingest" in failed[0]["detail"]
    assert "check the password in DATABASE_URL" in failed[0]["fix"]
    assert {"data dir", "ffmpeg", "yt-dlp", "metrics addr"} <= {c["check"] for c in checks}
    assert all(c["status"] in {"ok", "warn"} for c in checks if c not in failed)
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
