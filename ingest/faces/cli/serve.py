"""`ingest serve`: the read-only HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from ingest.faces.cli.app import _settings, _usage_errors, app
from ingest.faces.http.app import serve as run_serve


@app.command()
def serve(
    ctx: typer.Context,
    addr: Annotated[str | None, typer.Option(help="host:port to listen on.")] = None,
    embedding_model: Annotated[
        str | None, typer.Option(help="The corpus's embedding model.")
    ] = None,
    public: Annotated[
        bool,
        typer.Option(
            "--public", help="Listen beyond loopback without a token: anyone may read the corpus."
        ),
    ] = False,
) -> None:
    """A read-only HTTP API: GET /search (the options of `search`), /status and /health.

    It listens on loopback unless told otherwise; beyond it only with INGEST_SERVE_TOKEN (every
    request then needs it) or --public. Exit status 2 on a usage or setup error.
    """
    with _usage_errors():
        settings = _settings(
            ctx,
            serve_addr=addr,
            embedding_model=embedding_model,
            serve_public=True if public else None,
        )
        run_serve(settings)
