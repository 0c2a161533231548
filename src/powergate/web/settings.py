"""Settings of the web application: one frozen value built once and handed to ``create_app``.

Time is injected (style rule 9): every request reads "now" from ``settings.clock`` (the demo passes an
accelerated clock, the tests a settable one). ``from_environ`` reads the settings of a deployment from
``POWERGATE_*`` environment variables (documented in docs/api.md).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_PRODUCTION_SECRET_CHARS = 32
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body accepted (the console's Excel imports are the biggest); larger answers 413."""


def utc_now() -> dt.datetime:
    """The real clock, in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class WebSettings:
    """What the web application needs to run.

    - ``database_url``: SQLAlchemy URL of the (migrated) database.
    - ``secret_key``: the deployment's secret (at least 32 characters outside the demo).
    - ``demo``: demo mode (the demo organisation, accelerated clock, relaxed checks for a laptop).
    - ``cookie_secure``: mark every cookie ``Secure`` (set it whenever the site is served over HTTPS).
    - ``payment_channels``: the payments config object (``powergate.payments.config.PaymentsConfig``) or None.
    - ``notify``: the notification config (``powergate.notify.config.NotifyConfig``) or None.
    - ``clock``: UTC now; must return timezone-aware datetimes.
    - ``metrics_api_key_required``: when True, ``/metrics`` needs an API key (or bearer token) of a staff role
      even from the loopback; by default it is open to loopback clients only.
    - ``max_body_bytes``: request bodies larger than this answer 413.
    - ``order_expiry_s``: how long (on ``clock``) an online order placed in the tenant portal stays payable;
      None: the channel's default (15 minutes). The demo scales it by its speed, so that a tenant has 15 real
      minutes to pay, not 15 demo minutes (3 real seconds at 300x).
    """

    database_url: str
    secret_key: str
    demo: bool = False
    cookie_secure: bool = False
    payment_channels: Any = None
    notify: Any = None
    clock: Callable[[], dt.datetime] = utc_now
    metrics_api_key_required: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    order_expiry_s: int | None = None
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``powergate.store.db.make_engine`` (pool size, ...)."""

    def __post_init__(self) -> None:
        assert self.database_url.strip(), "WebSettings.database_url must not be empty"
        assert self.secret_key.strip(), "WebSettings.secret_key must not be empty"
        assert 0 < self.max_body_bytes <= 1024**3, "WebSettings.max_body_bytes must be 1 byte .. 1 GiB"


class SettingsError(ValueError):
    """A deployment setting is missing or wrong; the message names the variable."""


def from_environ(environ: Mapping[str, str] | None = None) -> WebSettings:
    """Settings from the environment (the uvicorn factory ``powergate.web.app:main_app`` uses this).

    - ``POWERGATE_DATABASE_URL`` (default: the SQLite file ``var/powergate.db``)
    - ``POWERGATE_SECRET_KEY`` (required, at least 32 characters unless ``POWERGATE_DEMO=1``)
    - ``POWERGATE_DEMO`` (``1``/``true`` for demo mode), ``POWERGATE_COOKIE_SECURE`` (``1``/``true`` behind HTTPS)
    - ``POWERGATE_PAYMENTS_CONFIG`` (path of the payments TOML), ``POWERGATE_NOTIFY_CONFIG`` (notifications TOML)
    - ``POWERGATE_METRICS_API_KEY_REQUIRED`` (``1``/``true``: ``/metrics`` needs an API key even on the loopback)
    - ``POWERGATE_MAX_BODY_BYTES`` (default 16 MiB)
    """
    from powergate.config import load_settings

    env = os.environ if environ is None else environ
    demo = _flag(env, "POWERGATE_DEMO")
    secret = env.get("POWERGATE_SECRET_KEY", "")
    if not secret and demo:
        secret = "powergate-demo-secret-not-for-production"
    if not secret:
        raise SettingsError("POWERGATE_SECRET_KEY is not set: give the deployment a random secret of 32+ characters")
    if len(secret) < MIN_PRODUCTION_SECRET_CHARS and not demo:
        raise SettingsError(
            f"POWERGATE_SECRET_KEY has {len(secret)} characters; use at least {MIN_PRODUCTION_SECRET_CHARS}"
        )
    payments: Any = None
    if env.get("POWERGATE_PAYMENTS_CONFIG"):
        from powergate.payments.config import load_payments_config

        payments = load_payments_config(Path(env["POWERGATE_PAYMENTS_CONFIG"]))
    notify: Any = None
    if env.get("POWERGATE_NOTIFY_CONFIG"):
        from powergate.notify.config import load_notify_config

        notify = load_notify_config(Path(env["POWERGATE_NOTIFY_CONFIG"]), dict(env))
    max_body = env.get("POWERGATE_MAX_BODY_BYTES", str(DEFAULT_MAX_BODY_BYTES))
    if not max_body.isdigit() or not 0 < int(max_body) <= 1024**3:
        raise SettingsError(f"POWERGATE_MAX_BODY_BYTES must be a whole number of bytes 1..1073741824, got {max_body!r}")
    return WebSettings(
        database_url=load_settings(dict(env)).database_url,
        secret_key=secret,
        demo=demo,
        cookie_secure=_flag(env, "POWERGATE_COOKIE_SECURE"),
        payment_channels=payments,
        notify=notify,
        metrics_api_key_required=_flag(env, "POWERGATE_METRICS_API_KEY_REQUIRED"),
        max_body_bytes=int(max_body),
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise SettingsError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {value!r}")
