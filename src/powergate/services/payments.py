"""Payments: orders before payment, notifications matched to them, reconciliation by query, refunds.

How a payment becomes exactly one credit:
1. ``create_order`` writes the order (state ``created``, amount in fen, expiry) *before* the payer is sent to
   the provider, after checking the site's policy: channel enabled, minimum purchase, hoarding limit.
2. A notification is verified by the channel's adapter (signature, freshness, decryption) outside any
   transaction. Then, in ONE transaction: the order is found by order number, locked, and must match the
   channel and the amount; it is marked ``paid`` with a conditional update; the ledger ``recharge_entry`` is
   posted with the idempotency key ``<channel>:<provider transaction id>``; the notification and its verdict
   are logged; an audit record names the source. A replay (the same notification five times at once, a
   late one after a query already found the payment) finds the order paid by the same transaction and is
   logged as ``duplicate``: nothing is credited twice, because the order row lock serialises the replays, the
   state update is conditional, the provider transaction id is UNIQUE per channel, and the ledger key is
   UNIQUE. Forged, stale, mismatched and unknown-order notifications are ``rejected`` with the reason.
3. ``reconcile_pending`` asks the provider about orders still ``created`` near their expiry; a payment whose
   notification never came is credited through the same path (step 2); an unpaid order past its expiry is
   closed at the provider and marked ``expired``.
4. ``refund`` takes credit out of the wallet through the ledger (``refund_entry``; the store refuses to go
   below the wallet's limit) and pays it back in cash or through the original channel's refund API. A refund
   the provider refuses is reversed by a new entry (the ledger is append-only). Each refund is audited.

Money here is in fen (what providers speak) for orders and refunds, and micros in the ledger, converted by
``minor_to_micros``; never floats.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from powergate.domain.ledger import Entry, recharge_entry, refund_entry, reversal_of, wallet_code
from powergate.domain.money import format_money, minor_to_micros
from powergate.domain.payments import (
    ChannelName,
    OrderRequest,
    PaymentChannel,
    ProviderFailure,
    RefundAccepted,
    RefundOrder,
    RefundState,
    Rejected,
    Reply,
    TradeState,
    Verified,
    offline_confirmation,
)
from powergate.services import meterside, prepaid
from powergate.store.audit import record_audit
from powergate.store.ledger import InsufficientCredit, balance, post
from powergate.store.tables import ledger_accounts
from powergate.store.tables_payments import MAX_ORDER_FEN, orders, payment_notifications, refunds
from powergate.store.tables_prepaid import outbox

log = logging.getLogger(__name__)

Channels = Mapping[str, PaymentChannel]
"""The configured adapters by channel name (``wechat``, ``alipay``, ``cashier``, ``bank``, ``sandbox``)."""

SYSTEM_ACTOR = "system:payments"
ONLINE = (ChannelName.WECHAT, ChannelName.ALIPAY, ChannelName.SANDBOX)
OFFLINE = (ChannelName.CASHIER, ChannelName.BANK)
DEFAULT_EXPIRY_S = {
    ChannelName.WECHAT: 15 * 60,
    ChannelName.ALIPAY: 15 * 60,
    ChannelName.SANDBOX: 15 * 60,
    ChannelName.CASHIER: 60 * 60,
    ChannelName.BANK: 7 * 24 * 3600,
}
MAX_EXPIRY_S = 30 * 24 * 3600
RECONCILE_LEAD_S = 120
"""Query an unpaid order this long before it expires: late enough that most payers are done, early enough
that a lost notification is found while the order is still open."""
RECONCILE_GRACE_S = 60
"""After expiry, wait this long before closing, for a payment that raced the deadline."""
MAX_RECONCILE_BATCH = 500
MAX_TEXT_CHARS = 2_000


CHANNEL_NAMES: Mapping[str, str] = {
    "wechat": "WeChat Pay",
    "alipay": "Alipay",
    "cashier": "cashier",
    "bank": "bank transfer",
    "sandbox": "sandbox",
}
"""How a channel is named to a tenant ("received via WeChat Pay")."""


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PaymentPolicy:
    """A site's payment rules (from ``powergate.services.accounts.site_payment_policy`` or configuration)."""

    channels: frozenset[str]
    min_purchase_micros: int = 0
    max_balance_micros: int | None = None
    """The hoarding limit: a recharge may not take the wallet above this; ``None``: no limit."""
    site_id: str | None = None


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A tenant (or the cashier for a tenant) wants to recharge ``wallet`` with ``amount_fen``."""

    wallet: str
    amount_fen: int
    channel: str
    method: str
    site_id: str | None = None
    description: str = ""
    payer_id: str | None = None
    order_no: str | None = None
    expiry_s: int | None = None
    operator: str | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class OrderPlaced:
    order_no: str
    expires_at: dt.datetime
    pay_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    """An operating error: ``field`` names what is wrong, ``message`` says why."""

    field: str
    message: str


@dataclass(frozen=True, slots=True)
class NotificationOutcome:
    verdict: Verdict
    reason: str
    order_no: str | None
    reply: Reply


@dataclass(frozen=True, slots=True)
class Settlement:
    verdict: Verdict
    reason: str
    order_no: str | None


def new_order_no(now: dt.datetime, prefix: str = "PG") -> str:
    """26 characters, valid for WeChat Pay (6..32 of [A-Za-z0-9_-|*]) and Alipay (<= 64)."""
    return f"{prefix}{now.astimezone(dt.UTC):%Y%m%d%H%M%S}{secrets.token_hex(5).upper()}"


# --- orders ----------------------------------------------------------------------------------------------


def check_order(order: NewOrder, policy: PaymentPolicy, balance_micros: int) -> Refused | None:
    """The site's rules for a new order; ``None`` when it may be placed."""
    if order.channel not in policy.channels:
        enabled = ", ".join(sorted(policy.channels)) or "none"
        return Refused("channel", f"channel {order.channel!r} is not enabled for this site (enabled: {enabled})")
    if not 0 < order.amount_fen <= MAX_ORDER_FEN:
        return Refused("amount_fen", f"amount must be 1..{MAX_ORDER_FEN} fen, got {order.amount_fen}")
    amount_micros = minor_to_micros(order.amount_fen)
    if amount_micros < policy.min_purchase_micros:
        return Refused(
            "amount_fen",
            f"{format_money(amount_micros)} is below the minimum purchase of "
            f"{format_money(policy.min_purchase_micros)}",
        )
    limit = policy.max_balance_micros
    if limit is not None and balance_micros + amount_micros > limit:
        return Refused(
            "amount_fen",
            f"{format_money(amount_micros)} would take the balance from {format_money(balance_micros)} to "
            f"{format_money(balance_micros + amount_micros)}, above the hoarding limit of {format_money(limit)}",
        )
    expiry = order.expiry_s
    if expiry is not None and not 60 <= expiry <= MAX_EXPIRY_S:
        return Refused("expiry_s", f"expiry must be 60..{MAX_EXPIRY_S} s, got {expiry}")
    return None


def policy_for_wallet(conn: Connection, wallet: str) -> PaymentPolicy | None:
    """The payment policy of the site whose account owns ``wallet`` (``powergate.services.accounts``)."""
    from powergate.services import accounts  # same layer; imported late because accounts imports us

    site = accounts.policy_for_wallet(conn, wallet)
    if site is None:
        return None
    channels = frozenset(str(channel) for channel in site.channels)
    return PaymentPolicy(channels, site.min_purchase_micros, site.hoarding_limit_micros, str(site.site_id))


def create_order(
    engine: Engine, channels: Channels, order: NewOrder, policy: PaymentPolicy | None, now: dt.datetime
) -> OrderPlaced | Refused:
    """Record the order, then open it at the provider; a provider failure closes it with the reason.

    ``policy``: the site's rules; ``None`` reads them from the site of the account owning the wallet.
    """
    adapter = channels.get(order.channel)
    if adapter is None:
        return Refused("channel", f"channel {order.channel!r} is not configured")
    order_no = order.order_no or new_order_no(now)
    expires_at = now + dt.timedelta(seconds=order.expiry_s or DEFAULT_EXPIRY_S[ChannelName(order.channel)])
    with engine.begin() as conn:
        wallet_id = _wallet_id(conn, order.wallet)
        if wallet_id is None:
            return Refused("wallet", f"no wallet account {order.wallet!r}")
        if policy is None:
            policy = policy_for_wallet(conn, order.wallet)
            if policy is None:
                return Refused("wallet", f"no account owns {order.wallet}, so its site's payment policy is unknown")
        if order.site_id is None and policy.site_id is not None:
            order = replace(order, site_id=policy.site_id)
        refused = check_order(order, policy, balance(conn, order.wallet).balance_micros)
        if refused is not None:
            return refused
        try:
            with conn.begin_nested():
                conn.execute(insert(orders).values(**_order_row(order, order_no, wallet_id, expires_at, now)))
        except IntegrityError:
            return Refused("order_no", f"order {order_no} already exists")
    request = OrderRequest(
        order_no, order.amount_fen, order.description, expires_at, order.method, order.payer_id, order.reference
    )
    opened = adapter.create_order(request, now)
    with engine.begin() as conn:
        if isinstance(opened, ProviderFailure):
            _close(conn, order_no, "closed", f"the provider refused the order: {opened.reason}")
            log.warning("order %s closed: %s", order_no, opened.reason)
            return Refused("channel", opened.reason)
        conn.execute(
            update(orders)
            .where(orders.c.order_no == order_no)
            .values(pay_parameters=json.dumps(dict(opened.pay_parameters), sort_keys=True))
        )
    return OrderPlaced(order_no, expires_at, opened.pay_parameters)


def _order_row(
    order: NewOrder, order_no: str, wallet_id: int, expires_at: dt.datetime, now: dt.datetime
) -> dict[str, Any]:
    return {
        "order_no": order_no,
        "wallet_account_id": wallet_id,
        "site_id": order.site_id,
        "channel": order.channel,
        "method": order.method,
        "amount_fen": order.amount_fen,
        "state": "created",
        "description": order.description[:128],
        "created_at": now,
        "expires_at": expires_at,
        "operator": order.operator,
        "receipt_no": order.reference,
    }


def _wallet_id(conn: Connection, wallet: str) -> int | None:
    found = conn.execute(
        select(ledger_accounts.c.id).where(ledger_accounts.c.code == wallet, ledger_accounts.c.kind == "wallet")
    ).scalar()
    return None if found is None else int(found)


def _close(conn: Connection, order_no: str, state: str, reason: str) -> bool:
    result = conn.execute(
        update(orders)
        .where(orders.c.order_no == order_no, orders.c.state == "created")
        .values(state=state, closed_reason=reason[:MAX_TEXT_CHARS])
    )
    return result.rowcount == 1


# --- notifications and confirmations -----------------------------------------------------------------------


def handle_notification(
    engine: Engine, channels: Channels, channel: str, headers: Mapping[str, str], body: bytes, now: dt.datetime
) -> NotificationOutcome:
    """Verify a provider's notification and credit its order once; the reply is what the provider must get."""
    adapter = channels.get(channel)
    if adapter is None:
        reason = f"channel {channel[:16]!r} is not configured"
        log.warning("notification refused: %s", reason)
        return NotificationOutcome(Verdict.REJECTED, reason, None, Reply(404, "text/plain", reason.encode()))
    settled = settle(engine, channel, adapter.verify_notification(headers, body, now), now, "notification")
    handled = settled.verdict is not Verdict.REJECTED
    return NotificationOutcome(
        settled.verdict, settled.reason, settled.order_no, adapter.reply(handled, settled.reason)
    )


def confirm_offline(
    engine: Engine, channel: str, order_no: str, amount_fen: int, reference: str, operator: str, now: dt.datetime
) -> Settlement:
    """A cashier (receipt number) or finance (bank reference) confirms an offline payment; credited once."""
    assert channel in OFFLINE, f"{channel} is not an offline channel"
    assert operator.strip(), "an offline confirmation needs its operator"
    confirmed = offline_confirmation(ChannelName(channel), order_no, amount_fen, reference, now)
    return settle(engine, channel, confirmed, now, f"confirmed by {operator}", operator)


def pay_at_cashier(
    engine: Engine,
    channels: Channels,
    order: NewOrder,
    receipt_no: str,
    policy: PaymentPolicy | None,
    now: dt.datetime,
) -> Settlement | Refused:
    """The cashier sells credit: the order is placed and confirmed with the receipt number at once."""
    assert order.channel == ChannelName.CASHIER and order.operator, "a cashier sale names its operator"
    placed = create_order(engine, channels, order, policy, now)
    if isinstance(placed, Refused):
        return placed
    return confirm_offline(engine, order.channel, placed.order_no, order.amount_fen, receipt_no, order.operator, now)


def settle(
    engine: Engine,
    channel: str,
    result: Verified | Rejected,
    now: dt.datetime,
    source: str,
    actor: str = SYSTEM_ACTOR,
) -> Settlement:
    """The one path by which money received becomes credit: match, mark paid, post, log; one transaction."""
    with engine.begin() as conn:
        if isinstance(result, Rejected):
            settled = Settlement(Verdict.REJECTED, result.reason, result.order_no)
            _log_notification(conn, channel, None, result.claimed_id, settled, now)
        else:
            settled = _credit(conn, channel, result, now, source, actor)
            accepted_id = result.notification_id if settled.verdict is Verdict.ACCEPTED else None
            _log_notification(conn, channel, accepted_id, result.notification_id, settled, now)
    level = logging.WARNING if settled.verdict is Verdict.REJECTED else logging.INFO
    log.log(level, "%s %s for order %s: %s", channel, settled.verdict.value, settled.order_no, settled.reason)
    return settled


def _credit(conn: Connection, channel: str, paid: Verified, now: dt.datetime, source: str, actor: str) -> Settlement:
    order_no = paid.order_no
    row = conn.execute(select(orders).where(orders.c.order_no == order_no).with_for_update()).first()
    if row is None:
        return Settlement(Verdict.REJECTED, f"unknown order {order_no!r}", order_no)
    mismatch = _mismatch(row, channel, paid)
    if mismatch is not None:
        return Settlement(Verdict.REJECTED, mismatch, order_no)
    if row.provider_txn_id is not None:
        if row.provider_txn_id == paid.provider_txn_id:
            return Settlement(Verdict.DUPLICATE, f"already credited at {row.paid_at:%Y-%m-%d %H:%M:%S}Z", order_no)
        return Settlement(
            Verdict.REJECTED,
            f"order already paid by transaction {row.provider_txn_id}; transaction {paid.provider_txn_id} "
            "must be refunded at the provider",
            order_no,
        )
    late = "" if row.state == "created" else f" (credited although the order was {row.state}: money was received)"
    try:
        with conn.begin_nested():
            conn.execute(
                update(orders)
                .where(orders.c.id == row.id, orders.c.state == row.state, orders.c.provider_txn_id.is_(None))
                .values(
                    state="paid",
                    paid_at=paid.paid_at,
                    provider_txn_id=paid.provider_txn_id,
                    # An offline payment belongs to the shift of whoever confirmed it.
                    operator=row.operator if actor == SYSTEM_ACTOR else actor[:120],
                    # The receipt number or bank reference is what the shift report lists.
                    receipt_no=paid.provider_txn_id if channel in OFFLINE else row.receipt_no,
                )
            )
    except IntegrityError:
        return Settlement(Verdict.REJECTED, f"transaction {paid.provider_txn_id} already paid another order", order_no)
    wallet = _wallet_code_of(conn, int(row.wallet_account_id))
    entry = recharge_entry(
        f"{channel}:{paid.provider_txn_id}",
        wallet,
        channel,
        minor_to_micros(paid.amount_fen),
        paid.paid_at,
        f"order {order_no}",
    )
    post(conn, entry, now)
    prepaid.after_recharge(conn, wallet, now)  # issue 5 hook: the close is queued with the payment
    _announce(conn, int(row.wallet_account_id), channel, entry, now)  # "recharge received", to the tenant
    pushed = meterside.after_credit(conn, wallet, entry.postings[1].amount_micros, entry.idempotency_key, now, actor)
    if isinstance(pushed, meterside.Problem):
        log.warning("payment %s: %s", entry.idempotency_key, pushed.message)
    reason = f"credited {format_money(minor_to_micros(paid.amount_fen))} to {wallet} ({source}){late}"
    record_audit(
        conn,
        actor,
        "recharge",
        f"order:{order_no}",
        reason,
        {"channel": channel, "txn": paid.provider_txn_id, "amount_fen": paid.amount_fen, "wallet": wallet},
        now,
    )
    return Settlement(Verdict.ACCEPTED, reason, order_no)


def _announce(conn: Connection, wallet_account_id: int, channel: str, entry: Entry, now: dt.datetime) -> None:
    """The outbox row from which ``services.notices`` tells the tenant the money arrived (same transaction)."""
    balance_micros = conn.execute(
        select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == wallet_account_id)
    ).scalar_one()
    payload = {
        "amount_micros": entry.postings[1].amount_micros,
        "balance_micros": int(balance_micros),
        "channel": CHANNEL_NAMES.get(channel, channel),
    }
    conn.execute(
        insert(outbox).values(
            kind="recharged",
            key=f"recharged:{entry.idempotency_key}",
            wallet_account_id=wallet_account_id,
            payload=json.dumps(payload, sort_keys=True),
            created_at=now,
            available_at=now,
            attempts=0,
        )
    )


def _mismatch(row: Row[Any], channel: str, paid: Verified) -> str | None:
    if row.channel != channel:
        return f"order {row.order_no} was placed through {row.channel}, not {channel}"
    if row.amount_fen != paid.amount_fen:
        return f"amount {paid.amount_fen} fen does not match the order's {row.amount_fen} fen"
    return None


def _wallet_code_of(conn: Connection, account_id: int) -> str:
    return str(conn.execute(select(ledger_accounts.c.code).where(ledger_accounts.c.id == account_id)).scalar_one())


def _log_notification(
    conn: Connection,
    channel: str,
    notification_id: str | None,
    claimed_id: str | None,
    settled: Settlement,
    now: dt.datetime,
) -> None:
    conn.execute(
        insert(payment_notifications).values(
            channel=channel[:16],
            notification_id=notification_id,
            claimed_id=None if claimed_id is None else claimed_id[:128],
            order_no=None if settled.order_no is None else settled.order_no[:64],
            received_at=now,
            verdict=settled.verdict.value,
            reason=settled.reason[:MAX_TEXT_CHARS] or "-",
        )
    )


# --- reconciliation ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    credited: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()


def reconcile_pending(
    engine: Engine, channels: Channels, now: dt.datetime, limit: int = MAX_RECONCILE_BATCH
) -> ReconcileReport:
    """Ask the provider about unpaid orders near or past expiry: credit the paid, expire the abandoned."""
    assert 0 < limit <= MAX_RECONCILE_BATCH
    horizon = now + dt.timedelta(seconds=RECONCILE_LEAD_S)
    with engine.connect() as conn:
        due = conn.execute(
            select(orders.c.order_no, orders.c.channel, orders.c.expires_at)
            .where(orders.c.state == "created", orders.c.expires_at <= horizon)
            .order_by(orders.c.expires_at)
            .limit(limit)
        ).all()
    credited: list[str] = []
    expired: list[str] = []
    pending: list[str] = []
    failures: list[str] = []
    for order_no, channel, expires_at in due:
        outcome = _reconcile_one(engine, channels.get(channel), channel, order_no, expires_at, now)
        {"credited": credited, "expired": expired, "pending": pending}.get(outcome, failures).append(
            order_no if outcome in ("credited", "expired", "pending") else f"{order_no}: {outcome}"
        )
    return ReconcileReport(tuple(credited), tuple(expired), tuple(pending), tuple(failures))


def _reconcile_one(
    engine: Engine,
    adapter: PaymentChannel | None,
    channel: str,
    order_no: str,
    expires_at: dt.datetime,
    now: dt.datetime,
) -> str:
    """``credited``, ``expired``, ``pending`` or the reason nothing could be decided."""
    past_grace = now >= expires_at + dt.timedelta(seconds=RECONCILE_GRACE_S)
    if channel in OFFLINE or adapter is None:
        if not past_grace:
            return "pending"
        return _expire(engine, order_no, "nobody confirmed the payment before the order expired")
    answer = adapter.query_order(order_no, now)
    if isinstance(answer, ProviderFailure):
        return f"query failed: {answer.reason}"
    if answer.state is TradeState.PAID:
        assert answer.provider_txn_id and answer.amount_fen and answer.paid_at
        found = Verified(
            order_no, answer.provider_txn_id, answer.amount_fen, answer.paid_at, f"query:{answer.provider_txn_id}"
        )
        settled = settle(engine, channel, found, now, "found by querying the provider")
        return "credited" if settled.verdict is not Verdict.REJECTED else settled.reason
    if not past_grace:
        return "pending"
    closed = adapter.close_order(order_no, now)
    if isinstance(closed, ProviderFailure):
        return f"close failed: {closed.reason}"
    return _expire(engine, order_no, f"unpaid at expiry (provider says {answer.state.value})")


def _expire(engine: Engine, order_no: str, reason: str) -> str:
    with engine.begin() as conn:
        return "expired" if _close(conn, order_no, "expired", reason) else "pending"


# --- refunds -------------------------------------------------------------------------------------------------


class Destination(StrEnum):
    ORIGINAL = "original"
    CASH = "cash"


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """Give ``amount_fen`` of ``wallet``'s credit back: in cash, or to the channel that paid ``order_no``."""

    refund_no: str
    wallet: str
    amount_fen: int
    destination: Destination
    reason: str
    operator: str
    order_no: str | None = None
    site_id: str | None = None


@dataclass(frozen=True, slots=True)
class RefundDone:
    refund_no: str
    state: str
    """``succeeded``, ``processing`` (the provider pays out later), ``pending`` (provider unreachable: retry)
    or ``failed`` (the provider refused; the credit was put back)."""
    message: str = ""


def new_refund_no(now: dt.datetime) -> str:
    return new_order_no(now, prefix="RF")


def refund(engine: Engine, channels: Channels, request: RefundRequest, now: dt.datetime) -> RefundDone | Refused:
    """Take the credit out of the wallet (never below its limit), then pay it back; audited; idempotent."""
    refused = _check_refund(request)
    if refused is not None:
        return refused
    try:
        with engine.begin() as conn:
            started = _start_refund(conn, request, now)
    except InsufficientCredit as error:
        return Refused("amount_fen", f"refund {request.refund_no}: {error}")
    if isinstance(started, Refused | RefundDone):
        return started
    channel, order_amount_fen = started
    adapter = channels.get(channel)
    assert request.order_no is not None
    if adapter is None:
        return _finish_refund(
            engine, request, channel, ProviderFailure(f"channel {channel} is not configured", False), now
        )
    order = RefundOrder(request.refund_no, request.order_no, None, request.amount_fen, order_amount_fen, request.reason)
    return _finish_refund(engine, request, channel, adapter.refund(order, now), now)


def _check_refund(request: RefundRequest) -> Refused | None:
    if not 0 < request.amount_fen <= MAX_ORDER_FEN:
        return Refused("amount_fen", f"refund must be 1..{MAX_ORDER_FEN} fen, got {request.amount_fen}")
    if not request.reason.strip() or not request.operator.strip():
        return Refused("reason", "a refund needs a reason and an operator")
    if not 0 < len(request.refund_no) <= 64:
        return Refused("refund_no", "refund number must be 1..64 characters")
    if request.destination is Destination.ORIGINAL and not request.order_no:
        return Refused("order_no", "a refund to the original channel names the order it refunds")
    return None


def _start_refund(conn: Connection, request: RefundRequest, now: dt.datetime) -> tuple[str, int] | RefundDone | Refused:
    """Record the refund and post it to the ledger; returns (channel, order amount) when a provider must pay."""
    existing = conn.execute(
        select(refunds.c.state, refunds.c.failure).where(refunds.c.refund_no == request.refund_no)
    ).first()
    if existing is not None:
        return RefundDone(request.refund_no, str(existing.state), "already recorded")
    wallet_id = _wallet_id(conn, request.wallet)
    if wallet_id is None:
        return Refused("wallet", f"no wallet account {request.wallet!r}")
    channel, order_amount_fen = ChannelName.CASHIER.value, 0
    if request.destination is Destination.ORIGINAL:
        found = _refundable_order(conn, request, wallet_id)
        if isinstance(found, Refused):
            return found
        channel, order_amount_fen = found
    cash = request.destination is Destination.CASH
    conn.execute(
        insert(refunds).values(
            refund_no=request.refund_no,
            order_no=request.order_no,
            wallet_account_id=wallet_id,
            channel=channel,
            amount_fen=request.amount_fen,
            destination=request.destination.value,
            state="succeeded" if cash else "pending",
            reason=request.reason[:MAX_TEXT_CHARS],
            operator=request.operator[:120],
            site_id=request.site_id,
            created_at=now,
            completed_at=now if cash else None,
        )
    )
    post(conn, _refund_entry(request, channel, now), now)
    prepaid.evaluate(conn, [wallet_id], now)  # a refund to the trip line trips, in this same transaction
    record_audit(
        conn,
        request.operator,
        "refund",
        f"order:{request.order_no}" if request.order_no else request.wallet,
        request.reason,
        {"refund_no": request.refund_no, "amount_fen": request.amount_fen, "destination": request.destination.value},
        now,
    )
    if cash:
        return RefundDone(request.refund_no, "succeeded", "paid out in cash")
    return channel, order_amount_fen


def _refund_entry(request: RefundRequest, channel: str, now: dt.datetime) -> Entry:
    return refund_entry(
        f"refund:{request.refund_no}",
        request.wallet,
        channel,
        minor_to_micros(request.amount_fen),
        now,
        f"refund {request.refund_no}: {request.reason[:200]}",
    )


def _refundable_order(conn: Connection, request: RefundRequest, wallet_id: int) -> tuple[str, int] | Refused:
    """Reserve the amount on the paid order (so two refunds cannot exceed what it paid)."""
    row = conn.execute(select(orders).where(orders.c.order_no == request.order_no).with_for_update()).first()
    if row is None:
        return Refused("order_no", f"unknown order {request.order_no!r}")
    if int(row.wallet_account_id) != wallet_id:
        return Refused("order_no", f"order {request.order_no} did not pay into {request.wallet}")
    if row.state not in ("paid", "partially_refunded"):
        return Refused("order_no", f"order {request.order_no} is {row.state}; only paid orders are refunded")
    left = int(row.amount_fen) - int(row.refunded_fen)
    if request.amount_fen > left:
        return Refused(
            "amount_fen", f"order {request.order_no} has {left} fen left to refund, asked {request.amount_fen}"
        )
    _add_refunded(conn, request.order_no or "", request.amount_fen)
    return str(row.channel), int(row.amount_fen)


def _add_refunded(conn: Connection, order_no: str, delta_fen: int) -> None:
    c = orders.c
    refunded = c.refunded_fen + delta_fen
    result = conn.execute(
        update(orders)
        .where(c.order_no == order_no, refunded >= 0, refunded <= c.amount_fen)
        .values(
            refunded_fen=refunded,
            state=_refund_state(refunded, c.amount_fen),
        )
    )
    assert result.rowcount == 1, f"order {order_no}: refunded amount out of range"


def _refund_state(refunded: ColumnElement[int], amount: ColumnElement[int]) -> ColumnElement[str]:
    return case((refunded == amount, "refunded"), (refunded == 0, "paid"), else_="partially_refunded")


def _finish_refund(
    engine: Engine,
    request: RefundRequest,
    channel: str,
    answer: RefundAccepted | ProviderFailure,
    now: dt.datetime,
) -> RefundDone:
    if isinstance(answer, ProviderFailure) and answer.retryable:
        # Unknown outcome: leave it pending; resending the same refund number is safe at both providers.
        return RefundDone(request.refund_no, "pending", answer.reason)
    with engine.begin() as conn:
        if isinstance(answer, ProviderFailure) or answer.state is RefundState.FAILED:
            reason = answer.reason
            _fail_refund(conn, request, channel, reason, now)
            return RefundDone(request.refund_no, "failed", reason)
        state = "succeeded" if answer.state is RefundState.SUCCEEDED else "processing"
        conn.execute(
            update(refunds)
            .where(refunds.c.refund_no == request.refund_no, refunds.c.state == "pending")
            .values(
                state=state,
                provider_refund_id=answer.provider_refund_id,
                completed_at=now if state == "succeeded" else None,
            )
        )
    return RefundDone(request.refund_no, state, answer.reason)


def _fail_refund(conn: Connection, request: RefundRequest, channel: str, reason: str, now: dt.datetime) -> None:
    """The provider refused: the credit goes back by a reversal entry and the order's reservation is released."""
    changed = conn.execute(
        update(refunds)
        .where(refunds.c.refund_no == request.refund_no, refunds.c.state == "pending")
        .values(state="failed", failure=reason[:MAX_TEXT_CHARS], completed_at=now)
    )
    if changed.rowcount != 1:
        return
    original = _refund_entry(request, channel, now)
    post(conn, reversal_of(original, f"refund-failed:{request.refund_no}", now, reason[:200]), now)
    wallet_id = _wallet_id(conn, request.wallet)
    if wallet_id is not None:  # the credit is back: the policy re-decides (a tripped wallet may close)
        prepaid.evaluate(conn, [wallet_id], now)
    if request.order_no:
        _add_refunded(conn, request.order_no, -request.amount_fen)
    record_audit(
        conn,
        SYSTEM_ACTOR,
        "refund_failed",
        f"order:{request.order_no}" if request.order_no else request.wallet,
        f"the provider refused refund {request.refund_no}: {reason}"[:MAX_TEXT_CHARS],
        {"refund_no": request.refund_no, "amount_fen": request.amount_fen},
        now,
    )


def wallet_of(account_no: str) -> str:
    """The wallet account code of a tenant account number (``A-1001`` -> ``wallet:A-1001``)."""
    return wallet_code(account_no)
