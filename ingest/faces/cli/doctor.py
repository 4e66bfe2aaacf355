"""`ingest doctor`: check the set-up before a long run."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ingest.faces import doctor as checkup
from ingest.faces.cli.app import _run, _settings, app, out
from ingest.infrastructure.config import ConfigError


@app.command()
def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    skip_models: Annotated[
        bool, typer.Option(help="Do not load the models (the slow part).")
    ] = False,
) -> None:
    """Check the set-up before a long run, and say how to fix each problem.

    Exit status: 0 when nothing fails (warnings allowed), 1 otherwise.
    """
    try:
        settings = _settings(ctx)
    except ConfigError as exc:
        checks = [checkup.fail("settings", str(exc), "fix it in the environment, .env or flags")]
    else:
        checks = _run(checkup.diagnose(settings, load_models=not skip_models))
    if as_json:
        out.print_json(json.dumps(checkup.records(checks)))
    else:
        for line in checkup.lines(checks):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if checkup.failed(checks) else 0)
