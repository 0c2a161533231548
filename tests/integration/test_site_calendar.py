"""Site calendar overrides: an admin's day types per site drive the friendly-credit window of the balance policy
and the TOU day types of rating, apply from the next batch, are audited, and bad input changes nothing.
SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from prepaid_b_world import YUAN, add_tenant, make_site, spend, top_up
from sqlalchemy import Engine, select

from powergate.domain.calendar import DayType
from powergate.domain.rating import Reading
from powergate.services import prepaid, site_calendar
from powergate.services.ingest import Ingestor
from powergate.store.audit import audit_records
from powergate.store.tables import readings

TZ = ZoneInfo("Asia/Shanghai")
WEDNESDAY = dt.date(2026, 11, 25)
WEDNESDAY_NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
ADMIN = "admin:ops1"
# Workdays are priced "peak" all day, holidays "valley" all day: the band shows the day type rating used.
HOLIDAY_TARIFF = """id = "holiday-tou"

[[versions]]
effective_from = "2020-01-01"
[versions.tou.prices]
peak = "1.0000"
valley = "0.2500"
[[versions.tou.seasons]]
name = "all year"
months = "1-12"
schedule = [{ start = "00:00", band = "peak" }]
holiday_schedule = [{ start = "00:00", band = "valley" }]
"""


def test_a_workday_made_a_holiday_defers_the_trip_only_at_that_site(engine: Engine) -> None:
    holiday_site = make_site(engine, WEDNESDAY_NOON, name="Tower A")
    plain_site = make_site(engine, WEDNESDAY_NOON, name="Tower B")
    with engine.begin() as conn:
        done = site_calendar.set_day(
            conn, holiday_site, WEDNESDAY, DayType.HOLIDAY, actor=ADMIN, reason="local holiday", now=WEDNESDAY_NOON
        )
        assert done is None
    tenants = []
    for site_id, account_no in ((holiday_site, "A-1"), (plain_site, "B-1")):
        tenant = add_tenant(engine, site_id, account_no, WEDNESDAY_NOON)
        with engine.begin() as conn:  # the default window: nights plus non-workdays
            policy = prepaid.WalletPolicy(friendly_window="default")
            assert prepaid.set_policy(conn, tenant.wallet_id, policy, WEDNESDAY_NOON) is None
        top_up(engine, tenant, f"cash:{account_no}", 5 * YUAN, WEDNESDAY_NOON)
        spend(engine, tenant, f"r:{account_no}", 6 * YUAN, WEDNESDAY_NOON)
        tenants.append(tenant)
    with engine.connect() as conn:
        kinds = {
            r["wallet_account_id"]: r["kind"]
            for r in prepaid.outbox_rows(conn)
            if r["kind"] in ("trip", "trip_deferred")
        }
        assert kinds == {tenants[0].wallet_id: "trip_deferred", tenants[1].wallet_id: "trip"}
        [record] = audit_records(conn, subject=f"site:{holiday_site}", action="set_calendar_day")
    assert record.actor == ADMIN and record.detail == {"day": "2026-11-25", "before": None, "after": "holiday"}


def test_rating_uses_the_site_day_type_from_the_next_batch_on(engine: Engine) -> None:
    site_id = make_site(engine, WEDNESDAY_NOON)
    tenant = add_tenant(engine, site_id, "A-1", WEDNESDAY_NOON, tariff="holiday-tou", document=HOLIDAY_TARIFF)
    ingestor = Ingestor(engine, clock=lambda: WEDNESDAY_NOON, after_post=prepaid.after_ingest)
    hour = dt.timedelta(hours=1)

    def read(index: int, total_wh: int) -> None:
        at = WEDNESDAY_NOON + index * hour
        report = ingestor.ingest([Reading(f"r{index}", tenant.meter_id, at, total_wh)])
        assert report.rated + report.skipped == 1 and not report.quarantined, report

    read(0, 0)
    read(1, 1_000)  # 1 kWh on a plain Wednesday: peak, 1 yuan
    with engine.begin() as conn:
        assert (
            site_calendar.set_day(
                conn, site_id, WEDNESDAY, DayType.HOLIDAY, actor=ADMIN, reason="x", now=WEDNESDAY_NOON
            )
            is None
        )
    read(2, 2_000)  # the next batch sees the holiday: valley, 0.25 yuan
    with engine.begin() as conn:  # and back: removing the override restores the statutory day type
        assert (
            site_calendar.set_day(conn, site_id, WEDNESDAY, None, actor=ADMIN, reason="undo", now=WEDNESDAY_NOON)
            is None
        )
    read(3, 3_000)
    with engine.connect() as conn:
        amounts = dict(conn.execute(select(readings.c.id, readings.c.amount_micros)).all())
    assert [amounts[f"r{i}"] for i in (1, 2, 3)] == [1 * YUAN, YUAN // 4, 1 * YUAN]


def test_the_site_calendar_merges_statutory_days_creation_overrides_and_admin_overrides(engine: Engine) -> None:
    site_id = make_site(engine, WEDNESDAY_NOON, calendar_overrides={"2026-11-26": "holiday", "2026-11-27": "holiday"})
    with engine.begin() as conn:
        site_calendar.set_day(
            conn, site_id, dt.date(2026, 11, 27), DayType.WORKDAY, actor=ADMIN, reason="open", now=WEDNESDAY_NOON
        )
        calendar = site_calendar.calendar_of_site(conn, site_id)
        assert [d.day for d in site_calendar.days(conn, site_id)] == [dt.date(2026, 11, 27)]
    assert calendar.day_type(dt.date(2026, 10, 1)) is DayType.HOLIDAY  # National Day, statutory
    assert calendar.day_type(dt.date(2026, 11, 26)) is DayType.HOLIDAY  # given when the site was created
    assert calendar.day_type(dt.date(2026, 11, 27)) is DayType.WORKDAY  # the admin's later word wins
    assert calendar.day_type(dt.date(2026, 11, 28)) is DayType.WEEKEND


def test_a_bad_override_names_the_field_and_changes_nothing(engine: Engine) -> None:
    site_id = make_site(engine, WEDNESDAY_NOON)
    cases: list[tuple[dict[str, object], str]] = [
        ({"site_id": site_id + 99}, "site_id"),
        ({"reason": " "}, "reason"),
        ({"actor": ""}, "actor"),
        ({"day": dt.date(1999, 12, 31)}, "day"),
    ]
    for changes, field in cases:
        arguments: dict[str, object] = {
            "site_id": site_id,
            "day": WEDNESDAY,
            "actor": ADMIN,
            "reason": "why",
            **changes,
        }
        with engine.begin() as conn:
            problem = site_calendar.set_day(
                conn, arguments["site_id"], arguments["day"], DayType.HOLIDAY,  # type: ignore[arg-type]
                actor=str(arguments["actor"]), reason=str(arguments["reason"]), now=WEDNESDAY_NOON,
            )  # fmt: skip
            assert problem is not None and problem.field == field, (changes, problem)
    with engine.connect() as conn:
        assert site_calendar.days(conn, site_id) == []
        assert site_calendar.revisions(conn, [site_id]) == {}
        assert audit_records(conn, action="set_calendar_day") == []
