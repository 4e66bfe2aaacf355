"""The database, reached as a run reaches it but only looked at: pending migrations are
reported, never applied."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import asyncpg

from db.migrate import discover
from db.reembed import reembedding_status, run_going_on
from ingest.faces.doctor.report import Check, fail, ok, warn
from ingest.infrastructure.config import Settings
from ingest.infrastructure.database import DatabaseUnavailable, resolve_dsn
from ingest.infrastructure.logging import describe_error
from ingest.infrastructure.retry import DATABASE_ERRORS

DB_TIMEOUT_S = 10.0
# The search index is HNSW, which pgvector has had since 0.5.0.
MIN_PGVECTOR = (0, 5)
_CREATED_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)


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
        *await _reembedding(conn),
    ]


async def _reembedding(conn: asyncpg.Connection) -> list[Check]:
    """A re-embedding recorded: going on, or stopped half-way and waiting to be run again."""
    try:
        state = await reembedding_status(conn)
    except (asyncpg.UndefinedTableError, asyncpg.InsufficientPrivilegeError):
        return []  # migrations not applied, or rights missing: both reported above
    if state is None:
        return []
    if await run_going_on(conn):
        return [ok("reembedding", f"{state.summary}; search uses the current model until then")]
    fix = f"run `ingest reembed --model {state.run.model}` again: it goes on where it stopped"
    return [warn("reembedding", f"{state.summary}, and no run is going on", fix)]


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
