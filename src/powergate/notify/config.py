"""Channel settings from a TOML file; secrets from files or environment variables, never from the file itself.

A secret field ``x`` is given as ``x_file`` (a path, relative to the TOML file, read and stripped) or ``x_env``
(the name of an environment variable). Writing ``x = "..."`` inline is a `ConfigError`, so a secret cannot end
up in the repository by accident. Every section is optional: a channel without one is not available.

    [email]
    host = "smtp.example.com"
    port = 587
    security = "starttls"            # plain | starttls | tls
    sender = "notify@example.com"
    username = "notify@example.com"
    password_env = "POWERGATE_SMTP_PASSWORD"

    [sms]                            # provider = "aliyun" (section [sms.aliyun]) or "http" (section [sms.http])
    provider = "aliyun"
    [sms.aliyun]
    access_key_id = "LTAI..."
    access_key_secret_file = "secrets/aliyun.key"
    sign_name = "PowerGate"
    templates = { balance_low = "SMS_100000001", "balance_low.en" = "SMS_100000002" }

    [voice]                          # the generic HTTP gateway; same keys as [sms.http]
    url = "https://voice.example.com/call"
    body = { to = "{address}", tts = "{body}", ref = "{message_id}" }
    success_field = "code"
    success_values = ["0"]
    headers_env = { Authorization = "POWERGATE_VOICE_AUTH" }   # header values that are secrets

    [wechat]
    appid = "wx0123456789abcdef"
    secret_env = "POWERGATE_WECHAT_SECRET"
    templates = { balance_low = "TPL..." }

    [push]
    url = "https://push.example.com/send"
    secret_file = "secrets/push.whsec"

    [webhook]
    secret_file = "secrets/default.whsec"             # default for endpoints without their own
    endpoints = { "https://erp.example.com/hook" = "secrets/erp.whsec" }   # URL -> secret file
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from powergate.notify._http import HttpProviderChannel, HttpProviderConfig
from powergate.notify.base import Channel
from powergate.notify.email import SECURITY_MODES, EmailChannel, EmailConfig
from powergate.notify.push import PushChannel, PushConfig
from powergate.notify.sms import AliyunSms, AliyunSmsConfig
from powergate.notify.webhook import WebhookChannel, WebhookConfig, secret_key
from powergate.notify.wechat import WechatMpConfig, WechatTemplateChannel

MAX_SECRET_FILE_BYTES = 16 * 1024
MAX_TIMEOUT_S = 60.0


class ConfigError(ValueError):
    """A configuration mistake; the message names the section and the field."""


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    email: EmailConfig | None = None
    sms: AliyunSmsConfig | HttpProviderConfig | None = None
    voice: HttpProviderConfig | None = None
    wechat: WechatMpConfig | None = None
    push: PushConfig | None = None
    webhook: WebhookConfig | None = None


def load_notify_config(path: Path, environ: Mapping[str, str] | None = None) -> NotifyConfig:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read notification configuration: {error}") from None
    reader = _Reader(path.parent, os.environ if environ is None else environ)
    try:
        return NotifyConfig(
            email=reader.email(document["email"]) if "email" in document else None,
            sms=reader.sms(document["sms"]) if "sms" in document else None,
            voice=reader.http(document["voice"], "voice") if "voice" in document else None,
            wechat=reader.wechat(document["wechat"]) if "wechat" in document else None,
            push=reader.push(document["push"]) if "push" in document else None,
            webhook=reader.webhook(document["webhook"]) if "webhook" in document else None,
        )
    except AssertionError as error:  # a dataclass invariant: report it as the configuration mistake it is
        raise ConfigError(f"{path}: {error}") from None


def build_channels(config: NotifyConfig, client: httpx.AsyncClient | None = None) -> dict[str, Channel]:
    """One adapter per configured channel, keyed by channel name."""
    channels: dict[str, Channel] = {}
    if config.email is not None:
        channels["email"] = EmailChannel(config.email)
    if isinstance(config.sms, AliyunSmsConfig):
        channels["sms"] = AliyunSms(config.sms, client)
    elif config.sms is not None:
        channels["sms"] = HttpProviderChannel("sms", config.sms, client)
    if config.voice is not None:
        channels["voice"] = HttpProviderChannel("voice", config.voice, client)
    if config.wechat is not None:
        channels["wechat"] = WechatTemplateChannel(config.wechat, client)
    if config.push is not None:
        channels["push"] = PushChannel(config.push, client)
    if config.webhook is not None:
        channels["webhook"] = WebhookChannel(config.webhook, client)
    return channels


@dataclass(frozen=True, slots=True)
class _Reader:
    base: Path
    environ: Mapping[str, str]

    def text(self, section: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
        value = section.get(name, default)
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise ConfigError(f"[{where}] {name}: required text is missing")
        return value.strip()

    def secret(self, section: Mapping[str, Any], name: str, where: str, required: bool = True) -> str:
        if name in section:
            raise ConfigError(f"[{where}] {name}: secrets are never written inline; use {name}_file or {name}_env")
        if f"{name}_file" in section:
            return self.secret_file(str(section[f"{name}_file"]), f"[{where}] {name}_file")
        if f"{name}_env" in section:
            variable = str(section[f"{name}_env"])
            value = self.environ.get(variable, "").strip()
            if not value:
                raise ConfigError(f"[{where}] {name}_env: environment variable {variable} is not set")
            return value
        if required:
            raise ConfigError(f"[{where}] {name}: give {name}_file or {name}_env")
        return ""

    def secret_file(self, relative: str, what: str) -> str:
        path = self.base / relative
        try:
            if path.stat().st_size > MAX_SECRET_FILE_BYTES:
                raise ConfigError(f"{what}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{what}: cannot read {path}: {error.strerror}") from None

    def timeout(self, section: Mapping[str, Any], where: str, default: float) -> float:
        value = section.get("timeout_s", default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT_S:
            raise ConfigError(f"[{where}] timeout_s: must be a number in (0, {MAX_TIMEOUT_S}], got {value!r}")
        return float(value)

    def table(self, section: Mapping[str, Any], name: str, where: str) -> dict[str, str]:
        value = section.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"[{where}] {name}: must be a table of text values")
        return {str(k): v for k, v in value.items()}

    def email(self, section: Mapping[str, Any]) -> EmailConfig:
        security = self.text(section, "security", "email", "starttls")
        if security not in SECURITY_MODES:
            raise ConfigError(f"[email] security: must be one of {', '.join(SECURITY_MODES)}, got {security!r}")
        port = section.get("port", {"plain": 25, "starttls": 587, "tls": 465}[security])
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"[email] port: must be a TCP port, got {port!r}")
        username = self.text(section, "username", "email", "")
        return EmailConfig(
            host=self.text(section, "host", "email"),
            port=port,
            sender=self.text(section, "sender", "email"),
            security=security,
            sender_name=self.text(section, "sender_name", "email", "PowerGate"),
            username=username,
            password=self.secret(section, "password", "email", required=bool(username)),
            ca_file=str(self.base / section["ca_file"]) if "ca_file" in section else "",
            timeout_s=self.timeout(section, "email", 15.0),
        )

    def sms(self, section: Mapping[str, Any]) -> AliyunSmsConfig | HttpProviderConfig:
        provider = self.text(section, "provider", "sms")
        if provider == "aliyun" and isinstance(section.get("aliyun"), dict):
            return self.aliyun(section["aliyun"])
        if provider == "http" and isinstance(section.get("http"), dict):
            return self.http(section["http"], "sms.http")
        raise ConfigError(f"[sms] provider: must be 'aliyun' or 'http' with its [sms.{provider}] section")

    def aliyun(self, section: Mapping[str, Any]) -> AliyunSmsConfig:
        where = "sms.aliyun"
        return AliyunSmsConfig(
            access_key_id=self.text(section, "access_key_id", where),
            access_key_secret=self.secret(section, "access_key_secret", where),
            sign_name=self.text(section, "sign_name", where),
            templates=self.table(section, "templates", where),
            endpoint=self.text(section, "endpoint", where, "https://dysmsapi.aliyuncs.com/"),
            region_id=self.text(section, "region_id", where, "cn-hangzhou"),
            timeout_s=self.timeout(section, where, 10.0),
        )

    def http(self, section: Mapping[str, Any], where: str) -> HttpProviderConfig:
        headers = self.table(section, "headers", where)
        for header, variable in self.table(section, "headers_env", where).items():
            headers[header] = self.secret({f"{header}_env": variable}, header, where)
        body = section.get("body", {})
        if not isinstance(body, dict):
            raise ConfigError(f"[{where}] body: must be a table (the JSON body template)")
        method = self.text(section, "method", where, "POST").upper()
        if method not in ("POST", "PUT", "GET"):
            raise ConfigError(f"[{where}] method: must be POST, PUT or GET")
        return HttpProviderConfig(
            url=self.text(section, "url", where),
            method=method,
            headers=headers,
            body=body,
            success_field=self.text(section, "success_field", where, ""),
            success_values=tuple(str(v) for v in section.get("success_values", ())),
            retryable_values=tuple(str(v) for v in section.get("retryable_values", ())),
            id_field=self.text(section, "id_field", where, ""),
            timeout_s=self.timeout(section, where, 10.0),
        )

    def wechat(self, section: Mapping[str, Any]) -> WechatMpConfig:
        return WechatMpConfig(
            appid=self.text(section, "appid", "wechat"),
            secret=self.secret(section, "secret", "wechat"),
            templates=self.table(section, "templates", "wechat"),
            link_url=self.text(section, "link_url", "wechat", ""),
            base_url=self.text(section, "base_url", "wechat", "https://api.weixin.qq.com").rstrip("/"),
            timeout_s=self.timeout(section, "wechat", 10.0),
        )

    def push(self, section: Mapping[str, Any]) -> PushConfig:
        secret = self.whsec(self.secret(section, "secret", "push"), "[push] secret")
        return PushConfig(
            url=self.text(section, "url", "push"), secret=secret, timeout_s=self.timeout(section, "push", 10.0)
        )

    def webhook(self, section: Mapping[str, Any]) -> WebhookConfig:
        default = self.secret(section, "secret", "webhook", required=False) or None
        endpoints = {
            url: self.whsec(self.secret_file(file, f"[webhook.endpoints] {url}"), f"[webhook.endpoints] {url}")
            for url, file in self.table(section, "endpoints", "webhook").items()
        }
        return WebhookConfig(
            default_secret=self.whsec(default, "[webhook] secret") if default else None,
            endpoint_secrets=endpoints,
            timeout_s=self.timeout(section, "webhook", 10.0),
        )

    def whsec(self, value: str, what: str) -> str:
        if secret_key(value) is None:
            raise ConfigError(f"{what}: must be whsec_ followed by base64 of 24..64 bytes")
        return value
