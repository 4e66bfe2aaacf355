"""yt-dlp: its age, the options the settings give it, its JavaScript runtime and yt-dlp-ejs,
and a PO-token provider plugin."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from datetime import date
from typing import Any

from ingest.faces.doctor.report import Check, fail, ok, warn
from ingest.infrastructure.config import ConfigError, Settings
from ingest.sites.ytdlp_options import ytdlp_params
from ingest.sites.ytdlp_version import installed_release

# Sites change what they serve faster than an older yt-dlp release follows.
MAX_YT_DLP_AGE_DAYS = 60
INSTALL_YT_DLP = 'pip install -U "yt-dlp[default,deno]"'


def check_yt_dlp(today: date | None = None) -> Check:
    """Installed, and recent enough to read what YouTube serves now."""
    try:
        release = installed_release()
    except ImportError:
        return fail("yt-dlp", "not installed", INSTALL_YT_DLP)
    age = release.age_days(today)
    if age is None:
        return ok("yt-dlp", release.version)
    detail = f"{release.version}, released {age} days ago"
    if age > MAX_YT_DLP_AGE_DAYS:
        fix = f"update it: {INSTALL_YT_DLP}"
        return warn("yt-dlp", f"{detail}; sites change faster than an old release follows", fix)
    return ok("yt-dlp", detail)


def check_ytdlp_options(settings: Settings) -> Check:
    """The options the settings give yt-dlp, refused as a run refuses them at its start.
    Only their names are shown: values hold proxies, cookies and tokens."""
    try:
        params = ytdlp_params(settings)
    except ConfigError as exc:
        return fail("yt-dlp options", str(exc), "fix INGEST_YTDLP_ARGS")
    return ok("yt-dlp options", ", ".join(sorted(params)) or "yt-dlp's defaults")


# What yt-dlp enables when not told otherwise (YoutubeDL's own default).
_DEFAULT_JS_RUNTIMES: dict[str, dict[str, Any]] = {"deno": {}}


def check_js_runtime(settings: Settings) -> Check:
    """YouTube serves JavaScript challenges that yt-dlp solves with yt-dlp-ejs, run by deno
    unless `--js-runtimes` enables others. Each runtime is found and judged by yt-dlp's own
    code: deno in this Python's scripts folder (where `pip install "yt-dlp[deno]"` puts it),
    then on PATH; one older than yt-dlp supports is one yt-dlp does not run."""
    runtimes = _js_runtimes(settings)
    usable = [info for _, info, _ in runtimes if info is not None and info.supported]
    if usable:
        return ok("js runtime", _runtime_found(usable[0]))
    problems = "; ".join(_runtime_problem(name, info, least) for name, info, least in runtimes)
    others = [name for name in ("node", "bun") if shutil.which(name)]
    fix = 'pip install "yt-dlp[default,deno]"'
    if others:
        fix += f', or let yt-dlp run {others[0]}: INGEST_YTDLP_ARGS="--js-runtimes {others[0]}"'
    detail = f"{problems or 'none enabled'}: YouTube downloads need one; other sources work without"
    return warn("js runtime", detail, fix)


def _js_runtimes(settings: Settings) -> list[tuple[str, Any, tuple[int, ...]]]:
    """(name, yt-dlp's JsRuntimeInfo or None when not found, oldest version supported) of each
    runtime a run enables."""
    import yt_dlp  # noqa: F401 - registers the runtimes yt-dlp supports
    from yt_dlp.globals import supported_js_runtimes

    try:
        enabled = ytdlp_params(settings).get("js_runtimes", _DEFAULT_JS_RUNTIMES)
    except ConfigError:  # the yt-dlp options check says why
        enabled = _DEFAULT_JS_RUNTIMES
    found = []
    for name, config in enabled.items():
        if (runtime := supported_js_runtimes.value.get(name)) is not None:
            info = runtime(path=(config or {}).get("path")).info
            found.append((name, info, tuple(runtime.MIN_SUPPORTED_VERSION)))
    return found


def _runtime_found(info: Any) -> str:
    path = shutil.which(info.path) or info.path  # yt-dlp leaves one found on PATH unresolved
    return f"{info.name} {info.version} at {path}"


def _runtime_problem(name: str, info: Any, least: tuple[int, ...]) -> str:
    if info is None:
        return f"{name} not found"
    oldest = ".".join(map(str, least))
    return f"{_runtime_found(info)} is older than {oldest}, the oldest yt-dlp runs"


def check_ejs() -> Check:
    """yt-dlp uses only the yt-dlp-ejs release it was built with (the same minor version)."""
    try:
        installed: str | None = importlib.metadata.version("yt-dlp-ejs")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    return ejs_check(installed, _ejs_expected())


def _ejs_expected() -> str | None:
    try:
        from yt_dlp.extractor.youtube.jsc._builtin.vendor import VERSION
    except ImportError:  # an internal module: a later yt-dlp may move it
        return None
    return str(VERSION)


def ejs_check(installed: str | None, expected: str | None) -> Check:
    pinned = f"yt-dlp-ejs=={expected}" if expected else "yt-dlp-ejs"
    fix = f'pip install "{pinned}" (it comes with {INSTALL_YT_DLP})'
    if installed is None:
        detail = "not installed: YouTube downloads need it; other sources work without"
        return warn("yt-dlp-ejs", detail, fix)
    if expected is None:
        return ok("yt-dlp-ejs", f"{installed} (this yt-dlp does not say which it expects)")
    if _minor(installed) != _minor(expected):
        detail = f"{installed}, but this yt-dlp runs only {expected}: YouTube downloads may fail"
        return warn("yt-dlp-ejs", detail, fix)
    return ok("yt-dlp-ejs", f"{installed}, as this yt-dlp expects")


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_po_token_provider(settings: Settings) -> Check:
    """Only information: YouTube asks some clients for proof-of-origin tokens, and without
    them answers 403 or lists fewer formats; many downloads work without."""
    if providers := po_token_providers():
        return ok("po token provider", ", ".join(providers))
    if _po_token_given(settings):
        return ok("po token provider", "none; a token is set in the extractor arguments")
    return ok(
        "po token provider",
        "none; if YouTube answers 403 or lists no formats, install one "
        "(pip install bgutil-ytdlp-pot-provider) or set youtube:po_token in "
        "INGEST_YTDLP_EXTRACTOR_ARGS",
    )


def po_token_providers() -> list[str]:
    """The PO-token providers yt-dlp's plugins register, as `name version`. Loaded as yt-dlp
    loads them: `yt_dlp_plugins` packages on sys.path and in yt-dlp's plugin folders."""
    import yt_dlp  # noqa: F401 - registers the kinds of plugin
    from yt_dlp.plugins import load_all_plugins

    try:
        from yt_dlp.extractor.youtube.pot._registry import _pot_providers
    except ImportError:  # an internal module: a later yt-dlp may move it
        return []
    load_all_plugins()
    providers = _pot_providers.value.values()
    return sorted(f"{p.PROVIDER_NAME} {p.PROVIDER_VERSION}" for p in providers)


def _po_token_given(settings: Settings) -> bool:
    try:
        extractor_args = ytdlp_params(settings).get("extractor_args", {})
    except ConfigError:
        return False
    return bool(extractor_args.get("youtube", {}).get("po_token"))
