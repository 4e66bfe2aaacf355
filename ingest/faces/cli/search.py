"""`ingest search`: the chunks that best match a query."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.text import Text

from ingest.faces.cli.app import _run, _settings, _usage_errors, app, out
from ingest.orchestration.progress import clock
from ingest.orchestration.search import Result, search_options
from ingest.orchestration.search import search as run_search


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many chunks to show.")] = 10,
    mode: Annotated[
        str, typer.Option(help="hybrid (meaning and words), vector (meaning) or text (words).")
    ] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    speaker: Annotated[str | None, typer.Option(help="Only chunks of this speaker.")] = None,
    channel: Annotated[str | None, typer.Option(help="Only videos of this channel.")] = None,
    source: Annotated[str | None, typer.Option(help="Only videos this source lists.")] = None,
    video: Annotated[str | None, typer.Option(help="Only this video (its id).")] = None,
    after: Annotated[datetime | None, typer.Option(help="Uploaded on or after (UTC).")] = None,
    before: Annotated[datetime | None, typer.Option(help="Uploaded before (UTC).")] = None,
    one_per_video: Annotated[
        bool, typer.Option("--one-per-video", help="Only the best chunk of each video.")
    ] = False,
    embedding_model: Annotated[
        str | None, typer.Option(help="The corpus's embedding model.")
    ] = None,
) -> None:
    """The chunks that best match QUERY, with a link to the second each starts."""
    with _usage_errors():
        settings = _settings(ctx, embedding_model=embedding_model)
        options = search_options(
            k=k, mode=mode, speaker=speaker, channel=channel, source=source, video=video,
            after=after, before=before, one_per_video=one_per_video,
        )  # fmt: skip
        results = _run(run_search(query, settings, options))
    if as_json:
        out.print_json(json.dumps([r.as_json() for r in results]))
        return
    for r in results:
        out.print(_describe(r), highlight=False)


def _describe(result: Result) -> Text:
    """A result for a terminal: where it is, then its snippet with the matching words bold."""
    hit = result.hit
    speaker = f" [{hit.speaker}]" if hit.speaker else ""
    if len(hit.speakers) > 1:  # a short turn of another joined to the chunk
        speaker = f" [speakers: {', '.join(hit.speakers)}]"
    source = f"  ({hit.transcript_source})" if hit.transcript_source else ""
    line = Text(
        f"{hit.score:.3f}  {hit.title or hit.video_id}{speaker}  "
        f"{clock(hit.start_s)}-{clock(hit.end_s)}  {result.link}{source}\n    "
    )
    # ts_headline marks the matches with ** (odd pieces are matches).
    for i, piece in enumerate(hit.snippet.split("**")):
        line.append(piece, style="bold" if i % 2 else "")
    return line
