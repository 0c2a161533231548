"""The payment channel interface every adapter in this package implements, and the values it returns.

They are defined in ``powergate.domain.payments`` (pure, so the use cases in ``powergate.services`` can use
them without importing this outer layer) and re-exported here for the adapters.
"""

from __future__ import annotations

from powergate.domain.payments import (
    MAX_FIELD_CHARS,
    MAX_NOTIFICATION_BYTES,
    MAX_REFERENCE_CHARS,
    OFFLINE_NOTIFICATION,
    ChannelName,
    OrderOpened,
    OrderRequest,
    PaymentChannel,
    ProviderFailure,
    QueryResult,
    RefundAccepted,
    RefundOrder,
    RefundState,
    Rejected,
    Reply,
    TradeState,
    Verified,
    bounded,
    header,
    offline_confirmation,
)

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_NOTIFICATION_BYTES",
    "MAX_REFERENCE_CHARS",
    "OFFLINE_NOTIFICATION",
    "ChannelName",
    "OrderOpened",
    "OrderRequest",
    "PaymentChannel",
    "ProviderFailure",
    "QueryResult",
    "RefundAccepted",
    "RefundOrder",
    "RefundState",
    "Rejected",
    "Reply",
    "TradeState",
    "Verified",
    "bounded",
    "header",
    "offline_confirmation",
]
