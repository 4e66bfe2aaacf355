"""structlog configuration, done once at the entry point."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog


class _StderrLoggerFactory:
    """Writes to whatever sys.stderr is when a line is logged, so a live progress display that
    redirects stderr keeps log lines above its bars."""

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        return structlog.PrintLogger(cast(TextIO, _CurrentStderr()))


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_SECRET_KEYS = ("password", "token", "secret")


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Masks passwords in URLs anywhere in an event, and values of secret-looking keys."""
    for key, value in event.items():
        if any(word in key.lower() for word in _SECRET_KEYS):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = _PASSWORD_IN_URL.sub(r"\1***@", value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """JSON lines when stderr is not a terminal (or `fmt == "json"`), readable lines otherwise."""
    # Model loaders draw tqdm bars on stderr; our own log and progress display say enough.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    terminal = sys.stderr.isatty()
    as_json = fmt == "json" or (fmt == "auto" and not terminal)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=terminal)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=True,
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_error(exc: BaseException) -> str:
    """One plain line: the exception's own message, its type when it has none."""
    message = " ".join(_ANSI.sub("", str(exc)).split()).removeprefix("ERROR: ")
    return message or type(exc).__name__
