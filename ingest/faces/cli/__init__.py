"""The `ingest` command line. Each command group registers itself on the typer app when its
module is imported here."""

from __future__ import annotations

# isort: off
# `ingest --help` lists the commands in the order their modules are imported.
from ingest.faces.cli import run, status, search, serve, speakers, doctor
from ingest.faces.cli import mcp
from ingest.faces.cli import reembed
from ingest.faces.cli import export

# isort: on
from ingest.faces.cli.app import app
from ingest.infrastructure.shutdown import exit_process

__all__ = [
    "app", "doctor", "export", "main", "mcp", "reembed", "run", "search", "serve", "speakers",
    "status",
]  # fmt: skip


def main() -> None:
    code: int | str | None = 0
    try:
        app()
    except SystemExit as done:  # how typer ends every command
        code = done.code
    exit_process(code)
