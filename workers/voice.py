"""Speaker embeddings (speechbrain ECAPA-TDNN) of short windows of speech."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from workers.asr import SAMPLE_RATE, Samples, Waveform

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VoiceOptions:
    model: str  # a hub id or a local speechbrain folder
    savedir: Path  # where speechbrain keeps (links to) the model's files
    device: str = "cpu"
    batch_size: int = 32


@contextmanager
def _alone_in(savedir: Path) -> Iterator[None]:
    """speechbrain links the model's files into `savedir`; processes sharing a data folder that
    load the model at the same moment (replicas started together) would race to create the same
    links and fail with FileExistsError. A lock file beside it takes them one at a time."""
    savedir.parent.mkdir(parents=True, exist_ok=True)
    with open(savedir.parent / f".{savedir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class VoiceEncoder:
    """Unit-norm speaker embeddings, batched.

    On an out-of-memory error the batch is halved and retried, and the smaller size is kept:
    memory shared with other models rarely frees itself, and one-by-one would be ~8x slower.
    The CUDA cache is never emptied between batches (it forces a synchronisation).
    """

    def __init__(self, options: VoiceOptions) -> None:
        from speechbrain.inference.speaker import EncoderClassifier

        self.options = options
        self.batch_size = options.batch_size
        local = Path(options.model).expanduser()
        # The hub's hyperparams.yaml names the hub repo as pretrained_path, so even a local copy
        # would try to download unless pointed back at itself.
        overrides = {"pretrained_path": str(local.resolve())} if local.is_dir() else {}
        source = str(local.resolve()) if local.is_dir() else options.model
        with _alone_in(options.savedir):
            self._model: Any = EncoderClassifier.from_hparams(
                source=source,
                savedir=str(options.savedir),
                run_opts={"device": options.device},
                overrides=overrides,
            )
        if self._model is None:
            raise ValueError(f"{options.model} is not a speechbrain speaker model")

    @property
    def name(self) -> str:
        return self.options.model

    def embed(self, windows: Sequence[Waveform]) -> Vectors:
        """One row per window; windows may differ in length."""
        rows: list[Vectors] = []
        start = 0
        while start < len(windows):
            batch = windows[start : start + self.batch_size]
            try:
                rows.append(self._encode(batch))
            except Exception as exc:
                if not is_out_of_memory(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, len(batch) // 2)
                continue
            start += len(batch)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows)

    def _encode(self, batch: Sequence[Waveform]) -> Vectors:
        import torch

        longest = max(len(w) for w in batch)
        padded = np.zeros((len(batch), longest), dtype=np.float32)
        for i, window in enumerate(batch):
            padded[i, : len(window)] = window
        lengths = torch.tensor([len(w) / longest for w in batch])
        with torch.inference_mode():
            out = self._model.encode_batch(torch.from_numpy(padded), wav_lens=lengths)
        vectors = out.squeeze(1).float().cpu().numpy()
        return normalize(vectors)


def cut(audio: Samples, windows: Sequence[tuple[float, float]]) -> Sequence[Waveform]:
    """The samples of each (start, end) window, in seconds, each read when it is used: thousands
    of windows of an hours-long video held at once would be gigabytes."""
    return _Windows(audio, tuple(windows))


class _Windows(Sequence[Waveform]):
    def __init__(self, audio: Samples, spans: tuple[tuple[float, float], ...]) -> None:
        self._audio = audio
        self._spans = spans

    def __len__(self) -> int:
        return len(self._spans)

    @overload
    def __getitem__(self, index: int) -> Waveform: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Waveform]: ...

    def __getitem__(self, index: int | slice) -> Waveform | Sequence[Waveform]:
        if isinstance(index, slice):
            return [self._read(span) for span in self._spans[index]]
        return self._read(self._spans[index])

    def _read(self, span: tuple[float, float]) -> Waveform:
        return self._audio[int(span[0] * SAMPLE_RATE) : int(span[1] * SAMPLE_RATE)]


def normalize(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
