"""The suite keeps to itself: a user's `.env` or shell settings never reach a test or a process a
test starts, so it can neither touch their database nor pass or fail because of it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.infrastructure.config import load_settings
from tests.conftest import ALLOWED, ALLOWED_PREFIXES, OFFLINE
from tests.test_backfill import ingest

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = "postgresql://nobody:secret@127.0.0.1:9/no_such_database"


@pytest.fixture
def dotenv_in_the_repository() -> Iterator[Path]:
    """A `.env` in the repository root, as the README's Docker steps leave one, naming a
    database that does not exist. A `.env` the developer already has stays as it is: the suite
    must ignore it just the same."""
    dotenv = ROOT / ".env"
    if dotenv.exists():
        yield dotenv
        return
    dotenv.write_text(f"DATABASE_URL={NOWHERE}\nINGEST_DEVICE=cuda\n")
    try:
        yield dotenv
    finally:
        dotenv.unlink()


def test_tests_run_outside_the_repository_with_only_the_allowed_environment() -> None:
    assert Path.cwd().resolve() != ROOT and ROOT not in Path.cwd().resolve().parents
    unexpected = {
        name for name in os.environ if name not in ALLOWED and not name.startswith(ALLOWED_PREFIXES)
    }
    assert unexpected <= {*OFFLINE, "PYTEST_CURRENT_TEST"}  # pytest's own, set per test


def test_settings_in_a_test_do_not_read_the_repository_dotenv(
    dotenv_in_the_repository: Path,
) -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.device == "auto"


def test_a_process_without_a_database_url_uses_the_embedded_one_not_the_dotenv(
    dotenv_in_the_repository: Path, ingest_env: dict[str, str], outside_data_dir: Path
) -> None:
    env = {k: v for k, v in ingest_env.items() if k != "DATABASE_URL"}
    env["INGEST_DATA_DIR"] = str(outside_data_dir)
    result = ingest(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["counts"].values()) == {0}
    assert (outside_data_dir / "pgdata" / "PG_VERSION").exists()
