import re
from pathlib import Path

import pytest

from ingest.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_env_example() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = {m.lower() for m in re.findall(r"^#? ?(?:INGEST_)?([A-Z_]+)=", text, re.M)}
    assert documented == set(Settings.model_fields)


def test_cli_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_DOWNLOAD_WORKERS", "3")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    assert load_settings().download_workers == 3
    settings = load_settings(download_workers=7, database_url="postgresql://flag/db")
    assert (settings.download_workers, settings.database_url) == (7, "postgresql://flag/db")
    assert load_settings(download_workers=None).download_workers == 3  # an absent flag


def test_empty_values_mean_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_ASR_WORKERS", "")
    assert load_settings().asr_workers is None


def test_invalid_values_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_EMBED_FLUSH_SECONDS", "-1")
    with pytest.raises(ConfigError, match=r"^invalid setting embed_flush_seconds: "):
        load_settings()


def test_cpu_defaults() -> None:
    settings = load_settings(device="cpu")
    assert settings.resolved_asr_model() == "base"
    assert settings.resolved_compute_type() == "int8"
    assert settings.resolved_asr_workers() == 1
