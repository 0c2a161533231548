"""Configuration: every setting of a PowerGate process, from defaults, a TOML file and ``POWERGATE_*`` variables.

Precedence, lowest first: the default in ``SETTINGS``, the TOML file (``powergate serve --config FILE``), the
environment variable, and finally a command-line option where a command has one. Every setting has a dotted key
(``web.port``), a TOML place (``[web] port``) and an environment variable (``POWERGATE_WEB_PORT``: the key in
capitals with the dot as ``_``). ``docs/configuration.md`` documents each one; a test keeps the two in step.

Invariants:
- A mistake is a ``ConfigError`` naming the setting (and the variable or file it came from) before anything
  starts: an unknown key in the file, a value of the wrong type, a port out of range, an unknown time zone.
- Secrets are never read from the TOML file itself (it tends to end up in a repository): ``secret_key`` comes
  from ``POWERGATE_SECRET_KEY`` or from the file named by ``secret_key_file``.
- The top-level names match what ``powergate.web.settings.from_environ`` reads (``POWERGATE_SECRET_KEY``,
  ``POWERGATE_COOKIE_SECURE``, ``POWERGATE_PAYMENTS_CONFIG``, ...), so one environment serves both.
- ``load_settings`` (the database URL alone, from the environment) keeps working for the one-shot commands.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_SQLITE_PATH = Path("var") / "powergate.db"
ENV_PREFIX = "POWERGATE_"
MAX_CONFIG_BYTES = 256 * 1024
MAX_SECRET_BYTES = 4 * 1024
MIN_SECRET_KEY_CHARS = 32
READ_ITEMS = ("energy", "instant", "relay", "prepaid", "clock")
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_READINGS_KEEP_MONTHS = 3
MAX_READINGS_KEEP_MONTHS = 1_200
INGEST_MODES = ("direct", "queue")
MAX_BATCH_WAIT_S = 5.0
"""Longest gathering wait for pushed readings: beyond it a tenant's usage and a trip at zero would lag visibly."""


class ConfigError(ValueError):
    """A configuration mistake; ``setting`` names the setting at fault, the message says what and where."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


@dataclass(frozen=True, slots=True)
class Settings:
    """The database URL alone: what the one-shot commands (``powergate db``, ``ledger``, ...) need."""

    database_url: str


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    url = env.get("POWERGATE_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"
    return Settings(database_url=url)


# --- the settings --------------------------------------------------------------------------------------------


def _host_port(value: object) -> str | None:
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{text!r} is not HOST:PORT"
    return None


def _optional_host_port(value: object) -> str | None:
    return None if value in ("", "off") else _host_port(value)


def _port(value: object) -> str | None:
    return None if isinstance(value, int) and 0 <= value < 65536 else f"{value!r} is not a port (0..65535)"


def _positive(value: object) -> str | None:
    return None if isinstance(value, int | float) and value > 0 else f"{value!r} must be a positive number"


def _batch_wait(value: object) -> str | None:
    ok = isinstance(value, int | float) and 0 < value <= MAX_BATCH_WAIT_S
    return None if ok else f"{value!r} must be a number of seconds above 0 and at most {MAX_BATCH_WAIT_S}"


def _timezone(value: object) -> str | None:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        return f"{value!r} is not a known time zone (IANA name such as Asia/Shanghai)"
    return None


def _database_url(value: object) -> str | None:
    text = str(value)
    if text.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        return None
    return f"{text!r} is not sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"


def _read_items(value: object) -> str | None:
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    unknown = [name for name in names if name not in READ_ITEMS]
    if not names or unknown:
        return f"{value!r}: choose from {', '.join(READ_ITEMS)} (comma separated)"
    return None


def _log_level(value: object) -> str | None:
    return None if value in LOG_LEVELS else f"{value!r} is not one of {', '.join(LOG_LEVELS)}"


def _body_size(value: object) -> str | None:
    ok = isinstance(value, int) and 0 < value <= 1024**3
    return None if ok else f"{value!r} must be 1 .. 1073741824 bytes"


def _ingest_mode(value: object) -> str | None:
    return None if value in INGEST_MODES else f"{value!r} is not one of {', '.join(INGEST_MODES)}"


def _keep_months(value: object) -> str | None:
    if value == 0 or (isinstance(value, int) and MIN_READINGS_KEEP_MONTHS <= value <= MAX_READINGS_KEEP_MONTHS):
        return None
    return (
        f"{value} months is not allowed: use 0 (keep every reading) or {MIN_READINGS_KEEP_MONTHS}.."
        f"{MAX_READINGS_KEEP_MONTHS} (the freezes and reconciliation need the recent months)"
    )


def _name(value: object) -> str | None:
    text = str(value)
    ok = 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text)
    return None if ok else f"{text!r} must be 1..64 letters, digits, '-', '_' or '.'"


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    kind: type
    default: object
    doc: str
    check: Callable[[object], str | None] | None = None
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper().replace(".", "_")

    @property
    def attribute(self) -> str:
        return self.key.replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", str, f"sqlite:///{DEFAULT_SQLITE_PATH}", "SQLAlchemy URL of the database.", _database_url),
    Setting("secret_key", str, "", "Signs sessions and tokens; at least 32 characters; from the environment only.",
            secret=True),
    Setting("secret_key_file", str, "", "File holding secret_key (relative to the config file)."),
    Setting("cookie_secure", bool, False, "Mark cookies Secure (set it whenever the site is served over HTTPS)."),
    Setting("payments_config", str, "", "Payment channels TOML (docs/payments.md); empty: no online channel."),
    Setting("notify_config", str, "", "Notification channels TOML (docs/notification-channels.md); empty: none."),
    Setting("metrics_api_key_required", bool, False, "/metrics needs an API key even from the loopback."),
    Setting("max_body_bytes", int, 16 * 1024 * 1024, "Largest HTTP request body accepted (413 above).", _body_size),
    Setting("timezone", str, "Asia/Shanghai", "Default site time zone (the head-end's daily frozen read).", _timezone),
    Setting("log_level", str, "info", "Log level: debug, info, warning or error.", _log_level),
    Setting("web.host", str, "127.0.0.1", "Address the HTTP server (API, console, portal) listens on."),
    Setting("web.port", int, 8000, "Port of the HTTP server.", _port),
    Setting("headend.name", str, "headend-1", "Unique per live head-end process; keep it across restarts.", _name),
    Setting("headend.dtu_listen", str, "0.0.0.0:7100", "HOST:PORT the DTUs dial into, or off.", _optional_host_port),
    Setting("headend.mqtt_broker", str, "", "HOST:PORT of the MQTT 5 broker for 4G / NB-IoT meters; empty: none.",
            _optional_host_port),
    Setting("headend.mqtt_group", str, "headend", "MQTT shared-subscription group of the head-end processes.", _name),
    Setting("headend.mqtt_batch_wait_s", float, 0.25, "Longest wait to gather pushed MQTT readings into one "
            "ingest transaction: larger batches cost less CPU per reading, and a reading waits at most this long.",
            _batch_wait),
    Setting("headend.modbus", bool, True, "Read meters behind Modbus TCP gateways."),
    Setting("headend.read_interval_s", float, 900.0, "Seconds between two scheduled reads of a meter.", _positive),
    Setting("headend.read_items", str, "energy,relay", "What a scheduled read fetches: energy, instant, relay, "
            "prepaid, clock.", _read_items),
    Setting("headend.ingest", str, "direct", "direct: the head-end rates and books readings; queue: it queues "
            "them for the workers (docs/deployment.md).", _ingest_mode),
    Setting("worker.name", str, "worker-1", "Names this worker's claims (notifications, freeze runs).", _name),
    Setting("worker.relay_outbox", bool, True, "Relay the outbox (trip / close commands, notifications) and "
            "deferred trips; the head-end does it too, both may."),
    Setting("worker.outbox_every_s", float, 1.0, "Seconds between two outbox relay rounds.", _positive),
    Setting("worker.notify_every_s", float, 2.0, "Seconds between two notification delivery rounds.", _positive),
    Setting("worker.ingest_every_s", float, 1.0, "Longest wait for a queued batch of readings (a head-end's "
            "commit wakes the workers at once).", _positive),
    Setting("worker.payments_every_s", float, 60.0, "Seconds between two reconciliations of unpaid orders.",
            _positive),
    Setting("scheduler.freeze_every_s", float, 300.0, "Seconds between two looks for due daily / monthly freezes.",
            _positive),
    Setting("scheduler.readings_keep_months", int, 0, "Months of raw readings kept (0: keep all; else at least 3).",
            _keep_months),
)  # fmt: skip
BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting, typed; ``sources`` says where each value came from (default, file, env or option)."""

    database_url: str
    secret_key: str
    secret_key_file: str
    cookie_secure: bool
    payments_config: str
    notify_config: str
    metrics_api_key_required: bool
    max_body_bytes: int
    timezone: str
    log_level: str
    web_host: str
    web_port: int
    headend_name: str
    headend_dtu_listen: str
    headend_mqtt_broker: str
    headend_mqtt_group: str
    headend_mqtt_batch_wait_s: float
    headend_modbus: bool
    headend_read_interval_s: float
    headend_read_items: str
    headend_ingest: str
    worker_name: str
    worker_relay_outbox: bool
    worker_outbox_every_s: float
    worker_notify_every_s: float
    worker_ingest_every_s: float
    worker_payments_every_s: float
    scheduler_freeze_every_s: float
    scheduler_readings_keep_months: int
    sources: Mapping[str, str]
    base_dir: Path
    """Relative paths in the settings (key files, channel files) are relative to this: the config file's folder."""

    def path(self, value: str) -> Path:
        return (self.base_dir / value) if value and not Path(value).is_absolute() else Path(value)

    def host_port(self, key: str) -> tuple[str, int] | None:
        """A ``HOST:PORT`` setting as a pair, or None when it is empty or ``off``."""
        value = str(getattr(self, BY_KEY[key].attribute))
        if value in ("", "off"):
            return None
        host, _, port = value.rpartition(":")
        return host.strip("[]"), int(port)

    def resolved_secret_key(self) -> str:
        """``secret_key`` from the environment or ``secret_key_file``; ConfigError when missing or short."""
        key = self.secret_key
        if not key and self.secret_key_file:
            path = self.path(self.secret_key_file)
            try:
                if path.stat().st_size > MAX_SECRET_BYTES:
                    raise ConfigError("secret_key_file", f"{path} is larger than {MAX_SECRET_BYTES} bytes")
                key = path.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ConfigError("secret_key_file", f"cannot read {path}: {error.strerror}") from None
        if not key:
            raise ConfigError("secret_key", "not set: set POWERGATE_SECRET_KEY or secret_key_file")
        if len(key) < MIN_SECRET_KEY_CHARS:
            raise ConfigError("secret_key", f"is {len(key)} characters; at least {MIN_SECRET_KEY_CHARS} are needed")
        return key


def _coerce(setting: Setting, value: object, where: str) -> object:
    """A value from the file (typed TOML) or the environment (text) as the setting's type."""
    kind = setting.kind
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError(text)
                value = text in ("1", "true", "yes", "on")
            else:
                value = kind(text)
        except ValueError:
            raise ConfigError(setting.key, f"{where}: {value!r} is not {_kind_name(kind)}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(setting.key, f"{where}: {value!r} is not {_kind_name(kind)}")
    if setting.check is not None:
        problem = setting.check(value)
        if problem is not None:
            raise ConfigError(setting.key, f"{where}: {problem}")
    return value


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]


def _flatten(document: Mapping[str, Any], path: Path) -> dict[str, object]:
    """``{"web": {"port": 1}}`` -> ``{"web.port": 1}``; unknown keys and inline secrets are errors."""
    flat: dict[str, object] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[f"{name}.{inner}"] = inner_value
        else:
            flat[name] = value
    for key in flat:
        setting = BY_KEY.get(key)
        if setting is None:
            known = ", ".join(s.key for s in SETTINGS)
            raise ConfigError(key, f"{path}: unknown setting; known settings: {known}")
        if setting.secret:
            raise ConfigError(key, f"{path}: a secret is never written in the file; use {setting.env} or {key}_file")
    return flat


def read_config_file(path: Path) -> dict[str, object]:
    """The settings a TOML file sets, flattened to dotted keys (not yet typed)."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError("config", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError("config", f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("config", f"{path} is not valid TOML: {error}") from None
    return _flatten(document, path)


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Defaults, then the file at ``path``, then ``POWERGATE_*`` variables, then ``overrides`` (options)."""
    env = os.environ if environ is None else environ
    from_file = read_config_file(path) if path is not None else {}
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        value, source = setting.default, "default"
        if setting.key in from_file:
            value = _coerce(setting, from_file[setting.key], f"in {path}")
            source = "file"
        if env.get(setting.env, "") != "":
            value = _coerce(setting, env[setting.env], f"from {setting.env}")
            source = "env"
        if overrides and overrides.get(setting.key) is not None:
            value = _coerce(setting, overrides[setting.key], "from the command line")
            source = "option"
        values[setting.attribute] = value
        sources[setting.key] = source
    base_dir = path.parent if path is not None else Path.cwd()
    return Config(**values, sources=sources, base_dir=base_dir)  # type: ignore[arg-type]


def _check_fields() -> None:
    names = {f.name for f in fields(Config)} - {"sources", "base_dir"}
    assert names == {s.attribute for s in SETTINGS}, sorted(names ^ {s.attribute for s in SETTINGS})


_check_fields()
