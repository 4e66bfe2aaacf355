"""Captions as the transcript: a subtitle file beside a local file, a page's caption track; ASR
skipped, speakers still attributed when on, no audio fetched when they are off."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Speech
from tests.feeds import serve
from tests.test_backfill import fetch, ingest

CAPTIONS = """WEBVTT

00:00:00.000 --> 00:00:02.000
Hello from the <i>captions</i>.

00:00:02.000 --> 00:00:04.500
A second line &amp; a third word.
"""
TEXT = "Hello from the captions. A second line & a third word."


async def video_and_chunks(database_url: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    (video,) = await fetch(
        database_url,
        "SELECT status, asr_model, transcript_source, timings, speaker_path FROM videos",
    )
    chunks = await fetch(database_url, "SELECT text, speaker FROM segments ORDER BY seg_index")
    return dict(video), [dict(c) for c in chunks]


def ran(video: dict[str, object]) -> set[str]:
    return set(json.loads(str(video["timings"])))


@pytest.fixture
def talk(tmp_path: Path, speech: Speech) -> Path:
    folder = tmp_path / "talks"
    folder.mkdir()
    shutil.copy(speech.short, folder / "talk.wav")
    (folder / "talk.en.vtt").write_text(CAPTIONS)
    return folder


def test_a_subtitle_file_beside_a_local_file_is_its_transcript(
    talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    result = ingest(ingest_env, "backfill", str(talk))
    assert result.returncode == 0, result.stderr
    video, chunks = asyncio.run(video_and_chunks(database_url))
    assert " ".join(str(c["text"]) for c in chunks) == TEXT
    assert video["transcript_source"] == "subtitle file (talk.en.vtt)"
    assert video["asr_model"] is None and "transcribe" not in ran(video)
    assert video["speaker_path"] == "full" and all(c["speaker"] for c in chunks)

    search = json.loads(ingest(ingest_env, "search", "captions", "--json").stdout)
    assert search[0]["transcript_source"] == "subtitle file (talk.en.vtt)"
    assert "1 subtitle file" in ingest(ingest_env, "status").stdout


def test_with_captions_off_the_audio_is_transcribed(
    talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    result = ingest({**ingest_env, "INGEST_CAPTIONS": "off"}, "backfill", str(talk))
    assert result.returncode == 0, result.stderr
    video, chunks = asyncio.run(video_and_chunks(database_url))
    assert "transcribe" in ran(video) and video["asr_model"]
    assert str(video["transcript_source"]).startswith("speech recognition (")
    assert " ".join(str(c["text"]) for c in chunks) != TEXT


def test_an_unreadable_subtitle_file_leaves_the_audio_to_asr(
    talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    (talk / "talk.en.vtt").write_text("not a caption file at all")
    result = ingest(ingest_env, "backfill", str(talk))
    assert result.returncode == 0, result.stderr
    video, _ = asyncio.run(video_and_chunks(database_url))
    assert "transcribe" in ran(video)
    assert "captions_unreadable" in result.stderr


@dataclass
class Requests:
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: str) -> None:
        with self.lock:
            self.paths.append(path)


def page(folder: Path) -> None:
    (folder / "talk.html").write_text(
        "<html><head><title>A talk</title></head><body><audio controls src='talk.wav'>"
        "<track kind='captions' srclang='en' src='talk.en.vtt'></audio></body></html>"
    )


def test_a_page_s_caption_track_without_speakers_fetches_no_audio(
    talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    page(talk)
    seen = Requests()
    env = {**ingest_env, "INGEST_DIARIZATION": "off"}
    with serve(talk, gate=seen) as base:
        result = ingest(env, "backfill", f"{base}/talk.html")
    assert result.returncode == 0, result.stderr
    video, chunks = asyncio.run(video_and_chunks(database_url))
    assert " ".join(str(c["text"]) for c in chunks) == TEXT
    assert video["transcript_source"] == "creator captions (en)"
    assert "transcribe" not in ran(video) and video["speaker_path"] == "off"
    assert "/talk.en.vtt" in seen.paths and "/talk.wav" not in seen.paths


def test_a_page_s_caption_track_with_speakers_fetches_the_audio_for_them(
    talk: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    page(talk)
    seen = Requests()
    with serve(talk, gate=seen) as base:
        result = ingest(ingest_env, "backfill", f"{base}/talk.html")
    assert result.returncode == 0, result.stderr
    video, chunks = asyncio.run(video_and_chunks(database_url))
    assert video["transcript_source"] == "creator captions (en)"
    assert "transcribe" not in ran(video) and video["speaker_path"] == "full"
    assert all(c["speaker"] for c in chunks)
    assert "/talk.wav" in seen.paths
