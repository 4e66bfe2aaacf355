import re
from pathlib import Path

import pytest

from ingest.infrastructure.config import ConfigError, Settings, load_settings
from ingest.sites.ytdlp_options import ytdlp_params

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


def test_the_chunk_minimum_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_CHUNK_MIN_CHARS", "")
    assert load_settings().chunk_min_chars is None  # a tenth of the target
    monkeypatch.setenv("INGEST_CHUNK_MIN_CHARS", "40")
    assert load_settings().chunk_min_chars == 40
    for bad in ("-1", "800", "few"):
        monkeypatch.setenv("INGEST_CHUNK_MIN_CHARS", bad)
        with pytest.raises(ConfigError, match=r"^invalid setting chunk_min_chars: "):
            load_settings()
    monkeypatch.setenv("INGEST_CHUNK_MIN_CHARS", "100")
    with pytest.raises(ConfigError, match=r"must be below INGEST_CHUNK_CHARS \(80\)$"):
        load_settings(chunk_chars=80)


def test_cpu_defaults() -> None:
    settings = load_settings(device="cpu")
    assert settings.resolved_asr_model() == "base"
    assert settings.resolved_compute_type() == "int8"
    assert settings.resolved_asr_workers() == 1


def test_yt_dlp_options_mean_what_yt_dlp_says(tmp_path: Path) -> None:
    cookies = tmp_path / "cookies.txt"
    settings = load_settings(
        ytdlp_sleep_requests=1.5,
        ytdlp_sleep_min=5,
        ytdlp_sleep_max=15,
        ytdlp_rate_limit="2M",
        cookies_file=cookies,
        ytdlp_extractor_args="youtube:player_client=web",
        ytdlp_args="--proxy socks5://127.0.0.1:1080",
    )
    params = ytdlp_params(settings)
    assert params["sleep_interval_requests"] == 1.5
    assert (params["sleep_interval"], params["max_sleep_interval"]) == (5, 15)
    assert params["ratelimit"] == 2 * 1024 * 1024
    assert params["cookiefile"] == str(cookies)
    assert params["extractor_args"] == {"youtube": {"player_client": ["web"]}}
    assert params["proxy"] == "socks5://127.0.0.1:1080"
    assert "format" not in params and "outtmpl" not in params  # the downloader's own stay


def test_yt_dlp_options_it_rejects_are_a_setup_error() -> None:
    with pytest.raises(ConfigError, match=r"^invalid yt-dlp options .*no such option"):
        ytdlp_params(load_settings(ytdlp_args="--no-such-option"))


def test_yt_dlp_options_the_downloader_has_defaults_for_are_kept_whenever_given() -> None:
    args = "-f ba -R 10 --socket-timeout 5 --ppa 'ffmpeg:-v error' --no-simulate"
    params = ytdlp_params(load_settings(ytdlp_args=args))
    # -R 10 is yt-dlp's own default, and still the user's choice over the downloader's
    assert (params["format"], params["retries"], params["socket_timeout"]) == ("ba", 10, 5)
    assert params["postprocessor_args"] == {"ffmpeg": ["-v", "error"]}
    assert "fragment_retries" not in ytdlp_params(load_settings(ytdlp_args="-R 10"))


@pytest.mark.parametrize(
    ("args", "option", "why"),
    [
        ("-o '%(title)s.%(ext)s'", "-o/--output", "the downloader names its own files"),
        ("--paths /tmp", "-P/--paths", "the downloader names its own files"),
        ("-x --audio-format mp3", "-x/--extract-audio", "the downloader converts the audio"),
        ("--exec 'rm {}'", "--exec", "the downloader converts the audio"),
        ("--print title", "--print", "standard output is the downloader's"),
        ("-j", "-j/--dump-json", "standard output is the downloader's"),
        ("--skip-download", "--skip-download", "the downloader needs the audio"),
        ("--simulate", "-s/--simulate", "the downloader needs the audio"),
        ("--write-auto-subs", "--write-auto-subs", "reads captions itself"),
        ("--keep-video", "-k/--keep-video", "keeps only the audio it converts"),
        ("--ignore-errors", "-i/--ignore-errors", "to be recorded and retried"),
        ("--download-archive done.txt", "--download-archive", "the database decides"),
        ("--match-filters '!is_live'", "--match-filters", "one the filter rejects would fail"),
    ],
)
def test_yt_dlp_options_the_downloader_cannot_work_with(args: str, option: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ytdlp_params(load_settings(ytdlp_args=args))
    message = str(raised.value)
    assert message.startswith(f"INGEST_YTDLP_ARGS: {option} is not allowed: ")
    assert why in message and "\n" not in message


def test_yt_dlp_options_that_only_look_like_refused_ones_pass() -> None:
    # --no-simulate and --abort-on-error set the refused options to what the downloader needs.
    args = "--no-simulate --abort-on-error --parse-metadata 'title:%(artist)s - %(title)s'"
    params = ytdlp_params(load_settings(ytdlp_args=args))
    assert params["simulate"] is False and params["ignoreerrors"] is False
