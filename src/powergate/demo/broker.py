"""An embedded MQTT broker for the demo: Mosquitto as a child process on a free port, with a generated config.

Why Mosquitto and not a Python broker: the head-end's MQTT link (``headend.mqtt_link``) speaks MQTT 5 only. It
subscribes with shared subscriptions (``$share/{group}/...``) and subscription identifiers, so that several
head-end processes share the meters' readings while each still receives the acks of its own commands. amqtt, the
asyncio broker on PyPI, implements MQTT 3.1.1 and refuses an MQTT 5 CONNECT, so it cannot carry our meters.
When no ``mosquitto`` binary is found (Debian package ``mosquitto``), ``find_mosquitto`` says so and the demo
runs without MQTT meters, printing why.

Invariants: the broker listens on 127.0.0.1 only, persistence off, its files live in a private temporary
folder removed on stop; ``stop`` terminates the child (SIGTERM, then SIGKILL after a grace period) and is
idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/opt/homebrew/sbin", "/usr/local/opt/mosquitto/sbin")
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0


def find_mosquitto() -> str | None:
    """The path of the ``mosquitto`` binary (on PATH or in the usual sbin folders), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in SEARCH_PATH:
        candidate = Path(folder) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """``await start()`` -> (host, port); ``await stop()``."""

    def __init__(self, binary: str, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def config_text(self) -> str:
        return "\n".join(
            [
                f"listener {self.port} {self.host}",
                "allow_anonymous true",
                "persistence false",
                "max_inflight_messages 1000",
                "max_queued_messages 100000",
                "log_type error",
                "log_type warning",
                "",
            ]
        )

    async def start(self) -> tuple[str, int]:
        assert self.process is None, "the broker is running already"
        self._folder = tempfile.TemporaryDirectory(prefix="powergate-mqtt-")
        config = Path(self._folder.name) / "mosquitto.conf"
        config.write_text(self.config_text(), encoding="utf-8")
        log_file = (Path(self._folder.name) / "mosquitto.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log_file.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(self.host, self.port):
            if self.process.poll() is not None:
                output = self.log_text()
                await self.stop()
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {output[-500:]}")
            if time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {START_TIMEOUT_S} s")
            await asyncio.sleep(0.05)
        return self.host, self.port

    def log_text(self) -> str:
        if self._folder is None:
            return ""
        path = Path(self._folder.name) / "mosquitto.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._folder is not None:
            with contextlib.suppress(OSError):
                self._folder.cleanup()
            self._folder = None
