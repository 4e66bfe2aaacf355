"""The `ingest` command line: the typer app, its global options, and what every command shares.

Each command group lives in a module of its own that registers on `app`; ingest.faces.cli
imports them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from db.corpus import EmbeddingModelMismatch
from db.speakers import ProfileModelMismatch
from ingest.infrastructure.config import (
    ConfigError,
    Device,
    LogFormat,
    LogLevel,
    Settings,
    load_settings,
)
from ingest.infrastructure.database import DatabaseUnavailable
from ingest.infrastructure.event_loop import loop_factory
from ingest.infrastructure.logging import configure_logging
from ingest.infrastructure.models import ModelLoadError
from ingest.infrastructure.shutdown import Shutdown

T = TypeVar("T")

app = typer.Typer(
    help="Turn channels, playlists, feeds and folders of audio into a searchable corpus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# Errors a user fixes by changing the command or its settings: one line, exit status 2.
USAGE_ERRORS = (
    ConfigError,
    ModelLoadError,
    DatabaseUnavailable,
    EmbeddingModelMismatch,
    ProfileModelMismatch,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL; unset: embedded PostgreSQL in the data dir.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Audio and embedded database.")] = None,
    device: Annotated[Device | None, typer.Option(help="auto, cpu or cuda.")] = None,
    log_level: Annotated[LogLevel | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help="auto, console or json.")] = None,
) -> None:
    ctx.obj = {
        "database_url": database_url,
        "data_dir": data_dir,
        "device": device,
        "log_level": log_level,
        "log_format": log_format,
    }


@contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        cause = _alone(exc)
        if not isinstance(cause, USAGE_ERRORS):
            raise
        err.print(f"error: {cause}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _alone(exc: BaseException) -> BaseException:
    """The one error inside task groups' exception groups, if there is just one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _settings(ctx: typer.Context, **overrides: Any) -> Settings:
    settings = load_settings(**ctx.obj, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory(load_settings().event_loop)) as runner:
        return runner.run(coro)


async def _with_signals(settings: Settings, start: Callable[[Shutdown], Awaitable[T]]) -> T:
    shutdown = Shutdown(settings.shutdown_grace_seconds)
    shutdown.install()
    try:
        return await start(shutdown)
    finally:
        shutdown.uninstall()
