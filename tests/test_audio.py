"""What a file states about its duration, and telling a cut file from a whole one."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.conftest import Speech
from workers.asr import duration_s
from workers.audio import TruncatedAudio, check_complete, stated_duration
from workers.decode import decode_audio


def test_a_whole_file_passes_and_a_cut_one_is_refused(speech: Speech, tmp_path: Path) -> None:
    whole = stated_duration(speech.medium)
    assert whole is not None
    check_complete(whole, duration_s(decode_audio(speech.medium)))
    data = speech.medium.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 3])
    assert stated_duration(cut) == pytest.approx(whole, abs=1e-3)
    with pytest.raises(TruncatedAudio, match=r"truncated: \d+\.\d s of audio where the file"):
        check_complete(stated_duration(cut), duration_s(decode_audio(cut)))


def test_a_streamed_wav_that_states_no_size_is_not_called_cut(
    speech: Speech, tmp_path: Path
) -> None:
    data = bytearray(speech.medium.read_bytes())
    data_chunk = data.index(b"data")
    data[4:8] = data[data_chunk + 4 : data_chunk + 8] = struct.pack("<I", 0xFFFFFFFF)
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    decoded = duration_s(decode_audio(streamed))
    assert decoded == pytest.approx(duration_s(decode_audio(speech.medium)), abs=0.01)
    check_complete(stated_duration(streamed), decoded)


def test_nothing_stated_means_nothing_to_check() -> None:
    check_complete(None, 0.0)
    check_complete(10.0, 9.5)  # encoder padding and rounding are not a cut
