"""Shared fixtures: databases (SQLite and PostgreSQL) and service checks.

Under ``CI=true`` a test that needs PostgreSQL or the MQTT broker fails when the service is missing; on a
laptop without the service it skips with a loud reason.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

from testkit import (  # noqa: F401 - re-exported for older imports
    IN_CI,
    MQTT_HOST,
    MQTT_PORT,
    PG_HOST,
    PG_PORT,
    PG_USER,
    free_port,
    port_open,
    require_command,
    require_service,
    truncate_all,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    import psycopg

    name = f"powergate_test_{uuid.uuid4().hex[:10]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    require_service("MQTT broker", MQTT_HOST, MQTT_PORT)
    return MQTT_HOST, MQTT_PORT


# --- databases -------------------------------------------------------------------------------------------

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file that each test copies (migrating once keeps the suite fast)."""
    from powergate.store.db import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    from powergate.store.db import upgrade

    upgrade(postgres_url)
    return postgres_url


_truncate_all = truncate_all


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL database truncated."""
    from pathlib import Path

    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        target = Path(tmp_path) / "powergate.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("migrated_postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    from powergate.store.db import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()
