"""What the offline channels (cashier, bank transfer) share: no provider to call, confirmation by a person.

An offline order is paid when a person confirms it with a reference (the cashier's receipt number, the bank's
transfer reference); that reference is the transaction id, so one reference pays one order. There are no
notifications to verify and no provider to query or close; a refund is money handed or transferred back by a
person, recorded as done. Subclasses say their name, which orders they accept and how a refund is paid.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Mapping

from powergate.payments.base import (
    OFFLINE_NOTIFICATION,
    ChannelName,
    OrderOpened,
    OrderRequest,
    ProviderFailure,
    QueryResult,
    RefundAccepted,
    RefundOrder,
    RefundState,
    Rejected,
    Reply,
    Verified,
    offline_confirmation,
)


class OfflineChannel(ABC):
    channel: ChannelName
    label: str
    """How messages name the channel: "the cashier channel"."""
    refund_note: str
    """What a refund means for this channel: "paid out at the counter"."""

    @property
    def name(self) -> ChannelName:
        return self.channel

    @abstractmethod
    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        """Open an order: which payment methods the channel takes, and what the payer needs to pay it."""

    def confirmation(self, order_no: str, amount_fen: int, reference: str, now: dt.datetime) -> Verified | Rejected:
        return offline_confirmation(self.name, order_no, amount_fen, reference, now)

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected:
        return Rejected(f"{self.label} {OFFLINE_NOTIFICATION}")

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure:
        return ProviderFailure(f"{self.label} has no provider to query", retryable=False)

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None:
        return None

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure:
        return RefundAccepted(request.refund_no, RefundState.SUCCEEDED, None, self.refund_note)

    def reply(self, handled: bool, reason: str) -> Reply:
        return Reply(200 if handled else 400, "text/plain", reason.encode()[:200])
