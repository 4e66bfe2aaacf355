"""Helpers to watch a running `ingest` process from a test: ports, scrapes, health."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on which nothing answers for as long as the block runs: it is bound, never
    listened on, so no other process can take it meanwhile."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def scrape(port: int) -> Samples | None:
    """Every sample at /metrics, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def health(port: int) -> int | None:
    """The HTTP status of /healthz, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Running:
    """An `ingest` process in the background whose output is read as it comes, so that a test can
    wait for what it logs (the port it bound, a stage starting) while it runs."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ingest", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._out: list[str] = []
        self._err: list[str] = []
        self._logged = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stdout, self._out),
                (self.process.stderr, self._err),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, lines: list[str]) -> None:
        assert stream is not None
        with stream:
            for line in stream:
                with self._logged:
                    lines.append(line)
                    self._logged.notify_all()
        with self._logged:
            self._logged.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.process.kill()

    def events(self, name: str) -> list[dict[str, object]]:
        """The JSON log lines so far whose event is `name`."""
        with self._logged:
            lines = list(self._err)
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                found.append(record)
        return found

    def wait_for_event(self, name: str, timeout: float = 180) -> dict[str, object]:
        """The first log line whose event is `name`, waiting for it while the process runs."""
        deadline = time.monotonic() + timeout
        with self._logged:
            while not (found := self.events(name)):
                ended = self.process.poll() is not None and not any(
                    r.is_alive() for r in self._readers
                )
                assert not ended, f"the process ended without logging {name}:\n{''.join(self._err)}"
                assert time.monotonic() < deadline, f"no {name} logged in {timeout} s"
                self._logged.wait(0.5)
        return found[0]

    def metrics_port(self) -> int:
        """The port the process bound for its metrics when told to take any (port 0)."""
        return int(str(self.wait_for_event("metrics_serving")["port"]))

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Everything it printed, once it has ended (TimeoutExpired if it does not in time)."""
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join()
        return "".join(self._out), "".join(self._err)


def start(env: dict[str, str], *args: str) -> Running:
    """An `ingest` process running in the background, its output captured."""
    return Running(env, *args)
