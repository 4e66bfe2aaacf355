"""The embedded PostgreSQL 16 + pgvector used when no DATABASE_URL is configured."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def _get_server(pgdata: Path) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (services, containers) and falls back
        # to a private folder in /tmp, which is fine for pgserver's lock file.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    return get_server(pgdata.resolve(), cleanup_mode="stop")


def start_embedded(pgdata: Path) -> str:
    """Starts (or reuses) a server on `pgdata` and returns its unix-socket URI.

    The server outlives this process only while another process still uses it.
    """
    pgdata.mkdir(parents=True, exist_ok=True)
    uri: str = _get_server(pgdata).get_uri()
    return uri


def stop_embedded(pgdata: Path) -> None:
    """Stops the server on `pgdata` if this process holds its last handle."""
    _get_server(pgdata).cleanup()
