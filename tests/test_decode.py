"""Decoded audio on disk: the same samples as in memory, read by slices, and nothing left open or
behind, whether decoding works, fails or the reader is dropped."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Speech
from workers.asr import detect_speech
from workers.decode import PcmFile, decode_audio, decode_to_file
from workers.voice import cut


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_on_disk_gives_the_samples_in_memory_gives(speech: Speech, tmp_path: Path) -> None:
    expected = decode_audio(speech.long)
    with_file = decode_to_file(speech.long, tmp_path / "scratch")
    assert len(with_file) == len(expected)
    assert np.array_equal(with_file[:], expected)
    assert np.array_equal(with_file[16000:48000], expected[16000:48000])
    assert detect_speech(with_file) == detect_speech(expected)
    windows = [(0.5, 2.0), (3.25, 4.75)]
    assert all(
        np.array_equal(a, b) for a, b in zip(cut(with_file, windows), cut(expected, windows))
    )
    with_file.close()


@pytest.mark.parametrize(
    "index",
    [slice(-100, None), slice(5, 2), slice(None, 10**9), slice(10**9, None), slice(0, 0)],
)
def test_slices_behave_like_an_array(speech: Speech, tmp_path: Path, index: slice) -> None:
    expected = decode_audio(speech.short)
    pcm = decode_to_file(speech.short, tmp_path)
    got = pcm[index]
    assert got.dtype == np.float32
    assert np.array_equal(got, expected[index])
    pcm.close()


def test_only_contiguous_slices_are_read(speech: Speech, tmp_path: Path) -> None:
    pcm = decode_to_file(speech.short, tmp_path)
    with pytest.raises(ValueError, match="contiguous"):
        pcm[::2]
    with pytest.raises(TypeError, match="slices"):
        pcm[3]  # type: ignore[index]
    pcm.close()


def test_the_file_has_no_name_and_closing_frees_it(speech: Speech, tmp_path: Path) -> None:
    before = open_fds()
    pcm = decode_to_file(speech.long, tmp_path)
    assert list(tmp_path.iterdir()) == []  # a crash leaves nothing to clean up
    assert open_fds() == before + 1
    pcm.close()
    pcm.close()  # twice is harmless
    assert pcm.closed and open_fds() == before


def test_a_dropped_reader_frees_its_file(speech: Speech, tmp_path: Path) -> None:
    before = open_fds()
    pcm: PcmFile | None = decode_to_file(speech.short, tmp_path)
    assert open_fds() == before + 1
    del pcm
    gc.collect()
    assert open_fds() == before


def test_a_file_that_fails_to_decode_leaves_nothing_open(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"ID3" + os.urandom(4096))
    before = open_fds()
    with pytest.raises(ValueError):  # PyAV: InvalidDataError
        decode_to_file(bad, tmp_path / "scratch")
    assert open_fds() == before
    assert list((tmp_path / "scratch").iterdir()) == []
