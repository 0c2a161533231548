"""Payments end to end against local fakes of WeChat Pay v3 and Alipay, on SQLite and PostgreSQL.

The acceptance tests of issue 6: a valid notification credits once; the same notification replayed five
times concurrently credits once; a stale timestamp, a wrong signature, a wrong amount and an unknown order
are each rejected with a reason; the same for Alipay. After every test the ledger audit is exact.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from payment_fakes import (
    AlipayHandler,
    FakeProvider,
    WechatHandler,
    alipay_config,
    alipay_notification,
    key,
    serve,
    wechat_config,
    wechat_notification,
    wechat_transaction,
)
from sqlalchemy import Engine, func, select

from powergate.domain.ledger import charge_entry, wallet_code
from powergate.payments.alipay import Alipay
from powergate.payments.bank import BankTransfer
from powergate.payments.cashier import Cashier
from powergate.payments.sandbox import Sandbox
from powergate.payments.wechat import WechatPay
from powergate.services import payments as svc
from powergate.store import ledger as store
from powergate.store.audit import audit_records
from powergate.store.tables import ledger_entries
from powergate.store.tables_payments import orders, payment_notifications, refunds

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
WALLET = wallet_code("A-1001")
POLICY = svc.PaymentPolicy(frozenset({"wechat", "alipay", "cashier", "bank", "sandbox"}))
YUAN = 1_000_000


@dataclass
class World:
    engine: Engine
    channels: dict[str, svc.PaymentChannel]
    wechat: FakeProvider
    alipay: FakeProvider
    sandbox: Sandbox

    def at(self, moment: dt.datetime) -> dt.datetime:
        """Move the fakes' clocks (they check our request timestamps against them)."""
        self.wechat.now = self.alipay.now = moment
        return moment

    def balance(self) -> int:
        with self.engine.connect() as conn:
            return store.balance(conn, WALLET).balance_micros

    def order_state(self, order_no: str) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(select(orders.c.state).where(orders.c.order_no == order_no)).scalar_one())

    def place(self, channel: str, amount_fen: int, method: str | None = None) -> str:
        default = {"wechat": "native", "alipay": "precreate", "sandbox": "instant", "bank": "transfer"}[channel]
        placed = svc.create_order(
            self.engine, self.channels, svc.NewOrder(WALLET, amount_fen, channel, method or default, "S1"), POLICY, NOW
        )
        assert isinstance(placed, svc.OrderPlaced), placed
        return placed.order_no


@pytest.fixture
def world(engine: Engine) -> Iterator[World]:
    with engine.begin() as conn:
        store.ensure_account(conn, WALLET, NOW)
    with serve(WechatHandler, NOW) as wechat, serve(AlipayHandler, NOW) as alipay:
        sandbox = Sandbox(b"sandbox-secret-for-tests")
        channels: dict[str, svc.PaymentChannel] = {
            "wechat": WechatPay(wechat_config(wechat.url)),
            "alipay": Alipay(alipay_config(alipay.url + "/gateway.do")),
            "cashier": Cashier(),
            "bank": BankTransfer(),
            "sandbox": sandbox,
        }
        yield World(engine, channels, wechat, alipay, sandbox)
        assert wechat.bad_requests == [] and alipay.bad_requests == [], "our request signatures must verify"
    with engine.connect() as conn:
        assert store.audit(conn) == [], "the ledger audit must stay exact"


# --- the notification each provider would send -------------------------------------------------------------


def deliver(
    world: World, channel: str, headers: dict[str, str], body: bytes, at: dt.datetime = NOW
) -> svc.NotificationOutcome:
    return svc.handle_notification(world.engine, world.channels, channel, headers, body, at)


def paid_notification(world: World, channel: str, order_no: str, **tweak: object) -> tuple[dict[str, str], bytes]:
    """Pay ``order_no`` at the fake and build the provider's notification; ``tweak`` forges parts of it."""
    provider = world.wechat if channel == "wechat" else world.alipay
    trade = provider.pay(order_no, NOW) if order_no in provider.trades else None
    txn_id = trade.txn_id if trade else "4200000000000000000000000001"
    amount = int(tweak.get("amount_fen", trade.amount_fen if trade else 100))  # type: ignore[call-overload]
    assert txn_id is not None
    signing = key("intruder") if tweak.get("forged") else None
    age_s = (301 if channel == "wechat" else 3 * 86_400) if tweak.get("stale") else 0
    sent_at = NOW - dt.timedelta(seconds=age_s)
    if channel == "wechat":
        return wechat_notification(wechat_transaction(order_no, amount, txn_id, NOW), sent_at, signing_key=signing)
    body = alipay_notification(order_no, amount, txn_id, NOW, signing_key=signing, sent_at=sent_at)
    return {"Content-Type": "application/x-www-form-urlencoded"}, body


def ledger_entries_for(world: World, prefix: str) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(ledger_entries)
                .where(ledger_entries.c.idempotency_key.like(f"{prefix}%"))
            ).scalar_one()
        )


# --- acceptance ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_a_valid_notification_credits_the_wallet_once(world: World, channel: str) -> None:
    order_no = world.place(channel, 5_000)
    headers, body = paid_notification(world, channel, order_no)
    outcome = deliver(world, channel, headers, body)
    assert outcome.verdict is svc.Verdict.ACCEPTED, outcome.reason
    assert outcome.reply.status == 200
    if channel == "alipay":
        assert outcome.reply.body == b"success"
    assert world.balance() == 50 * YUAN
    assert world.order_state(order_no) == "paid"
    assert ledger_entries_for(world, f"{channel}:") == 1
    with world.engine.connect() as conn:
        (record,) = audit_records(conn, subject=f"order:{order_no}")
    assert record.action == "recharge" and record.detail["amount_fen"] == 5_000


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_the_same_notification_replayed_five_times_concurrently_credits_once(world: World, channel: str) -> None:
    order_no = world.place(channel, 3_000)
    headers, body = paid_notification(world, channel, order_no)
    barrier = threading.Barrier(5)
    outcomes: list[svc.NotificationOutcome] = []
    errors: list[BaseException] = []

    def replay() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(deliver(world, channel, headers, body))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=replay) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(o.verdict.value for o in outcomes) == ["accepted", "duplicate", "duplicate", "duplicate", "duplicate"]
    assert all(o.reply.status == 200 for o in outcomes), "a duplicate is handled: the provider may stop retrying"
    assert world.balance() == 30 * YUAN
    assert ledger_entries_for(world, f"{channel}:") == 1
    with world.engine.connect() as conn:
        verdicts = conn.execute(select(payment_notifications.c.verdict)).scalars().all()
    assert sorted(verdicts) == ["accepted", "duplicate", "duplicate", "duplicate", "duplicate"]


FORGERIES: list[tuple[str, dict[str, object], dict[str, str]]] = [
    ("stale timestamp", {"stale": True}, {"wechat": "Wechatpay-Timestamp", "alipay": "notify_time"}),
    ("wrong signature", {"forged": True}, {"wechat": "Wechatpay-Signature", "alipay": "sign does not verify"}),
    ("wrong amount", {"amount_fen": 1}, {"wechat": "does not match", "alipay": "does not match"}),
    ("unknown order", {"unknown": True}, {"wechat": "unknown order", "alipay": "unknown order"}),
]


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
@pytest.mark.parametrize(("case", "tweak", "reasons"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_bad_notification_is_rejected_with_its_reason_and_credits_nothing(
    world: World, channel: str, case: str, tweak: dict[str, object], reasons: dict[str, str]
) -> None:
    order_no = "PG-NOT-PLACED-1" if tweak.get("unknown") else world.place(channel, 2_000)
    headers, body = paid_notification(world, channel, order_no, **tweak)
    outcome = deliver(world, channel, headers, body)
    assert outcome.verdict is svc.Verdict.REJECTED
    assert reasons[channel] in outcome.reason
    assert outcome.reply.status == 400 if channel == "wechat" else outcome.reply.body == b"failure"
    assert world.balance() == 0
    with world.engine.connect() as conn:
        logged = conn.execute(select(payment_notifications)).one()
    assert logged.verdict == "rejected" and reasons[channel] in logged.reason and logged.notification_id is None
    if not tweak.get("unknown"):
        assert world.order_state(order_no) == "created"


def test_a_forged_copy_arriving_first_does_not_block_the_genuine_notification(world: World) -> None:
    order_no = world.place("wechat", 1_000)
    headers, body = paid_notification(world, "wechat", order_no)
    forged_headers = dict(headers, **{"Wechatpay-Signature": headers["Wechatpay-Signature"][::-1]})
    assert deliver(world, "wechat", forged_headers, body).verdict is svc.Verdict.REJECTED
    assert deliver(world, "wechat", headers, body).verdict is svc.Verdict.ACCEPTED
    assert world.balance() == 10 * YUAN


# --- reconciliation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["wechat", "alipay", "sandbox"])
def test_a_payment_whose_notification_never_arrives_is_found_by_querying_before_expiry(
    world: World, channel: str
) -> None:
    order_no = world.place(channel, 8_800)
    if channel == "sandbox":
        late_headers, late_body = world.sandbox.pay(order_no, NOW)
    else:
        late_headers, late_body = paid_notification(world, channel, order_no)
    too_early = svc.reconcile_pending(world.engine, world.channels, NOW)
    assert too_early.credited == ()
    near_expiry = world.at(NOW + dt.timedelta(minutes=14))
    report = svc.reconcile_pending(world.engine, world.channels, near_expiry)
    assert report.credited == (order_no,) and report.failures == ()
    assert world.balance() == 88 * YUAN
    late = deliver(world, channel, late_headers, late_body, NOW + dt.timedelta(minutes=4))
    assert late.verdict is svc.Verdict.DUPLICATE, "the late notification is harmless"
    assert world.balance() == 88 * YUAN


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_an_unpaid_order_is_closed_at_the_provider_and_expired_after_its_deadline(world: World, channel: str) -> None:
    order_no = world.place(channel, 1_000)
    report = svc.reconcile_pending(world.engine, world.channels, world.at(NOW + dt.timedelta(minutes=17)))
    assert report.expired == (order_no,)
    assert world.order_state(order_no) == "expired"
    provider = world.wechat if channel == "wechat" else world.alipay
    assert provider.trades[order_no].state in ("CLOSED", "TRADE_CLOSED")


# --- policy ----------------------------------------------------------------------------------------------------


POLICY_CASES = [
    ("channel not enabled", svc.PaymentPolicy(frozenset({"cashier"})), 1_000, "channel", "not enabled"),
    ("below minimum purchase", svc.PaymentPolicy(frozenset({"wechat"}), 10 * YUAN), 999, "amount_fen", "minimum"),
    ("above hoarding limit", svc.PaymentPolicy(frozenset({"wechat"}), 0, 100 * YUAN), 10_001, "amount_fen", "hoarding"),
]


@pytest.mark.parametrize(
    ("case", "policy", "amount_fen", "field", "words"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES]
)
def test_an_order_against_the_site_policy_is_refused_naming_the_field(
    world: World, case: str, policy: svc.PaymentPolicy, amount_fen: int, field: str, words: str
) -> None:
    refused = svc.create_order(
        world.engine, world.channels, svc.NewOrder(WALLET, amount_fen, "wechat", "native"), policy, NOW
    )
    assert isinstance(refused, svc.Refused) and refused.field == field and words in refused.message
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(orders)).scalar_one() == 0


def test_the_hoarding_limit_counts_the_balance_already_held(world: World) -> None:
    order_no = world.place("sandbox", 9_000)
    assert deliver(world, "sandbox", *world.sandbox.pay(order_no, NOW)).verdict is svc.Verdict.ACCEPTED
    policy = svc.PaymentPolicy(frozenset({"sandbox"}), 0, 100 * YUAN)
    order = svc.NewOrder(WALLET, 1_000, "sandbox", "instant")
    assert isinstance(svc.create_order(world.engine, world.channels, order, policy, NOW), svc.OrderPlaced)
    too_much = svc.NewOrder(WALLET, 1_001, "sandbox", "instant")
    assert isinstance(svc.create_order(world.engine, world.channels, too_much, policy, NOW), svc.Refused)


def test_a_jsapi_order_returns_signed_parameters_for_the_payer(world: World) -> None:
    order = svc.NewOrder(WALLET, 1_000, "wechat", "jsapi", payer_id="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    placed = svc.create_order(world.engine, world.channels, order, POLICY, NOW)
    assert isinstance(placed, svc.OrderPlaced)
    assert placed.pay_parameters["package"].startswith("prepay_id=wx")
    assert placed.pay_parameters["signType"] == "RSA"


# --- offline channels ------------------------------------------------------------------------------------------


def test_a_cashier_sale_credits_once_and_a_receipt_pays_one_order_only(world: World) -> None:
    sale = svc.NewOrder(WALLET, 20_000, "cashier", "cash", "S1", operator="op-li")
    done = svc.pay_at_cashier(world.engine, world.channels, sale, "R-000123", POLICY, NOW)
    assert isinstance(done, svc.Settlement) and done.verdict is svc.Verdict.ACCEPTED
    assert world.balance() == 200 * YUAN
    assert done.order_no is not None
    again = svc.confirm_offline(world.engine, "cashier", done.order_no, 20_000, "R-000123", "op-li", NOW)
    assert again.verdict is svc.Verdict.DUPLICATE
    other = svc.pay_at_cashier(world.engine, world.channels, sale, "R-000123", POLICY, NOW)
    assert isinstance(other, svc.Settlement) and other.verdict is svc.Verdict.REJECTED
    assert "already paid another order" in other.reason
    assert world.balance() == 200 * YUAN


def test_a_bank_transfer_is_credited_when_finance_confirms_its_reference(world: World) -> None:
    order_no = world.place("bank", 150_000)
    wrong = svc.confirm_offline(world.engine, "bank", order_no, 140_000, "ICBC-20261122-77", "fin-wang", NOW)
    assert wrong.verdict is svc.Verdict.REJECTED and "does not match" in wrong.reason
    done = svc.confirm_offline(world.engine, "bank", order_no, 150_000, "ICBC-20261122-77", "fin-wang", NOW)
    assert done.verdict is svc.Verdict.ACCEPTED
    assert world.balance() == 1_500 * YUAN


# --- refunds ---------------------------------------------------------------------------------------------------


def paid_order(world: World, channel: str, amount_fen: int) -> str:
    order_no = world.place(channel, amount_fen)
    headers, body = paid_notification(world, channel, order_no)
    assert deliver(world, channel, headers, body).verdict is svc.Verdict.ACCEPTED
    return order_no


def refund_request(no: str, amount_fen: int, order_no: str | None = None) -> svc.RefundRequest:
    destination = svc.Destination.ORIGINAL if order_no else svc.Destination.CASH
    return svc.RefundRequest(no, WALLET, amount_fen, destination, "tenant moved out", "op-li", order_no)


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_a_partial_then_a_full_refund_go_back_through_the_original_channel(world: World, channel: str) -> None:
    order_no = paid_order(world, channel, 10_000)
    first = svc.refund(world.engine, world.channels, refund_request("RF-1", 3_000, order_no), NOW)
    assert isinstance(first, svc.RefundDone) and first.state == "succeeded"
    assert world.order_state(order_no) == "partially_refunded"
    assert world.balance() == 70 * YUAN
    rest = svc.refund(world.engine, world.channels, refund_request("RF-2", 7_000, order_no), NOW)
    assert isinstance(rest, svc.RefundDone) and rest.state == "succeeded"
    assert world.order_state(order_no) == "refunded"
    assert world.balance() == 0
    provider = world.wechat if channel == "wechat" else world.alipay
    assert provider.trades[order_no].refunded_fen == 10_000
    with world.engine.connect() as conn:
        assert [r.action for r in audit_records(conn, subject=f"order:{order_no}")] == ["recharge", "refund", "refund"]


def test_a_refund_is_idempotent_by_its_number(world: World) -> None:
    order_no = paid_order(world, "wechat", 10_000)
    request = refund_request("RF-9", 1_000, order_no)
    svc.refund(world.engine, world.channels, request, NOW)
    again = svc.refund(world.engine, world.channels, request, NOW)
    assert isinstance(again, svc.RefundDone) and again.message == "already recorded"
    assert world.balance() == 90 * YUAN


def test_a_refund_above_the_balance_is_refused_and_leaves_nothing_behind(world: World) -> None:
    order_no = paid_order(world, "wechat", 10_000)
    used = charge_entry("reading:1", WALLET, {"energy": 95 * YUAN}, NOW)
    assert used is not None
    with world.engine.begin() as conn:
        store.post(conn, used, NOW)
    refused = svc.refund(world.engine, world.channels, refund_request("RF-3", 6_000, order_no), NOW)
    assert isinstance(refused, svc.Refused) and refused.field == "amount_fen"
    assert "below the limit" in refused.message
    assert world.balance() == 5 * YUAN
    assert world.order_state(order_no) == "paid"
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(refunds)).scalar_one() == 0
    assert world.wechat.trades[order_no].refunded_fen == 0


def test_a_refund_above_what_the_order_paid_is_refused(world: World) -> None:
    order_no = paid_order(world, "alipay", 1_000)
    other = paid_order(world, "alipay", 5_000)
    refused = svc.refund(world.engine, world.channels, refund_request("RF-4", 2_000, order_no), NOW)
    assert isinstance(refused, svc.Refused) and "1000 fen left" in refused.message
    assert world.balance() == 60 * YUAN and world.order_state(other) == "paid"


def test_a_cash_refund_needs_no_order_and_is_audited(world: World) -> None:
    paid_order(world, "wechat", 5_000)
    done = svc.refund(world.engine, world.channels, refund_request("RF-5", 1_234), NOW)
    assert isinstance(done, svc.RefundDone) and done.state == "succeeded"
    assert world.balance() == 50 * YUAN - 12_340_000
    with world.engine.connect() as conn:
        assert store.balance(conn, "clearing:cashier").balance_micros == 12_340_000
        (record,) = audit_records(conn, action="refund")
    assert record.actor == "op-li" and record.subject == WALLET


def test_a_refund_the_provider_refuses_puts_the_credit_back(world: World) -> None:
    order_no = paid_order(world, "wechat", 10_000)
    world.wechat.refund_status = "ABNORMAL"
    failed = svc.refund(world.engine, world.channels, refund_request("RF-6", 4_000, order_no), NOW)
    assert isinstance(failed, svc.RefundDone) and failed.state == "failed"
    assert world.balance() == 100 * YUAN
    assert world.order_state(order_no) == "paid"
    assert ledger_entries_for(world, "refund-failed:RF-6") == 1


def test_a_wechat_refund_in_progress_is_recorded_as_processing(world: World) -> None:
    order_no = paid_order(world, "wechat", 10_000)
    world.wechat.refund_status = "PROCESSING"
    done = svc.refund(world.engine, world.channels, refund_request("RF-7", 10_000, order_no), NOW)
    assert isinstance(done, svc.RefundDone) and done.state == "processing"
    assert world.balance() == 0 and world.order_state(order_no) == "refunded"


def test_the_sandbox_pays_instantly_through_the_real_path(world: World) -> None:
    order_no = world.place("sandbox", 2_500)
    outcome = deliver(world, "sandbox", *world.sandbox.pay(order_no, NOW))
    assert outcome.verdict is svc.Verdict.ACCEPTED
    assert world.balance() == 25 * YUAN


def test_without_a_policy_the_order_follows_the_site_of_the_account_owning_the_wallet(world: World) -> None:
    from powergate.domain.structure import PaymentChannel
    from powergate.services import accounts

    with world.engine.begin() as conn:
        org = accounts.create_organisation(conn, "ORG1", "Harbour Property", actor="op-li", now=NOW)
        assert isinstance(org, int)
        site = accounts.create_site(
            conn, org, "Harbour Mall", timezone="Asia/Shanghai", currency="CNY",
            channels=[PaymentChannel.SANDBOX], min_purchase_micros=10 * YUAN, actor="op-li", now=NOW,
        )  # fmt: skip
        assert isinstance(site, int)
        account = accounts.stage_account(conn, site, "A-3001", "Li Lei", actor="op-li", now=NOW)
        assert isinstance(account, int)
        wallet = accounts.account_view(conn, account).wallet  # type: ignore[union-attr]
    too_small = svc.create_order(world.engine, world.channels, svc.NewOrder(wallet, 999, "sandbox", "i"), None, NOW)
    assert isinstance(too_small, svc.Refused) and "minimum purchase" in too_small.message
    disabled = svc.create_order(
        world.engine, world.channels, svc.NewOrder(wallet, 1_000, "wechat", "native"), None, NOW
    )
    assert isinstance(disabled, svc.Refused) and disabled.field == "channel"
    placed = svc.create_order(world.engine, world.channels, svc.NewOrder(wallet, 1_000, "sandbox", "i"), None, NOW)
    assert isinstance(placed, svc.OrderPlaced)
    with world.engine.connect() as conn:
        site_id = conn.execute(select(orders.c.site_id).where(orders.c.order_no == placed.order_no)).scalar_one()
    assert site_id == str(site)
