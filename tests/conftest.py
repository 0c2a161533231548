"""Shared fixtures: databases (SQLite and PostgreSQL) and service checks.

Under ``CI=true`` a test that needs PostgreSQL or the MQTT broker fails when the service is missing; on a
laptop without the service it skips with a loud reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_HOST = os.environ.get("POWERGATE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("POWERGATE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("POWERGATE_TEST_PG_USER", "postgres")
MQTT_HOST = os.environ.get("POWERGATE_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("POWERGATE_TEST_MQTT_PORT", "1883"))


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if port_open(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} and CI=true: this test must run in CI", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}; start it to run this test")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_command(command: str, package: str) -> str:
    """The path of an external command the test drives (mbpoll, mosquitto_pub, ...)."""
    path = shutil.which(command)
    if path is not None:
        return path
    message = f"{command} is not installed (Debian package {package})"
    if IN_CI:
        pytest.fail(f"{message} and CI=true: this test must run in CI", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {message}; apt-get install -y {package} to run this test")


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


def _truncate_all(url: str) -> None:
    from sqlalchemy import text

    from powergate.store.db import make_engine
    from powergate.store.schema import metadata

    engine = make_engine(url)
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL database truncated."""
    import shutil
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
