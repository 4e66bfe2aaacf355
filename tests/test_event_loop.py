"""The event loop a command runs on: uvloop on Linux unless told otherwise, named in the log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import uvloop
from structlog.testing import capture_logs

from ingest.infrastructure.config import ConfigError, EventLoop
from ingest.infrastructure.event_loop import loop_factory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uvloop is the default on Linux")


async def _hop() -> str:
    """A thread hop and a stream hand-off, as the pipeline's stages make them."""
    send, receive = anyio.create_memory_object_stream[str](1)
    async with send, receive:
        await send.send(await asyncio.to_thread(str.upper, "ok"))
        return await receive.receive()


def run_on(choice: EventLoop) -> asyncio.AbstractEventLoop:
    with capture_logs() as logs, asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        assert runner.run(_hop()) == "OK"
        loop = runner.get_loop()
    assert logs == [{"event": "event_loop", "loop": type_name(loop), "log_level": "info"}]
    return loop


def type_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"


def test_auto_is_uvloop_on_linux() -> None:
    assert isinstance(run_on("auto"), uvloop.Loop)


def test_asyncio_when_asked_for() -> None:
    loop = run_on("asyncio")
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_auto_is_asyncio_where_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # how Python marks a module unimportable
    assert type_name(run_on("auto")) == "asyncio"


def test_auto_is_asyncio_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert type_name(run_on("auto")) == "asyncio"


def test_uvloop_asked_for_but_not_installed_is_a_setup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")


@pytest.mark.parametrize(("setting", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_a_command_logs_its_loop(
    setting: EventLoop, expected: str, database_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "INGEST_DATA_DIR": str(tmp_path / "data"),
        "INGEST_LOG_FORMAT": "json",
        "INGEST_EVENT_LOOP": setting,
    }
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "status", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["loop"] for e in events if e["event"] == "event_loop"] == [expected]


def test_an_unknown_loop_is_a_usage_error(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "INGEST_EVENT_LOOP": "trio"}
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "status"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "event_loop" in result.stderr
