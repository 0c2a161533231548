"""The cashier channel: cash or card at the management office, with a receipt number and an operator.

There is no provider to call: the operator takes the money and confirms the order with the receipt number
(``confirmation``), which the service credits through the same path as an online notification. The receipt
number is the transaction id, so one receipt pays one order. A refund in cash is paid out at the counter.
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

METHODS = ("cash", "card")


class Cashier:
    """Cash or card taken by an operator at a site's office."""

    @property
    def name(self) -> ChannelName:
        return ChannelName.CASHIER

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        if request.method not in METHODS:
            return ProviderFailure(f"method {request.method!r}: the cashier takes {' or '.join(METHODS)}", False)
        return OrderOpened(request.order_no, {"method": request.method})

    def confirmation(self, order_no: str, amount_fen: int, receipt_no: str, now: dt.datetime) -> Verified | Rejected:
        return offline_confirmation(self.name, order_no, amount_fen, receipt_no, now)

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected:
        return Rejected(f"the cashier channel {OFFLINE_NOTIFICATION}")

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure:
        return ProviderFailure("the cashier channel has no provider to query", retryable=False)

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None:
        return None

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure:
        return RefundAccepted(request.refund_no, RefundState.SUCCEEDED, None, "paid out at the counter")

    def reply(self, handled: bool, reason: str) -> Reply:
        return Reply(200 if handled else 400, "text/plain", reason.encode()[:200])
