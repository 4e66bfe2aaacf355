"""`ingest doctor`: checks a set-up before a long run and says how to fix each problem.

Each check is a small function returning a `Check`: the database (reached as a run reaches it,
but only looked at: pending migrations are reported, never applied), the data directory and its
disk, ffmpeg, yt-dlp (its age, the options the settings give it, its JavaScript runtime and
yt-dlp-ejs, a PO-token provider plugin), the device and its GPUs, the ASR engine a run
would choose and the CUDA libraries each engine needs, the diarizer a run would choose,
every configured model (loaded with the run's own loaders) and the metrics address.

`diagnose` runs the database, the local checks and the models side by side; the models load one
after another in a thread of their own, which is most of the time taken. Everything shown goes
through the log's secret masking, so a password in a database URL is never printed.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import asyncpg
from rich.text import Text

from db.migrate import discover
from ingest.infrastructure.config import ConfigError, Settings, cuda_device_count
from ingest.infrastructure.database import DatabaseUnavailable, resolve_dsn
from ingest.infrastructure.endpoints import parse_addr
from ingest.infrastructure.gpu import GpuSampler
from ingest.infrastructure.logging import describe_error, redact_secrets
from ingest.infrastructure.metrics import Metrics
from ingest.infrastructure.models import (
    AsrEngineChoice,
    DiarizerChoice,
    ModelLoadError,
    choose_asr_engine,
    choose_diarizer,
    load_asr,
    load_diarizer,
    load_embedder,
    load_voice,
)
from ingest.infrastructure.retry import DATABASE_ERRORS
from ingest.sites.ytdlp_options import ytdlp_params
from ingest.sites.ytdlp_version import installed_release

Status = Literal["ok", "warn", "fail"]

GIB = 1024**3
# Downloads wait in the data dir as WAV files until transcribed, then as decoded samples (a 12 h
# video is ~1.3 GiB of either; up to INGEST_AUDIO_QUEUE_SIZE of them wait), and the embedded
# database grows there.
MIN_FREE_BYTES = 1 * GIB
LOW_FREE_BYTES = 20 * GIB
DB_TIMEOUT_S = 10.0
# The search index is HNSW, which pgvector has had since 0.5.0.
MIN_PGVECTOR = (0, 5)
# Sites change what they serve faster than an older yt-dlp release follows.
MAX_YT_DLP_AGE_DAYS = 60
INSTALL_YT_DLP = 'pip install -U "yt-dlp[default,deno]"'
_GATED = re.compile(r"\b(gated|401|403|token)\b", re.IGNORECASE)
_CREATED_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)
_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # what to do about it; empty when ok


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def failed(checks: Sequence[Check]) -> bool:
    return any(check.status == "fail" for check in checks)


def masked(text: str) -> str:
    """`text` with any password in a URL masked, exactly as the log masks it."""
    return str(redact_secrets(None, "doctor", {"text": text})["text"])


def lines(checks: Sequence[Check]) -> list[Text]:
    """One line per check: status, name, detail and, unless ok, the fix."""
    width = max((len(check.name) for check in checks), default=0)
    rendered = []
    for check in checks:
        fix = f"; {check.fix}" if check.fix else ""
        line = Text(masked(f"{check.status:<4}  {check.name:<{width}}  {check.detail}{fix}"))
        line.stylize(_STYLES[check.status], 0, len(check.status))
        rendered.append(line)
    return rendered


def records(checks: Sequence[Check]) -> list[dict[str, str | None]]:
    return [
        {
            "check": check.name,
            "status": check.status,
            "detail": masked(check.detail),
            "fix": masked(check.fix) or None,
        }
        for check in checks
    ]


async def diagnose(settings: Settings, *, load_models: bool = True) -> list[Check]:
    """Every check, in a fixed order."""
    async with asyncio.TaskGroup() as tg:
        database = tg.create_task(check_database(settings))
        local = tg.create_task(asyncio.to_thread(_local_checks, settings))
        models = tg.create_task(asyncio.to_thread(_device_and_models, settings, load_models))
    return [*database.result(), *local.result(), *models.result(), check_metrics_addr(settings)]


def _local_checks(settings: Settings) -> list[Check]:
    return [
        check_data_dir(settings),
        check_disk(settings),
        check_ffmpeg(),
        check_yt_dlp(),
        check_ytdlp_options(settings),
        check_js_runtime(settings),
        check_ejs(),
        check_po_token_provider(settings),
    ]


def _device_and_models(settings: Settings, load_models: bool) -> list[Check]:
    # One thread for all of them: CUDA is probed once, before any model touches it, and each
    # model's load time is its own rather than shared with another load.
    choice = choose_diarizer(settings)
    engine = choose_asr_engine(settings)
    checks = [
        check_device(settings),
        ok("asr engine", f"{engine.engine}: {engine.reason}"),
        check_cuda_libraries(settings, engine),
        ok("diarizer", f"{choice.kind}: {choice.reason}"),
    ]
    if load_models:
        checks += [check_model(model, choice) for model in configured_models(settings, choice)]
    return checks


# The database.


async def check_database(settings: Settings) -> list[Check]:
    """Reachable, the server and pgvector versions, migrations, and whether a run may write."""
    try:
        dsn = await resolve_dsn(settings)
    except DatabaseUnavailable as exc:
        return [fail("database", str(exc), "make INGEST_DATA_DIR writable, or set DATABASE_URL")]
    embedded = f"embedded PostgreSQL in {settings.pgdata_dir.absolute()}"
    where = dsn if settings.database_url else embedded
    try:
        conn = await asyncpg.connect(dsn, timeout=DB_TIMEOUT_S, command_timeout=DB_TIMEOUT_S)
    except Exception as exc:  # each way of not getting in is a finding to explain, not a crash
        return [_not_connected(dsn, exc)]
    try:
        return [ok("database", f"connected to {where}"), *await _inspect(conn)]
    except DATABASE_ERRORS as exc:
        error = describe_error(exc)
        return [fail("database", f"connected, then a query failed: {error}", "see the server log")]
    finally:
        await conn.close()


def _not_connected(dsn: str, exc: Exception) -> Check:
    url = urlsplit(dsn)
    user = url.username or "(default)"
    address = url.netloc.rpartition("@")[2] or parse_qs(url.query).get("host", ["localhost"])[0]
    error = describe_error(exc)
    if isinstance(exc, asyncpg.InvalidPasswordError):
        detail = f"authentication failed for user {user}"
        return fail("database", detail, "check the password in DATABASE_URL")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        fix = f"create it (createdb -O {user} NAME), or fix the database name in DATABASE_URL"
        return fail("database", error, fix)
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return fail(
            "database", error, "check the user in DATABASE_URL and the server's pg_hba.conf"
        )
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return fail("database", error, "the server is starting or stopping: try again shortly")
    if isinstance(exc, OSError):  # refused, unreachable, unknown host, timed out
        fix = "is PostgreSQL running? Start it, or fix the host and port in DATABASE_URL"
        return fail("database", f"cannot connect to {address}: {error}", fix)
    return fail("database", f"cannot connect to {address}: {error}", "check DATABASE_URL")


async def _inspect(conn: asyncpg.Connection) -> list[Check]:
    version = await conn.fetchval("SHOW server_version")
    return [
        ok("postgresql", f"server {version}"),
        await _pgvector(conn),
        await _migrations(conn),
        await _writes(conn),
    ]


_VECTOR_AVAILABLE = """
SELECT v.version, v.trusted
FROM pg_available_extensions a
JOIN pg_available_extension_versions v ON v.name = a.name AND v.version = a.default_version
WHERE a.name = 'vector'
"""

# Superusers may create any extension; others only trusted ones, with CREATE on the database.
_MAY_CREATE_EXTENSION = """
SELECT rolsuper OR ($1 AND has_database_privilege(current_database(), 'CREATE'))
FROM pg_roles WHERE rolname = current_user
"""


async def _pgvector(conn: asyncpg.Connection) -> Check:
    installed = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if installed is not None:
        return _pgvector_version(installed)
    available = await conn.fetchrow(_VECTOR_AVAILABLE)
    if available is None:
        fix = "install pgvector on the database server (e.g. the postgresql-16-pgvector package)"
        return fail("pgvector", "not installed on the database server", fix)
    version = available["version"]
    if await conn.fetchval(_MAY_CREATE_EXTENSION, available["trusted"]):
        return ok("pgvector", f"{version} available; the first start creates the extension")
    database = await conn.fetchval("SELECT current_database()")
    return fail(
        "pgvector",
        f"{version} is available but not created in database {database}, and this user may "
        "not create it",
        f"an admin runs CREATE EXTENSION vector; in database {database} "
        "(the service itself needs no superuser)",
    )


def _pgvector_version(version: str) -> Check:
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < MIN_PGVECTOR:
        fix = "an admin upgrades pgvector on the server, then runs ALTER EXTENSION vector UPDATE"
        return fail("pgvector", f"{version}; the HNSW search index needs 0.5.0 or later", fix)
    return ok("pgvector", version)


_MIGRATIONS_TABLE = """
SELECT current_user AS role, t IS NOT NULL AS present, has_table_privilege(t, 'SELECT') AS readable
FROM to_regclass('schema_migrations') AS t
"""


async def _migrations(conn: asyncpg.Connection) -> Check:
    known = {m.version: m.name for m in discover()}
    table = await conn.fetchrow(_MIGRATIONS_TABLE)
    if table["present"] and not table["readable"]:
        fix = f"an admin runs GRANT SELECT, INSERT ON schema_migrations TO {table['role']}"
        return fail("migrations", f"{table['role']} may not read schema_migrations", fix)
    applied: set[int] = set()
    if table["present"]:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    if unknown := sorted(applied - known.keys()):
        return warn(
            "migrations",
            f"the database has migrations {unknown} this version of ingest does not know",
            "a newer ingest wrote to it: upgrade ingest here before running it",
        )
    pending = [name for version, name in sorted(known.items()) if version not in applied]
    if pending:
        detail = f"{len(pending)} of {len(known)} pending: {', '.join(pending)}"
        return warn("migrations", detail, "applied at the next start, or run `ingest migrate`")
    return ok("migrations", f"all {len(known)} applied")


_WRITE_STATE = """
SELECT pg_is_in_recovery() AS standby,
       current_setting('transaction_read_only') = 'on' AS read_only,
       current_user AS role, current_schema() AS schema, current_database() AS database,
       coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) AS may_create,
       has_database_privilege(current_database(), 'TEMPORARY') AS may_stage
"""

_TABLE_RIGHTS = """
SELECT t AS name,
       has_table_privilege(r, 'SELECT') AND has_table_privilege(r, 'INSERT')
       AND has_table_privilege(r, 'UPDATE') AND has_table_privilege(r, 'DELETE') AS writable,
       pg_has_role((SELECT relowner FROM pg_class WHERE oid = r), 'USAGE') AS owned
FROM unnest($1::text[]) AS t, to_regclass(t) AS r
WHERE r IS NOT NULL
"""


async def _writes(conn: asyncpg.Connection) -> Check:
    """What a run does: create tables (migrations), a temporary table (the sink's staging),
    write to its tables, and own them (migrations alter them, a backfill indexes them)."""
    state = await conn.fetchrow(_WRITE_STATE)
    role, schema, database = state["role"], state["schema"], state["database"]
    if state["standby"]:
        return fail("database writes", "the server is a read-only standby", "use the primary")
    if state["read_only"]:
        fix = f"an admin runs ALTER ROLE {role} SET default_transaction_read_only = off"
        return fail("database writes", "transactions are read-only for this user", fix)
    if schema is None:
        fix = f"an admin creates a schema of {role}'s search_path"
        return fail("database writes", "no schema of the search_path exists", fix)
    if not state["may_create"]:
        fix = f"an admin runs GRANT CREATE ON SCHEMA {schema} TO {role}"
        return fail("database writes", f"{role} may not create tables in schema {schema}", fix)
    if not state["may_stage"]:
        fix = f"an admin runs GRANT TEMPORARY ON DATABASE {database} TO {role}"
        return fail("database writes", f"{role} may not create temporary tables", fix)
    return _table_rights(role, schema, await conn.fetch(_TABLE_RIGHTS, service_tables()))


def _table_rights(role: str, schema: str, tables: Sequence[asyncpg.Record]) -> Check:
    if unwritable := [t["name"] for t in tables if not t["writable"]]:
        names = ", ".join(unwritable)
        fix = f"an admin runs GRANT SELECT, INSERT, UPDATE, DELETE ON {names} TO {role}"
        return fail("database writes", f"{role} may not write to {names}", fix)
    if foreign := [t["name"] for t in tables if not t["owned"]]:
        names = ", ".join(foreign)
        return warn(
            "database writes",
            f"{role} does not own {names}: later migrations and the search index need the owner",
            f"an admin runs ALTER TABLE … OWNER TO {role} for {names}",
        )
    found = f"its {len(tables)} tables" if tables else "no tables yet"
    return ok("database writes", f"{role} may create tables in schema {schema}; {found}")


def service_tables() -> list[str]:
    """The tables the migrations create, and the one that records them."""
    created = (name for m in discover() for name in _CREATED_TABLE.findall(m.sql))
    return ["schema_migrations", *created]


# Files and programs.


def check_data_dir(settings: Settings) -> Check:
    """Creates the folder when missing, as a run would, and a file in it."""
    folder = settings.data_dir.absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return fail(
            "data dir",
            f"{folder} is not writable: {describe_error(exc)}",
            "point INGEST_DATA_DIR at a folder this user can write, or fix its permissions",
        )
    return ok("data dir", f"{folder} is writable")


def check_disk(settings: Settings) -> Check:
    folder = settings.data_dir.absolute()
    # Measured where the folder is (or would be): its nearest existing ancestor.
    present = next(path for path in (folder, *folder.parents) if path.exists())
    free = shutil.disk_usage(present).free
    detail = f"{free / GIB:.1f} GiB free at {present}"
    fix = "free some space, or point INGEST_DATA_DIR at a bigger disk"
    if free < MIN_FREE_BYTES:
        return fail("disk", detail, fix)
    if free < LOW_FREE_BYTES:
        return warn("disk", f"{detail}; long videos wait there as WAV files", fix)
    return ok("disk", detail)


def check_ffmpeg() -> Check:
    """yt-dlp converts every download to WAV with ffmpeg, found on PATH."""
    path = shutil.which("ffmpeg")
    if path is None:
        return fail("ffmpeg", "not found on PATH", "install ffmpeg: apt-get install ffmpeg")
    try:
        result = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        fix = "reinstall ffmpeg: apt-get install --reinstall ffmpeg"
        return fail("ffmpeg", f"{path} -version failed: {describe_error(exc)}", fix)
    words = result.stdout.split()  # "ffmpeg version 5.1.6-0+deb12u1 Copyright ..."
    version = words[2] if len(words) > 2 else "(unknown version)"
    return ok("ffmpeg", f"{version} at {path}")


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


# Device and models.


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


# The metrics address.


def check_metrics_addr(settings: Settings) -> Check:
    addr = settings.metrics_addr
    if not addr:
        return ok("metrics addr", "disabled (INGEST_METRICS_ADDR is empty)")
    fix = "pick another INGEST_METRICS_ADDR, or empty to disable"
    try:
        _bind_as_the_server_does(*parse_addr(addr))
    except (ValueError, OverflowError) as exc:
        return fail("metrics addr", f"{addr!r} is not HOST:PORT ({describe_error(exc)})", fix)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return fail("metrics addr", f"cannot listen on {addr}: {describe_error(exc)}", fix)
        if not settings.is_default("metrics_addr"):
            return fail("metrics addr", f"{addr} is in use", fix)
        return warn(
            "metrics addr",
            f"{addr} is in use by another process; a run will use another free port",
            "set INGEST_METRICS_ADDR to a free address to keep the port fixed",
        )
    return ok("metrics addr", f"{addr} is free")


def _bind_as_the_server_does(host: str, port: int) -> None:
    # The run's wsgiref server is a socketserver.TCPServer: IPv4 only, and SO_REUSEADDR, so a
    # port an earlier run left in TIME_WAIT is free to it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
