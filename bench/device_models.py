"""The models the device check times, built from their shapes with random weights, and one
step of work for each: a video of 30 s windows through the transformers ASR engine itself
(`workers.asr_transformers`, built around the model in memory, the speech spans handed in),
and chunks through sentence-transformers' `encode`, as the embedder calls it.

Imports only torch, transformers, sentence-transformers, numpy, the standard library and the
engine's own modules (which import no more at the top), so it runs where none of the rest of
the project's stack is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.asr import AsrOptions
from workers.asr_transformers import TransformersAsrModel

SAMPLE_RATE = 16_000
WINDOW_S = 30.0
# Whisper large-v3's token layout: 50257 text tokens, <|endoftext|>, <|startoftranscript|>,
# 100 languages, the task tokens, <|startoflm|>, <|startofprev|>, <|nospeech|>,
# <|notimestamps|>, then 1501 timestamps.
VOCAB = 51866
EOT, SOT, EN = 50257, 50258, 50259
TRANSLATE, TRANSCRIBE, NO_TIMESTAMPS = 50359, 50360, 50364
SPACE = 220  # " ", suppressed at the start like the Hub's configs do
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SUFFIXES = ("ing", "ed", "er", "ly", "s")


@dataclass(frozen=True, slots=True)
class WhisperShape:
    name: str
    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    alignment_heads: tuple[tuple[int, int], ...]  # (decoder layer, head), for word timings


@dataclass(frozen=True, slots=True)
class BertShape:
    name: str
    hidden: int
    layers: int
    heads: int
    dimension: int  # the embedding's width: `hidden`, or what a Dense layer maps it to
    max_seq_length: int


def build_whisper(shape: WhisperShape, device: str) -> Any:
    """A multilingual WhisperForConditionalGeneration of `shape` with random weights and SDPA
    attention, float32 on `device`, with a generation config like the Hub's (language, task,
    timestamps, alignment heads). English is its only language, so the language it detects is
    English, as it would be for English speech."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=128, d_model=shape.d_model,
        encoder_layers=shape.encoder_layers, decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.heads, decoder_attention_heads=shape.heads,
        encoder_ffn_dim=4 * shape.d_model, decoder_ffn_dim=4 * shape.d_model,
        max_source_positions=1500, max_target_positions=448, pad_token_id=EOT,
        bos_token_id=EOT, eos_token_id=EOT, decoder_start_token_id=SOT,
        begin_suppress_tokens=[SPACE, EOT], suppress_tokens=[], tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    # Initialised where it runs: 800M parameters initialised on the host take most of a minute.
    with torch.device(device):
        model: Any = WhisperForConditionalGeneration(config)
    model.set_attn_implementation("sdpa")  # as the engine loads its models
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
        max_length=448, no_timestamps_token_id=NO_TIMESTAMPS, is_multilingual=True,
        lang_to_id={"<|en|>": EN}, task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE},
        alignment_heads=[list(head) for head in shape.alignment_heads],
        begin_suppress_tokens=[SPACE, EOT], suppress_tokens=[],
    )  # fmt: skip
    return model.eval()


def whisper_processor() -> Any:
    """A WhisperProcessor with large-v3's 128 mel bins and a tokenizer with its id layout:
    text tokens that decode to made-up words (every fifth one continues the word before it,
    about 1.25 tokens a word, as English has), then the special and timestamp tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperProcessor
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    text = {("\u0120w" if k % 5 else "s") + str(k): k for k in range(EOT)}
    tok = Tokenizer(models.WordLevel(text, unk_token="s0"))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([
        "<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES),
        "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
        "<|notimestamps|>", *(f"<|{i * 0.02:.2f}|>" for i in range(1501)),
    ])  # fmt: skip
    special = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, unk_token="s0",
        pad_token=special,
    )  # fmt: skip
    return WhisperProcessor(WhisperFeatureExtractor(feature_size=128), tokenizer)


def asr_script(tokens: int) -> list[int]:
    """What the decoder is held to for one window: `tokens` tokens of timestamped segments
    (a timestamp pair every 16 tokens), ending in a single timestamp, as a finished window
    does, then <|endoftext|>."""
    first_stamp = NO_TIMESTAMPS + 1
    script = []
    for i in range(tokens):
        pair = 0 < i < tokens - 2 and i % 16 in (0, 15)
        at = first_stamp + (1400 * i) // tokens  # up to 28 s
        script.append(at if i in (0, tokens - 1) or pair else 1000 + i)
    return [*script, EOT]


class ScriptedDecoder:
    """Stands in for trained weights: put in place of the model's `generate`, it passes the
    engine's call on with a logits processor that lets only the script's next token through
    (random weights wander, e.g. into a pair of timestamps at the end, which makes `generate`
    decode the window's remainder again), and keeps the tokens the last call generated for
    the batch's first window."""

    def __init__(self, model: Any, tokens: int) -> None:
        self._generate = model.generate
        self._script = asr_script(tokens)
        self.tokens = 0
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._generate(*args, logits_processor=[scripted(self._script)], **kwargs)
        sequences = out["sequences"] if isinstance(out, dict) else out
        self.tokens = sum(token != EOT for token in sequences[0].tolist())
        return out


def scripted(script: list[int]) -> Any:
    """A logits processor that lets only the script's next token through."""
    import torch
    from transformers import LogitsProcessor

    class Script(LogitsProcessor):
        def __init__(self) -> None:
            self.begin: int | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            self.begin = self.begin or input_ids.shape[1]
            token = script[min(input_ids.shape[1] - self.begin, len(script) - 1)]
            forced = torch.full_like(scores, -math.inf)
            forced[:, token] = 0.0
            return forced

    return Script()


def noise_video(windows: int) -> tuple[Any, list[tuple[float, float]]]:
    """`windows` x 30 s of quiet noise, and its speech spans as the voice-activity detector
    would hand them to the engine: one per window, so that every window is a full clip."""
    rng = np.random.default_rng(0)
    window = int(WINDOW_S * SAMPLE_RATE)
    audio = np.tile(rng.standard_normal(window, dtype=np.float32) * 0.1, windows)
    return audio, [(i * WINDOW_S, (i + 1) * WINDOW_S) for i in range(windows)]


def asr_engine(model: Any, processor: Any, dtype: str, batch: int) -> TransformersAsrModel:
    """The transformers engine around `model`, in `dtype`, on the model's device, `batch`
    clips at a time, with no language set, so that it detects one per video, as by default."""
    import torch

    model.to(getattr(torch, dtype))
    device = "cuda" if model.device.type == "cuda" else "cpu"
    options = AsrOptions("device-check", device=device, compute_type=dtype, batch_size=batch)
    return TransformersAsrModel.around(options, model, processor)


def quiet_transformers() -> None:
    """No warning on every call that max_new_tokens wins over max_length, no progress bars."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def bert_vocabulary(size: int) -> list[str]:
    """Specials, consonant-vowel-consonant stems (the words of `chunk_texts`), suffix pieces,
    then fillers up to `size`: about 1.3 tokens a word, as English has under BERT's vocabulary."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    stems = [a + v + b for a in consonants for v in vowels for b in consonants]
    vocab = [*BERT_SPECIALS, ".", *stems, *(f"##{suffix}" for suffix in SUFFIXES)]
    return vocab + [f"x{i}" for i in range(size - len(vocab))]


def chunk_texts(count: int, words: int, seed: int = 0) -> list[str]:
    """`count` chunks of `words` made-up words each, some with suffixes, in sentences."""
    rng = np.random.default_rng(seed)
    stems = bert_vocabulary(0)[len(BERT_SPECIALS) + 1 : -len(SUFFIXES)]
    texts = []
    for _ in range(count):
        picked = rng.choice(stems, words)
        endings = rng.choice(
            ["", *SUFFIXES], words, p=[0.7, *[0.3 / len(SUFFIXES)] * len(SUFFIXES)]
        )
        stops = rng.random(words) < 1 / 12
        marks = np.where(stops, ".", "")
        texts.append(" ".join(map("".join, zip(picked, endings, marks, strict=True))))
    return texts


def write_bert(shape: BertShape, folder: Path, device: str) -> Path:
    """A random-weight BertModel of `shape` with a WordPiece tokenizer, as a transformers folder
    (what sentence-transformers' Transformer module loads)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = bert_vocabulary(30522)
    ids = {token: i for i, token in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )  # fmt: skip
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=shape.max_seq_length,
    ).save_pretrained(folder)  # fmt: skip
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=4 * shape.hidden,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        BertModel(config).save_pretrained(folder)
    return folder


def build_embedder(shape: BertShape, folder: Path, device: str) -> Any:
    """A sentence-transformers model: a random BERT (written to `folder`), mean pooling, a
    Dense layer when the embedding is wider than the BERT, and normalisation."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    modules: list[torch.nn.Module] = [
        Transformer(str(write_bert(shape, folder, device)), max_seq_length=shape.max_seq_length),
        Pooling(shape.hidden, pooling_mode="mean"),
    ]
    if shape.dimension != shape.hidden:
        modules.append(
            Dense(shape.hidden, shape.dimension, activation_function=torch.nn.Identity())
        )
    return SentenceTransformer(modules=[*modules, Normalize()], device=device)


def tokens_per_chunk(model: Any, texts: list[str]) -> float:
    """Mean tokens the model sees per chunk (after truncation, specials included)."""
    mask = model.preprocess(texts[:64])["attention_mask"]
    return float(mask.sum()) / len(mask)


def embed_step(model: Any, dtype: str, texts: list[str], batch: int) -> Callable[[], int]:
    """All of `texts` through `encode`, as the embedder calls it; returns the chunks done."""
    import torch

    model.to(getattr(torch, dtype))

    def step() -> int:
        vectors = model.encode(texts, batch_size=batch, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
        return len(np.asarray(vectors, dtype=np.float32))

    return step


def tokenize_step(model: Any, texts: list[str], batch: int) -> Callable[[], int]:
    """Tokenisation alone, batch by batch as `encode` does it: the host's share of the work."""

    def step() -> int:
        for first in range(0, len(texts), batch):
            model.preprocess(texts[first : first + batch])
        return len(texts)

    return step
