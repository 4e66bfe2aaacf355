"""Every setting of the service, read once from the environment and `.env`.

This is the only module that reads the environment. CLI flags are passed in as overrides and win
over environment variables and `.env`.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
DiarizationMode = Literal["auto", "always", "off"]
DiarizerKind = Literal["auto", "pyannote", "ecapa"]
AsrEngine = Literal["auto", "faster-whisper", "transformers"]
CaptionsMode = Literal["manual", "auto", "off"]
EventLoop = Literal["auto", "uvloop", "asyncio"]

GPU_ASR_MODEL = "distil-large-v3"
CPU_ASR_MODEL = "base"
# A duration: 90, 90s, 15m, 6h, 1d.
_DURATION = r"^\s*\d+(\.\d+)?\s*[smhdSMHD]?\s*$"


class ConfigError(Exception):
    """A setting is missing, malformed or inconsistent; reported as one line, exit status 2."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INGEST_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("database_url", "DATABASE_URL")
    )
    data_dir: Path = Path("data")
    device: Device = "auto"
    asr_model: str | None = None
    asr_compute_type: str = "auto"
    asr_workers: int | None = Field(default=None, ge=1)
    asr_batch_size: int = Field(default=8, ge=1)
    asr_language: str | None = None
    asr_engine: AsrEngine = "auto"
    captions: CaptionsMode = "manual"
    captions_language: str | None = None  # None: the language spoken in each video
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    embed_batch: int = Field(default=1000, ge=1)
    embed_encode_batch: int = Field(default=32, ge=1)
    embed_flush_seconds: float = Field(default=0.1, gt=0)
    voice_model: str = "speechbrain/spkrec-ecapa-voxceleb"
    voice_batch_size: int = Field(default=32, ge=1)
    diarization_model: str = "pyannote/speaker-diarization-3.1"
    diarization: DiarizationMode = "auto"
    diarizer: DiarizerKind = "auto"
    cluster_threshold: float = Field(default=0.3, ge=-1, le=1)
    hf_token: str | None = Field(
        default=None, validation_alias=AliasChoices("hf_token", "HF_TOKEN")
    )
    hosts: str = ""
    fastpath_threshold: float = Field(default=0.6, ge=-1, le=1)
    fastpath_windows: int = Field(default=6, ge=1)
    speaker_match_threshold: float = Field(default=0.5, ge=-1, le=1)
    telemetry: bool = False
    max_duration: float = Field(default=43200.0, gt=0)
    retry_attempts: int = Field(default=3, ge=1)
    retry_backoff_seconds: float = Field(default=2.0, ge=0)
    ytdlp_sleep_requests: float = Field(default=0.75, ge=0)
    ytdlp_sleep_min: float = Field(default=0.0, ge=0)
    ytdlp_sleep_max: float = Field(default=0.0, ge=0)
    ytdlp_sleep_subtitles: float = Field(default=0.0, ge=0)
    ytdlp_rate_limit: str | None = None
    ytdlp_extractor_args: str | None = None
    ytdlp_args: str = ""
    cookies_file: Path | None = None
    cookies_from_browser: str | None = None
    max_videos_per_hour: float = Field(default=0.0, ge=0)
    throttle_initial_seconds: float = Field(default=60.0, gt=0)
    throttle_max_seconds: float = Field(default=1800.0, gt=0)
    max_throttle_wait: str = Field(default="6h", pattern=_DURATION)
    retry_later_seconds: float = Field(default=120.0, gt=0)
    retry_later_max_seconds: float = Field(default=86400.0, gt=0)
    retry_later_tries: int = Field(default=12, ge=1)
    backfill_retry_wait: str = Field(default="15m", pattern=_DURATION)
    db_outage_seconds: float = Field(default=600.0, gt=0)
    lease_seconds: float = Field(default=120.0, ge=5)
    full_listing_interval: str = Field(default="1d", pattern=_DURATION)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    download_workers: int = Field(default=24, ge=1)
    download_socket_timeout: float = Field(default=30.0, gt=0)
    download_retries: int = Field(default=3, ge=0)
    audio_queue_size: int = Field(default=24, ge=1)
    transcript_queue_size: int = Field(default=64, ge=1)
    sink_queue_size: int = Field(default=2, ge=1)
    chunk_chars: int = Field(default=800, ge=50)
    chunk_max_seconds: float = Field(default=90.0, gt=0)
    chunk_min_chars: int | None = Field(default=None, ge=0)  # None: a tenth of chunk_chars
    search_language: str = Field(default="english", min_length=1)
    hnsw_min_chunks: int = Field(default=100_000, ge=0)
    # recall@10 of the vector ranking at 200,000 chunks (bench search): 0.947 at 100, 0.970 at 200.
    hnsw_ef_search: int = Field(default=200, ge=1, le=1000)
    serve_addr: str = "127.0.0.1:8780"
    serve_token: SecretStr | None = None
    serve_public: bool = False
    serve_statement_timeout_s: float = Field(default=10.0, gt=0)
    serve_max_concurrent: int = Field(default=8, ge=1)
    serve_max_body_bytes: int = Field(default=65_536, ge=0)
    metrics_addr: str = "127.0.0.1:9108"
    metrics_sample_seconds: float = Field(default=2.0, gt=0)
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    event_loop: EventLoop = "auto"

    @field_validator(
        "database_url", "asr_model", "asr_workers", "asr_language", "captions_language",
        "hf_token", "ytdlp_rate_limit", "ytdlp_extractor_args", "cookies_file",
        "cookies_from_browser", "chunk_min_chars", "serve_token",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_means_unset(cls, value: Any) -> Any:
        # `.env.example` lists optional settings as `NAME=`; an empty INGEST_METRICS_ADDR, by
        # contrast, is a value (it disables the endpoints).
        return None if value == "" else value

    @field_validator("chunk_min_chars")
    @classmethod
    def _below_the_target(cls, value: int | None, info: ValidationInfo) -> int | None:
        # At or above the target, every chunk would be short and join its neighbours until
        # only INGEST_CHUNK_MAX_SECONDS stopped it.
        target = info.data.get("chunk_chars")
        if value is not None and target is not None and value >= target:
            raise ValueError(f"must be below INGEST_CHUNK_CHARS ({target})")
        return value

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.hosts.split(",") if name.strip())

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"

    @property
    def running_dir(self) -> Path:
        """One locked file per running process (ingest.orchestration.claims.RunningLock)."""
        return self.data_dir / "running"

    @property
    def pgdata_dir(self) -> Path:
        return self.data_dir / "pgdata"

    def is_default(self, name: str) -> bool:
        """Whether a setting has its default value: `.env` copied from `.env.example` sets every
        setting, so being set says nothing about what the user chose."""
        return bool(getattr(self, name) == type(self).model_fields[name].default)

    def resolved_hf_token(self) -> str | None:
        """HF_TOKEN, else the token `hf auth login` stored."""
        if self.hf_token:
            return self.hf_token
        from huggingface_hub import get_token

        return get_token()

    def resolved_device(self) -> Literal["cpu", "cuda"]:
        if self.device != "auto":
            return self.device
        return "cuda" if cuda_device_count() > 0 else "cpu"

    def resolved_asr_model(self) -> str:
        if self.asr_model:
            return self.asr_model
        return GPU_ASR_MODEL if self.resolved_device() == "cuda" else CPU_ASR_MODEL

    def resolved_asr_workers(self) -> int:
        if self.asr_workers:
            return self.asr_workers
        return max(1, cuda_device_count()) if self.resolved_device() == "cuda" else 1

    def resolved_compute_type(self) -> str:
        if self.asr_compute_type != "auto":
            return self.asr_compute_type
        return "float16" if self.resolved_device() == "cuda" else "int8"


def cuda_visible_devices() -> str | None:
    """The GPUs CUDA shows this process (indices or UUIDs); None means all of them."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@functools.cache
def cuda_device_count() -> int:
    """The CUDA devices this process sees, asked once per process and without creating a CUDA
    context: CTranslate2's count where it is installed (what faster-whisper can use), else
    torch's, which asks NVML and honours CUDA_VISIBLE_DEVICES."""
    try:
        import ctranslate2
    except ImportError:
        import torch

        return int(torch.cuda.device_count())
    return int(ctranslate2.get_cuda_device_count())


def apply_process_environment(settings: Settings) -> None:
    """Environment that libraries read on import: pyannote sends usage metrics unless told not
    to, and the service sends nothing unless its user opts in (INGEST_TELEMETRY, or pyannote's
    own PYANNOTE_METRICS_ENABLED set explicitly)."""
    if not settings.telemetry:
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with the given non-None overrides (CLI flags) on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str, allow_zero: bool = False) -> float:
    """`90`, `90s`, `15m`, `1h`, `1d` → seconds (`0` too, where `allow_zero`)."""
    match = _INTERVAL.match(text.lower())
    if not match or float(match.group(1)) < (0 if allow_zero else 1e-9):
        raise ConfigError(f"invalid interval {text!r}: use e.g. 90s, 15m, 1h")
    return float(match.group(1)) * _UNIT_S[match.group(2)]
