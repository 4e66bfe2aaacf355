"""The device and its GPUs, the CUDA libraries each ASR engine needs, and every configured
model, loaded with the run's own loaders."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ingest.faces.doctor.report import GIB, Check, fail, ok, warn
from ingest.infrastructure.config import Settings, cuda_device_count
from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.models import (
    AsrEngineChoice,
    DiarizerChoice,
    ModelLoadError,
    load_asr,
    load_diarizer,
    load_embedder,
    load_voice,
)

_GATED = re.compile(r"\b(gated|401|403|token)\b", re.IGNORECASE)


def check_device(settings: Settings) -> Check:
    count = cuda_device_count()
    device = settings.resolved_device()
    if device == "cuda" and count == 0:
        return fail(
            "device",
            "INGEST_DEVICE=cuda but no CUDA device is visible",
            "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or set INGEST_DEVICE=cpu",
        )
    sampler = GpuSampler(Metrics())
    try:
        gpus = f"{count} CUDA device{'s' if count != 1 else ''}; {gpu_summary(sampler)}"
    finally:
        sampler.close()
    if device == "cpu":
        return ok("device", f"cpu ({gpus}); transcription on a CPU is far slower than on a GPU")
    return ok("device", f"cuda ({gpus})")


def gpu_summary(sampler: GpuSampler) -> str:
    """Each GPU this process uses, with its memory, and the driver; NVML is optional, so this
    never fails."""
    if not sampler.devices:
        return "no GPU" if sampler.unavailable is None else f"no GPU (NVML: {sampler.unavailable})"
    memory = {reading.gpu: reading.memory_total for reading in sampler.read()}
    gpus = [
        f"GPU {device.gpu}: {sampler.name(device) or 'unknown'}, {_gib(memory.get(device.gpu))}"
        for device in sampler.devices
    ]
    return "; ".join([*gpus, f"driver {sampler.driver_version() or 'unknown'}"])


def _gib(size: int | None) -> str:
    return "memory unknown" if size is None else f"{size / GIB:.0f} GiB"


def check_cuda_libraries(settings: Settings, engine: AsrEngineChoice) -> Check:
    """What each ASR engine needs of CUDA, found or not; only the chosen engine's absence
    fails."""
    if settings.resolved_device() == "cpu":
        return ok("cuda libraries", "not needed on a CPU")
    if cuda_device_count() == 0:  # the device check fails already
        return ok("cuda libraries", "not checked: no CUDA device is visible")
    from workers.cuda_libs import preload_cuda_libraries

    libraries = preload_cuda_libraries()
    torch_cuda, torch_ok = _torch_cuda()
    detail = (
        f"faster-whisper: {', '.join(lib.describe() for lib in libraries)}; "
        f"transformers: {torch_cuda}"
    )
    if engine.engine == "faster-whisper" and not all(lib.ok for lib in libraries):
        return fail("cuda libraries", detail, "pip install nvidia-cublas-cu12 "
                    "'nvidia-cudnn-cu12==9.*' (scripts/install.sh does), or set "
                    "INGEST_ASR_ENGINE=transformers")  # fmt: skip
    if engine.engine == "transformers" and not torch_ok:
        return fail("cuda libraries", detail, "install a CUDA build of torch")
    return ok("cuda libraries", detail)


def _torch_cuda() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        return f"torch {torch.__version__} with CUDA {torch.version.cuda}", True
    build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return f"torch {torch.__version__} cannot use CUDA ({build})", False


@dataclass(frozen=True, slots=True)
class Model:
    kind: str  # asr, embedding, voice or diarization
    name: str
    load: Callable[[], object]

    @property
    def check(self) -> str:
        return f"{self.kind} model"

    @property
    def setting(self) -> str:
        return f"INGEST_{self.kind.upper()}_MODEL"


def configured_models(settings: Settings, choice: DiarizerChoice) -> list[Model]:
    """The models a run loads, given the diarizer it would choose."""
    table: list[tuple[bool, str, str, Callable[[Settings], object]]] = [
        (True, "asr", settings.resolved_asr_model(), load_asr),
        (True, "embedding", settings.embedding_model, load_embedder),
        (choice.kind != "off", "voice", settings.voice_model, load_voice),
        (choice.kind == "pyannote", "diarization", settings.diarization_model, load_diarizer),
    ]
    return [Model(kind, name, partial(load, settings)) for used, kind, name, load in table if used]


def check_model(model: Model, choice: DiarizerChoice) -> Check:
    started = time.perf_counter()
    try:
        model.load()
    except ModelLoadError as exc:
        return _not_loaded(model, describe_error(exc), choice)
    return ok(model.check, f"{model.name} loaded in {time.perf_counter() - started:.1f} s")


def _not_loaded(model: Model, error: str, choice: DiarizerChoice) -> Check:
    detail, fix = _why_not_loaded(model, error)
    if model.kind == "diarization":
        fix += ", or set INGEST_DIARIZER=ecapa"
        if not choice.explicit:  # a guessed pyannote gives way to ECAPA clustering in a run
            return warn(model.check, f"{detail}; a run falls back to ECAPA clustering", fix)
    return fail(model.check, detail, fix)


def _why_not_loaded(model: Model, error: str) -> tuple[str, str]:
    from huggingface_hub import constants

    if model.name.startswith(("/", ".", "~")) or Path(model.name).expanduser().exists():
        return error, f"check the folder {model.setting} names"
    if constants.HF_HUB_OFFLINE:
        return (
            f"{model.name} is not downloaded and the hub is offline (HF_HUB_OFFLINE=1)",
            f"download it once with the hub online, or set {model.setting} to a local folder",
        )
    if _GATED.search(error):
        return error, f"accept the terms at https://huggingface.co/{model.name} and set HF_TOKEN"
    return error, f"check {model.setting}: a hub id or a local folder"
