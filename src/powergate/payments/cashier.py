"""The cashier channel: cash or card at the management office, with a receipt number and an operator.

There is no provider to call: the operator takes the money and confirms the order with the receipt number
(``confirmation``), which the service credits through the same path as an online notification. The receipt
number is the transaction id, so one receipt pays one order. A refund in cash is paid out at the counter.
"""

from __future__ import annotations

import datetime as dt

from powergate.payments.base import ChannelName, OrderOpened, OrderRequest, ProviderFailure
from powergate.payments.offline import OfflineChannel

METHODS = ("cash", "card")


class Cashier(OfflineChannel):
    """Cash or card taken by an operator at a site's office."""

    channel = ChannelName.CASHIER
    label = "the cashier channel"
    refund_note = "paid out at the counter"

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        if request.method not in METHODS:
            return ProviderFailure(f"method {request.method!r}: the cashier takes {' or '.join(METHODS)}", False)
        return OrderOpened(request.order_no, {"method": request.method})
