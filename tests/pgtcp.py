"""A PostgreSQL cluster on TCP with password authentication, from pgserver's bundled binaries.

The embedded server listens only on a unix socket and trusts every local user, so no password can
be wrong there. This one listens on 127.0.0.1 and asks TCP clients for a SCRAM password, as a
production server does; its superuser still comes in through the socket, trusted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.observing import closed_port

with warnings.catch_warnings():
    # Importing pgserver warns when XDG_RUNTIME_DIR is unset, as db.embedded explains.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_prefix_permissions, ensure_user_exists


@dataclass(frozen=True)
class TcpPostgres:
    port: int
    socket_dir: Path

    def url(self, user: str, password: str, database: str, port: int | None = None) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{port or self.port}/{database}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"


def _owner() -> str | None:
    # initdb and postgres refuse to run as root; pgserver runs its clusters as this user then.
    return "pgserver" if os.geteuid() == 0 else None


def _run(owner: str | None, *args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, user=owner, timeout=60)


def _start(owner: str | None, pg_ctl: str, pgdata: Path, sockets: Path) -> TcpPostgres:
    """PostgreSQL cannot be told to take any free port (its socket file is named after the
    port), so a free one is drawn, and drawn again should another process take it first."""
    for _ in range(5):
        with closed_port() as port:
            pass
        options = f"-h 127.0.0.1 -p {port} -k {sockets}"
        try:
            _run(owner, pg_ctl, "-D", str(pgdata), "-o", options, "-l", str(pgdata / "log"),
                 "-w", "start")  # fmt: skip
        except subprocess.CalledProcessError:
            continue
        return TcpPostgres(port, sockets)
    raise AssertionError(f"PostgreSQL did not start: {(pgdata / 'log').read_text()}")


@contextmanager
def tcp_postgres(folder: Path) -> Iterator[TcpPostgres]:
    """A running cluster in `folder` (which must be reachable by other users: see
    `tests.conftest.pg_folder`), stopped on exit."""
    pgdata, sockets = folder / "pgdata", folder / "sockets"
    pgdata.mkdir()
    sockets.mkdir()
    owner = _owner()
    if owner is not None:
        ensure_user_exists(owner)
        for path in (pgdata, POSTGRES_BIN_PATH):
            ensure_prefix_permissions(path)
        for path in (pgdata, sockets):
            shutil.chown(path, owner, owner)
    initdb, pg_ctl = str(POSTGRES_BIN_PATH / "initdb"), str(POSTGRES_BIN_PATH / "pg_ctl")
    auth = ("--auth-host=scram-sha-256", "--auth-local=trust")
    _run(owner, initdb, "-D", str(pgdata), "-U", "postgres", "-E", "utf8", *auth)
    server = _start(owner, pg_ctl, pgdata, sockets)
    try:
        yield server
    finally:
        _run(owner, pg_ctl, "-D", str(pgdata), "-m", "fast", "-w", "stop")
