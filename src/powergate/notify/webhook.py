"""Signed webhooks for integrators, in the Standard Webhooks style, and the check integrators run.

Each delivery is one POST of a JSON body with three headers:

    webhook-id:        the message id (the idempotency key: identical on every retry of one message)
    webhook-timestamp: integer Unix seconds of this attempt
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

where the key is the bytes of the endpoint secret "whsec_<base64>". Invariants:
- The signature covers the id, the time and the exact body bytes sent; `verify_webhook` recomputes it over the
  raw bytes received, compares in constant time and refuses a timestamp more than `tolerance_s` away from
  its clock (replay protection). Several space-separated signatures are accepted (secret rotation).
- 2xx is delivered; 408/425/429, 5xx, timeouts and connection failures are retryable; any other 4xx and any
  3xx (redirects are not followed) are permanent.
- Secrets are never logged or put in a `DeliveryResult` reason.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from powergate.notify._http import failed, parse_json_object, request, status_failure
from powergate.notify.base import DeliveryResult, OutgoingMessage

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 5 * 60
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
MAX_BODY_BYTES = 256 * 1024
MAX_URL_CHARS = 2048
MAX_SIGNATURES = 8


def generate_secret() -> str:
    """A fresh endpoint secret to show an integrator once: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes | None:
    """The HMAC key inside a ``whsec_<base64>`` secret, or None when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES else None


def sign_webhook(secret: str, message_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery."""
    key = secret_key(secret)
    assert key is not None, "the webhook secret must be whsec_ followed by base64 of 24..64 bytes"
    signed = f"{message_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def webhook_headers(secret: str, message_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": sign_webhook(secret, message_id, timestamp_s, body),
    }


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    message_id: str
    timestamp_s: int
    payload: object  # the parsed JSON body


@dataclass(frozen=True, slots=True)
class RejectedWebhook:
    reason: str


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> VerifiedWebhook | RejectedWebhook:
    """Check a received webhook: headers present, timestamp fresh, one signature matching one secret.

    ``headers`` may use any case; ``body`` must be the raw bytes received (not re-encoded JSON).
    """
    lower = {name.lower(): value for name, value in headers.items()}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not lower.get(name):
            return RejectedWebhook(f"header {name} is missing")
    message_id, stamp = lower["webhook-id"], lower["webhook-timestamp"]
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return RejectedWebhook("header webhook-timestamp is not integer Unix seconds")
    timestamp_s = int(stamp)
    if abs(now_s - timestamp_s) > tolerance_s:
        return RejectedWebhook(f"header webhook-timestamp is {now_s - timestamp_s} s from now; limit {tolerance_s} s")
    if len(body) > MAX_BODY_BYTES:
        return RejectedWebhook(f"body is larger than {MAX_BODY_BYTES} bytes")
    if not _any_signature_matches(secret, message_id, timestamp_s, body, lower["webhook-signature"]):
        return RejectedWebhook("header webhook-signature matches no secret")
    try:
        payload = json.loads(body)
    except ValueError:
        return RejectedWebhook("body is not JSON")
    return VerifiedWebhook(message_id, timestamp_s, payload)


def _any_signature_matches(
    secret: str | Sequence[str], message_id: str, timestamp_s: int, body: bytes, header: str
) -> bool:
    candidates = [secret] if isinstance(secret, str) else list(secret)
    offered = [part for part in header.split(" ") if part][:MAX_SIGNATURES]
    matched = False
    for candidate in candidates:
        if secret_key(candidate) is None:
            continue
        expected = sign_webhook(candidate, message_id, timestamp_s, body)
        for signature in offered:
            # No early exit: every comparison runs, so timing says nothing about which one matched.
            matched |= hmac.compare_digest(expected.encode(), signature.encode())
    return matched


def webhook_body(message: OutgoingMessage, sent_at: dt.datetime) -> bytes:
    """The JSON body: event type, time of this attempt, the template variables and the rendered text."""
    document = {
        "type": message.event,
        "timestamp": sent_at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "data": dict(message.data),
        "message": {"subject": message.subject, "body": message.body, "language": message.language},
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Signing secrets: one per endpoint URL, and a default for endpoints without their own."""

    default_secret: str | None = None
    endpoint_secrets: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0

    def secret_for(self, url: str) -> str | None:
        return self.endpoint_secrets.get(url, self.default_secret)


class WebhookChannel:
    """POSTs each message to the integrator's URL (``message.address``), signed with its secret."""

    name = "webhook"

    def __init__(
        self,
        config: WebhookConfig,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.config = config
        self._client = client
        self._clock = clock

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        url = message.address
        if not url.startswith(("http://", "https://")) or len(url) > MAX_URL_CHARS:
            return failed("webhook: address is not an http(s) URL", retryable=False)
        secret = self.config.secret_for(url)
        if secret is None or secret_key(secret) is None:
            return failed("webhook: no valid whsec_ signing secret configured for this endpoint", retryable=False)
        return await post_signed(self._client, url, secret, message, self._clock(), self.config.timeout_s, "webhook")


async def post_signed(
    client: httpx.AsyncClient | None,
    url: str,
    secret: str,
    message: OutgoingMessage,
    now: dt.datetime,
    timeout_s: float,
    what: str,
    body: bytes | None = None,
) -> DeliveryResult:
    """POST a signed JSON body and judge the answer by status (shared with app push)."""
    content = webhook_body(message, now) if body is None else body
    headers = webhook_headers(secret, message.message_id, int(now.timestamp()), content)
    headers["Content-Type"] = "application/json; charset=utf-8"
    answer = await request(client, "POST", url, timeout_s=timeout_s, headers=headers, content=content)
    if isinstance(answer, DeliveryResult):
        return answer
    problem = status_failure(what, answer)
    if problem is not None:
        return problem
    document = parse_json_object(answer.body) or {}
    return DeliveryResult(ok=True, provider_id=str(document.get("id", ""))[:128])
