"""Speakers through the real `ingest` processes: enroll, fast path, full path, search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import Speech
from tests.feeds import Item, serve, write_feed
from tests.test_backfill import fetch, ingest

pytestmark = pytest.mark.anyio


def search(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    result = ingest(env, "search", *args, "--json")
    assert result.returncode == 0, result.stderr
    hits: list[dict[str, object]] = json.loads(result.stdout)
    return hits


async def speaker_rows(database_url: str) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    (video,) = await fetch(
        database_url,
        "SELECT speaker_path, speaker_similarity, speaker_spread, speaker_reason FROM videos",
    )
    chunks = await fetch(
        database_url, "SELECT speaker, speaker_confidence FROM segments ORDER BY seg_index"
    )
    return dict(video), [tuple(c) for c in chunks]


async def test_enroll_then_fast_and_full_paths_on_a_dialogue(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str], database_url: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(speech.dialogue, site / "dialogue.wav")
    shutil.copy(speech.host, site / "host.wav")
    with serve(site) as base:
        enrolled = ingest(ingest_env, "enroll", "Host", str(speech.host))
        assert enrolled.returncode == 0, enrolled.stderr
        again = ingest(ingest_env, "enroll", "Host", f"{base}/host.wav")  # adds to the profile
        assert again.returncode == 0, again.stderr
        (profile,) = json.loads(ingest(ingest_env, "speakers", "--json").stdout)
        first_windows = int(enrolled.stdout.split(": ")[1].split()[0])
        assert profile["name"] == "Host" and profile["windows"] == 2 * first_windows

        feed = write_feed(site, base, [Item("talk", "A conversation", "dialogue.wav")])
        env = {**ingest_env, "INGEST_HOSTS": "Host"}

        probe = ingest({**env, "INGEST_FASTPATH_THRESHOLD": "-1"}, "backfill", feed)
        assert probe.returncode == 0, probe.stderr
        video, _ = await speaker_rows(database_url)
        assert video["speaker_path"] == "fast"
        score = float(video["speaker_similarity"])  # type: ignore[arg-type]
        assert 0 < float(video["speaker_spread"]) <= 1  # type: ignore[arg-type]

        under = {**env, "INGEST_FASTPATH_THRESHOLD": f"{score - 1e-4:.6f}"}
        fast = ingest(under, "backfill", feed, "--reprocess")
        assert fast.returncode == 0, fast.stderr
        video, chunks = await speaker_rows(database_url)
        assert video["speaker_path"] == "fast" and video["speaker_reason"] is None
        assert chunks and {speaker for speaker, _ in chunks} == {"Host"}

        hits = search(env, "meeting", "--speaker", "Host")
        assert hits and {h["speaker"] for h in hits} == {"Host"}
        assert search(env, "meeting", "--speaker", "Nobody") == []

        over = {**env, "INGEST_FASTPATH_THRESHOLD": f"{score + 1e-4:.6f}"}
        full = ingest(over, "backfill", feed, "--reprocess")
        assert full.returncode == 0, full.stderr
        video, chunks = await speaker_rows(database_url)
        assert video["speaker_path"] == "full"
        assert "host similarity" in str(video["speaker_reason"])
        assert chunks and all(speaker for speaker, _ in chunks)
        assert all(0.0 <= float(c) <= 1.0 for _, c in chunks)  # type: ignore[arg-type]

        nobody = {**ingest_env, "INGEST_HOSTS": "Nobody", "INGEST_FASTPATH_THRESHOLD": "-1"}
        assert ingest(nobody, "backfill", feed, "--reprocess").returncode == 0
        video, chunks = await speaker_rows(database_url)
        assert (video["speaker_path"], video["speaker_reason"]) == ("full", "no host profile")
        assert chunks and all(speaker for speaker, _ in chunks)

        off = {**env, "INGEST_DIARIZATION": "off"}
        assert ingest(off, "backfill", feed, "--reprocess").returncode == 0
        video, chunks = await speaker_rows(database_url)
        assert video["speaker_path"] == "off"
        assert chunks and all(speaker is None for speaker, _ in chunks)


def test_enrolling_from_unusable_audio_stores_nothing(
    tmp_path: Path, speech: Speech, ingest_env: dict[str, str]
) -> None:
    silence = tmp_path / "silence.wav"
    shutil.copy(speech.short, tmp_path / "ok.wav")
    silence.write_bytes(b"RIFF not really a wav file")
    result = ingest(ingest_env, "enroll", "Host", str(tmp_path / "ok.wav"), str(silence))
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {silence}: ")
    assert json.loads(ingest(ingest_env, "speakers", "--json").stdout) == []
