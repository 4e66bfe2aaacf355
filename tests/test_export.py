"""Exports on a real PostgreSQL: subtitles parsed back by pysrt and webvtt-py (times, speakers,
text with `<`, `&`, `-->` and line breaks), text and JSON; the corpus as JSON Lines and Parquet
read back, with embeddings on request and a batch at a time; the command line's exit codes; the
download endpoints."""

from __future__ import annotations

import asyncio
import html
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePath

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pysrt
import pytest
import webvtt
from starlette.testclient import TestClient
from typer.testing import CliRunner, Result

from db.migrate import apply_migrations
from db.pool import create_pool
from db.sink import ChunkRow, FinishedVideo, write_finished
from ingest.faces.cli import app
from ingest.faces.http.app import create_app
from ingest.infrastructure.config import load_settings
from ingest.orchestration.export import CorpusOptions, export_filters, write_corpus
from ingest.orchestration.subtitles import (
    as_json,
    one_line,
    safe_filename,
    srt,
    text,
    timestamp,
    vtt,
)
from ingest.orchestration.transcripts import Transcript, get_transcript
from tests.conftest import create_database
from tests.test_search import MODEL, corpus_texts, fill

pytestmark = pytest.mark.anyio
DIM = 384
# (start, end, speaker, text): markup, an arrow, line breaks and a speaker named like a tag.
TRICKY = [
    (0.0, 2.5, "Host", "if a < b && c > d --> done"),
    (62.345, 65.0009, None, "line one\n\nline two\r\n  three"),
    (3661.5, 3700.25, "Dr. <Who> & Co", "1 --> 2 ---> 3 <i>not italic</i>"),
]
CHUNKS = 300 + len(TRICKY) + 1  # the search corpus, the tricky video, the local file
COLUMNS = [
    "video_id", "title", "channel", "url", "published_at", "seg_index", "start_s", "end_s",
    "speaker", "speakers", "text", "transcript_source", "link",
]  # fmt: skip


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


async def prepare(database_url: str) -> None:
    """The search tests' 30 videos (v00..v29, channels even and odd), a video of tricky text,
    a local file, and a video not done yet."""
    chunks = corpus_texts()
    vectors = np.stack([vector(i) for i in range(len(chunks))])
    pool = await create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await fill(conn, chunks, vectors)
            await _extra_videos(conn)
    finally:
        await pool.close()


async def _extra_videos(conn: asyncpg.Connection) -> None:
    await conn.executemany(
        "INSERT INTO videos (id, url, title, channel, extractor) VALUES ($1, $2, $3, $4, $5)",
        [
            ("tricky", "https://www.youtube.com/watch?v=tricky", "A <b>bold</b> title", "x",
             "Youtube"),
            ("file:talk", "file:///talks/my%20talk.mp3", "my talk", None, "file"),
            ("todo", "https://www.youtube.com/watch?v=todo", "Not yet", "x", "Youtube"),
        ],
    )  # fmt: skip
    tricky = [
        ChunkRow(i, start, end, speaker, words, vector(1000 + i))
        for i, (start, end, speaker, words) in enumerate(TRICKY)
    ]
    talk = [ChunkRow(0, 1.0, 4.0, "Host", "Hello from a file.", vector(2000))]
    await write_finished(
        conn,
        [
            FinishedVideo("tricky", 3700.0, "base", MODEL, tricky),
            FinishedVideo("file:talk", 5.0, None, MODEL, talk, transcript_source="subtitle file"),
        ],
    )


@pytest.fixture(scope="module")
def corpus_url(pg_uri: str) -> str:
    url = asyncio.run(create_database(pg_uri))
    asyncio.run(prepare(url))
    return url


@pytest.fixture
async def conn(corpus_url: str) -> AsyncIterator[asyncpg.Connection]:
    pool = await create_pool(corpus_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()


async def tricky(conn: asyncpg.Connection) -> Transcript:
    transcript = await get_transcript(conn, "tricky")
    assert transcript is not None
    return transcript


def test_timestamps() -> None:
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3723.4567, ",") == "01:02:03,457"
    assert timestamp(62.345, ".") == "00:01:02.345"
    assert timestamp(59.9996, ".") == "00:01:00.000"  # rounding carries into the minute
    assert timestamp(360_000, ".") == "100:00:00.000"


async def test_srt_parses_back_with_times_speakers_and_text(conn: asyncpg.Connection) -> None:
    rendered = srt(await tricky(conn))
    cues = pysrt.from_string(rendered)
    assert [c.index for c in cues] == [1, 2, 3]
    assert [(c.start.ordinal, c.end.ordinal) for c in cues] == [
        (0, 2500), (62345, 65001), (3661500, 3700250),
    ]  # fmt: skip
    assert [c.text for c in cues] == [
        "Host: if a < b && c > d -> done",
        "line one line two three",
        "Dr. <Who> & Co: 1 -> 2 -> 3 <i>not italic</i>",
    ]
    assert rendered.startswith("1\n00:00:00,000 --> 00:00:02,500\nHost: ")
    assert rendered.count("-->") == 3  # the timing lines only


async def test_vtt_parses_back_with_voices_and_escaped_text(conn: asyncpg.Connection) -> None:
    rendered = vtt(await tricky(conn))
    assert rendered.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n<v Host>")
    cues = webvtt.from_string(rendered).captions
    assert [(c.start, c.end) for c in cues] == [
        ("00:00:00.000", "00:00:02.500"),
        ("00:01:02.345", "00:01:05.001"),
        ("01:01:01.500", "01:01:40.250"),
    ]
    assert [c.voice and html.unescape(c.voice) for c in cues] == ["Host", None, "Dr. <Who> & Co"]
    assert [html.unescape(c.text) for c in cues] == [one_line(words) for *_, words in TRICKY]
    assert "<i>" not in rendered and "&lt;i&gt;not italic&lt;/i&gt;" in rendered
    for cue in rendered.split("\n\n")[1:]:
        timing, words = cue.strip("\n").split("\n")  # one line of text: no blank line within
        assert "-->" in timing and "-->" not in words and "<b" not in words


async def test_text_and_json(conn: asyncpg.Connection) -> None:
    transcript = await tricky(conn)
    lines = text(transcript).splitlines()
    assert lines[:3] == ["A <b>bold</b> title", "https://www.youtube.com/watch?v=tricky", ""]
    assert lines[3:] == [
        "[00:00:00] Host: if a < b && c > d -> done",
        "[00:01:02] line one line two three",
        "[01:01:01] Dr. <Who> & Co: 1 -> 2 -> 3 <i>not italic</i>",
    ]
    document = json.loads(as_json(transcript))
    assert document["video"]["id"] == "tricky" and document["video"]["status"] == "done"
    chunks = document["chunks"]
    assert [c["text"] for c in chunks] == [words for *_, words in TRICKY]  # as stored
    assert chunks[2]["speakers"] == ["Dr. <Who> & Co"]
    assert chunks[2]["link"] == "https://youtu.be/tricky?t=3661"
    assert chunks[1]["speaker"] is None and chunks[1]["speakers"] == []


def test_safe_file_names() -> None:
    assert safe_filename("dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert safe_filename("file:talk").startswith("file_talk-")
    assert safe_filename("file:talk") != safe_filename("file_talk")
    for odd in ("../../etc/passwd", ".hidden", "a/b\\c:d", "x" * 500, ""):
        name = safe_filename(odd)
        assert name and len(name) <= 140 and not name.startswith(".")
        assert all(ch.isalnum() or ch in "_-" for ch in name), name


async def test_the_corpus_as_json_lines(conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "out" / "corpus.jsonl"
    written = await write_corpus(conn, path, "jsonl", CorpusOptions(batch_rows=7))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert written == len(rows) == CHUNKS
    assert list(rows[0]) == COLUMNS
    assert [(r["video_id"], r["seg_index"]) for r in rows] == sorted(
        (r["video_id"], r["seg_index"]) for r in rows
    )
    talk = next(r for r in rows if r["video_id"] == "file:talk")
    assert talk["link"] == "file:///talks/my%20talk.mp3#t=1"
    assert talk["transcript_source"] == "subtitle file" and talk["published_at"] is None
    first = next(r for r in rows if r["video_id"] == "v15")
    assert first["published_at"] == "2024-01-16T00:00:00+00:00" and first["channel"] == "odd"
    assert next(r for r in rows if r["text"] == TRICKY[1][3])["speakers"] == []


async def test_json_lines_with_embeddings_and_a_channel(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    options = CorpusOptions(export_filters(channel="even", done_only=False), embeddings=True)
    path = tmp_path / "even.jsonl"
    written = await write_corpus(conn, path, "jsonl", options)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert written == len(rows) == 150 and {r["channel"] for r in rows} == {"even"}
    stored = await conn.fetchval("SELECT embedding FROM segments WHERE video_id = 'v00'")
    assert np.allclose(rows[0]["embedding"], stored.to_numpy(), atol=0)


async def test_the_corpus_as_parquet_in_row_groups(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "c.parquet"
    written = await write_corpus(conn, path, "parquet", CorpusOptions(batch_rows=7))
    parquet = pq.ParquetFile(path)
    assert written == parquet.metadata.num_rows == CHUNKS
    assert parquet.metadata.num_row_groups == -(-CHUNKS // 70)  # ten batches of 7 each
    table = parquet.read()
    assert table.column_names == COLUMNS
    assert table.schema.field("published_at").type == pa.timestamp("us", tz="UTC")
    tricky = table.filter(pa.compute.equal(table["video_id"], "tricky")).to_pylist()
    assert [r["speaker"] for r in tricky] == ["Host", None, "Dr. <Who> & Co"]
    assert [r["text"] for r in tricky] == [words for *_, words in TRICKY]


async def test_parquet_with_embeddings(conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    await write_corpus(conn, path, "parquet", CorpusOptions(embeddings=True))
    table = pq.read_table(path)
    assert table.column_names == [*COLUMNS, "embedding"]
    vectors = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    assert vectors.shape == (CHUNKS, DIM)
    ids = table["video_id"].to_pylist()
    assert np.array_equal(vectors[ids.index("file:talk")], vector(2000))


async def test_a_cancelled_export_leaves_the_connection_usable(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    first = asyncio.Event()
    options = CorpusOptions(batch_rows=1)
    task = asyncio.create_task(
        write_corpus(conn, tmp_path / "c.parquet", "parquet", options, lambda n: first.set())
    )
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not conn.is_in_transaction() and await conn.fetchval("SELECT 1") == 1


def ingest(corpus_url: str, *args: str) -> Result:
    env = {"DATABASE_URL": corpus_url, "INGEST_DEVICE": "cpu"}
    return CliRunner().invoke(app, ["export", *args], env=env)


def test_the_command_line_exports_the_good_ids_and_fails_on_a_bad_one(
    corpus_url: str, tmp_path: Path
) -> None:
    done = ingest(
        corpus_url, "v01", "nope", "todo", "file:talk", "--format", "vtt", "--out", "subs"
    )
    assert done.exit_code == 1, done.output
    assert "nope" in done.stderr and "no video 'nope'" in done.stderr
    assert "'todo' has no transcript yet (discovered)" in done.stderr
    files = sorted(p.name for p in (tmp_path / "subs").iterdir())
    assert files == [f"{safe_filename('file:talk')}.vtt", "v01.vtt"]
    assert webvtt.read(str(tmp_path / "subs" / "v01.vtt")).captions[0].voice in ("Host", "Guest")
    assert ingest(corpus_url, "v02", "--format", "txt").exit_code == 0
    assert (tmp_path / "export" / "v02.txt").read_text().startswith("Talk 2\n")


def test_the_command_line_exports_all_of_a_channel(corpus_url: str, tmp_path: Path) -> None:
    done = ingest(corpus_url, "--all", "--channel", "odd", "--format", "json")
    assert done.exit_code == 0, done.output
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert files == [f"v{n:02d}.json" for n in range(1, 30, 2)]
    assert "exported 15 videos" in done.stdout


def test_the_command_line_exports_the_corpus(corpus_url: str, tmp_path: Path) -> None:
    done = ingest(corpus_url, "--all", "--format", "parquet", "--embeddings")
    assert done.exit_code == 0, done.output
    table = pq.read_table(tmp_path / "export" / "corpus.parquet")
    assert table.num_rows == CHUNKS and "embedding" in table.column_names
    lines = ingest(corpus_url, "--format", "jsonl", "--channel", "even", "--out", "e.jsonl")
    assert lines.exit_code == 0, lines.output
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 150


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "srt"], "name the videos to export, or give --all"),
        (["v01", "--all"], "name the videos to export, or give --all"),
        (["v01", "--format", "jsonl"], "jsonl exports the whole corpus"),
        (["v01", "--embeddings"], "--embeddings goes with --format jsonl or parquet"),
        (["v01", "--channel", "odd"], "--channel, --source, --after and --before go with --all"),
    ],
)
def test_bad_command_lines_are_usage_errors(corpus_url: str, args: list[str], message: str) -> None:
    done = ingest(corpus_url, *args)
    assert done.exit_code == 2 and message in done.stderr


@pytest.fixture(scope="module")
def client(corpus_url: str) -> Iterator[TestClient]:
    settings = load_settings(database_url=corpus_url, embedding_model=MODEL, device="cpu")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("srt", "application/x-subrip; charset=utf-8"),
        ("vtt", "text/vtt; charset=utf-8"),
        ("txt", "text/plain; charset=utf-8"),
        ("json", "application/json"),
    ],
)
def test_a_transcript_downloads_as_an_attachment(
    client: TestClient, fmt: str, media_type: str
) -> None:
    answer = client.get(f"/videos/tricky/transcript.{fmt}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
    assert answer.headers["content-disposition"] == f'attachment; filename="tricky.{fmt}"'
    assert "Dr. " in answer.text
    talk = client.get("/videos/file:talk/transcript.srt")
    name = f"{safe_filename('file:talk')}.srt"
    assert talk.headers["content-disposition"] == f'attachment; filename="{name}"'


def test_a_local_file_is_not_shown_by_its_place_over_http(client: TestClient) -> None:
    document = client.get("/videos/file:talk/transcript.json").json()
    video = document["video"]
    assert (video["url"], video["link"], video["path"]) == (None, None, None)
    assert [c["link"] for c in document["chunks"]] == [None]
    assert video["embedding_model"] == PurePath(MODEL).name  # a folder: its name alone
    assert "file:" not in client.get("/videos/file:talk/transcript.txt").text
    rows = [json.loads(line) for line in client.get("/export.jsonl").text.splitlines()]
    talk = next(r for r in rows if r["video_id"] == "file:talk")
    assert (talk["url"], talk["link"]) == (None, None)
    assert all(r["link"] for r in rows if r["video_id"] != "file:talk")
    table = pq.read_table(io.BytesIO(client.get("/export.parquet").content))
    assert not any(str(url).startswith("file:") for url in table["url"].to_pylist())


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/videos/nope/transcript.srt", "no video 'nope'"),
        ("/videos/todo/transcript.vtt", "no transcript yet"),
        ("/videos/tricky/transcript.doc", "no such format"),
    ],
)
def test_a_missing_transcript_is_a_json_404(client: TestClient, path: str, message: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404 and message in answer.json()["error"]


def test_the_corpus_downloads_as_json_lines(client: TestClient) -> None:
    answer = client.get("/export.jsonl", params={"channel": "odd"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.headers["content-disposition"] == 'attachment; filename="corpus.jsonl"'
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert len(rows) == 150 and "embedding" not in rows[0]


def test_the_corpus_downloads_as_parquet(client: TestClient) -> None:
    answer = client.get("/export.parquet", params={"embeddings": "true"})
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == 'attachment; filename="corpus.parquet"'
    table = pq.read_table(io.BytesIO(answer.content))
    assert table.num_rows == CHUNKS and table.column_names[-1] == "embedding"


@pytest.mark.parametrize(
    "params", [{"embeddings": "maybe"}, {"speaker": "Host"}], ids=["bad value", "unknown"]
)
def test_bad_export_parameters_are_a_400(client: TestClient, params: dict[str, str]) -> None:
    for path in ("/export.jsonl", "/export.parquet"):
        answer = client.get(path, params=params)
        assert answer.status_code == 400 and "error" in answer.json()
