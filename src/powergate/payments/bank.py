"""The bank transfer channel: the tenant transfers money quoting the order number; finance confirms it.

The order stays ``created`` until finance sees the transfer on the statement and confirms it with the bank's
reference (``confirmation``); the service credits it through the same path as an online notification. The
reference is the transaction id, so one transfer pays one order. A refund to a bank transfer is a transfer
back that finance makes by hand; it is recorded here as done.
"""

from __future__ import annotations

import datetime as dt

from powergate.payments.base import ChannelName, OrderOpened, OrderRequest, ProviderFailure
from powergate.payments.offline import OfflineChannel


class BankTransfer(OfflineChannel):
    """Manual bank transfers, confirmed by finance with the bank's reference."""

    channel = ChannelName.BANK
    label = "the bank channel"
    refund_note = "transferred back by finance"

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        if request.method != "transfer":
            return ProviderFailure(f"method {request.method!r}: bank orders are 'transfer'", False)
        # The payer quotes the order number as the transfer's remark so finance can match it.
        return OrderOpened(request.order_no, {"remark": request.order_no})
