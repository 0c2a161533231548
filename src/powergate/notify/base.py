"""The contract between the notification core and its channel adapters.

A notification leaves the core as one `OutgoingMessage` and comes back from a channel as one
`DeliveryResult`. Invariants:
- `message_id` is the idempotency key of one message to one recipient; every adapter passes it on to a
  provider that accepts one (the webhook id header, the SMS `OutId`, the e-mail `Message-ID`), so a retry
  after a lost reply cannot turn into a second message on the provider's side.
- `Channel.send` never raises for a provider error: an outage, a timeout or a rejection is a `DeliveryResult`
  with `ok=False`, a reason naming what failed, and `retryable` telling the core whether to try again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to one recipient on one channel."""

    message_id: str  # idempotency key: providers that support it get it; the webhook id header carries it
    channel: str  # "email" | "sms" | "voice" | "wechat" | "push" | "webhook"
    address: str  # e-mail address, phone number, openid, push token, webhook URL
    subject: str
    body: str
    language: str  # "zh-CN" | "en"
    event: str  # event kind
    data: Mapping[str, str]  # template variables (SMS/WeChat template parameters, webhook payload)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a channel made of one attempt to send a message."""

    ok: bool
    retryable: bool = True  # False: permanent failure (bad address, rejected by provider)
    provider_id: str = ""  # the provider's message id
    reason: str = ""


class Channel(Protocol):
    """A delivery channel adapter: e-mail, SMS, voice, WeChat, push or webhook."""

    name: str

    async def send(self, message: OutgoingMessage) -> DeliveryResult: ...
