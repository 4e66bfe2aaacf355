"""A check's finding, and how findings are shown: as lines for a terminal or as records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.text import Text

from ingest.infrastructure.logging import redact_secrets

Status = Literal["ok", "warn", "fail"]

GIB = 1024**3
_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # what to do about it; empty when ok


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def failed(checks: Sequence[Check]) -> bool:
    return any(check.status == "fail" for check in checks)


def masked(text: str) -> str:
    """`text` with any password in a URL masked, exactly as the log masks it."""
    return str(redact_secrets(None, "doctor", {"text": text})["text"])


def lines(checks: Sequence[Check]) -> list[Text]:
    """One line per check: status, name, detail and, unless ok, the fix."""
    width = max((len(check.name) for check in checks), default=0)
    rendered = []
    for check in checks:
        fix = f"; {check.fix}" if check.fix else ""
        line = Text(masked(f"{check.status:<4}  {check.name:<{width}}  {check.detail}{fix}"))
        line.stylize(_STYLES[check.status], 0, len(check.status))
        rendered.append(line)
    return rendered


def records(checks: Sequence[Check]) -> list[dict[str, str | None]]:
    return [
        {
            "check": check.name,
            "status": check.status,
            "detail": masked(check.detail),
            "fix": masked(check.fix) or None,
        }
        for check in checks
    ]
