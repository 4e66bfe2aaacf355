"""`ingest backfill` as a user runs it: a real process on a feed served over HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from tests.conftest import Speech
from tests.feeds import Item, serve, write_feed
from tests.speech import wav_seconds


def ingest(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def site(tmp_path: Path, speech: Speech) -> Iterator[tuple[Path, str]]:
    """A served folder holding the test speech; yields (folder, base URL)."""
    folder = tmp_path / "site"
    folder.mkdir()
    for path in (speech.short, speech.medium, speech.long):
        shutil.copy(path, folder / path.name)
    with serve(folder) as base_url:
        yield folder, base_url


CHANNEL = [
    Item("ep-1", "Episode one", "short.wav"),
    Item("ep-2", "Episode two", "medium.wav"),
    Item("ep-3", "Episode three: the long one", "long.wav"),
]


async def fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        from pgvector.asyncpg import register_vector

        await register_vector(conn)
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_backfill_a_feed_then_rerun_then_reprocess(
    site: tuple[Path, str], ingest_env: dict[str, str], database_url: str, speech: Speech
) -> None:
    folder, base_url = site
    feed = write_feed(folder, base_url, CHANNEL)
    env = {**ingest_env, "INGEST_CHUNK_MAX_SECONDS": "20"}

    first = ingest(env, "backfill", feed)
    assert first.returncode == 0, first.stderr
    assert "3 done, 0 failed of 3 videos" in first.stdout

    videos = await fetch(database_url, "SELECT * FROM videos ORDER BY id")
    assert [(v["id"], v["status"], v["attempts"]) for v in videos] == [
        ("generic:ep-1", "done", 1),
        ("generic:ep-2", "done", 1),
        ("generic:ep-3", "done", 1),
    ]
    durations = {"generic:ep-1": speech.short, "generic:ep-2": speech.medium}
    durations["generic:ep-3"] = speech.long
    for video in videos:
        assert video["duration_s"] == pytest.approx(wav_seconds(durations[video["id"]]), abs=0.05)
        chunks = await fetch(
            database_url,
            "SELECT * FROM segments WHERE video_id = $1 ORDER BY seg_index",
            video["id"],
        )
        assert chunks, video["id"]
        assert [c["seg_index"] for c in chunks] == list(range(len(chunks)))
        starts = [c["start_s"] for c in chunks]
        assert starts == sorted(starts)
        for c in chunks:
            assert 0 <= c["start_s"] <= c["end_s"] <= video["duration_s"]
            assert c["text"].strip()
            vector = c["embedding"].to_numpy()
            assert vector.shape == (384,)
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        assert video["chunk_count"] == len(chunks)
    long_chunks = await fetch(
        database_url, "SELECT 1 FROM segments WHERE video_id = 'generic:ep-3'"
    )
    assert len(long_chunks) > 1  # 52 s of speech is more than one search chunk
    assert not any((Path(env["INGEST_DATA_DIR"]) / "audio").iterdir())  # audio removed

    status = ingest(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["counts"]["done"] == 3 and report["total_videos"] == 3
    assert report["chunks"] == sum(v["chunk_count"] for v in videos)

    found = ingest(env, "search", "test transcript", "-k", "2", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 2
    for hit in hits:
        assert hit["link"] == f"{hit['url']}#t={int(hit['start_s'])}"
        assert hit["url"].startswith(base_url) and hit["title"].startswith("Episode")
        assert -1 <= hit["score"] <= 1

    before = await fetch(database_url, "SELECT video_id, seg_index, xmin FROM segments")
    second = ingest(env, "backfill", feed)
    assert second.returncode == 0, second.stderr
    assert "0 done, 0 failed of 0 videos" in second.stdout
    assert await fetch(database_url, "SELECT video_id, seg_index, xmin FROM segments") == before
    attempts = await fetch(database_url, "SELECT attempts FROM videos")
    assert {a["attempts"] for a in attempts} == {1}

    # Reprocessing with much larger chunks replaces every video's chunks in place.
    merged = {**env, "INGEST_CHUNK_MAX_SECONDS": "600"}
    third = ingest(merged, "backfill", feed, "--reprocess")
    assert third.returncode == 0, third.stderr
    assert "3 done, 0 failed of 3 videos" in third.stdout
    after = await fetch(
        database_url, "SELECT video_id, seg_index FROM segments ORDER BY video_id, seg_index"
    )
    assert [(r["video_id"], r["seg_index"]) for r in after] == [
        ("generic:ep-1", 0),
        ("generic:ep-2", 0),
        ("generic:ep-3", 0),
    ]


@pytest.mark.anyio
async def test_failing_videos_are_recorded_while_the_others_finish(
    site: tuple[Path, str], ingest_env: dict[str, str], database_url: str
) -> None:
    folder, base_url = site
    (folder / "page.html").write_text("<html><body>not audio at all</body></html>")
    feed = write_feed(
        folder,
        base_url,
        [
            Item("missing", "Gone", "missing.wav"),
            CHANNEL[0],
            Item("html", "A web page", "page.html"),
            CHANNEL[1],
        ],
    )
    unreachable = "http://127.0.0.1:9/feed.xml"
    result = ingest(ingest_env, "backfill", feed, unreachable)
    assert result.returncode == 1, result.stderr
    assert "2 done, 2 failed of 4 videos" in result.stdout
    rows = await fetch(database_url, "SELECT id, status, error FROM videos ORDER BY id")
    by_id = {r["id"]: r for r in rows}
    assert by_id["generic:ep-1"]["status"] == by_id["generic:ep-2"]["status"] == "done"
    assert by_id["generic:missing"]["status"] == "failed"
    assert "404" in by_id["generic:missing"]["error"]
    assert by_id["generic:html"]["status"] == "failed"
    assert by_id["generic:html"]["error"].startswith(("download: ", "decode: "))
    assert f"source failed: {unreachable}" in result.stdout

    status = json.loads(ingest(ingest_env, "status", "--json").stdout)
    assert {e["video_id"] for e in status["recent_errors"]} == {"generic:missing", "generic:html"}


@pytest.mark.anyio
async def test_local_folder_with_limit(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    folder = tmp_path / "recordings"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(speech.short, folder / "a.wav")
    shutil.copy(speech.medium, folder / "nested" / "b.wav")
    (folder / "notes.txt").write_text("not audio, not listed")

    first = ingest(ingest_env, "backfill", str(folder), "--limit", "1")
    assert first.returncode == 0, first.stderr
    assert "1 done, 0 failed of 1 videos" in first.stdout
    rest = ingest(ingest_env, "backfill", str(folder))
    assert "1 done, 0 failed of 1 videos" in rest.stdout
    rows = await fetch(database_url, "SELECT title, status, url FROM videos ORDER BY title")
    assert [(r["title"], r["status"]) for r in rows] == [("a", "done"), ("b", "done")]
    assert (folder / "a.wav").exists()  # a user's own files are never deleted

    hits = json.loads(ingest(ingest_env, "search", "meeting", "--json").stdout)
    assert hits and all(h["link"].startswith("file:///") for h in hits)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "Usage"),
        (("--limit", "0", "x"), {}, "Usage"),
        (("/tmp",), {"INGEST_EMBED_BATCH": "many"}, "error: invalid setting embed_batch"),
        (("/tmp",), {"INGEST_DEVICE": "tpu"}, "error: invalid setting device"),
        (("/tmp",), {"DATABASE_URL": "postgresql://u@127.0.0.1:9/x"}, "error: cannot connect"),
    ],
)
def test_usage_and_setting_errors_exit_2_with_one_line(
    args: tuple[str, ...], env: dict[str, str], message: str, ingest_env: dict[str, str]
) -> None:
    result = ingest({**ingest_env, **env}, "backfill", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_that_cannot_load_exits_2(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str]
) -> None:
    env = {**ingest_env, "INGEST_ASR_MODEL": str(tmp_path / "no-such-model")}
    result = ingest(env, "backfill", str(speech.short))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot load ASR model" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_embedded_database_by_default(
    site: tuple[Path, str], ingest_env: dict[str, str], outside_data_dir: Path
) -> None:
    folder, base_url = site
    feed = write_feed(folder, base_url, CHANNEL[:2])
    env = {k: v for k, v in ingest_env.items() if k != "DATABASE_URL"}
    env["INGEST_DATA_DIR"] = str(outside_data_dir)

    result = ingest(env, "backfill", feed)
    assert result.returncode == 0, result.stderr
    assert (outside_data_dir / "pgdata" / "PG_VERSION").exists()
    status = json.loads(ingest(env, "status", "--json").stdout)
    assert status["counts"]["done"] == 2 and status["chunks"] >= 2
    found = ingest(env, "search", "planning meeting", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "Episode" in found.stdout and f"{base_url}/" in found.stdout
