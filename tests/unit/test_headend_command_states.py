"""The command queue's state machine, with a fake clock: every transition as a worked example.

``plan_claim`` (what a dispatcher does with a due command), ``after_send`` (the row after an attempt) and
``after_read`` (the row after reading the meter back) are pure; the database and the link are tested in
tests/integration/test_headend_commands.py and test_headend_kill.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.headend.commands import (
    CommandState,
    Problem,
    QueuedCommand,
    RetryPolicy,
    Step,
    after_read,
    after_send,
    applied,
    check_command,
    decode_command,
    encode_parameters,
    plan_claim,
)
from powergate.headend.model import CommandKind, CommandResult, FailureKind, LinkError, MeterCommand, MeterSnapshot

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
UNTIL = NOW + dt.timedelta(hours=1)
POLICY = RetryPolicy(base_delay_s=10, max_delay_s=300, jitter=0.5, offline_recheck_s=5, verify_grace_s=3600)
S, P, A = CommandState.SENT, CommandState.PENDING, CommandState.ACKED
V, F, E = CommandState.VERIFIED, CommandState.FAILED, CommandState.EXPIRED


def row(
    kind: CommandKind = CommandKind.RECHARGE, state: CommandState = S, attempts: int = 1, **fields: object
) -> QueuedCommand:
    command = MeterCommand("c-1", kind, UNTIL, amount_micros=5_000_000, purchase_count=3)
    if kind is not CommandKind.RECHARGE:
        command = MeterCommand("c-1", kind, UNTIL)
    base = QueuedCommand(
        seq=1,
        meter_id="M-1",
        command=command,
        priority=500,
        state=state,
        attempts=attempts,
        max_attempts=5,
        next_attempt_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        requested_by="op",
        reason="why",
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def snapshot(*, relay_open: bool | None = None, purchase_count: int | None = None) -> MeterSnapshot:
    return MeterSnapshot("M-1", NOW, relay_open=relay_open, purchase_count=purchase_count)


LATER = NOW + dt.timedelta(hours=2)

# (row, now) -> (state, attempts, then)
CLAIMS = [
    (
        "pending: a new attempt is counted and written before it is sent",
        row(state=P, attempts=0),
        NOW,
        (S, 1, Step.SEND),
    ),
    ("pending past valid_until: expired, never sent", row(state=P, attempts=0), LATER, (E, 0, None)),
    ("sent recharge: read the purchase count first", row(state=S, attempts=2), NOW, (S, 2, Step.VERIFY)),
    ("sent recharge past valid_until: still read first", row(state=S), LATER, (S, 1, Step.VERIFY)),
    ("sent trip: read the relay first", row(CommandKind.TRIP, S), NOW, (S, 1, Step.VERIFY)),
    ("acked: read it back", row(CommandKind.CLOSE, A), NOW, (A, 1, Step.VERIFY)),
    ("sent, no read-back: set again", row(CommandKind.SET_PRICES, S, 2), NOW, (S, 3, Step.SEND)),
    ("sent, no read-back, attempts spent", row(CommandKind.SET_PRICES, S, 5), NOW, (F, 5, None)),
    ("sent, no read-back, past valid_until", row(CommandKind.TIME_SYNC, S, 1), LATER, (F, 1, None)),
]


@pytest.mark.parametrize(("case", "queued", "now", "expected"), CLAIMS, ids=[c[0] for c in CLAIMS])
def test_a_claimed_command_is_sent_verified_or_settled(
    case: str, queued: QueuedCommand, now: dt.datetime, expected: tuple[CommandState, int, Step | None]
) -> None:
    transition = plan_claim(queued, now)
    assert (transition.state, transition.attempts, transition.then) == expected


TIMEOUT = LinkError(FailureKind.TIMEOUT, "no reply within 2 s")
SENDS = [
    ("ack of a recharge: read it back at once", CommandKind.RECHARGE, CommandResult(True), NOW, (A, 2, Step.VERIFY)),
    ("ack of a parameter write: done", CommandKind.SET_ALARMS, CommandResult(True), NOW, (V, 2, None)),
    ("already applied: done", CommandKind.RECHARGE, CommandResult(True, already_applied=True), NOW, (V, 2, None)),
    ("refused: failed", CommandKind.TRIP, LinkError(FailureKind.REJECTED, "password"), NOW, (F, 2, None)),
    (
        "refused after valid_until: expired",
        CommandKind.TRIP,
        LinkError(FailureKind.REJECTED, "late"),
        LATER,
        (E, 2, None),
    ),
    ("ok=False is a refusal", CommandKind.TRIP, CommandResult(False, reason="no"), NOW, (F, 2, None)),
    (
        "offline: nothing went out, attempt given back",
        CommandKind.TRIP,
        LinkError(FailureKind.OFFLINE, "x"),
        NOW,
        (P, 1, None),
    ),
    (
        "busy: nothing went out, attempt given back",
        CommandKind.RECHARGE,
        LinkError(FailureKind.BUSY, "x"),
        NOW,
        (P, 1, None),
    ),
    ("timeout: unknown, stays sent", CommandKind.RECHARGE, TIMEOUT, NOW, (S, 2, None)),
    ("garbled: unknown, stays sent", CommandKind.TRIP, LinkError(FailureKind.GARBLED, "crc"), NOW, (S, 2, None)),
]


@pytest.mark.parametrize(("case", "kind", "outcome", "now", "expected"), SENDS, ids=[c[0] for c in SENDS])
def test_the_row_after_an_attempt(
    case: str,
    kind: CommandKind,
    outcome: CommandResult | LinkError,
    now: dt.datetime,
    expected: tuple[CommandState, int, Step | None],
) -> None:
    transition = after_send(row(kind, S, attempts=2), outcome, now, POLICY, random.Random(1))
    assert (transition.state, transition.attempts, transition.then) == expected


def test_an_offline_meter_is_looked_at_again_after_the_recheck_interval() -> None:
    transition = after_send(row(), LinkError(FailureKind.OFFLINE, "gone"), NOW, POLICY, random.Random(1))
    assert transition.next_attempt_at == NOW + dt.timedelta(seconds=5)
    assert transition.last_error == "attempt 1: offline: gone"


def test_a_timeout_waits_an_exponential_jittered_time_before_the_next_look() -> None:
    waits = [
        (after_send(row(attempts=n), TIMEOUT, NOW, POLICY, random.Random(n)).next_attempt_at - NOW).total_seconds()
        for n in (1, 2, 3, 4, 5, 6, 7)
    ]
    for n, wait in enumerate(waits, start=1):
        nominal = min(10 * 2 ** (n - 1), 300)
        assert nominal / 2 <= wait <= nominal


READS = [
    ("recharge: the meter has our count", row(), snapshot(purchase_count=3), NOW, (V, 1, None)),
    ("recharge: the meter is past our count", row(), snapshot(purchase_count=4), NOW, (V, 1, None)),
    ("recharge not there: resend, counted first", row(), snapshot(purchase_count=2), NOW, (S, 2, Step.SEND)),
    ("recharge not there, attempts spent", row(attempts=5), snapshot(purchase_count=2), NOW, (F, 5, None)),
    ("recharge not there at valid_until: expired", row(), snapshot(purchase_count=2), LATER, (E, 1, None)),
    ("trip: relay open", row(CommandKind.TRIP), snapshot(relay_open=True), NOW, (V, 1, None)),
    ("close: relay closed", row(CommandKind.CLOSE, A), snapshot(relay_open=False), NOW, (V, 1, None)),
    (
        "close acked but relay open: retry later",
        row(CommandKind.CLOSE, A),
        snapshot(relay_open=True),
        NOW,
        (P, 1, None),
    ),
    ("protect on: relay closed", row(CommandKind.PROTECT_ON, A), snapshot(relay_open=False), NOW, (V, 1, None)),
    ("read timed out: unknown, never resend blind", row(), TIMEOUT, NOW, (S, 1, None)),
    ("reply without the value: unknown", row(), snapshot(relay_open=True), NOW, (S, 1, None)),
    ("meter offline: wait for it", row(CommandKind.TRIP, A), LinkError(FailureKind.OFFLINE, "x"), NOW, (A, 1, None)),
    ("unreadable past the grace: failed, outcome unknown", row(), TIMEOUT, LATER + dt.timedelta(hours=1), (F, 1, None)),
]


@pytest.mark.parametrize(("case", "queued", "read", "now", "expected"), READS, ids=[c[0] for c in READS])
def test_the_row_after_reading_the_meter_back(
    case: str,
    queued: QueuedCommand,
    read: MeterSnapshot | LinkError,
    now: dt.datetime,
    expected: tuple[CommandState, int, Step | None],
) -> None:
    transition = after_read(queued, read, now, POLICY, random.Random(1))
    assert (transition.state, transition.attempts, transition.then) == expected


def test_the_results_say_what_the_meter_showed() -> None:
    verified = after_read(row(), snapshot(purchase_count=3), NOW, POLICY, random.Random(1))
    assert verified.result == "verified: purchase count 3 on the meter"
    refused = after_read(row(CommandKind.CLOSE, A), snapshot(relay_open=True), NOW, POLICY, random.Random(1))
    assert refused.last_error == "attempt 1: acknowledged, but relay open on the meter"
    unknown = after_read(row(), TIMEOUT, LATER + dt.timedelta(hours=1), POLICY, random.Random(1))
    assert unknown.last_error == "outcome unknown: read-back: timeout: no reply within 2 s"


def test_a_snapshot_without_the_deciding_value_tells_nothing() -> None:
    assert applied(row().command, snapshot(relay_open=False)) is None
    assert applied(row(CommandKind.TRIP).command, snapshot(purchase_count=1)) is None


@given(attempts=st.integers(0, 200), seed=st.integers(0, 2**32), jitter=st.floats(0, 1))
def test_a_retry_delay_is_within_its_jitter_band_and_never_above_the_cap(
    attempts: int, seed: int, jitter: float
) -> None:
    policy = RetryPolicy(base_delay_s=5, max_delay_s=600, jitter=jitter)
    delay_s = policy.retry_delay(attempts, random.Random(seed)).total_seconds()
    nominal = min(5 * 2 ** min(max(attempts - 1, 0), 30), 600)
    assert nominal * (1 - jitter) - 1e-6 <= delay_s <= nominal + 1e-6


commands = st.builds(
    MeterCommand,
    command_id=st.text(min_size=1, max_size=20),
    kind=st.sampled_from(CommandKind),
    valid_until=st.datetimes(timezones=st.just(dt.UTC)),
    amount_micros=st.none() | st.integers(1, 10**12),
    purchase_count=st.none() | st.integers(1, 10**6),
    alarm1_micros=st.none() | st.integers(0, 10**12),
    alarm2_micros=st.none() | st.integers(0, 10**12),
    power_limit_w=st.none() | st.integers(0, 10**6),
    prices_micros=st.none() | st.tuples(*[st.integers(0, 10**8)] * 4),
    at=st.none() | st.datetimes(timezones=st.just(dt.UTC)),
)


@given(commands)
def test_a_commands_parameters_survive_the_database_exactly(command: MeterCommand) -> None:
    text = encode_parameters(command)
    assert decode_command(command.command_id, command.kind.value, command.valid_until, text) == command
    assert encode_parameters(command) == text  # canonical: the same command, the same text


def problem(command: MeterCommand, **kwargs: object) -> Problem | None:
    arguments: dict[str, object] = {
        "requested_by": "op",
        "reason": "why",
        "now": NOW,
        "priority": 500,
        "max_attempts": 5,
    }
    arguments.update(kwargs)
    return check_command("M-1", command, **arguments)  # type: ignore[arg-type]


PROBLEMS = [
    (MeterCommand("x", CommandKind.TRIP, UNTIL), {"requested_by": " "}, "requested_by"),
    (MeterCommand("x", CommandKind.TRIP, UNTIL), {"reason": ""}, "reason"),
    (MeterCommand("x", CommandKind.TRIP, UNTIL), {"priority": 5000}, "priority"),
    (MeterCommand("x", CommandKind.TRIP, UNTIL), {"max_attempts": 0}, "max_attempts"),
    (MeterCommand("x" * 129, CommandKind.TRIP, UNTIL), {}, "command_id"),
    (MeterCommand("x", CommandKind.TRIP, dt.datetime(2027, 1, 1)), {}, "valid_until"),
    (MeterCommand("x", CommandKind.SET_ALARMS, UNTIL, alarm1_micros=1, alarm2_micros=2), {}, "alarm2_micros"),
    (MeterCommand("x", CommandKind.SET_POWER_LIMIT, UNTIL), {}, "power_limit_w"),
    (MeterCommand("x", CommandKind.SET_PRICES, UNTIL, prices_micros=(1, 2, 3)), {}, "prices_micros"),
    (MeterCommand("x", CommandKind.SET_PRICES, UNTIL, prices_micros=(100, 200, 300, 450)), {}, "prices_micros"),
    (MeterCommand("x", CommandKind.TIME_SYNC, UNTIL, at=dt.datetime(2026, 1, 1)), {}, "at"),
]


@pytest.mark.parametrize(("command", "kwargs", "field"), PROBLEMS)
def test_a_command_that_cannot_work_names_its_field(
    command: MeterCommand, kwargs: dict[str, object], field: str
) -> None:
    found = problem(command, **kwargs)
    assert found is not None and found.field == field, found


def test_a_well_formed_command_has_no_problem() -> None:
    prices = MeterCommand("x", CommandKind.SET_PRICES, UNTIL, prices_micros=(1_200_000, 900_000, 600_000, 300_100))
    assert problem(prices) is None
    assert problem(row().command) is None
