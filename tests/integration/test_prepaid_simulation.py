"""Seeded simulation of the prepaid engine with an auditor (issue #5 acceptance), on SQLite and PostgreSQL.

Hypothesis draws scenarios: a few wallets (friendly window, reconnect threshold, overdraft limit,
power-protect, opening credit, tariff) and a sequence of operations (readings read, duplicated, reordered,
delivered late; payments whose notifications come at once, later, twice, stale or never; refunds in cash and
to the original channel; the clock moving through friendly windows; meters unplugged; the outbox relay; the
dispatcher; a crash at the N-th SQL statement of whatever runs next, followed by a restart; clean restarts).
``prepaid_auditor.World`` plays each scenario against the real engine and ``prepaid_auditor.audit`` checks
the books after it: balances exact, each reading billed at most once, the ledger audit and every day's
reconciliation exact; and the relays: every wallet above its reconnect threshold has its meters' own relays
closed, every wallet at or below its trip line (outside every window, not power-protected) has them open.

A failure prints the scenario Hypothesis shrank to (seed, wallets, operations), the log of what ran and the
problems found; paste the scenario into ``REGRESSIONS`` to keep it. Sizes: SQLite 300 scenarios and
PostgreSQL 60 (500 and 150 under ``CI=true``; ``POWERGATE_SIM_EXAMPLES`` overrides both); about 0.23 s a
scenario on SQLite and 0.6 s on PostgreSQL on the loaded 2-core machine. The nightly test plays 10,000 on
SQLite with ``POWERGATE_NIGHTLY=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prepaid_auditor import (
    WINDOWS,
    Advance,
    Crash,
    Databases,
    Deliver,
    Dispatch,
    Notify,
    Offline,
    Op,
    Pay,
    Read,
    Reconcile,
    Refund,
    Relay,
    Restart,
    Scenario,
    Tick,
    WalletSetup,
    play,
)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SQLITE_EXAMPLES = int(os.environ.get("POWERGATE_SIM_EXAMPLES") or ("500" if IN_CI else "300"))
POSTGRES_EXAMPLES = int(os.environ.get("POWERGATE_SIM_EXAMPLES") or ("150" if IN_CI else "60"))
NIGHTLY_EXAMPLES = 10_000
MIN_OPS = 8
MAX_OPS = 40
WALLETS = 3

wallet_setups = st.builds(
    WalletSetup,
    window=st.sampled_from(WINDOWS),
    reconnect_yuan=st.sampled_from((0, 0, 5, 30)),
    overdraft_yuan=st.sampled_from((0, 0, 2)),
    protect=st.sampled_from((False, False, False, True)),
    credit_yuan=st.integers(0, 40),
    tariff=st.sampled_from(("tou", "flat")),
)
operations: st.SearchStrategy[Op] = st.one_of(
    st.builds(Tick, st.integers(5, 120)),
    st.builds(Tick, st.integers(5, 120)),
    st.builds(Tick, st.integers(5, 120)),
    st.builds(Advance, st.integers(1, 240)),
    st.builds(Advance, st.integers(5, 900)),
    st.builds(Read, st.lists(st.integers(0, WALLETS), min_size=1, max_size=WALLETS + 1, unique=True).map(tuple)),
    st.builds(Deliver, st.integers(1, 8), st.integers(0, 3), st.booleans()),
    st.builds(Pay, st.integers(0, WALLETS - 1), st.sampled_from((100, 1_000, 3_000, 10_000, 50_000)), st.booleans()),
    st.builds(Pay, st.integers(0, WALLETS - 1), st.sampled_from((100, 1_000, 3_000, 10_000, 50_000)), st.booleans()),
    st.builds(Dispatch, st.integers(1, 10)),
    st.builds(Notify, st.integers(0, 20), st.booleans()),
    st.builds(Refund, st.integers(0, WALLETS - 1), st.sampled_from((100, 500, 2_000)), st.booleans()),
    st.just(Relay()),
    st.builds(Dispatch, st.integers(1, 10)),
    st.builds(Offline, st.integers(0, WALLETS), st.booleans()),
    st.builds(Crash, st.integers(1, 30)),
    st.just(Restart()),
    st.just(Reconcile()),
)
scenarios = st.builds(
    Scenario,
    seed=st.integers(0, 2**31 - 1),
    wallets=st.lists(wallet_setups, min_size=WALLETS, max_size=WALLETS).map(tuple),
    ops=st.lists(operations, min_size=MIN_OPS, max_size=MAX_OPS).map(tuple),
    drop_reply=st.sampled_from((0.0, 0.0, 0.1)),
    garble=st.sampled_from((0.0, 0.0, 0.05)),
)

_EMPTY = WalletSetup(window="off", reconnect_yuan=0, overdraft_yuan=0, protect=False, credit_yuan=0, tariff="tou")
REGRESSIONS: list[Scenario] = [
    # A refund that takes a wallet to its trip line did not evaluate the balance policy: supply stayed on
    # until the next reading. Fixed: services.payments evaluates the policy in the refund's transaction.
    Scenario(
        seed=0,
        wallets=(_EMPTY, WalletSetup("off", 0, 0, False, 1, "tou"), _EMPTY),
        ops=(Refund(wallet=1, amount_fen=100, original=False),),
    ),
    # A trip (or close) that expired before it reached its meter (RELAY_VALID_FOR, one hour) was never sent
    # again: the policy had decided, so nothing new was decided, and the relay stayed against the wallet's
    # intent (free supply for a short wallet, darkness for a paid-up one). Fixed: prepaid.resend_lapsed, run
    # by due_trips. Found as seed 2248415 (rewritten by hand to cover both a trip and a close).
    Scenario(
        seed=2248415,
        wallets=(_EMPTY, _EMPTY, WalletSetup("off", 0, 0, False, 5, "tou")),
        ops=(
            Relay(),  # the trips of the empty wallets 0 (meters M-0, M-3) and 1 (M-1) are queued
            Offline(meter=1, offline=True),
            Dispatch(rounds=5),  # M-0 and M-3 trip; M-1 is away
            Offline(meter=0, offline=True),
            Pay(wallet=0, amount_fen=10_000, notify=True),
            Relay(),  # the closes of wallet 0 are queued
            Dispatch(rounds=5),  # M-3 closes; M-0 is away
            Advance(minutes=61),
            Dispatch(rounds=5),  # M-1's trip and M-0's close expire
        ),
    ),
    # The first version of that fix re-sent a trip only if the wallet was still short; but the intent stays
    # "off" between the trip line and the reconnect threshold (1 yuan here, threshold 30), and no later
    # reading decides a trip for a wallet already off: the meter kept free supply. Seed 2668246, PostgreSQL.
    Scenario(
        seed=2668246,
        wallets=(WalletSetup("off", 30, 0, False, 0, "tou"), _EMPTY, _EMPTY),
        ops=(
            Pay(wallet=0, amount_fen=100, notify=True),
            Relay(),  # the trip decided at opening is queued; the payment left the wallet below its threshold
            Advance(minutes=242),
            Relay(),
        ),
    ),
]
"""Scenarios that once found a bug in the engine."""


@pytest.fixture
def databases(db_url: str, tmp_path: Path) -> Iterator[Databases]:
    found = Databases(db_url, tmp_path)
    yield found
    found.close()


def check(databases: Databases, scenario: Scenario) -> None:
    problems, log, world = play(databases, scenario)
    assert not problems, (
        f"seed {scenario.seed}: {len(problems)} problems after {len(scenario.ops)} operations "
        f"({world.restarts} restarts, {world.crasher.fired - world.crashes_before} crashes):\n  "
        + "\n  ".join(problems)
        + "\nwhat ran:\n  "
        + "\n  ".join(log)
        + f"\nscenario (paste into REGRESSIONS to keep it):\n{scenario!r}"
    )


def sized(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_random_scenarios_keep_the_books_the_ledger_and_the_relays_exact(databases: Databases) -> None:
    examples = SQLITE_EXAMPLES if databases.sqlite else POSTGRES_EXAMPLES

    @sized(examples)
    @given(scenarios)
    def scenario_holds(scenario: Scenario) -> None:
        check(databases, scenario)

    scenario_holds()


@pytest.mark.parametrize("scenario", REGRESSIONS)
def test_scenarios_that_once_found_a_bug_stay_fixed(databases: Databases, scenario: Scenario) -> None:
    check(databases, scenario)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("POWERGATE_NIGHTLY", "") != "1", reason="the nightly long run: POWERGATE_NIGHTLY=1 to run it"
)
@pytest.mark.timeout(4 * 3600)
def test_nightly_long_run(databases: Databases) -> None:
    if not databases.sqlite:
        pytest.skip("the nightly run is on SQLite; PostgreSQL runs its share in the regular test")

    @sized(NIGHTLY_EXAMPLES)
    @given(scenarios)
    def scenario_holds(scenario: Scenario) -> None:
        check(databases, scenario)

    scenario_holds()
