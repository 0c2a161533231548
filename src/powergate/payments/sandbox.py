"""The sandbox channel: a pretend provider that pays at once, for the demo and the tests.

It behaves like an online provider, so the demo exercises the real path: ``create_order`` registers the
order in the sandbox's memory, ``pay`` marks it paid there and returns a notification (headers and body)
signed with HMAC-SHA256 under the configured secret, which ``verify_notification`` checks exactly as a real
adapter checks its provider's signature (including the +/-5 minute freshness window). ``query_order``
answers from the sandbox's memory, so a notification that is never delivered is still found by
reconciliation. ``withhold`` charges an order under a payment agreement (the withholding contract a payer signs
for auto-recharge) and pays it at once. No real money moves anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from powergate.payments.base import (
    MAX_NOTIFICATION_BYTES,
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
    TradeState,
    Verified,
    bounded,
    header,
)

FRESHNESS_S = 300
SIGNATURE_HEADER = "X-Sandbox-Signature"
TIMESTAMP_HEADER = "X-Sandbox-Timestamp"
MAX_ORDERS = 100_000


@dataclass(slots=True)
class _Trade:
    amount_fen: int
    txn_id: str | None = None
    paid_at: dt.datetime | None = None
    refunded_fen: int = 0
    closed: bool = False


class Sandbox:
    """An in-memory provider that pays instantly; thread-safe."""

    def __init__(self, secret: bytes) -> None:
        assert len(secret) >= 16, "the sandbox secret must be at least 16 bytes"
        self._secret = secret
        self._trades: dict[str, _Trade] = {}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> ChannelName:
        return ChannelName.SANDBOX

    def create_order(self, request: OrderRequest, now: dt.datetime) -> OrderOpened | ProviderFailure:
        with self._lock:
            if len(self._trades) >= MAX_ORDERS:
                return ProviderFailure(f"the sandbox holds at most {MAX_ORDERS} orders")
            self._trades.setdefault(request.order_no, _Trade(request.amount_fen))
        return OrderOpened(request.order_no, {"sandbox": "call pay(order_no) to pay it"})

    def pay(self, order_no: str, now: dt.datetime) -> tuple[dict[str, str], bytes]:
        """Pay a registered order at the pretend provider; returns the notification it would send."""
        with self._lock:
            trade = self._trades[order_no]
            assert not trade.closed, f"sandbox order {order_no} is closed"
            if trade.txn_id is None:
                trade.txn_id, trade.paid_at = f"SBX{secrets.token_hex(12)}", now
            assert trade.paid_at is not None
            body = {
                "id": f"SBXN{secrets.token_hex(12)}",
                "order_no": order_no,
                "txn_id": trade.txn_id,
                "amount_fen": trade.amount_fen,
                "paid_at": trade.paid_at.isoformat(),
            }
        raw = json.dumps(body, sort_keys=True).encode()
        return self.signed_headers(raw, now), raw

    # -- payment agreements (委托代扣 / 周期扣款): the payer allowed the merchant to charge without asking --------

    def withhold(self, request: OrderRequest, agreement_id: str, now: dt.datetime) -> OrderOpened | ProviderFailure:
        """Charge ``request`` under a payment agreement: the sandbox pays it at once (idempotent per order
        number, as providers de-duplicate by it). A revoked agreement is refused for good."""
        if not agreement_id or len(agreement_id) > 64:
            return ProviderFailure("agreement_id must be 1..64 characters", retryable=False)
        with self._lock:
            if agreement_id in self._revoked:
                return ProviderFailure(f"agreement {agreement_id} was revoked by the payer", retryable=False)
            if len(self._trades) >= MAX_ORDERS and request.order_no not in self._trades:
                return ProviderFailure(f"the sandbox holds at most {MAX_ORDERS} orders")
            trade = self._trades.setdefault(request.order_no, _Trade(request.amount_fen))
            if trade.closed:
                return ProviderFailure(f"sandbox order {request.order_no} is closed", retryable=False)
            if trade.txn_id is None:
                trade.txn_id, trade.paid_at = f"SBX{secrets.token_hex(12)}", now
        return OrderOpened(request.order_no, {"agreement_id": agreement_id})

    def revoke_agreement(self, agreement_id: str) -> None:
        """The payer cancels the agreement at the provider (the sandbox's stand-in for that)."""
        with self._lock:
            if len(self._revoked) < MAX_ORDERS:
                self._revoked.add(agreement_id)

    def signed_headers(self, body: bytes, now: dt.datetime) -> dict[str, str]:
        timestamp = str(int(now.timestamp()))
        return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: self._mac(timestamp, body)}

    def _mac(self, timestamp: str, body: bytes) -> str:
        return hmac.new(self._secret, timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()

    def verify_notification(self, headers: Mapping[str, str], body: bytes, now: dt.datetime) -> Verified | Rejected:
        if len(body) > MAX_NOTIFICATION_BYTES:
            return Rejected(f"body is {len(body)} bytes, more than {MAX_NOTIFICATION_BYTES}")
        timestamp = header(headers, TIMESTAMP_HEADER) or ""
        signature = header(headers, SIGNATURE_HEADER) or ""
        if not timestamp.isdigit() or len(timestamp) > 12:
            return Rejected(f"header {TIMESTAMP_HEADER} is missing or not a Unix time")
        if abs(int(now.timestamp()) - int(timestamp)) > FRESHNESS_S:
            return Rejected(f"header {TIMESTAMP_HEADER} is outside the +/-{FRESHNESS_S} s window")
        if not hmac.compare_digest(signature, self._mac(timestamp, body)):
            return Rejected(f"header {SIGNATURE_HEADER} does not verify")
        try:
            data = json.loads(body)
            paid_at = dt.datetime.fromisoformat(data["paid_at"])
            verified = Verified(
                str(data["order_no"]), str(data["txn_id"]), int(data["amount_fen"]), paid_at, str(data["id"])
            )
        except (ValueError, KeyError, TypeError):
            return Rejected("body is not a sandbox payment")
        if bounded(verified.order_no, 64) is None or paid_at.tzinfo is None:
            return Rejected("body has a bad order_no or paid_at")
        return verified

    def query_order(self, order_no: str, now: dt.datetime) -> QueryResult | ProviderFailure:
        with self._lock:
            trade = self._trades.get(order_no)
            if trade is None:
                return QueryResult(order_no, TradeState.UNKNOWN_ORDER)
            if trade.txn_id is not None:
                return QueryResult(order_no, TradeState.PAID, trade.txn_id, trade.amount_fen, trade.paid_at)
            return QueryResult(order_no, TradeState.CLOSED if trade.closed else TradeState.UNPAID)

    def close_order(self, order_no: str, now: dt.datetime) -> ProviderFailure | None:
        with self._lock:
            trade = self._trades.get(order_no)
            if trade is not None and trade.txn_id is None:
                trade.closed = True
        return None

    def refund(self, request: RefundOrder, now: dt.datetime) -> RefundAccepted | ProviderFailure:
        with self._lock:
            trade = self._trades.get(request.order_no)
            if trade is None or trade.txn_id is None:
                return RefundAccepted(request.refund_no, RefundState.FAILED, None, "order not paid in the sandbox")
            if trade.refunded_fen + request.amount_fen > trade.amount_fen:
                return RefundAccepted(request.refund_no, RefundState.FAILED, None, "more than was paid")
            trade.refunded_fen += request.amount_fen
        return RefundAccepted(request.refund_no, RefundState.SUCCEEDED, f"SBXR{secrets.token_hex(8)}")

    def reply(self, handled: bool, reason: str) -> Reply:
        return Reply(200 if handled else 400, "text/plain", b"OK" if handled else reason.encode()[:200])
