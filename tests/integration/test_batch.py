"""Batch operations over the real head-end command queue and virtual meters (SQLite and PostgreSQL).

The acceptance test of issue 9: a batch trip of 500 meters behind 10 DTUs, 20 of them offline, ends with 480
succeeded and 20 failed with the command's reason; once the 20 are back, "retry failures" makes them succeed.
Throughout, no DTU link ever has more than the batch's limit of commands waiting, every command reaches its
meter once, and the ledger audit stays exact. Recharge and allowance batches move money exactly once per
target, also when run again, retried or raced by two workers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from powergate.domain.money import MICROS_PER_UNIT
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.headend.commands import Dispatcher, DispatchOptions, RetryPolicy
from powergate.headend.memory import MemoryLink
from powergate.headend.model import MeterEndpoint, Transport
from powergate.headend.status import save_endpoints
from powergate.services import accounts, batch, reconcile
from powergate.services.batch import NewBatch, Operation, Selection
from powergate.sim.fleet import build_meters
from powergate.sim.meter import VirtualMeter
from powergate.store import ledger as ledger_store
from powergate.store.metering import add_tariff
from powergate.store.tables_api import tariff_owners
from powergate.store.tables_batch import batch_targets
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_structure import audit_log

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
YUAN = MICROS_PER_UNIT
TARIFF = """
id = "{id}"
name = "{id}"
commodity = "electricity"
currency = "CNY"

[[versions]]
effective_from = "2025-01-01"
price = "{price}"
"""


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class World:
    engine: Engine
    clock: Clock
    organisation_id: int
    site_id: int
    floor_ids: list[int]
    account_ids: list[int]
    meters: dict[str, VirtualMeter]
    link_of: dict[str, str]
    link: MemoryLink
    endpoints: dict[str, MeterEndpoint]

    def dispatcher(self) -> Dispatcher:
        retry = RetryPolicy(base_delay_s=5, max_delay_s=60, offline_recheck_s=5, lease_s=60)
        options = DispatchOptions(batch=1_000, retry=retry)
        return Dispatcher(
            self.engine, self.link, self.endpoints.get, name="headend-1", clock=self.clock, options=options,
            rng=random.Random(3),
        )  # fmt: skip


def build_world(engine: Engine, *, accounts_count: int, meters_per_account: int, links: int) -> World:
    """An organisation with one site, ``links`` floors each behind its own DTU, and open accounts holding
    ``meters_per_account`` metered rooms each, built through the real services."""
    clock = Clock()
    actor = "system:test"
    count = accounts_count * meters_per_account
    virtual = build_meters(count, seed=5, now_s=int(NOW.timestamp()))
    meters = {f"M{index:04d}": meter for index, meter in enumerate(virtual)}
    ids = list(meters)
    link_of = {meter_id: f"dtu-{index % links}" for index, meter_id in enumerate(ids)}
    with engine.begin() as conn:
        org = _ok(accounts.create_organisation(conn, "BAT", "Batch Org", actor=actor, now=NOW))
        site = _ok(
            accounts.create_site(
                conn,
                org,
                "Campus",
                timezone="Asia/Shanghai",
                currency="CNY",
                channels=[PaymentChannel.CASHIER],
                actor=actor,
                now=NOW,
            )
        )
        building = _ok(accounts.create_building(conn, site, "A"))
        floors = [_ok(accounts.create_floor(conn, building, f"{n}F")) for n in range(links)]
        add_tariff(conn, "flat-1", "flat-1", "electricity", TARIFF.format(id="flat-1", price="1.0000"), NOW)
        add_tariff(conn, "flat-2", "flat-2", "electricity", TARIFF.format(id="flat-2", price="0.8000"), NOW)
        conn.execute(insert(tariff_owners).values(tariff_id="flat-2", organisation_id=org, created_at=NOW))
        account_ids = []
        for a in range(accounts_count):
            account = _ok(accounts.stage_account(conn, site, f"R{a:04d}", f"Tenant {a}", actor=actor, now=NOW))
            opened = accounts.open_account(conn, account, actor=actor, reason="test", now=NOW)
            assert not isinstance(opened, accounts.Rejected), opened
            account_ids.append(account)
            for m in range(meters_per_account):
                meter_id = ids[a * meters_per_account + m]
                floor = floors[int(link_of[meter_id].split("-")[1])]
                room = _ok(accounts.create_room(conn, floor, meter_id, 2_000, RoomUse.DORMITORY))
                attached = accounts.attach_meter(
                    conn, meter_id, room, account, tariff_id="flat-1", actor=actor, reason="test", now=NOW
                )
                assert isinstance(attached, int), attached
        endpoints = {
            meter_id: MeterEndpoint(meter_id, Transport.DLT645, meter.address, link_of[meter_id])
            for meter_id, meter in meters.items()
        }
        save_endpoints(conn, endpoints.values())
    link = MemoryLink(meters, clock, timeout_s=0.5)
    return World(engine, clock, org, site, floors, account_ids, meters, link_of, link, endpoints)


def _ok(value: int | accounts.Rejected) -> int:
    assert isinstance(value, int), value
    return value


def create(world: World, operation: Operation, selection: Selection, **options: object) -> int:
    parameters = options.pop("parameters", {})
    new = NewBatch(
        world.organisation_id, operation, selection, parameters,  # type: ignore[arg-type]
        reason=str(options.pop("reason", "test batch")), actor="user:li@BAT", **options,  # type: ignore[arg-type]
    )  # fmt: skip
    with world.engine.begin() as conn:
        made = batch.create_batch(conn, new, world.clock())
    assert isinstance(made, int), made
    return made


def view(world: World, batch_id: int) -> batch.BatchView:
    with world.engine.connect() as conn:
        found = batch.get_batch(conn, world.organisation_id, batch_id)
    assert found is not None
    return found


def waiting_per_link(world: World) -> Counter[str]:
    """Open commands per DTU link: what the RS485 buses are being asked to carry."""
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(meter_commands.c.meter_id).where(meter_commands.c.state.in_(("pending", "sent", "acked")))
        ).scalars()
        return Counter(world.link_of[str(m)] for m in rows)


def drive(world: World, batch_id: int, *, limit: int, step_s: float = 15, rounds: int = 80) -> int:
    """Run the worker (``run_due``) and the head-end (dispatcher) in turns until the batch is done."""
    dispatcher = world.dispatcher()
    for round_no in range(rounds):
        batch.run_due(world.engine, world.clock())
        busiest = max(waiting_per_link(world).values(), default=0)
        assert busiest <= limit, f"round {round_no}: {busiest} commands waiting on one link (limit {limit})"
        asyncio.run(dispatcher.run_once())
        if view(world, batch_id).state == "done":
            return round_no
        world.clock.advance(step_s)
    raise AssertionError(f"batch {batch_id} not done after {rounds} rounds: {view(world, batch_id)}")


def ledger_exact(engine: Engine) -> None:
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []


@pytest.mark.slow
def test_a_batch_trip_of_500_meters_with_20_offline_ends_480_succeeded_and_retry_makes_the_20_succeed(
    engine: Engine,
) -> None:
    world = build_world(engine, accounts_count=100, meters_per_account=5, links=10)
    offline = sorted(world.meters)[::25]
    assert len(offline) == 20
    for meter_id in offline:
        world.link.set_offline(meter_id, True)
    batch_id = create(
        world, Operation.TRIP, Selection(site_id=world.site_id), max_in_flight_per_link=8, command_valid_s=120,
        reason="maintenance of the whole campus",
    )  # fmt: skip
    assert view(world, batch_id).total == 500 and view(world, batch_id).state == "scheduled"

    drive(world, batch_id, limit=8)

    done = view(world, batch_id)
    assert done.counts == {"succeeded": 480, "failed": 20} and done.progress_percent == 100
    with engine.connect() as conn:
        failed = batch.list_targets(conn, world.organisation_id, batch_id, state="failed", limit=100)
    assert failed is not None and sorted(t.meter_id or "" for t in failed) == offline
    assert {t.result for t in failed} == {"expired: valid_until passed before it could be sent"}
    assert all(world.meters[m].relay_open() != (m in offline) for m in world.meters)

    for meter_id in offline:
        world.link.set_offline(meter_id, False)
    with engine.begin() as conn:
        retried = batch.retry_failures(
            conn, world.organisation_id, batch_id, actor="user:li@BAT", reason="DTUs back", now=world.clock()
        )
    assert isinstance(retried, batch.BatchView) and retried.state == "running" and retried.counts["pending"] == 20
    drive(world, batch_id, limit=8)

    final = view(world, batch_id)
    assert final.counts == {"succeeded": 500} and final.retries == 1
    assert all(meter.relay_open() for meter in world.meters.values())
    with engine.connect() as conn:
        targets = batch.list_targets(conn, world.organisation_id, batch_id, limit=500)
        attempts = Counter(t.attempt for t in targets or [])
        trips = conn.execute(select(func.count()).select_from(audit_log).where(audit_log.c.action == "trip")).scalar()
        actions = set(
            conn.execute(select(audit_log.c.action).where(audit_log.c.subject == f"batch:{batch_id}")).scalars()
        )
        priorities = set(conn.execute(select(meter_commands.c.priority)).scalars())
    assert attempts == {1: 480, 2: 20}
    assert trips == 520  # one audited trip per command: 500 first attempts, 20 retries
    assert actions == {"batch_create", "batch_retry"}
    assert priorities == {batch.BATCH_PRIORITY}
    assert set(world.link.deliveries.values()) == {1}, "every command reached its meter once"
    assert len(world.link.deliveries) == 500
    ledger_exact(engine)


def test_a_scheduled_batch_waits_for_its_time_and_a_cancel_stops_what_has_not_been_sent(engine: Engine) -> None:
    world = build_world(engine, accounts_count=6, meters_per_account=2, links=2)
    later = world.clock() + dt.timedelta(hours=2)
    batch_id = create(
        world, Operation.SET_POWER_LIMIT, Selection(floor_id=world.floor_ids[0]),
        parameters={"power_limit_w": 2_200}, run_at=later, max_in_flight_per_link=2,
    )  # fmt: skip
    assert view(world, batch_id).total == 6
    report = batch.run_due(engine, world.clock())
    assert report.started == 0 and view(world, batch_id).state == "scheduled"
    world.clock.now = later
    batch.run_due(engine, world.clock())
    running = view(world, batch_id)
    assert running.state == "running" and running.counts == {"submitted": 2, "pending": 4}
    with engine.begin() as conn:
        cancelled = batch.cancel_batch(
            conn, world.organisation_id, batch_id, actor="user:li@BAT", reason="wrong floor", now=world.clock()
        )
        again = batch.cancel_batch(conn, world.organisation_id, batch_id, actor="user:li@BAT", reason="x", now=NOW)
    assert isinstance(cancelled, batch.BatchView)
    assert cancelled.state == "cancelled" and cancelled.counts == {"failed": 2, "cancelled": 4}
    assert isinstance(again, accounts.Rejected) and again.field == "state"
    with engine.connect() as conn:
        states = set(conn.execute(select(meter_commands.c.state)).scalars())
    assert states == {"cancelled"}, "nothing had been sent: every queued command was called back"


def test_recharge_and_allowance_batches_move_money_once_per_target_however_often_they_run(engine: Engine) -> None:
    world = build_world(engine, accounts_count=12, meters_per_account=1, links=2)
    with engine.begin() as conn:
        tagged = world.account_ids[:5]
        for account_id in tagged:
            assert batch.set_tags(
                conn, world.organisation_id, account_id, ["Dorm-North"], actor="user:li@BAT", reason="t", now=NOW
            ) == ("dorm-north",)
    closed_no = "R0011"
    recharge_id = create(
        world, Operation.RECHARGE, Selection(account_nos=("R0000", "R0001", "R0002", closed_no)),
        parameters={"amount_fen": 5_000},
    )  # fmt: skip
    allowance_id = create(
        world, Operation.GRANT_ALLOWANCE, Selection(tag="dorm-north"), parameters={"amount_micros": 30 * YUAN}
    )
    before = _balances(world)
    for _ in range(3):  # a second and third worker round change nothing
        batch.run_due(engine, world.clock())
    assert view(world, recharge_id).counts == {"succeeded": 4}
    assert view(world, allowance_id).counts == {"succeeded": 5}
    with engine.begin() as conn:
        retry = batch.retry_failures(conn, world.organisation_id, recharge_id, actor="a", reason="b", now=NOW)
    assert isinstance(retry, accounts.Rejected) and "no failed target" in retry.message
    after = _balances(world)
    gained = {a: after[a] - before[a] for a in world.account_ids}
    expected = {a: 0 for a in world.account_ids}
    for number in (0, 1, 2, 11):
        expected[world.account_ids[number]] += 50 * YUAN
    for account_id in tagged:
        expected[account_id] += 30 * YUAN
    assert gained == expected
    ledger_exact(engine)
    with engine.connect() as conn:
        day = reconcile.reconcile(
            conn, world.clock().astimezone(dt.timezone(dt.timedelta(hours=8))).date(), "Asia/Shanghai"
        )
    assert day.discrepancies == []


def _balances(world: World) -> dict[int, int]:
    found = {}
    with world.engine.connect() as conn:
        for account_id in world.account_ids:
            view_ = accounts.account_view(conn, account_id)
            assert view_ is not None
            found[account_id] = ledger_store.balance(conn, view_.wallet).balance_micros
    return found


def test_a_target_is_acted_on_once_when_two_workers_race(engine: Engine) -> None:
    world = build_world(engine, accounts_count=8, meters_per_account=1, links=1)
    batch_id = create(
        world, Operation.GRANT_ALLOWANCE, Selection(site_id=world.site_id), parameters={"amount_micros": YUAN}
    )
    import threading

    errors: list[BaseException] = []

    def work() -> None:
        try:
            batch.run_due(engine, world.clock())
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch.run_due(engine, world.clock())
    assert view(world, batch_id).counts == {"succeeded": 8}
    with engine.connect() as conn:
        grants = conn.execute(
            select(func.count()).select_from(audit_log).where(audit_log.c.action == "grant_allowance")
        ).scalar()
        attempts = set(conn.execute(select(batch_targets.c.attempt)).scalars())
    assert grants == 8 and attempts == {1}
    assert sum(_balances(world).values()) == 8 * YUAN
    ledger_exact(engine)


@pytest.mark.parametrize(
    ("operation", "selection", "parameters", "field"),
    [
        (Operation.TRIP, Selection(), {}, "selection"),
        (Operation.TRIP, Selection(site_id=999_999), {}, "site_id"),
        (Operation.TRIP, Selection(meter_ids=("M0000", "NOPE-1")), {}, "meter_ids"),
        (Operation.TRIP, Selection(site_id=1, meter_ids=("M0000",)), {}, "selection"),
        (
            Operation.SET_ALARMS,
            Selection(tag="x"),
            {"alarm1_micros": 1, "alarm2_micros": 2},
            "parameters.alarm2_micros",
        ),
        (Operation.SET_TARIFF, Selection(tag="x"), {"tariff_id": "nope"}, "parameters.tariff_id"),
        (Operation.RECHARGE, Selection(tag="x"), {"amount_fen": 0}, "parameters.amount_fen"),
        (Operation.RECHARGE, Selection(tag="x"), {"amount_fen": 100, "extra": 1}, "parameters.extra"),
        (Operation.PUSH_PRICES, Selection(tag="x"), {"prices_micros": [1, 2, 3, 4]}, "parameters.prices_micros"),
        (Operation.TRIP, Selection(tag="Not a Tag!"), {}, "tag"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(
    engine: Engine, operation: Operation, selection: Selection, parameters: dict[str, object], field: str
) -> None:
    world = build_world(engine, accounts_count=2, meters_per_account=1, links=1)
    new = NewBatch(world.organisation_id, operation, selection, parameters, reason="why", actor="user:li@BAT")
    with engine.begin() as conn:
        refused = batch.create_batch(conn, new, NOW)
    assert isinstance(refused, accounts.Rejected) and refused.field == field, refused
    with engine.connect() as conn:
        assert batch.list_batches(conn, world.organisation_id) == []


def test_set_tariff_by_tariff_and_list_upload_and_the_preview_counts(engine: Engine) -> None:
    world = build_world(engine, accounts_count=4, meters_per_account=2, links=2)
    with engine.connect() as conn:
        listed = batch.preview(
            conn,
            world.organisation_id,
            Operation.SET_TARIFF,
            Selection(meter_ids=batch.parse_list("M0000, M0001\nM0002")),
        )
        by_tariff = batch.preview(conn, world.organisation_id, Operation.TRIP, Selection(tariff_id="flat-1"))
    assert isinstance(listed, batch.Preview) and listed.count == 2 and listed.target_kind == "account"
    assert isinstance(by_tariff, batch.Preview) and by_tariff.count == 8
    batch_id = create(world, Operation.SET_TARIFF, Selection(tariff_id="flat-1"), parameters={"tariff_id": "flat-2"})
    batch.run_due(engine, world.clock())
    assert view(world, batch_id).counts == {"succeeded": 4}
    with engine.connect() as conn:
        tariffs_now = set(conn.execute(select(meter_commands.c.id)).scalars())
        assert tariffs_now == set()
        remaining = batch.preview(conn, world.organisation_id, Operation.TRIP, Selection(tariff_id="flat-1"))
    # no meter of the organisation is on flat-1 any more, and it does not own it: the tariff is unknown to it
    assert isinstance(remaining, accounts.Rejected) and remaining.field == "tariff_id"


def test_the_cli_creates_shows_and_runs_a_batch(engine: Engine, db_url: str, tmp_path: Path, capsys: Any) -> None:
    from powergate.cli import main

    world = build_world(engine, accounts_count=3, meters_per_account=1, links=1)
    listed = tmp_path / "accounts.txt"
    listed.write_text("R0000\nR0002\n")
    at = ["--url", db_url, "--now", NOW.isoformat()]
    code = main(["batch", *at, "create", "--org", "BAT", "--operation", "grant_allowance", "--accounts-file",
                 str(listed), "--param", "amount_micros=5000000", "--reason", "dorm allowance"])  # fmt: skip
    assert code == 0
    shown = capsys.readouterr().out
    assert "grant_allowance done, 2/2 (succeeded 2)" in shown and "R0002" in shown
    assert main(["batch", *at, "create", "--org", "BAT", "--operation", "trip", "--reason", "x"]) == 1
    assert "error: selection:" in capsys.readouterr().err
    assert main(["batch", *at, "run"]) == 0 and "nothing to do" in capsys.readouterr().out
    assert sum(_balances(world).values()) == 10 * YUAN
