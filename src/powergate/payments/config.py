"""Payment channel configuration: merchant ids, URLs, and keys loaded from the PEM files it names.

Keys and certificates are never in the code or the repository: a TOML file names the files that hold them
(paths relative to the TOML file), and this module loads and checks them once at start-up. A mistake is
a ``ConfigError`` naming the section and the field, raised before any payment is taken.

Example (every section is optional; a channel without a section is simply not available)::

    [wechat]
    mchid = "1900000001"
    appid = "wx0123456789abcdef"
    merchant_serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
    merchant_private_key = "keys/apiclient_key.pem"
    apiv3_key_file = "keys/apiv3.key"              # the 32-character APIv3 key
    notify_url = "https://pay.example.com/notify/wechat"
    base_url = "https://api.mch.weixin.qq.com"
    [wechat.platform_keys]                         # serial -> public key or platform certificate (PEM)
    "PUB_KEY_ID_0114232134912410000000000000" = "keys/wechatpay_pub.pem"

    [alipay]
    app_id = "2021000000000000"
    seller_id = "2088000000000000"
    app_private_key = "keys/alipay_app_key.pem"
    alipay_public_key = "keys/alipay_public.pem"
    notify_url = "https://pay.example.com/notify/alipay"
    gateway_url = "https://openapi.alipay.com/gateway.do"

    [sandbox]
    secret_file = "keys/sandbox.secret"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
MAX_KEY_FILE_BYTES = 64 * 1024
MIN_RSA_BITS = 2048
WECHAT_BASE_URL = "https://api.mch.weixin.qq.com"
ALIPAY_GATEWAY_URL = "https://openapi.alipay.com/gateway.do"


class ConfigError(ValueError):
    """A configuration mistake; the message names the section and field."""


@dataclass(frozen=True, slots=True)
class WechatConfig:
    mchid: str
    appid: str
    merchant_serial: str
    merchant_private_key: RSAPrivateKey
    apiv3_key: bytes
    platform_keys: Mapping[str, RSAPublicKey]
    notify_url: str
    base_url: str = WECHAT_BASE_URL
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class AlipayConfig:
    app_id: str
    seller_id: str
    app_private_key: RSAPrivateKey
    alipay_public_key: RSAPublicKey
    notify_url: str
    gateway_url: str = ALIPAY_GATEWAY_URL
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    secret: bytes


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    wechat: WechatConfig | None = None
    alipay: AlipayConfig | None = None
    sandbox: SandboxConfig | None = None


def load_payments_config(path: Path) -> PaymentsConfig:
    """Read the TOML file at ``path`` and every key file it names."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read payments configuration: {error}") from None
    base = path.parent
    return PaymentsConfig(
        wechat=_wechat(document["wechat"], base) if "wechat" in document else None,
        alipay=_alipay(document["alipay"], base) if "alipay" in document else None,
        sandbox=_sandbox(document["sandbox"], base) if "sandbox" in document else None,
    )


def _text(section: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = section.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"[{where}] {name}: required text is missing")
    return value.strip()


def _timeout(section: Mapping[str, Any], where: str) -> float:
    value = section.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT_S:
        raise ConfigError(f"[{where}] timeout_s: must be a number in (0, {MAX_TIMEOUT_S}], got {value!r}")
    return float(value)


def _wechat(section: Mapping[str, Any], base: Path) -> WechatConfig:
    where = "wechat"
    apiv3_key = read_small_file(base / _text(section, "apiv3_key_file", where), f"[{where}] apiv3_key_file").strip()
    if len(apiv3_key) != 32:
        raise ConfigError(f"[{where}] apiv3_key_file: the APIv3 key must be 32 bytes, got {len(apiv3_key)}")
    platform = section.get("platform_keys")
    if not isinstance(platform, dict) or not platform:
        raise ConfigError(f"[{where}] platform_keys: name at least one serial = PEM file")
    keys = {
        str(serial): load_public_key(base / str(file), f"[{where}.platform_keys] {serial}")
        for serial, file in platform.items()
    }
    return WechatConfig(
        mchid=_text(section, "mchid", where),
        appid=_text(section, "appid", where),
        merchant_serial=_text(section, "merchant_serial", where),
        merchant_private_key=load_private_key(
            base / _text(section, "merchant_private_key", where), f"[{where}] merchant_private_key"
        ),
        apiv3_key=apiv3_key,
        platform_keys=keys,
        notify_url=_text(section, "notify_url", where),
        base_url=_text(section, "base_url", where, WECHAT_BASE_URL).rstrip("/"),
        timeout_s=_timeout(section, where),
    )


def _alipay(section: Mapping[str, Any], base: Path) -> AlipayConfig:
    where = "alipay"
    return AlipayConfig(
        app_id=_text(section, "app_id", where),
        seller_id=_text(section, "seller_id", where),
        app_private_key=load_private_key(base / _text(section, "app_private_key", where), f"[{where}] app_private_key"),
        alipay_public_key=load_public_key(
            base / _text(section, "alipay_public_key", where), f"[{where}] alipay_public_key"
        ),
        notify_url=_text(section, "notify_url", where),
        gateway_url=_text(section, "gateway_url", where, ALIPAY_GATEWAY_URL),
        timeout_s=_timeout(section, where),
    )


def _sandbox(section: Mapping[str, Any], base: Path) -> SandboxConfig:
    secret = read_small_file(base / _text(section, "secret_file", "sandbox"), "[sandbox] secret_file").strip()
    if len(secret) < 16:
        raise ConfigError("[sandbox] secret_file: the secret must be at least 16 bytes")
    return SandboxConfig(secret)


def read_small_file(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{what}: {path} is larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{what}: cannot read {path}: {error.strerror}") from None


def load_private_key(path: Path, what: str) -> RSAPrivateKey:
    """An unencrypted RSA private key (PKCS#8 or PKCS#1 PEM) of at least 2048 bits."""
    try:
        key = serialization.load_pem_private_key(read_small_file(path, what), password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{what}: {path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(key, RSAPrivateKey) or key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{what}: {path} must hold an RSA key of at least {MIN_RSA_BITS} bits")
    return key


def load_public_key(path: Path, what: str) -> RSAPublicKey:
    """An RSA public key from a PEM public key, a PEM certificate, or bare base64 (Alipay's console form)."""
    data = read_small_file(path, what).strip()
    if not data.startswith(b"-----"):
        data = b"-----BEGIN PUBLIC KEY-----\n" + data + b"\n-----END PUBLIC KEY-----\n"
    try:
        if b"CERTIFICATE" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise ConfigError(f"{what}: {path} is not a PEM public key or certificate: {error}") from None
    if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{what}: {path} must hold an RSA public key of at least {MIN_RSA_BITS} bits")
    return key
