"""Figures, their targets, the printed table and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

Compare = Literal[">=", "<="]


@dataclass(frozen=True, slots=True)
class Figure:
    bench: str
    name: str
    value: float | None
    unit: str = ""
    target: float | None = None  # None: reported, not judged
    compare: Compare = ">="
    detail: dict[str, float | str] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.value is None:
            return False
        return self.value >= self.target if self.compare == ">=" else self.value <= self.target

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "met": self.met}


def show(figures: Sequence[Figure], console: Console) -> None:
    table = Table(title="ingest benchmarks")
    for column in ("bench", "figure", "value", "target", "met"):
        table.add_column(column)
    for f in figures:
        value = "n/a" if f.value is None else f"{f.value:,.3f} {f.unit}".strip()
        target = "" if f.target is None else f"{f.compare} {f.target:g}"
        met = {True: "yes", False: "NO", None: ""}[f.met]
        table.add_row(f.bench, f.name, value, target, met)
    console.print(table)


def write(figures: Sequence[Figure], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([f.as_json() for f in figures], indent=2) + "\n")
