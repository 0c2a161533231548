"""Payments as the use cases see them: the channel interface and the values every adapter returns.

These live in the domain (pure: no I/O, no clock) so that ``powergate.services.payments`` can speak them
without importing the adapters, which sit in the outer ``payments`` layer. An adapter never touches the
database and never reads the clock: ``now`` is passed in. Everything that can go wrong at a provider (a
forged notification, a stale timestamp, a network error, a refusal) comes back as a value with a message
naming the field or the cause; only programmer errors raise.

Amounts cross this boundary in fen (``amount_fen``, the currency's minor unit) because that is what every
provider speaks; the service converts to ledger micros with ``powergate.domain.money.minor_to_micros``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

MAX_NOTIFICATION_BYTES = 64 * 1024
"""A payment notification is a few hundred bytes; anything above this is refused unread."""
MAX_FIELD_CHARS = 128


class ChannelName(StrEnum):
    WECHAT = "wechat"
    ALIPAY = "alipay"
    CASHIER = "cashier"
    BANK = "bank"
    SANDBOX = "sandbox"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What a provider needs to open a payment for one of our orders."""

    order_no: str
    amount_fen: int
    description: str
    expires_at: dt.datetime
    method: str
    """Channel-specific: ``jsapi`` / ``native`` (WeChat), ``precreate`` / ``wap`` (Alipay), ``cash`` / ``card``."""
    payer_id: str | None = None
    """WeChat JSAPI: the payer's openid."""
    reference: str | None = None
    """Cashier receipt number or bank transfer reference."""


@dataclass(frozen=True, slots=True)
class OrderOpened:
    """The provider accepted the order; ``pay_parameters`` is what the payer's app or browser needs."""

    order_no: str
    pay_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A provider call that did not succeed (network, HTTP status, refusal, bad signature on the answer)."""

    reason: str
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Verified:
    """An authentic notification (or query answer) saying that an order was paid."""

    order_no: str
    provider_txn_id: str
    amount_fen: int
    paid_at: dt.datetime
    notification_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A notification that proves nothing; ``reason`` says why, ``claimed_id`` what it called itself."""

    reason: str
    claimed_id: str | None = None
    order_no: str | None = None


class TradeState(StrEnum):
    PAID = "paid"
    UNPAID = "unpaid"
    CLOSED = "closed"
    REFUNDED = "refunded"
    UNKNOWN_ORDER = "unknown_order"


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The provider's view of one order."""

    order_no: str
    state: TradeState
    provider_txn_id: str | None = None
    amount_fen: int | None = None
    paid_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class RefundOrder:
    refund_no: str
    order_no: str
    provider_txn_id: str | None
    amount_fen: int
    order_amount_fen: int
    reason: str


class RefundState(StrEnum):
    SUCCEEDED = "succeeded"
    PROCESSING = "processing"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RefundAccepted:
    refund_no: str
    state: RefundState
    provider_refund_id: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """The HTTP answer we owe the provider for a notification (it retries until it sees success)."""

    status: int
    content_type: str
    body: bytes


class PaymentChannel(Protocol):
    """One payment provider. Every method is free of database access and clock reads."""

    @property
    def name(self) -> ChannelName: ...

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure: ...

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected: ...

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure: ...

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None: ...

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure: ...

    def reply(self, handled: bool, reason: str) -> Reply: ...


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name (HTTP header names are case-insensitive)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def bounded(value: object, limit: int = MAX_FIELD_CHARS) -> str | None:
    """``value`` as a non-empty string of at most ``limit`` characters, else ``None``."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    return value


OFFLINE_NOTIFICATION = "takes no notifications: payments are confirmed by an operator"
MAX_REFERENCE_CHARS = 64


def offline_confirmation(
    channel: ChannelName, order_no: str, amount_fen: int, reference: str, now: dt.datetime
) -> Verified | Rejected:
    """An operator's confirmation (cashier receipt, bank reference) as a ``Verified`` payment.

    The reference is the provider transaction id, so one receipt or one bank transfer can pay one order only
    (UNIQUE per channel in the database) and the ledger key ``<channel>:<reference>`` credits it once.
    """
    text = reference.strip()
    if not text or len(text) > MAX_REFERENCE_CHARS or not text.isprintable():
        return Rejected(f"reference: must be 1..{MAX_REFERENCE_CHARS} printable characters, got {reference!r}")
    if amount_fen <= 0:
        return Rejected(f"amount_fen: must be positive, got {amount_fen}", order_no=order_no)
    return Verified(order_no, text, amount_fen, now, f"{channel.value}:{text}")
