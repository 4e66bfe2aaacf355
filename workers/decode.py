"""Decoding any audio or video file to 16 kHz mono samples (PyAV, no ffmpeg process): into
memory for short pieces, or onto disk, where the model steps read it a block at a time, so a
video's length costs disk, not memory."""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.asr import SAMPLE_RATE, Waveform

_SAMPLE_BYTES = 2  # 16-bit samples, what the resampler gives: half of float32, and lossless


def decode_audio(path: Path) -> Waveform:
    """The whole file as float32 in memory, for short pieces: the samples faster-whisper's
    `decode_audio` gives, through the same path as `decode_to_file`."""
    with contextlib.closing(decode_to_file(path)) as pcm:
        return pcm[:]


def decode_to_file(path: Path, folder: Path | None = None) -> PcmFile:
    """The whole file as 16-bit samples in an unnamed file in `folder` (the system's temporary
    folder when None), read back a slice at a time."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".pcm", dir=folder)
    os.unlink(name)  # nothing is left behind, whatever stops the process
    pcm = PcmFile(fd)
    try:
        _decode_into(path, pcm)
    except BaseException:
        pcm.close()
        raise
    return pcm


class PcmFile:
    """Decoded samples on disk. Reads like a float32 array of its length: `len()` and slices
    (`audio[a:b]`, a step of 1), each slice read from the file when asked for. The file has no
    name; it is freed by `close()` or when the object is collected."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._samples = 0
        self._closer = weakref.finalize(self, os.close, fd)

    def append(self, pcm: npt.NDArray[Any]) -> None:
        data = np.ascontiguousarray(pcm.reshape(-1), dtype="<i2").tobytes()
        os.pwrite(self._fd, data, self._samples * _SAMPLE_BYTES)
        self._samples += len(data) // _SAMPLE_BYTES

    def __len__(self) -> int:
        return self._samples

    def __getitem__(self, index: slice, /) -> Waveform:
        if not isinstance(index, slice):
            raise TypeError("a PcmFile is read by slices")
        start, stop, step = index.indices(self._samples)
        if step != 1:
            raise ValueError("a PcmFile is read by contiguous slices")
        count = max(0, stop - start)
        raw = os.pread(self._fd, count * _SAMPLE_BYTES, start * _SAMPLE_BYTES)
        out = np.frombuffer(raw, dtype="<i2").astype(np.float32)
        out /= 32768.0
        return out

    def close(self) -> None:
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive


def _decode_into(path: Path, pcm: PcmFile) -> None:
    """Every frame of the first audio stream, resampled to 16-bit mono at 16 kHz."""
    import av

    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(path), mode="r", metadata_errors="ignore") as container:
        for group in _grouped(_valid(container.decode(audio=0))):
            for frame in resampler.resample(group):
                pcm.append(frame.to_ndarray())
        for frame in resampler.resample(None):  # what the resampler still holds
            pcm.append(frame.to_ndarray())
    del resampler
    gc.collect()  # PyAV's resampler frees its buffers only then


def _valid(frames: Iterator[Any]) -> Iterator[Any]:
    """Frames, without the ones the decoder finds corrupt (as faster-whisper does)."""
    import av

    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _grouped(frames: Iterator[Any], samples: int = 500_000) -> Iterator[Any]:
    """Frames joined into groups of about `samples`: resampling each small frame on its own
    is slow."""
    import av

    fifo = av.audio.fifo.AudioFifo()
    for frame in frames:
        frame.pts = None  # the FIFO checks timestamps, which joined streams break
        fifo.write(frame)
        if fifo.samples >= samples:
            yield fifo.read()
    if fifo.samples > 0:
        yield fifo.read()
