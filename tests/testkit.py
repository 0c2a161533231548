"""Helpers every test may import (``from testkit import free_port``): service checks, ports, database names.

They live here, not in ``conftest.py``: with several ``conftest.py`` files in the tree (tests/web, tests/browser),
``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

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


def truncate_all(url: str) -> None:
    """Empty every table of the schema (PostgreSQL) and restart its sequences.

    ``DELETE`` children before parents, in one transaction, rather than ``TRUNCATE``: a test's tables hold a few
    rows, and TRUNCATE's new files per table cost ~15x more (0.8 s against 0.05 s for 64 tables) on every test.
    """
    import psycopg

    from powergate.store.schema import metadata

    deletes = "; ".join(f'DELETE FROM "{table.name}"' for table in reversed(metadata.sorted_tables))
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        sequences = [
            str(name)
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind = 'S' AND n.nspname = current_schema()"
            )
        ]
        conn.execute(deletes)
        for sequence in sequences:
            conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')


FLAT_TARIFF = """
id = "flat"
name = "1 yuan/kWh"
commodity = "electricity"
currency = "CNY"
[[versions]]
effective_from = "2020-01-01"
price = "1.0000"
"""
"""The tariff file of a flat 1 yuan/kWh tariff with id ``flat``: integration tests' meters are rated by it."""


def unique(prefix: str) -> str:
    """A name no other test run uses (MQTT client ids, sites, databases on a shared service)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def publish_and_wait(broker: tuple[str, int], messages: Sequence[tuple[str, bytes, bool]], timeout_s: float) -> None:
    """Publish (topic, payload, retain) to a real broker at QoS 1, many in flight at once, and return once the
    broker has taken them all (blocking: call it through ``asyncio.to_thread`` from a coroutine)."""
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("pg-pub-"), protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1_000)
    client.max_queued_messages_set(0)
    client.connect(*broker)
    client.loop_start()
    try:
        sent = [client.publish(topic, payload, qos=1, retain=retain) for topic, payload, retain in messages]
        for info in sent:
            info.wait_for_publish(timeout_s)
            assert info.is_published(), "the broker did not take a message in time"
    finally:
        client.disconnect()
        client.loop_stop()


WAIT_S = 20.0
"""How long the async helpers below wait before they fail a test (a loaded 2-core CI machine gets slack)."""


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition()`` every 20 ms; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(*tasks: Callable[[asyncio.Event], Awaitable[None]]) -> AsyncIterator[None]:
    """Run ``task(stop)`` for each until the block ends, then stop them all and surface their errors."""
    stop = asyncio.Event()
    runners = [asyncio.create_task(task(stop)) for task in tasks]  # type: ignore[arg-type]
    try:
        yield
    finally:
        stop.set()
        done, hanging = await asyncio.wait(runners, timeout=WAIT_S)
        for task in hanging:
            task.print_stack()
            task.cancel()
        assert not hanging, f"{len(hanging)} of {len(runners)} tasks did not stop within {WAIT_S} s"
        for task in done:
            task.result()


class StalledSinks:
    """An MQTT link's sinks for a database that is behind: readings are not taken until ``release`` is set;
    notices are taken at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.readings: list[Any] = []
        self.notices: list[Any] = []

    async def take_readings(self, batch: Sequence[Any]) -> None:
        await self.release.wait()
        self.readings.extend(batch)

    async def take_notices(self, batch: Sequence[Any]) -> None:
        self.notices.extend(batch)
