"""The bank transfer channel: the tenant transfers money quoting the order number; finance confirms it.

The order stays ``created`` until finance sees the transfer on the statement and confirms it with the bank's
reference (``confirmation``); the service credits it through the same path as an online notification. The
reference is the transaction id, so one transfer pays one order. A refund to a bank transfer is a transfer
back that finance makes by hand; it is recorded here as done.
"""

from __future__ import annotations

import datetime as dt
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


class BankTransfer:
    """Manual bank transfers, confirmed by finance with the bank's reference."""

    @property
    def name(self) -> ChannelName:
        return ChannelName.BANK

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        if request.method != "transfer":
            return ProviderFailure(f"method {request.method!r}: bank orders are 'transfer'", False)
        # The payer quotes the order number as the transfer's remark so finance can match it.
        return OrderOpened(request.order_no, {"remark": request.order_no})

    def confirmation(self, order_no: str, amount_fen: int, reference: str, now: dt.datetime) -> Verified | Rejected:
        return offline_confirmation(self.name, order_no, amount_fen, reference, now)

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected:
        return Rejected(f"the bank channel {OFFLINE_NOTIFICATION}")

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure:
        return ProviderFailure("the bank channel has no provider to query", retryable=False)

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None:
        return None

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure:
        return RefundAccepted(request.refund_no, RefundState.SUCCEEDED, None, "transferred back by finance")

    def reply(self, handled: bool, reason: str) -> Reply:
        return Reply(200 if handled else 400, "text/plain", reason.encode()[:200])
