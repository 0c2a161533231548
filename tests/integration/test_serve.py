"""``powergate serve``: every role starts and stops cleanly; settings come from defaults, file and environment in
that order; a bad setting is named and exits 2 before anything starts. Roles run as child processes (SIGTERM
stops them, as an init system would); the database is SQLite or PostgreSQL (the ``db_url`` fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from powergate.config import SETTINGS, ConfigError, load_config
from testkit import free_port

SECRET = "s" * 40
ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "powergate.toml"
    path.write_text(body, encoding="utf-8")
    return path


def serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "powergate", "serve", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 40) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout_s)
    return process.returncode, out, err


def test_the_file_overrides_defaults_and_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[web]\nport = 9001\nhost = "0.0.0.0"\n[headend]\nread_interval_s = 60\n')
    config = load_config(path, environ={"POWERGATE_WEB_PORT": "9002", "POWERGATE_WORKER_NOTIFY_EVERY_S": "0.5"})
    assert (config.web_port, config.sources["web.port"]) == (9002, "env")
    assert (config.web_host, config.sources["web.host"]) == ("0.0.0.0", "file")
    assert (config.headend_read_interval_s, config.sources["headend.read_interval_s"]) == (60.0, "file")
    assert (config.worker_notify_every_s, config.sources["worker.notify_every_s"]) == (0.5, "env")
    assert (config.headend_name, config.sources["headend.name"]) == ("headend-1", "default")
    options = load_config(path, environ={"POWERGATE_WEB_PORT": "9002"}, overrides={"web.port": 9003})
    assert (options.web_port, options.sources["web.port"]) == (9003, "option")


@pytest.mark.parametrize(
    ("body", "env", "setting"),
    [
        ("[web]\nport = 70000\n", {}, "web.port"),
        ("[web]\nprot = 1\n", {}, "web.prot"),
        ('secret_key = "inline-secrets-are-refused-in-files"\n', {}, "secret_key"),
        ("", {"POWERGATE_HEADEND_MODBUS": "maybe"}, "headend.modbus"),
        ("", {"POWERGATE_TIMEZONE": "Mars/Olympus"}, "timezone"),
        ('[headend]\nread_items = "energy,colour"\n', {}, "headend.read_items"),
        ("[web\n", {}, "config"),
    ],
)
def test_a_bad_setting_is_named(tmp_path: Path, body: str, env: dict[str, str], setting: str) -> None:
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=env)
    assert raised.value.setting == setting


def test_a_bad_setting_exits_2_naming_it_before_anything_starts(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[web]\nport = -1\n")
    code, out, err = finish(serve(["--config", str(path)], {"POWERGATE_SECRET_KEY": SECRET}))
    assert code == 2 and "web.port" in err and "running" not in out
    code, _, err = finish(serve(["--role", "api"], {"POWERGATE_SECRET_KEY": ""}))
    assert code == 2 and "secret_key" in err
    code, _, err = finish(serve(["--role", "dishwasher"], {}))
    assert code == 2 and "--role" in err


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [s.key for s in SETTINGS if f"`{s.key}`" not in text or f"`{s.env}`" not in text]
    assert missing == []


@pytest.mark.parametrize("role", ["headend", "worker", "scheduler"])
def test_each_background_role_starts_and_stops_cleanly(role: str, db_url: str, tmp_path: Path) -> None:
    env = {
        "POWERGATE_DATABASE_URL": db_url,
        "POWERGATE_HEADEND_DTU_LISTEN": f"127.0.0.1:{free_port()}",
        "POWERGATE_SCHEDULER_FREEZE_EVERY_S": "0.5",
    }
    code, out, err = finish(serve(["--role", role, "--duration", "1"], env))
    assert code == 0, err
    assert f"roles {role} running" in out and "stopped" in out
    assert {"headend": "headend: 0 meters", "worker": "worker: outbox", "scheduler": "scheduler: freeze"}[role] in out


def test_all_roles_serve_http_and_stop_on_sigterm(db_url: str) -> None:
    port = free_port()
    env = {
        "POWERGATE_DATABASE_URL": db_url,
        "POWERGATE_SECRET_KEY": SECRET,
        "POWERGATE_WEB_PORT": str(port),
        "POWERGATE_HEADEND_DTU_LISTEN": f"127.0.0.1:{free_port()}",
    }
    process = serve(["--role", "all"], env)
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None and health.status_code == 200, health
        process.send_signal(signal.SIGTERM)
        code, out, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, err
    assert "roles api, headend, worker, scheduler running" in out and "stopped" in out
