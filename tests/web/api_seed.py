"""A small organisation for the API tests, built through the real services (no rows faked around them).

``seed(web, code)`` gives an organisation with a site (cashier enabled), building, floor, two rooms, a flat
tariff (1.0000 yuan/kWh), two open accounts each with one metered room, a cashier recharge of 100.00 yuan on
the first account, two rated readings, the meters' status, a meter event and a reconciliation alarm. Every id
the tests need is in the returned ``Seeded``; names carry the organisation code so a leak is easy to spot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from powergate.domain.rating import Reading
from powergate.domain.structure import PaymentChannel, RoomUse
from powergate.headend.status import MeterEvent, StatusRow, record_events, write_status
from powergate.payments.bank import BankTransfer
from powergate.payments.cashier import Cashier
from powergate.services import accounts, meterside, payments
from powergate.services.ingest import Ingestor
from powergate.store.metering import add_tariff
from powergate.store.tables_headend import meter_events
from powergate.store.tables_meterside import reconciliation_alarms

FLAT_TARIFF = """
id = "{id}"
name = "Flat {code}"
commodity = "electricity"
currency = "CNY"

[[versions]]
effective_from = "2025-01-01"
price = "1.0000"
"""
CHANNELS: dict[str, Any] = {"cashier": Cashier(), "bank": BankTransfer()}


@dataclass(frozen=True)
class Seeded:
    code: str
    organisation_id: int
    site_id: int
    building_id: int
    floor_id: int
    room_id: int
    other_room_id: int
    tariff_id: str
    account_id: int
    account_no: str
    other_account_id: int
    meter_id: str
    other_meter_id: str
    order_no: str
    command_id: str
    event_id: int
    alarm_id: int


def seed(web: Any, code: str = "ORG1") -> Seeded:
    """Build the organisation ``code`` at the web fixture's clock; see the module docstring."""
    org_id = web.org(code)
    now: dt.datetime = web.clock()
    setup = now - dt.timedelta(days=1)
    """The organisation was set up the day before; its readings and payments are from today."""
    actor = f"system:seed-{code}"
    tariff_id = f"flat-{code.lower()}"
    meter_id, other_meter_id = f"M-{code}-1", f"M-{code}-2"
    with web.engine.begin() as conn:
        site = accounts.create_site(
            conn, org_id, f"Park {code}", timezone="Asia/Shanghai", currency="CNY",
            channels=[PaymentChannel.CASHIER, PaymentChannel.BANK], actor=actor, now=setup,
        )  # fmt: skip
        assert isinstance(site, int), site
        building = _ok(accounts.create_building(conn, site, "A"))
        floor = _ok(accounts.create_floor(conn, building, "1F"))
        room = _ok(accounts.create_room(conn, floor, "101", 3550, RoomUse.APARTMENT))
        other_room = _ok(accounts.create_room(conn, floor, "102", 4000, RoomUse.SHOP))
        add_tariff(conn, tariff_id, f"Flat {code}", "electricity", FLAT_TARIFF.format(id=tariff_id, code=code), setup)
        account = _ok(accounts.stage_account(conn, site, f"A-{code}-1", f"Tenant one {code}", actor=actor, now=setup))
        other = _ok(accounts.stage_account(conn, site, f"A-{code}-2", f"Tenant two {code}", actor=actor, now=setup))
        for account_id in (account, other):
            opened = accounts.open_account(conn, account_id, actor=actor, reason="seed", now=setup)
            assert not isinstance(opened, accounts.Rejected), opened
        for meter, room_id, account_id in ((meter_id, room, account), (other_meter_id, other_room, other)):
            attached = accounts.attach_meter(
                conn, meter, room_id, account_id, tariff_id=tariff_id, actor=actor, reason="seed", now=setup
            )
            assert isinstance(attached, int), attached
        wallet = accounts.account_view(conn, account)
        assert wallet is not None
    order = payments.NewOrder(wallet.wallet, 10_000, "cashier", "cash", operator=actor)
    paid = payments.pay_at_cashier(web.engine, CHANNELS, order, f"R-{code}-1", None, now)
    assert isinstance(paid, payments.Settlement) and paid.order_no is not None, paid
    ingestor = Ingestor(web.engine, clock=web.clock)
    report = ingestor.ingest(
        [
            Reading(f"{meter_id}-r1", meter_id, now - dt.timedelta(hours=2), 1_000_000),
            Reading(f"{meter_id}-r2", meter_id, now - dt.timedelta(hours=1), 1_002_000),
            Reading(f"{other_meter_id}-r1", other_meter_id, now - dt.timedelta(hours=1), 500_000),
        ]
    )
    assert report.rejected == [], report.rejected
    with web.engine.begin() as conn:
        write_status(
            conn,
            [
                StatusRow(meter_id, True, now, now, False, None, None),
                StatusRow(other_meter_id, False, now - dt.timedelta(days=1), None, True, None, None),
            ],
            now,
        )
        stored, refused = record_events(conn, [MeterEvent(meter_id, "cover_open", now - dt.timedelta(minutes=5))], now)
        assert stored == 1 and not refused, refused
        event_id = int(conn.execute(select(meter_events.c.id).where(meter_events.c.meter_id == meter_id)).scalar_one())
        alarm = meterside.Alarm(now.date(), f"meter:{meter_id}", "remaining_amount", 1_000, 2_000, "seeded mismatch")
        assert meterside.raise_alarm(conn, alarm, now)
        alarm_id = int(
            conn.execute(
                select(reconciliation_alarms.c.id).where(reconciliation_alarms.c.subject == f"meter:{meter_id}")
            ).scalar_one()
        )
    from powergate.services import prepaid

    queued = prepaid.trip(web.engine, other_meter_id, prepaid.Operator(actor, "seed trip"), now, f"seed-{code}")
    assert not isinstance(queued, prepaid.Problem), queued
    return Seeded(
        code, org_id, site, building, floor, room, other_room, tariff_id, account, f"A-{code}-1", other,
        meter_id, other_meter_id, paid.order_no, queued.queued.command_id, event_id, alarm_id,
    )  # fmt: skip


def _ok(value: int | accounts.Rejected) -> int:
    assert isinstance(value, int), value
    return value
