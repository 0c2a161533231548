"""App push through the push gateway's webhook: one signed JSON POST per message.

The app's push gateway (our own relay to APNs / FCM / the vendor channels) receives a Standard Webhooks signed
POST (see `powergate.notify.webhook`) carrying the device push token from ``message.address``, so it can check
the sender and drop a retried duplicate by ``webhook-id``. Invariants: the token is never put in a reason; a
gateway answering 404 or 410 means the token is gone (permanent), 5xx or 429 means try later.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from powergate.notify._http import failed
from powergate.notify.base import DeliveryResult, OutgoingMessage
from powergate.notify.webhook import post_signed, secret_key

MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class PushConfig:
    url: str  # the push gateway endpoint
    secret: str  # whsec_<base64>, shared with the gateway
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        assert self.url.startswith(("http://", "https://")), "push url must be http(s)"
        assert secret_key(self.secret) is not None, "push secret must be whsec_<base64 of 24..64 bytes>"
        assert 0 < self.timeout_s <= 60, f"timeout_s {self.timeout_s}"


def push_body(message: OutgoingMessage, sent_at: dt.datetime) -> bytes:
    document = {
        "id": message.message_id,
        "token": message.address,
        "title": message.subject,
        "body": message.body,
        "language": message.language,
        "event": message.event,
        "data": dict(message.data),
        "sent_at": sent_at.astimezone(dt.UTC).isoformat(timespec="seconds"),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PushChannel:
    name = "push"

    def __init__(
        self,
        config: PushConfig,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.config = config
        self._client = client
        self._clock = clock

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        if not message.address or len(message.address) > MAX_TOKEN_CHARS:
            return failed("push: address is not a push token", retryable=False)
        now = self._clock()
        return await post_signed(
            self._client,
            self.config.url,
            self.config.secret,
            message,
            now,
            self.config.timeout_s,
            "push gateway",
            body=push_body(message, now),
        )
