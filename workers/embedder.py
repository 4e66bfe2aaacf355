"""Text embeddings with sentence-transformers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class EmbedderOptions:
    model: str  # a hub id or a local sentence-transformers folder
    device: str = "cpu"
    batch_size: int = 32


class TextEmbedder:
    """One loaded sentence-transformers model producing unit-norm float32 vectors."""

    def __init__(self, options: EmbedderOptions) -> None:
        from sentence_transformers import SentenceTransformer

        self.options = options
        self._model = SentenceTransformer(options.model, device=options.device)
        dimension = self._model.get_embedding_dimension()
        if not dimension:
            raise ValueError(f"{options.model} does not declare its embedding dimension")
        self.dimension = int(dimension)

    @property
    def name(self) -> str:
        return self.options.model

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.options.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
