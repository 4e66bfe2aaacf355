"""`ingest enroll` and `ingest speakers`: voice profiles of known speakers."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ingest.faces.cli.app import _run, _settings, _usage_errors, app, err, out
from ingest.orchestration.speakers import EnrollError
from ingest.orchestration.speakers import enroll as run_enroll
from ingest.orchestration.speakers import profiles as run_profiles


@app.command()
def enroll(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The speaker's name, as search and labels show it.")],
    sources: Annotated[list[str], typer.Argument(help="Audio files or URLs, one voice.")],
    voice_model: Annotated[str | None, typer.Option(help="speechbrain hub id or folder.")] = None,
) -> None:
    """Build (or add to) the voice profile NAME from audio of that speaker alone.

    Exit status: 0 stored, 1 an input was unusable (nothing stored), 2 usage or setup error.
    """
    with _usage_errors():
        settings = _settings(ctx, voice_model=voice_model)
        try:
            result = _run(run_enroll(name, sources, settings))
        except EnrollError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    profile = result.profile
    out.print(
        f"{profile.name}: {result.added_windows} windows added, {profile.windows} in all",
        markup=False,
        highlight=False,
    )


@app.command()
def speakers(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the enrolled voice profiles."""
    with _usage_errors():
        settings = _settings(ctx)
        stored = _run(run_profiles(settings))
    rows = [
        {"name": p.name, "windows": p.windows, "model": p.model, "updated_at": str(p.updated_at)}
        for p in stored
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for row in rows:
        out.print(
            f"{row['name']}  {row['windows']} windows  {row['model']}  {row['updated_at']}",
            markup=False,
            highlight=False,
        )
