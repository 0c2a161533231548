"""Shared fixtures: databases (SQLite and PostgreSQL) and service checks.

Under ``CI=true`` a test that needs PostgreSQL or the MQTT broker fails when the service is missing; on a
laptop without the service it skips with a loud reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

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
