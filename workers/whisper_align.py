"""Whisper's word alignment on torch: what CTranslate2's `Whisper.align` computes for
faster-whisper's word timings, for a transformers model.

A forced decoder pass over the start sequence, <|notimestamps|>, the text tokens and
<|endoftext|> gives the alignment heads' cross-attention (computed beside the model's own SDPA
attention, which stays as it is); cropped to the clip's frames, normalised over the tokens,
smoothed along time and averaged over the heads, its negation is
warped (OpenAI Whisper's dynamic time warping) into a monotonic path from each text token to
the encoder frames. The warping runs for a whole batch at once: one pass over the
anti-diagonals of the largest matrix instead of one Python step per cell.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

MEDIAN_FILTER_WIDTH = 7  # how faster-whisper has the cross-attention smoothed

WarpPath = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Alignment:
    """One clip's alignment as faster-whisper reads it: the warping path as (text row, encoder
    frame) pairs, and each text token's probability."""

    alignments: WarpPath
    text_token_probs: list[float]


class Aligner:
    """`align` as CTranslate2's Whisper has it, on a transformers Whisper."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._heads = alignment_heads(model)
        generation: Any = model.generation_config
        self._eot = int(generation.eos_token_id)
        self._no_timestamps = int(generation.no_timestamps_token_id)

    def align(
        self,
        hidden: Any,
        start_sequence: Sequence[int],
        text_tokens: Sequence[Sequence[int]],
        num_frames: int | Sequence[int],
        median_filter_width: int = MEDIAN_FILTER_WIDTH,
    ) -> list[Alignment]:
        """`hidden` is the encoder's output for the batch; `num_frames` the log-mel frames of
        each clip (the encoder halves them)."""
        frames = [num_frames] * len(text_tokens) if isinstance(num_frames, int) else num_frames
        rows = [[*start_sequence, self._no_timestamps, *text, self._eot] for text in text_tokens]
        weights, chosen = self._forced_pass(hidden, rows)
        offset = len(start_sequence)
        matrices = [
            _smoothed(weights[b, :, : len(row), : n // 2].float(), offset, median_filter_width)
            for b, (row, n) in enumerate(zip(rows, frames, strict=True))
        ]
        return [
            Alignment(path, chosen[b][offset : offset + len(text)])
            for b, (path, text) in enumerate(zip(warp(matrices), text_tokens, strict=True))
        ]

    def _forced_pass(self, hidden: Any, rows: list[list[int]]) -> tuple[Any, list[list[float]]]:
        """The alignment heads' cross-attention scores (batch, heads, tokens, frames), and
        each token's probability among the text tokens given the ones before it."""
        import torch

        width = max(map(len, rows))
        ids = torch.tensor([row + [self._eot] * (width - len(row)) for row in rows],
                           device=hidden.device)  # fmt: skip
        decoder = self._model.model.decoder
        scores: dict[tuple[int, int], Any] = {}
        with torch.inference_mode(), _cross_attention(decoder, self._heads, scores):
            out = decoder(input_ids=ids, encoder_hidden_states=hidden, use_cache=False)
            logits = self._model.proj_out(out.last_hidden_state)
            probs = logits[..., : self._eot].float().softmax(-1)[:, :-1]
            next_ids = ids[:, 1:, None].clamp(max=self._eot - 1)
            chosen: list[list[float]] = probs.gather(-1, next_ids)[..., 0].tolist()
        return torch.stack([scores[head] for head in self._heads], 1), chosen


def _smoothed(weights: Any, offset: int, filter_width: int) -> npt.NDArray[np.float32]:
    """The cost matrix of one clip from its cross-attention (heads, tokens, frames): rows from
    <|notimestamps|>'s to the last text token's, as CTranslate2 prepares it."""
    import torch

    weights = weights.softmax(-1)  # over the clip's own frames, not the padding after them
    mean = weights.mean(-2, keepdim=True)
    weights = (weights - mean) / weights.std(-2, keepdim=True, unbiased=False)
    pad = filter_width // 2
    if weights.shape[-1] > pad:
        padded = torch.nn.functional.pad(weights, (pad, pad), mode="reflect")
        weights = padded.unfold(-1, filter_width, 1).sort()[0][..., pad]
    matrix: npt.NDArray[np.float32] = (-weights.mean(0)[offset:-1]).cpu().numpy()
    return matrix


def warp(matrices: Sequence[npt.NDArray[np.float32]]) -> list[WarpPath]:
    """The cheapest monotonic path through each matrix: OpenAI Whisper's dynamic time warping,
    ties broken alike. The matrices share one padded array; a cell's cost depends only on
    cells above and left of it, so the padding never reaches a matrix's own cells."""
    rows = max(m.shape[0] for m in matrices)
    columns = max(m.shape[1] for m in matrices)
    matrix = np.zeros((len(matrices), rows, columns), dtype=np.float32)
    for b, m in enumerate(matrices):
        matrix[b, : m.shape[0], : m.shape[1]] = m
    cost = np.full((len(matrices), rows + 1, columns + 1), np.inf, dtype=np.float32)
    trace = np.full(cost.shape, -1, dtype=np.int8)
    cost[:, 0, 0] = 0
    for diagonal in range(2, rows + columns + 1):
        i = np.arange(max(1, diagonal - columns), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = cost[:, i - 1, j - 1], cost[:, i - 1, j], cost[:, i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[:, i, j] = matrix[:, i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[:, i, j] = step
    trace[:, 0, :], trace[:, :, 0] = 2, 1
    return [list(_backtrace(trace[b], *m.shape))[::-1] for b, m in enumerate(matrices)]


def _backtrace(trace: npt.NDArray[np.int8], i: int, j: int) -> Iterator[tuple[int, int]]:
    while i > 0 or j > 0:
        yield i - 1, j - 1
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)


@contextmanager
def _cross_attention(
    decoder: Any, heads: list[tuple[int, int]], scores: dict[tuple[int, int], Any]
) -> Iterator[None]:
    """Fills `scores` with the attention scores of `heads` (layer, head) over the encoder
    frames while the decoder runs. They are computed beside the decoder's own attention: SDPA
    gives no weights, and the eager implementation would hold every head of every layer."""
    hooks = []
    for layer in sorted({layer for layer, _ in heads}):
        wanted = [head for at, head in heads if at == layer]
        capture = partial(_capture, layer, wanted, scores)
        module = decoder.layers[layer].encoder_attn
        hooks.append(module.register_forward_pre_hook(capture, with_kwargs=True))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _capture(
    layer: int,
    wanted: list[int],
    scores: dict[tuple[int, int], Any],
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """The scores of one cross-attention layer's `wanted` heads, as its own forward computes
    them (query scaled before the product), in float32."""
    import torch

    hidden = args[0] if args else kwargs["hidden_states"]
    memory = kwargs["key_value_states"]
    shape = (memory.shape[0], -1, module.num_heads, module.head_dim)
    query = (module.q_proj(hidden) * module.scaling).view(shape)[:, :, wanted]
    key = module.k_proj(memory).view(shape)[:, :, wanted]
    product = torch.einsum("bthd,bfhd->bhtf", query.float(), key.float())
    for index, head in enumerate(wanted):
        scores[layer, head] = product[:, index]


def alignment_heads(model: Any) -> list[tuple[int, int]]:
    """The model's alignment heads, else (as CTranslate2's converter picks them) every head of
    the decoder's second half."""
    heads = getattr(model.generation_config, "alignment_heads", None)
    if heads:
        return [(int(layer), int(head)) for layer, head in heads]
    layers, count = model.config.decoder_layers, model.config.decoder_attention_heads
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(count)]
