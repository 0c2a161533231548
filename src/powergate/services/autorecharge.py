"""Auto-recharge: a wallet bound to a payment agreement tops itself up when its balance falls below a threshold.

A tenant signs a payment agreement with a provider (WeChat Pay 委托代扣, Alipay 周期扣款: the payer allows the
merchant to charge later without asking each time); only the sandbox channel models it for now
(``Sandbox.withhold``). ``bind`` stores the wallet's amount and threshold; ``run_due`` (a periodic job) finds
wallets below their threshold and charges the amount through the payments layer, so the credit takes the one
normal path (``services.payments.settle``: order matched, ledger credited once, balance policy re-decided, the
relay closed).

At most one automatic order per wallet per crossing, under concurrency and across restarts:
1. A binding is ``armed`` until a crossing is acted on. Claiming a crossing is one conditional UPDATE
   (``armed AND crossings = n AND no run still placed``) and, in the same transaction, the run row with its
   order number (UNIQUE (wallet, crossing), UNIQUE order number). Two workers cannot both claim; a crash
   after the claim leaves a ``placed`` run, never a second claim.
2. A ``placed`` run is worked under a lease: order placed with its stored order number (a repeat finds the
   order), the provider asked to charge it under the agreement (providers de-duplicate by order number, the
   sandbox too), then the provider queried and a paid answer settled. A crash anywhere repeats these steps
   with the same order number, which can charge at most once, and ``settle`` credits at most once.
3. The binding re-arms only when the balance is back at or above the threshold (the automatic credit, or a
   manual recharge) and no run is still placed. An amount too small to lift the balance over the threshold
   therefore charges once per crossing, not once per run.
A run the site's rules refuse (channel disabled, hoarding limit, minimum purchase) or the provider refuses
for good is recorded (``refused`` / ``failed``, with the reason, on the run and the binding) and audited;
nothing is charged and the wallet waits for the next crossing.

Triggering: ``run_due`` is a periodic job (``powergate autorecharge run``, or the API / worker process every
few seconds); a wallet found below its threshold is charged on the next run. Run it often (seconds) where
tenants rely on it to avoid a trip: the balance policy's trip does not wait for it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, and_, exists, insert, not_, or_, select, update

from powergate.domain.money import format_money
from powergate.domain.payments import (
    ChannelName,
    OrderOpened,
    OrderRequest,
    PaymentChannel,
    ProviderFailure,
    TradeState,
    Verified,
)
from powergate.headend.commands import Problem
from powergate.services import payments
from powergate.store.audit import record_audit
from powergate.store.tables import ledger_accounts
from powergate.store.tables_autorecharge import MAX_AMOUNT_MICROS, autorecharge_bindings, autorecharge_runs

SYSTEM_ACTOR = "system:autorecharge"
AGREEMENT_CHANNELS = frozenset({ChannelName.SANDBOX.value})
"""Channels whose adapters can charge under a payment agreement (``AgreementChannel``)."""
MICROS_PER_FEN = 10_000
MAX_BATCH = 500
DEFAULT_BATCH = 100
LEASE = dt.timedelta(seconds=60)
"""How long one worker owns a placed run; a worker that died lets another resume it after this."""
MAX_ATTEMPTS = 5
"""Provider attempts per run before it is marked failed (retryable failures only)."""
MAX_TEXT = 2_000


class AgreementChannel(PaymentChannel, Protocol):
    """A payment channel that can charge an order under the payer's agreement, without the payer present."""

    def withhold(self, request: OrderRequest, agreement_id: str, now: dt.datetime) -> OrderOpened | ProviderFailure: ...


@dataclass(frozen=True, slots=True)
class Binding:
    channel: str
    amount_micros: int
    threshold_micros: int
    active: bool
    last_run_at: dt.datetime | None


# -- binding ---------------------------------------------------------------------------------------------------


def bind(
    conn: Connection,
    wallet_account_id: int,
    *,
    channel: str,
    amount_micros: int,
    threshold_micros: int,
    actor: str,
    now: dt.datetime,
    agreement_id: str | None = None,
) -> Problem | None:
    """Bind (or re-bind) a wallet: top up ``amount_micros`` when the balance falls below ``threshold_micros``.

    Checked against the site's payment rules (channel enabled, minimum purchase, and the hoarding limit: the
    threshold plus the amount may not exceed it). ``agreement_id`` is the provider's agreement (contract) id;
    the sandbox makes one up when none is given. Audited in the caller's transaction.
    """
    wallet = _wallet_code(conn, wallet_account_id)
    problem = _check_binding(conn, wallet, channel, amount_micros, threshold_micros, actor, agreement_id)
    if problem is not None:
        return problem
    assert wallet is not None
    agreement = agreement_id or f"SBXA{wallet_account_id}{secrets.token_hex(6).upper()}"
    values = {
        "channel": channel,
        "agreement_id": agreement,
        "amount_micros": amount_micros,
        "threshold_micros": threshold_micros,
        "active": True,
        "armed": True,
        "last_error": None,
        "updated_by": actor,
        "updated_at": now,
    }
    table = autorecharge_bindings
    done = conn.execute(update(table).where(table.c.wallet_account_id == wallet_account_id).values(**values))
    if done.rowcount == 0:
        conn.execute(insert(table).values(wallet_account_id=wallet_account_id, crossings=0, created_at=now, **values))
    reason = f"auto-recharge {format_money(amount_micros)} below {format_money(threshold_micros)} via {channel}"
    detail = {"channel": channel, "amount_micros": amount_micros, "threshold_micros": threshold_micros}
    record_audit(conn, actor, "bind_autorecharge", wallet, reason, detail, now)
    return None


def _check_binding(
    conn: Connection,
    wallet: str | None,
    channel: str,
    amount_micros: int,
    threshold_micros: int,
    actor: str,
    agreement_id: str | None,
) -> Problem | None:
    if not actor.strip() or len(actor) > 120:
        return Problem("actor", "who binds must be named (1..120 characters)")
    if wallet is None:
        return Problem("wallet_account_id", "no such wallet account")
    if channel not in AGREEMENT_CHANNELS:
        known = ", ".join(sorted(AGREEMENT_CHANNELS))
        return Problem("channel", f"{channel!r} cannot charge under a payment agreement (supported: {known})")
    if not 0 < amount_micros <= MAX_AMOUNT_MICROS or amount_micros % MICROS_PER_FEN:
        return Problem(
            "amount_micros", f"must be whole fen in 0.01..{format_money(MAX_AMOUNT_MICROS)}, got {amount_micros}"
        )
    if threshold_micros < 0:
        return Problem("threshold_micros", f"must be >= 0, got {threshold_micros}")
    if agreement_id is not None and not 0 < len(agreement_id) <= 64:
        return Problem("agreement_id", "must be 1..64 characters")
    policy = payments.policy_for_wallet(conn, wallet)
    if policy is None:
        return None  # a wallet no account owns (tests, ledger tools): no site rules to apply
    if channel not in policy.channels:
        return Problem("channel", f"{channel!r} is not enabled for this site")
    if amount_micros < policy.min_purchase_micros:
        minimum = format_money(policy.min_purchase_micros)
        return Problem("amount_micros", f"{format_money(amount_micros)} is below the minimum purchase of {minimum}")
    limit = policy.max_balance_micros
    if limit is not None and threshold_micros + amount_micros > limit:
        return Problem(
            "amount_micros",
            f"threshold {format_money(threshold_micros)} + amount {format_money(amount_micros)} is above the "
            f"hoarding limit of {format_money(limit)}",
        )
    return None


def unbind(conn: Connection, wallet_account_id: int, *, actor: str, now: dt.datetime) -> None:
    """Stop auto-recharge for a wallet (a run already placed still completes: its money may be on its way)."""
    assert actor.strip(), "who unbinds must be named"
    table = autorecharge_bindings
    done = conn.execute(
        update(table)
        .where(table.c.wallet_account_id == wallet_account_id, table.c.active)
        .values(active=False, updated_by=actor[:120], updated_at=now)
    )
    if done.rowcount:
        wallet = _wallet_code(conn, wallet_account_id) or f"wallet:{wallet_account_id}"
        record_audit(conn, actor[:120], "unbind_autorecharge", wallet, "auto-recharge stopped", {}, now)


def binding(conn: Connection, wallet_account_id: int) -> Binding | None:
    table = autorecharge_bindings
    row = conn.execute(select(table).where(table.c.wallet_account_id == wallet_account_id)).first()
    if row is None:
        return None
    return Binding(
        str(row.channel), int(row.amount_micros), int(row.threshold_micros), bool(row.active), row.last_run_at
    )


@dataclass(frozen=True, slots=True)
class Run:
    """One crossing acted on (for the portal's history and the tests)."""

    crossing: int
    order_no: str
    amount_micros: int
    balance_micros: int
    state: str
    attempts: int
    message: str | None
    created_at: dt.datetime


def runs(conn: Connection, wallet_account_id: int, limit: int = 100) -> list[Run]:
    """The wallet's automatic orders, newest first."""
    table = autorecharge_runs
    query = (
        select(table)
        .where(table.c.wallet_account_id == wallet_account_id)
        .order_by(table.c.crossing.desc())
        .limit(min(limit, 1_000))
    )
    return [
        Run(
            int(r.crossing), str(r.order_no), int(r.amount_micros), int(r.balance_micros), str(r.state),
            int(r.attempts), r.message, r.created_at,
        )
        for r in conn.execute(query)
    ]  # fmt: skip


# -- the periodic job ------------------------------------------------------------------------------------------


def run_due(
    engine: Engine, channels: Mapping[str, PaymentChannel], now: dt.datetime, limit: int = DEFAULT_BATCH
) -> int:
    """Re-arm wallets back above their threshold, claim the crossings of wallets below it and charge them.

    Returns the number of automatic orders placed by this call (crossings claimed). Safe to run from several
    workers at once and after a crash: see the module docstring.
    """
    assert 0 < limit <= MAX_BATCH, limit
    with engine.begin() as conn:
        _rearm(conn, now, limit)
    with engine.connect() as conn:
        due = conn.execute(_below_threshold().limit(limit)).all()
    placed = 0
    for wallet_id, crossings in due:
        with engine.begin() as conn:
            placed += _claim(conn, int(wallet_id), int(crossings), now)
    with engine.connect() as conn:
        open_runs = conn.execute(
            select(autorecharge_runs.c.id)
            .where(
                autorecharge_runs.c.state == "placed",
                or_(autorecharge_runs.c.lease_until.is_(None), autorecharge_runs.c.lease_until <= now),
            )
            .order_by(autorecharge_runs.c.id)
            .limit(limit)
        ).all()
    for (run_id,) in open_runs:
        _work(engine, channels, int(run_id), now)
    return placed


def _placed_run_of(wallet_column: Any) -> Any:
    runs_table = autorecharge_runs
    return exists().where(runs_table.c.wallet_account_id == wallet_column, runs_table.c.state == "placed")


def _below_threshold() -> Any:
    b = autorecharge_bindings.c
    return (
        select(b.wallet_account_id, b.crossings)
        .join(ledger_accounts, ledger_accounts.c.id == b.wallet_account_id)
        .where(b.active, b.armed, ledger_accounts.c.balance_micros < b.threshold_micros)
        .order_by(b.wallet_account_id)
    )


def _rearm(conn: Connection, now: dt.datetime, limit: int) -> None:
    b = autorecharge_bindings.c
    query = (
        select(b.wallet_account_id)
        .join(ledger_accounts, ledger_accounts.c.id == b.wallet_account_id)
        .where(
            b.active,
            not_(b.armed),
            ledger_accounts.c.balance_micros >= b.threshold_micros,
            not_(_placed_run_of(b.wallet_account_id)),
        )
        .limit(limit)
    )
    ids = [int(i) for i in conn.execute(query).scalars()]
    if ids:
        conn.execute(
            update(autorecharge_bindings)
            .where(b.wallet_account_id.in_(ids), not_(b.armed))
            .values(armed=True, updated_at=now)
        )


def _claim(conn: Connection, wallet_id: int, crossings: int, now: dt.datetime) -> int:
    """Claim the crossing after ``crossings`` (1 if this transaction won it, else 0) and record its run."""
    b = autorecharge_bindings.c
    claimed = conn.execute(
        update(autorecharge_bindings)
        .where(
            b.wallet_account_id == wallet_id,
            b.active,
            b.armed,
            b.crossings == crossings,
            not_(_placed_run_of(b.wallet_account_id)),
        )
        .values(armed=False, crossings=crossings + 1, last_run_at=now, updated_at=now)
    )
    if claimed.rowcount != 1:
        return 0  # another worker claimed it, or the binding changed: nothing to do
    row = conn.execute(select(autorecharge_bindings).where(b.wallet_account_id == wallet_id)).one()
    wallet = _wallet_code(conn, wallet_id)
    assert wallet is not None
    balance_micros = int(
        conn.execute(select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == wallet_id)).scalar_one()
    )
    order_no = payments.new_order_no(now, prefix="AR")
    values = {
        "wallet_account_id": wallet_id,
        "crossing": crossings + 1,
        "order_no": order_no,
        "channel": str(row.channel),
        "amount_micros": int(row.amount_micros),
        "balance_micros": balance_micros,
        "state": "placed",
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    conn.execute(insert(autorecharge_runs).values(**values))
    reason = (
        f"balance {format_money(balance_micros)} below {format_money(int(row.threshold_micros))}: "
        f"auto-recharge {format_money(int(row.amount_micros))} (order {order_no})"
    )
    detail = {"order_no": order_no, "crossing": crossings + 1, "amount_micros": int(row.amount_micros)}
    record_audit(conn, SYSTEM_ACTOR, "auto_recharge", wallet, reason, detail, now)
    return 1


def _work(engine: Engine, channels: Mapping[str, PaymentChannel], run_id: int, now: dt.datetime) -> None:
    """Take the run's lease, then place, charge and settle its order; each step repeatable."""
    r = autorecharge_runs.c
    with engine.begin() as conn:
        leased = conn.execute(
            update(autorecharge_runs)
            .where(r.id == run_id, r.state == "placed", or_(r.lease_until.is_(None), r.lease_until <= now))
            .values(lease_until=now + LEASE, attempts=r.attempts + 1, updated_at=now)
        )
        if leased.rowcount != 1:
            return
        run = conn.execute(select(autorecharge_runs).where(r.id == run_id)).one()
        agreement = conn.execute(
            select(autorecharge_bindings.c.agreement_id).where(
                autorecharge_bindings.c.wallet_account_id == run.wallet_account_id
            )
        ).scalar_one()
        wallet = _wallet_code(conn, int(run.wallet_account_id))
    assert wallet is not None
    outcome = _charge(engine, channels, run, str(agreement), wallet, now)
    _finish(engine, run_id, int(run.wallet_account_id), int(run.attempts) + 1, outcome, now)


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: str
    """``credited``, ``refused``, ``failed`` or ``placed`` (try again after the lease)."""
    message: str


def _charge(
    engine: Engine, channels: Mapping[str, PaymentChannel], run: Any, agreement: str, wallet: str, now: dt.datetime
) -> _Outcome:
    channel = str(run.channel)
    adapter = channels.get(channel)
    withhold = getattr(adapter, "withhold", None)
    if adapter is None or withhold is None:
        return _Outcome("placed", f"channel {channel} is not configured with payment agreements here")
    amount_fen = int(run.amount_micros) // MICROS_PER_FEN
    order = payments.NewOrder(
        wallet, amount_fen, channel, "agreement", description="auto-recharge", order_no=str(run.order_no)
    )
    placed = payments.create_order(engine, channels, order, None, now)
    if isinstance(placed, payments.Refused) and placed.field != "order_no":  # order_no: placed by an earlier try
        return _Outcome("refused", f"{placed.field}: {placed.message}")
    request = OrderRequest(str(run.order_no), amount_fen, "auto-recharge", now + LEASE, "agreement")
    charged = withhold(request, agreement, now)
    if isinstance(charged, ProviderFailure):
        return _Outcome("placed" if charged.retryable else "failed", f"provider: {charged.reason}")
    answer = adapter.query_order(str(run.order_no), now)
    if isinstance(answer, ProviderFailure):
        return _Outcome("placed", f"provider query: {answer.reason}")
    if answer.state is not TradeState.PAID:
        return _Outcome("placed", f"provider says {answer.state.value}; asked again on the next run")
    assert answer.provider_txn_id and answer.amount_fen and answer.paid_at
    paid = Verified(
        str(run.order_no),
        answer.provider_txn_id,
        answer.amount_fen,
        answer.paid_at,
        f"agreement:{answer.provider_txn_id}",
    )
    settled = payments.settle(engine, channel, paid, now, f"auto-recharge under agreement {agreement}")
    if settled.verdict is payments.Verdict.REJECTED:
        return _Outcome("failed", f"settle: {settled.reason}")
    return _Outcome("credited", settled.reason)


def _finish(engine: Engine, run_id: int, wallet_id: int, attempts: int, outcome: _Outcome, now: dt.datetime) -> None:
    state = outcome.state
    if state == "placed" and attempts >= MAX_ATTEMPTS:
        state = "failed"
    r = autorecharge_runs.c
    with engine.begin() as conn:
        conn.execute(
            update(autorecharge_runs)
            .where(r.id == run_id, r.state == "placed")
            .values(
                state=state,
                message=outcome.message[:MAX_TEXT],
                lease_until=now + LEASE,  # a run still placed is tried again after the lease, not at once
                updated_at=now,
            )
        )
        b = autorecharge_bindings.c
        error = None if state == "credited" else outcome.message[:MAX_TEXT]
        conn.execute(
            update(autorecharge_bindings)
            .where(b.wallet_account_id == wallet_id)
            .values(last_error=error, updated_at=now)
        )
        if state in ("refused", "failed"):
            wallet = _wallet_code(conn, wallet_id) or f"wallet:{wallet_id}"
            detail = {"run_id": run_id, "state": state}
            record_audit(conn, SYSTEM_ACTOR, "auto_recharge_failed", wallet, outcome.message[:MAX_TEXT], detail, now)


def _wallet_code(conn: Connection, wallet_account_id: int) -> str | None:
    found = conn.execute(
        select(ledger_accounts.c.code).where(
            and_(ledger_accounts.c.id == wallet_account_id, ledger_accounts.c.kind == "wallet")
        )
    ).scalar()
    return None if found is None else str(found)
