"""Ledger entries are balanced, keyed, time-zoned and immutable; corrections are new entries."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.domain.ledger import (
    EntryKind,
    LedgerError,
    Posting,
    balance_deltas,
    charge_entry,
    make_entry,
    recharge_entry,
    refund_entry,
    reversal_of,
    wallet_code,
    within_limit,
)

AT = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
WALLET = wallet_code("A-1001")


def test_a_recharge_moves_money_from_the_channel_clearing_account_to_the_wallet() -> None:
    entry = recharge_entry("wechat:4200001", WALLET, "wechat", 100_000_000, AT)
    assert entry.postings == (Posting("clearing:wechat", -100_000_000), Posting(WALLET, 100_000_000))
    assert entry.kind is EntryKind.RECHARGE


def test_a_deduction_posts_one_revenue_line_per_component_and_skips_zero_components() -> None:
    entry = charge_entry("reading:r1", WALLET, {"energy": 1_200, "tier_surcharge": 300, "standing": 0}, AT)
    assert entry is not None
    assert entry.postings == (
        Posting(WALLET, -1_500),
        Posting("revenue:energy", 1_200),
        Posting("revenue:tier_surcharge", 300),
    )
    assert charge_entry("reading:r2", WALLET, {"energy": 0}, AT) is None


@pytest.mark.parametrize(
    ("postings", "message"),
    [
        ([Posting(WALLET, 5)], "needs 2"),
        ([Posting(WALLET, 5), Posting("revenue:energy", -4)], "sum to 1"),
        ([Posting(WALLET, 0), Posting("revenue:energy", 0)], "zero posting"),
        ([Posting("bogus:x", 5), Posting("revenue:energy", -5)], "unknown kind 'bogus'"),
        ([Posting("walletA-1", 5), Posting("revenue:energy", -5)], "must look like"),
    ],
)
def test_broken_entries_are_refused_with_the_reason(postings: list[Posting], message: str) -> None:
    with (
        pytest.raises(LedgerError, match=message)
        if "kind" not in message and "look" not in message
        else (pytest.raises(ValueError, match=message))
    ):
        make_entry("k1", EntryKind.ADJUSTMENT, AT, postings)


def test_entries_need_a_key_and_an_aware_time() -> None:
    with pytest.raises(LedgerError, match="idempotency key"):
        recharge_entry("", WALLET, "cash", 1, AT)
    with pytest.raises(LedgerError, match="no time zone"):
        recharge_entry("k", WALLET, "cash", 1, dt.datetime(2026, 1, 1))
    with pytest.raises(LedgerError, match="positive"):
        refund_entry("k", WALLET, "cash", 0, AT)


def test_a_reversal_is_a_new_entry_that_cancels_the_original() -> None:
    original = recharge_entry("alipay:1", WALLET, "alipay", 50_000_000, AT)
    reversal = reversal_of(original, "reverse:alipay:1", AT, "duplicate payment")
    assert reversal.kind is EntryKind.REVERSAL
    assert balance_deltas([original, reversal]) == {"clearing:alipay": 0, WALLET: 0}
    assert "duplicate payment" in reversal.description


def test_the_overdraft_limit_bounds_withdrawals() -> None:
    assert within_limit(10_000, 0, 10_000)
    assert not within_limit(10_000, 0, 10_001)
    assert within_limit(10_000, 5_000, 15_000)


@given(st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=20))
def test_any_mix_of_recharges_and_charges_balances_to_zero(amounts: list[int]) -> None:
    entries = []
    for index, amount in enumerate(amounts):
        if index % 2:
            entries.append(recharge_entry(f"p{index}", WALLET, "cash", amount, AT))
        else:
            charge = charge_entry(f"r{index}", WALLET, {"energy": amount}, AT)
            assert charge is not None
            entries.append(charge)
    assert sum(balance_deltas(entries).values()) == 0
