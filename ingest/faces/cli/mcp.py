"""`ingest mcp`: the corpus's tools for an assistant, over the Model Context Protocol on
stdin/stdout."""

from __future__ import annotations

from typing import Annotated

import typer

from ingest.faces.cli.app import _run, _settings, _usage_errors, app
from ingest.faces.mcp import serve_stdio


@app.command()
def mcp(
    ctx: typer.Context,
    embedding_model: Annotated[
        str | None, typer.Option(help="The corpus's embedding model.")
    ] = None,
) -> None:
    """An MCP server on stdin/stdout with the tools search, get_transcript and list_videos.

    An assistant's MCP client starts it; stdout carries the protocol, the log goes to stderr.
    """
    with _usage_errors():
        settings = _settings(ctx, embedding_model=embedding_model)
        try:
            _run(serve_stdio(settings))
        except KeyboardInterrupt:  # Ctrl-C where it was started by hand: no traceback
            raise typer.Exit(130) from None
