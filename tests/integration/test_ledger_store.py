"""The ledger in SQLite and PostgreSQL: idempotent, balanced, materialised, audited, limited."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from powergate.domain.ledger import charge_entry, recharge_entry, refund_entry, wallet_code
from powergate.store import ledger as store

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)


def test_a_recharge_and_a_deduction_leave_exact_balances(engine: Engine) -> None:
    wallet = wallet_code("A-1")
    with engine.begin() as conn:
        store.post(conn, recharge_entry("wechat:1", wallet, "wechat", 100_000_000, NOW), NOW)
        entry = charge_entry("reading:1", wallet, {"energy": 12_345_678}, NOW)
        assert entry is not None
        store.post(conn, entry, NOW)
    with engine.connect() as conn:
        assert store.balance(conn, wallet).balance_micros == 87_654_322
        assert store.balance(conn, "clearing:wechat").balance_micros == -100_000_000
        assert store.balance(conn, "revenue:energy").balance_micros == 12_345_678
        assert store.audit(conn) == []


def test_a_replayed_key_returns_the_original_entry_and_writes_nothing(engine: Engine) -> None:
    wallet = wallet_code("A-2")
    entry = recharge_entry("alipay:9", wallet, "alipay", 30_000_000, NOW)
    with engine.begin() as conn:
        first = store.post(conn, entry, NOW)
    with engine.begin() as conn:
        again = store.post(conn, entry, NOW)
    assert first.created and not again.created
    assert again.entry_id == first.entry_id
    with engine.connect() as conn:
        assert store.balance(conn, wallet).balance_micros == 30_000_000
        assert len(store.entries_of(conn, ["alipay:9"])) == 2


def test_five_concurrent_replays_credit_once(engine: Engine) -> None:
    wallet = wallet_code("A-3")
    entry = recharge_entry("wechat:dup", wallet, "wechat", 10_000_000, NOW)
    with engine.begin() as conn:
        store.ensure_account(conn, wallet, NOW)
        store.ensure_account(conn, "clearing:wechat", NOW)
    barrier = threading.Barrier(5)
    results: list[store.Posted] = []
    errors: list[BaseException] = []

    def replay() -> None:
        try:
            barrier.wait(timeout=10)
            with engine.begin() as conn:
                results.append(store.post(conn, entry, NOW))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=replay) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(r.created for r in results) == [False, False, False, False, True]
    assert len({r.entry_id for r in results}) == 1
    with engine.connect() as conn:
        assert store.balance(conn, wallet).balance_micros == 10_000_000
        assert store.audit(conn) == []


def test_a_refund_may_not_exceed_the_balance_and_leaves_nothing_behind(engine: Engine) -> None:
    wallet = wallet_code("A-4")
    with engine.begin() as conn:
        store.post(conn, recharge_entry("cash:1", wallet, "cash", 5_000_000, NOW), NOW)
    with pytest.raises(store.InsufficientCredit, match="below the limit"), engine.begin() as conn:
        store.post(conn, refund_entry("refund:1", wallet, "cash", 5_000_001, NOW), NOW)
    with engine.begin() as conn:
        assert store.find_entry_id(conn, "refund:1") is None
        assert store.balance(conn, wallet).balance_micros == 5_000_000
        store.post(conn, refund_entry("refund:2", wallet, "cash", 5_000_000, NOW), NOW)
        assert store.balance(conn, wallet).balance_micros == 0
        assert store.audit(conn) == []


def test_the_overdraft_limit_lets_a_wallet_go_that_far_below_zero_and_no_further(engine: Engine) -> None:
    wallet = wallet_code("A-5")
    with engine.begin() as conn:
        store.post(conn, recharge_entry("cash:5", wallet, "cash", 1_000_000, NOW), NOW)
        store.set_overdraft_limit(conn, wallet, 2_000_000)
        store.post(conn, refund_entry("refund:5a", wallet, "cash", 3_000_000, NOW), NOW)
        with pytest.raises(store.InsufficientCredit):
            store.post(conn, refund_entry("refund:5b", wallet, "cash", 1, NOW), NOW)
        assert store.balance(conn, wallet).balance_micros == -2_000_000


def test_the_database_refuses_a_zero_posting_and_a_duplicate_key(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    with engine.begin() as conn:
        store.post(conn, recharge_entry("k:1", wallet_code("A-6"), "cash", 1, NOW), NOW)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE ledger_postings SET amount_micros = 0"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_entries (idempotency_key, kind, event_at, recorded_at, description) "
                "VALUES ('k:1', 'adjustment', :t, :t, '')"
            ),
            {"t": NOW.replace(tzinfo=None)},
        )


def test_the_audit_names_a_tampered_balance_and_an_unbalanced_entry(engine: Engine) -> None:
    wallet = wallet_code("A-7")
    with engine.begin() as conn:
        store.post(conn, recharge_entry("cash:7", wallet, "cash", 7_000_000, NOW), NOW)
        conn.execute(
            text("UPDATE ledger_accounts SET balance_micros = balance_micros + 1 WHERE code = :c"),
            {"c": wallet},
        )
        conn.execute(text("UPDATE ledger_postings SET amount_micros = -6999999 WHERE amount_micros = -7000000"))
    with engine.connect() as conn:
        problems = {p.subject: p.message for p in store.audit(conn)}
    assert any(s.startswith("entry ") and "summing to 1" in m for s, m in problems.items())
    assert "account wallet:A-7" in problems
    assert "account clearing:cash" in problems


operations = st.lists(
    st.tuples(st.sampled_from(["recharge", "charge", "refund", "replay"]), st.integers(1, 50_000_000)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_random_operations_keep_the_journal_balanced_and_the_balances_exact(
    engine: Engine, ops: list[tuple[str, int]]
) -> None:
    wallet = wallet_code(f"H-{uuid.uuid4().hex[:8]}")
    expected = 0
    posted: list[object] = []
    with engine.begin() as conn:
        store.ensure_account(conn, wallet, NOW)
        for index, (op, amount) in enumerate(ops):
            key = f"{wallet}:{index}"
            if op == "recharge":
                entry = recharge_entry(key, wallet, "sandbox", amount, NOW)
                expected += amount
            elif op == "charge":
                entry = charge_entry(key, wallet, {"energy": amount}, NOW)
                assert entry is not None
                expected -= amount
            elif op == "refund":
                entry = refund_entry(key, wallet, "sandbox", amount, NOW)
                try:
                    with conn.begin_nested():
                        store.post(conn, entry, NOW)
                except store.InsufficientCredit:
                    assert expected - amount < 0
                    continue
                expected -= amount
                posted.append(entry)
                continue
            else:
                if not posted:
                    continue
                replayed = posted[-1]
                assert not store.post(conn, replayed, NOW).created  # type: ignore[arg-type]
                continue
            store.post(conn, entry, NOW)
            posted.append(entry)
        assert store.balance(conn, wallet).balance_micros == expected
        assert store.audit(conn) == []
