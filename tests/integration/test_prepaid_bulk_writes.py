"""The balance policy writes a whole call's states and outbox rows in bulk, with the results wallet by wallet.

``prepaid.evaluate`` decides each wallet in turn and then writes every new state in one insert, every changed
one in one update and every outbox row in one insert. These tests check that a batch writes exactly what
evaluating each wallet on its own (the payment path: one wallet a call) writes, state by state (fired levels,
supply, deferred trip, generation) and row by row (kind, key, payload, order), over seeded scenarios; that the
rows keep the decision order; that nothing is half-applied when one wallet's row collides; and that the bulk
outbox insert still wakes the relays. SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from powergate.domain.balance_policy import DayTypeOf, Policy, PolicyState, decide
from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.services import prepaid
from powergate.services.site_calendar import NO_SITE
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import ledger_accounts
from powergate.store.tables_prepaid import outbox, wallet_states
from testkit import FLAT_TARIFF

YUAN = 1_000_000
TZ = ZoneInfo("Asia/Shanghai")
WEDNESDAY_NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
WHO = prepaid.Operator("operator:ops1", "plan levels for the test")
PAIRS = 36
"""Wallet pairs per scenario: one of each pair is evaluated in batches, its twin one wallet a call."""
STEPS = 9
SEEDS = (1, 2, 3)
CLOCK = (0, 9, 11, 14, 20, 22, 26, 30, 44)
"""Hours after Wednesday noon (Shanghai) of each step: day, evening, night (friendly windows), next morning."""


@dataclass(frozen=True)
class Setup:
    window: str
    reconnect_micros: int
    overdraft_micros: int
    protect: bool
    meter_side: bool
    own_levels: tuple[int, ...] | None
    planned: bool
    credit_micros: int


PLAN_LEVELS = (40 * YUAN, 15 * YUAN, 3 * YUAN)
"""The ``planned`` tariff plan's warning levels."""


@dataclass
class Expected:
    """What the one-at-a-time code writes for one wallet, kept by ``Model`` from the domain rules alone."""

    balance_micros: int
    state: PolicyState | None = None
    generation: int = 0
    updated_at: dt.datetime | None = None
    keys: list[str] | None = None


class Model:
    """The one-at-a-time semantics: per wallet, in call order, ``decide`` from the stored state; a state is
    written when it is new or changed, the generation bumped by every decision, the rows keyed by it."""

    def __init__(self, setups: dict[int, Setup], day_type: DayTypeOf) -> None:
        self.setups = setups
        self.day_type = day_type
        self.wallets = {w: Expected(setup.credit_micros, keys=[]) for w, setup in setups.items()}

    def evaluate(self, wallet_ids: list[int], now: dt.datetime) -> int:
        written = 0
        for wallet_id in wallet_ids:
            setup, expected = self.setups[wallet_id], self.wallets[wallet_id]
            if setup.meter_side:
                continue
            window = prepaid.parse_window(setup.window)
            assert not isinstance(window, prepaid.Problem)
            levels = setup.own_levels or (PLAN_LEVELS if setup.planned else prepaid.DEFAULT_WARNING_LEVELS_MICROS)
            policy = Policy(levels, setup.reconnect_micros, setup.overdraft_micros, setup.protect, None, window)
            before = expected.state or PolicyState()
            decision = decide(policy, before, expected.balance_micros, now, TZ, self.day_type)
            if decision.state == before and expected.state is not None:
                continue
            generation = expected.generation + (1 if decision.changed else 0)
            expected.state, expected.generation, expected.updated_at = decision.state, generation, now
            keys = [f"warning:W:{generation}:{level}" for level in decision.warnings_micros]
            keys += [f"trip_deferred:W:{generation}"] if decision.deferred_until is not None else []
            keys += [f"trip:W:{generation}"] if decision.trip else []
            keys += [f"close:W:{generation}"] if decision.close else []
            assert expected.keys is not None
            expected.keys += keys
            written += len(keys)
        return written

    def state_row(self, wallet_id: int) -> tuple[Any, ...] | None:
        expected = self.wallets[wallet_id]
        state = expected.state
        if state is None:
            return None
        fired = sorted(state.fired_micros, reverse=True)
        return (fired, state.supply_on, state.trip_due_at, expected.generation, expected.updated_at)


def draw_setup(rng: random.Random) -> Setup:
    return Setup(
        window=rng.choice(("off", "default", "22:00-06:00", "off")),
        reconnect_micros=rng.choice((0, 5 * YUAN, 30 * YUAN)),
        overdraft_micros=rng.choice((0, 0, 2 * YUAN)),
        protect=rng.random() < 0.1,
        meter_side=rng.random() < 0.1,
        own_levels=rng.choice((None, None, (30 * YUAN, 5 * YUAN))),
        planned=rng.random() < 0.3,
        credit_micros=rng.choice((0, 8, 25, 45, 70, 120)) * YUAN,
    )


def add_wallet(conn: Connection, name: str, setup: Setup, now: dt.datetime) -> int:
    code = wallet_code(name)
    wallet_id = ledger_store.ensure_account(conn, code, now, overdraft_limit_micros=setup.overdraft_micros)
    metering.add_meter(conn, f"M-{name}", wallet_id, "planned" if setup.planned else "flat", now)
    if setup.credit_micros:
        ledger_store.post(conn, recharge_entry(f"open:{name}", code, "cash", setup.credit_micros, now), now)
    policy = prepaid.WalletPolicy(
        warning_levels_micros=setup.own_levels,
        reconnect_micros=setup.reconnect_micros,
        power_protect=setup.protect,
        friendly_window=setup.window,
        billing_mode="meter" if setup.meter_side else "platform",
    )
    assert prepaid.set_policy(conn, wallet_id, policy, now) is None
    return wallet_id


def move(conn: Connection, name: str, step: int, delta_micros: int, now: dt.datetime) -> None:
    code = wallet_code(name)
    if delta_micros > 0:
        ledger_store.post(conn, recharge_entry(f"pay:{name}:{step}", code, "cash", delta_micros, now), now)
    else:
        ledger_store.post(conn, charge_entry(f"use:{name}:{step}", code, {"energy": -delta_micros}, now), now)


def state_of(conn: Connection, wallet_id: int) -> tuple[Any, ...] | None:
    c = wallet_states.c
    row = conn.execute(
        select(c.fired_levels, c.supply_on, c.trip_due_at, c.generation, c.updated_at).where(
            c.wallet_account_id == wallet_id
        )
    ).first()
    return None if row is None else (json.loads(row[0]), bool(row[1]), row[2], int(row[3]), row[4])


def rows_of(conn: Connection, wallet_id: int) -> list[tuple[Any, ...]]:
    """The wallet's outbox rows in id order, its id replaced by ``W`` in keys and payloads (to compare twins)."""
    c = outbox.c
    query = select(c.kind, c.key, c.payload, c.created_at, c.available_at, c.attempts, c.processed_at)
    found = []
    for row in conn.execute(query.where(c.wallet_account_id == wallet_id).order_by(c.id)):
        payload = json.loads(row.payload)
        assert payload.pop("wallet_account_id") == wallet_id
        key = row.key.replace(f":{wallet_id}:", ":W:")
        found.append((row.kind, key, payload, row.created_at, row.available_at, row.attempts, row.processed_at))
    return found


def test_a_batch_writes_what_one_wallet_a_call_writes_over_seeded_scenarios(engine: Engine) -> None:
    for seed in SEEDS:
        play_twins(engine, seed)


def play_twins(engine: Engine, seed: int) -> None:
    """Twins (same policy, plan, credit and balance moves): ``batch`` ones evaluated together in a shuffled
    order, ``single`` ones one wallet a call in the same order; after every step the batch wallets' states and
    row keys are what ``Model`` (the one-at-a-time semantics) expects, and their twins' rows are the same."""
    rng = random.Random(seed)
    setups = [draw_setup(rng) for _ in range(PAIRS)]
    batch: list[int] = []
    single: list[int] = []
    with engine.begin() as conn:
        if seed == SEEDS[0]:
            metering.add_tariff(conn, "flat", "flat", "electricity", FLAT_TARIFF, WEDNESDAY_NOON)
            metering.add_tariff(conn, "planned", "planned", "electricity", FLAT_TARIFF, WEDNESDAY_NOON)
            assert prepaid.set_plan_warning_levels(conn, "planned", PLAN_LEVELS, WHO, WEDNESDAY_NOON) is None
        for index, setup in enumerate(setups):
            batch.append(add_wallet(conn, f"S{seed}-B{index}", setup, WEDNESDAY_NOON))
            single.append(add_wallet(conn, f"S{seed}-S{index}", setup, WEDNESDAY_NOON))
        statutory = prepaid.CALENDARS.for_sites(conn, [NO_SITE])[NO_SITE]
    model = Model(dict(zip(batch, setups, strict=True)), statutory.day_type)
    for step, hours in enumerate(CLOCK):
        now = WEDNESDAY_NOON + dt.timedelta(hours=hours, minutes=rng.randrange(60))
        # about half the wallets' balances move; every wallet is evaluated (unchanged ones write nothing),
        # so a call mixes first state rows, changed rows and untouched ones
        chosen = sorted(rng.sample(range(PAIRS), PAIRS // 2 + step % 3))
        with engine.begin() as conn:
            for index in chosen:
                delta = rng.choice((-40, -25, -12, -6, -3, 4, 8, 15, 25, 60)) * YUAN
                move(conn, f"S{seed}-B{index}", step, delta, now)
                move(conn, f"S{seed}-S{index}", step, delta, now)
                model.wallets[batch[index]].balance_micros += delta
        order = list(range(PAIRS)) if step == 0 else rng.sample(range(PAIRS), PAIRS)
        if step == 1:
            order = order[: PAIRS // 2]  # the other half gets its first state row at a later step
        with engine.begin() as conn:
            first_id = conn.execute(select(outbox.c.id).order_by(outbox.c.id.desc()).limit(1)).scalar() or 0
            written = prepaid.evaluate(conn, [batch[i] for i in order], now)
            new_rows = conn.execute(
                select(outbox.c.wallet_account_id).where(outbox.c.id > first_id).order_by(outbox.c.id)
            )
            writers = [int(w) for w in new_rows.scalars()]
        with engine.begin() as conn:
            singles = sum(prepaid.evaluate(conn, [single[i]], now) for i in order)
        assert written == singles == len(writers) == model.evaluate([batch[i] for i in order], now), (seed, step)
        position = {batch[i]: n for n, i in enumerate(order)}
        assert [position[w] for w in writers] == sorted(position[w] for w in writers), "rows keep decision order"
        with engine.connect() as conn:
            for index in range(PAIRS):
                b, s = batch[index], single[index]
                balance = conn.execute(select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == b))
                assert balance.scalar() == model.wallets[b].balance_micros
                assert state_of(conn, b) == model.state_row(b), (seed, step, index, setups[index])
                assert [row[1] for row in rows_of(conn, b)] == model.wallets[b].keys, (seed, step, index)
                assert state_of(conn, b) == state_of(conn, s), (seed, step, index, setups[index])
                assert rows_of(conn, b) == rows_of(conn, s), (seed, step, index, setups[index])
    with engine.connect() as conn:
        kinds = set(conn.execute(select(outbox.c.kind).where(outbox.c.wallet_account_id.in_(batch))).scalars())
    assert kinds == {"warning", "trip", "close", "trip_deferred"}, "the scenario exercises every decision"


def test_a_worked_batch_inserts_first_states_updates_changed_ones_and_leaves_unchanged_ones(engine: Engine) -> None:
    now = WEDNESDAY_NOON
    later = now + dt.timedelta(hours=1)
    plain = Setup("off", 0, 0, False, False, None, False, 0)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", FLAT_TARIFF, now)
        empty = add_wallet(conn, "empty", plain, now)
        low = add_wallet(conn, "low", Setup("off", 0, 0, False, False, None, False, 30 * YUAN), now)
        rich = add_wallet(conn, "rich", Setup("off", 0, 0, False, False, None, False, 100 * YUAN), now)
        night = add_wallet(conn, "night", Setup("default", 0, 0, False, False, None, False, 0), now)
        assert prepaid.evaluate(conn, [empty, low, rich], now) == 5  # empty: 3 warnings + trip; low: 1 warning
    with engine.connect() as conn:
        assert state_of(conn, empty) == ([50 * YUAN, 20 * YUAN, 10 * YUAN], False, None, 1, now)
        assert state_of(conn, low) == ([50 * YUAN], True, None, 1, now)
        assert state_of(conn, rich) == ([], True, None, 0, now), "a first evaluation with nothing to say"
        kinds = [(r[0], r[1]) for r in rows_of(conn, empty)]
        assert kinds == [
            ("warning", f"warning:W:1:{50 * YUAN}"),
            ("warning", f"warning:W:1:{20 * YUAN}"),
            ("warning", f"warning:W:1:{10 * YUAN}"),
            ("trip", "trip:W:1"),
        ]
    nine_pm = dt.datetime(2026, 11, 25, 21, 0, tzinfo=TZ).astimezone(dt.UTC)
    with engine.begin() as conn:
        move(conn, "empty", 1, 100 * YUAN, later)
        move(conn, "low", 1, -25 * YUAN, later)
        assert prepaid.evaluate(conn, [rich, low, empty], later) == 3  # low: 20 and 10 yuan; empty: close
        assert prepaid.evaluate(conn, [night], nine_pm) == 4  # three warnings and the trip deferred to 08:00
    morning = dt.datetime(2026, 11, 26, 8, 0, tzinfo=TZ).astimezone(dt.UTC)
    with engine.connect() as conn:
        assert state_of(conn, empty) == ([], True, None, 2, later), "re-armed above every level, supply back"
        assert state_of(conn, low) == ([50 * YUAN, 20 * YUAN, 10 * YUAN], True, None, 2, later)
        assert state_of(conn, rich) == ([], True, None, 0, now), "unchanged: not written again"
        assert state_of(conn, night) == ([50 * YUAN, 20 * YUAN, 10 * YUAN], True, morning, 1, nine_pm)
        assert [r[1] for r in rows_of(conn, low)][1:] == [f"warning:W:2:{20 * YUAN}", f"warning:W:2:{10 * YUAN}"]
        assert [r[1] for r in rows_of(conn, empty)][-1] == "close:W:2"
        deferred = rows_of(conn, night)[-1]
        assert deferred[:2] == ("trip_deferred", "trip_deferred:W:1") and deferred[2]["until"] == morning.isoformat()
    assert prepaid.due_trips(engine, morning) == 1
    with engine.connect() as conn:
        assert state_of(conn, night) == ([50 * YUAN, 20 * YUAN, 10 * YUAN], False, None, 2, morning)


def test_a_wallet_listed_twice_is_evaluated_once(engine: Engine) -> None:
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", FLAT_TARIFF, WEDNESDAY_NOON)
        wallet_id = add_wallet(conn, "twice", Setup("off", 0, 0, False, False, None, False, 0), WEDNESDAY_NOON)
        assert prepaid.evaluate(conn, [wallet_id, wallet_id], WEDNESDAY_NOON) == 4
        assert state_of(conn, wallet_id) == ([50 * YUAN, 20 * YUAN, 10 * YUAN], False, None, 1, WEDNESDAY_NOON)


def test_one_colliding_outbox_key_rolls_the_whole_call_back(engine: Engine) -> None:
    """A concurrent evaluation queued this decision already: the call fails as a whole, no state half-written."""
    plain = Setup("off", 0, 0, False, False, None, False, 0)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", FLAT_TARIFF, WEDNESDAY_NOON)
        ids = [add_wallet(conn, f"C{n}", plain, WEDNESDAY_NOON) for n in range(5)]
        rich = add_wallet(conn, "C-rich", Setup("off", 0, 0, False, False, None, False, 100 * YUAN), WEDNESDAY_NOON)
        values = {"created_at": WEDNESDAY_NOON, "available_at": WEDNESDAY_NOON, "attempts": 0}
        conn.execute(insert(outbox).values(kind="trip", key=f"trip:{ids[3]}:1", wallet_account_id=ids[3], **values))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        prepaid.evaluate(conn, [rich, *ids], WEDNESDAY_NOON)
    with engine.connect() as conn:
        assert conn.execute(select(wallet_states.c.wallet_account_id)).all() == []
        assert [row.key for row in conn.execute(select(outbox.c.key))] == [f"trip:{ids[3]}:1"]
    with engine.begin() as conn:
        conn.execute(delete(outbox))
        assert prepaid.evaluate(conn, [rich, *ids], WEDNESDAY_NOON) == 20, "retried, the call goes through"


@pytest.mark.postgres
def test_the_bulk_outbox_insert_wakes_the_relays_when_it_commits(migrated_postgres_url: str) -> None:
    import psycopg

    from powergate.store.db import make_engine
    from testkit import truncate_all

    truncate_all(migrated_postgres_url)
    engine = make_engine(migrated_postgres_url)
    listener = psycopg.connect(migrated_postgres_url.replace("postgresql+psycopg://", "postgresql://", 1))
    try:
        listener.autocommit = True
        listener.execute("LISTEN powergate_outbox")
        with engine.begin() as conn:
            metering.add_tariff(conn, "flat", "flat", "electricity", FLAT_TARIFF, WEDNESDAY_NOON)
            wallet_id = add_wallet(conn, "wake", Setup("off", 0, 0, False, False, None, False, 0), WEDNESDAY_NOON)
        assert list(listener.notifies(timeout=0.2, stop_after=1)) == [], "set-up wrote no outbox row"
        with engine.begin() as conn:
            assert prepaid.evaluate(conn, [wallet_id], WEDNESDAY_NOON) == 4
        heard = list(listener.notifies(timeout=5.0, stop_after=1))
        assert [n.channel for n in heard] == ["powergate_outbox"]
    finally:
        listener.close()
        engine.dispose()
