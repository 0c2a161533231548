"""Notifications in the database, SQLite and PostgreSQL: one message per event per recipient, quiet hours, a
provider outage, a worker killed mid-delivery, resend, templates and the delivery log.

The provider is a fake that behaves like a good one: it de-duplicates by message id (as the Standard Webhooks id
header or an SMS out id lets a real one do), counts every hand-over, and can be switched off to play an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import http.server
import random
import threading
import time
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select

from powergate.domain.notifications import (
    MAX_ATTEMPTS,
    DeliveryResult,
    EventKind,
    NotificationEvent,
    OutgoingMessage,
    QuietHours,
)
from powergate.domain.structure import PaymentChannel
from powergate.services import accounts as structure
from powergate.services import notify
from powergate.store.audit import audit_records
from powergate.store.tables_notify import notifications
from testkit import free_port

TZ = ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=TZ).astimezone(dt.UTC)
NIGHT = dt.datetime(2026, 11, 25, 23, 0, tzinfo=TZ).astimezone(dt.UTC)
MORNING = dt.datetime(2026, 11, 26, 8, 0, tzinfo=TZ).astimezone(dt.UTC)
LOW = {"account_no": "A-1", "room": "1-301", "balance": "¥8.50", "level": "¥10.00"}
TRIP = {"account_no": "A-1", "room": "1-301", "balance": "¥0.00", "time": "23:00"}


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += dt.timedelta(seconds=seconds)


class FakeProvider:
    """A channel whose provider honours message ids: ``delivered`` holds each id once, ``handovers`` counts all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False
        self.reject = False
        self.handovers: Counter[str] = Counter()
        self.delivered: dict[str, OutgoingMessage] = {}

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        if self.down:
            return DeliveryResult(ok=False, retryable=True, reason="HTTP 503 from provider")
        if self.reject:
            return DeliveryResult(ok=False, retryable=False, reason="invalid phone number")
        self.handovers[message.message_id] += 1
        self.delivered.setdefault(message.message_id, message)
        return DeliveryResult(ok=True, provider_id=f"p-{message.message_id}")


def setup(engine: Engine, *, quiet: QuietHours | None = None, admins: int = 1) -> tuple[int, int]:
    """A site with one tenant account (phone + e-mail) and ``admins`` administrators (e-mail); (site, account)."""
    with engine.begin() as conn:
        org = structure.create_organisation(conn, "ORG", "Org", actor="admin", now=NOON)
        assert isinstance(org, int)
        site = structure.create_site(
            conn, org, "Sunrise", timezone="Asia/Shanghai", currency="CNY", channels=[PaymentChannel.CASHIER],
            actor="admin", now=NOON,
        )  # fmt: skip
        assert isinstance(site, int)
        account = structure.stage_account(
            conn, site, "A-1", "Tenant", phone="13800138000", email="t@example.org", actor="op", now=NOON
        )
        assert isinstance(account, int)
        tenant = notify.add_recipient(
            conn, site, "Tenant", account_id=account, language="en",
            addresses=notify.Addresses(phone="13800138000", email="t@example.org"), quiet=quiet,
        )  # fmt: skip
        assert isinstance(tenant, int)
        for index in range(admins):
            admin = notify.add_recipient(
                conn, site, f"Admin {index}", admin_login=f"admin{index}",
                addresses=notify.Addresses(email=f"admin{index}@example.org"),
            )  # fmt: skip
            assert isinstance(admin, int)
    return site, account


def event(kind: EventKind, key: str, site: int, account: int | None, data: dict[str, str]) -> NotificationEvent:
    return NotificationEvent(kind, key, site, NOON, account, data)


def notify_once(engine: Engine, ev: NotificationEvent, now: dt.datetime) -> notify.Notified:
    with engine.begin() as conn:
        result = notify.notify_event(conn, ev, now)
    assert isinstance(result, notify.Notified), str(result)
    return result


def providers() -> dict[str, FakeProvider]:
    return {name: FakeProvider(name) for name in ("email", "sms", "wechat", "push", "webhook", "voice")}


def delivered(channels: dict[str, FakeProvider]) -> set[str]:
    return {message_id for provider in channels.values() for message_id in provider.delivered}


def handovers(channels: dict[str, FakeProvider]) -> Counter[str]:
    total: Counter[str] = Counter()
    for provider in channels.values():
        total += provider.handovers
    return total


def rows(engine: Engine) -> list[notify.DeliveryRecord]:
    with engine.connect() as conn:
        return notify.delivery_log(conn, limit=1_000)


def test_an_event_notified_three_times_gives_one_message_per_recipient_and_channel(engine: Engine) -> None:
    site, account = setup(engine, admins=2)
    ev = event(EventKind.TRIPPED, "outbox:trip:1", site, account, TRIP)
    results = [notify_once(engine, ev, NOON) for _ in range(3)]
    # The tenant, on every channel with an address: e-mail, SMS and (for a trip only) a voice call.
    assert results[0] == notify.Notified(inserted=3, existing=0, deferred=0)
    assert results[1] == results[2] == notify.Notified(inserted=0, existing=3, deferred=0)
    log = rows(engine)
    assert sorted((r.channel, r.address) for r in log) == [
        ("email", "t@example.org"),
        ("sms", "13800138000"),
        ("voice", "13800138000"),
    ]
    assert all(r.state == "queued" and r.attempts == 0 for r in log)
    assert "cut off" in log[0].body, "the tenant reads English"


def test_site_events_go_to_the_administrators_and_account_events_to_the_tenant(engine: Engine) -> None:
    site, account = setup(engine, admins=2)
    alarm = {"meter": "000000000001", "room": "1-301", "alarm": "cover open", "time": "12:00"}
    assert notify_once(engine, event(EventKind.METER_ALARM, "alarm:1", site, account, alarm), NOON).inserted == 2
    addresses = sorted(r.address for r in rows(engine))
    assert addresses == ["admin0@example.org", "admin1@example.org"]
    assert "电表告警" in rows(engine)[0].subject, "administrators read Chinese by default"


def test_a_preference_narrows_the_channels_and_an_empty_one_silences_the_event(engine: Engine) -> None:
    site, account = setup(engine)
    with engine.begin() as conn:
        tenant = notify._tenant_recipient(conn, account)
        assert tenant is not None
        assert notify.set_preference(conn, tenant.id, EventKind.LOW_BALANCE, ["sms"]) is None
        assert notify.set_preference(conn, tenant.id, EventKind.RECHARGE_RECEIVED, []) is None
        refused = notify.set_preference(conn, tenant.id, EventKind.REFUND, ["fax"])
        assert refused is not None and refused.field == "channels"
    assert notify_once(engine, event(EventKind.LOW_BALANCE, "low:1", site, account, LOW), NOON).inserted == 1
    paid = {"amount": "¥100.00", "account_no": "A-1", "channel": "cash", "time": "12:00", "balance": "¥108.50"}
    assert notify_once(engine, event(EventKind.RECHARGE_RECEIVED, "pay:1", site, account, paid), NOON).inserted == 0
    assert [r.channel for r in rows(engine)] == ["sms"]


def test_a_tenant_without_a_recipient_row_is_reached_at_the_accounts_phone_and_e_mail(engine: Engine) -> None:
    site, _ = setup(engine)
    with engine.begin() as conn:
        other = structure.stage_account(conn, site, "A-2", "Second", phone="13900139000", actor="op", now=NOON)
        assert isinstance(other, int)
    assert notify_once(engine, event(EventKind.TRIPPED, "trip:2", site, other, TRIP), NOON).inserted == 2
    assert sorted((r.channel, r.address) for r in rows(engine)) == [("sms", "13900139000"), ("voice", "13900139000")]


def test_quiet_hours_defer_a_warning_but_not_a_trip(engine: Engine) -> None:
    site, account = setup(engine, quiet=QuietHours(dt.time(22, 0), dt.time(8, 0)))
    warned = notify_once(engine, event(EventKind.LOW_BALANCE, "low:1", site, account, LOW), NIGHT)
    tripped = notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NIGHT)
    assert (warned.deferred, tripped.deferred) == (2, 0) and tripped.inserted == 3
    due = {r.event: r.next_attempt_at for r in rows(engine)}
    assert due == {"low_balance": MORNING, "tripped": NIGHT}

    clock, channels = Clock(NIGHT), providers()
    worker = notify.DeliveryWorker(engine, channels, clock)
    assert asyncio.run(worker.run_until_idle()).sent == 3, "the trip goes out at 23:00"
    clock.now = MORNING
    assert asyncio.run(worker.run_until_idle()).sent == 2, "the warning at 08:00"
    assert {m.event for m in channels["sms"].delivered.values()} == {"low_balance", "tripped"}


def test_prepaid_low_balance_and_trip_outbox_rows_become_tenant_notifications(engine: Engine) -> None:
    from powergate.domain.ledger import charge_entry, recharge_entry
    from powergate.services import prepaid
    from powergate.store import ledger as ledger_store

    _, account = setup(engine)
    yuan = 1_000_000
    with engine.begin() as conn:
        view = structure.account_view(conn, account)
        assert view is not None
        ledger_store.post(conn, recharge_entry("cash:1", view.wallet, "cash", 25 * yuan, NOON), NOON)
        ledger_store.post(conn, charge_entry("r1", view.wallet, {"energy": 25 * yuan}, NOON), NOON)
        assert prepaid.after_ingest(conn, {view.wallet_account_id}, NOON) == 4  # warnings 50, 20, 10 yuan; trip
        events = [
            notify.event_from_outbox(conn, row["kind"], row["key"], row["payload"], row["created_at"])
            for row in prepaid.outbox_rows(conn)
        ]
        assert all(e is not None for e in events)
        for ev in events:
            assert ev is not None
            assert not isinstance(notify.notify_event(conn, ev, NOON), notify.Rejected)
        assert notify.event_from_outbox(conn, "trip_deferred", "x", {"wallet_account_id": 1}, NOON) is None
    log = rows(engine)
    kinds = Counter(r.event for r in log)
    assert kinds == {"low_balance": 6, "tripped": 3}, "three levels x (e-mail, SMS); the trip adds a call"
    bodies = sorted(r.body for r in log if r.channel == "sms" and r.event == "low_balance")
    assert bodies[0] == "Account A-1 (Tenant) has ¥0.00 left, below the ¥10.00 warning level. Please recharge."


def test_the_outbox_relay_notifies_warnings_and_trips_without_anyone_calling_notify(engine: Engine) -> None:
    from powergate.domain.ledger import charge_entry, recharge_entry
    from powergate.services import prepaid
    from powergate.store import ledger as ledger_store

    _, account = setup(engine)
    yuan = 1_000_000
    with engine.begin() as conn:
        view = structure.account_view(conn, account)
        assert view is not None
        ledger_store.post(conn, recharge_entry("cash:1", view.wallet, "cash", 25 * yuan, NOON), NOON)
        ledger_store.post(conn, charge_entry("r1", view.wallet, {"energy": 25 * yuan}, NOON), NOON)
        assert prepaid.after_ingest(conn, {view.wallet_account_id}, NOON) == 4
    relayed = prepaid.process_outbox(engine, NOON)  # what the head-end process runs every 100 ms
    again = prepaid.process_outbox(engine, NOON)
    assert relayed.rows == 4 and again.rows == 0
    # the account has no meter attached: the trip cannot be sent, and says so; the notices still go out
    assert len(relayed.problems) == 1 and "has no meter" in relayed.problems[0]
    assert Counter(r.event for r in rows(engine)) == {"low_balance": 6, "tripped": 3}
    with engine.connect() as conn:
        assert all(row["processed_at"] is not None for row in prepaid.outbox_rows(conn))


def test_an_event_missing_a_template_variable_inserts_nothing_and_names_the_variable(engine: Engine) -> None:
    site, account = setup(engine)
    with engine.begin() as conn:
        refused = notify.notify_event(conn, event(EventKind.LOW_BALANCE, "low:1", site, account, {}), NOON)
    assert isinstance(refused, notify.Rejected) and refused.field == "data.balance"
    assert rows(engine) == []


def test_a_provider_outage_delays_messages_but_never_loses_or_duplicates_them(engine: Engine) -> None:
    site, account = setup(engine)
    for index in range(15):
        notify_once(engine, event(EventKind.TRIPPED, f"trip:{index}", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    for provider in channels.values():
        provider.down = True
    worker = notify.DeliveryWorker(engine, channels, clock, batch_size=7, rng=random.Random(7))
    for _ in range(4):  # 4 failed rounds, the clock moving past each backoff
        asyncio.run(worker.run_until_idle())
        clock.advance(3_600)
    assert all(r.state == "queued" and r.attempts == 4 for r in rows(engine)), "delayed, not dropped"
    assert all(r.last_error == "HTTP 503 from provider" for r in rows(engine))

    for provider in channels.values():
        provider.down = False
    clock.advance(3_600)
    stats = asyncio.run(worker.run_until_idle())
    assert (stats.sent, stats.retried, stats.failed) == (45, 0, 0)
    ids = {r.message_id for r in rows(engine)}
    assert delivered(channels) == ids and len(ids) == 45, "every message arrived"
    assert set(handovers(channels).values()) == {1}, "and none arrived twice"
    assert {r.state for r in rows(engine)} == {"sent"}


def test_backoff_keeps_a_failed_message_waiting_until_its_retry_time(engine: Engine) -> None:
    site, account = setup(engine)
    notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    channels["sms"].down = True
    worker = notify.DeliveryWorker(engine, channels, clock, rng=random.Random(1))
    assert asyncio.run(worker.run_once()).retried == 1
    sms = next(r for r in rows(engine) if r.channel == "sms")
    assert NOON + dt.timedelta(seconds=30) <= sms.next_attempt_at <= NOON + dt.timedelta(seconds=45)
    clock.advance(29)
    assert asyncio.run(worker.run_once()).claimed == 0, "not before its time"


def test_a_worker_killed_between_claim_and_result_loses_nothing(engine: Engine) -> None:
    site, account = setup(engine)
    for index in range(4):
        notify_once(engine, event(EventKind.TRIPPED, f"trip:{index}", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    doomed = notify.DeliveryWorker(engine, channels, clock, lease_s=60, batch_size=3)
    claimed = doomed.claim()
    assert len(claimed) == 3
    # The provider accepted one of them; the worker died before recording any result.
    first = claimed[0].message
    asyncio.run(channels[first.channel].send(first))

    survivor = notify.DeliveryWorker(engine, channels, clock, lease_s=60)
    stats = asyncio.run(survivor.run_until_idle())
    assert stats.sent == 9, "the unclaimed nine go now; the three claimed wait for the lease"
    clock.advance(60)
    assert asyncio.run(survivor.run_until_idle()).sent == 3, "the lease ran out: taken over"

    log = rows(engine)
    assert {r.state for r in log} == {"sent"} and len(log) == 12
    assert delivered(channels) == {r.message_id for r in log}, "nothing lost"
    counts = handovers(channels)
    assert counts[first.message_id] == 2, "at least once: the provider saw the same message id twice"
    assert sum(counts.values()) == 13 and len(delivered(channels)) == 12, "and shows it once"
    assert {r.attempts for r in log if r.message_id in {c.message.message_id for c in claimed}} == {2}


def test_a_dead_workers_late_result_does_not_overwrite_the_survivors(engine: Engine) -> None:
    site, account = setup(engine)
    notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    slow = notify.DeliveryWorker(engine, channels, clock, lease_s=60)
    claimed = slow.claim()
    clock.advance(61)
    assert asyncio.run(notify.DeliveryWorker(engine, channels, clock).run_until_idle()).sent == 3
    for provider in channels.values():  # the slow worker's attempt now fails...
        provider.down = True
    assert [asyncio.run(slow.deliver(c)) for c in claimed] == ["lost"] * 3
    assert {r.state for r in rows(engine)} == {"sent"}, "...but its lease is gone, so it records nothing"


def test_two_workers_never_claim_the_same_message(engine: Engine) -> None:
    site, account = setup(engine)
    for index in range(10):
        notify_once(engine, event(EventKind.TRIPPED, f"trip:{index}", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    first = notify.DeliveryWorker(engine, channels, clock, batch_size=20).claim()
    second = notify.DeliveryWorker(engine, channels, clock, batch_size=20).claim()
    ids = [c.notification_id for c in first + second]
    assert (len(first), len(second)) == (20, 10) and len(set(ids)) == 30


def test_workers_racing_in_threads_claim_every_message_exactly_once(engine: Engine) -> None:
    site, account = setup(engine)
    for index in range(20):
        notify_once(engine, event(EventKind.TRIPPED, f"trip:{index}", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    claims: list[list[int]] = [[], [], []]
    start = threading.Barrier(len(claims))

    def race(slot: int) -> None:
        worker = notify.DeliveryWorker(engine, channels, clock, batch_size=4)
        start.wait()
        while batch := worker.claim():
            claims[slot].extend(c.notification_id for c in batch)

    threads = [threading.Thread(target=race, args=(slot,)) for slot in range(len(claims))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [i for claimed in claims for i in claimed]
    assert len(every) == len(set(every)) == 60


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_seeded_simulation_of_outages_and_crashes_ends_with_every_message_delivered_once_per_id(
    engine: Engine, seed: int
) -> None:
    """Random outages per channel, workers dying before or after the hand-over, a clock that jumps: an auditor
    then checks that every message was sent, and that only a hand-over by a worker that died reached the
    provider twice."""
    rng = random.Random(seed)
    site, account = setup(engine)
    for index in range(8):
        notify_once(engine, event(EventKind.TRIPPED, f"trip:{index}", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    crashed_after_handover: Counter[str] = Counter()
    for _ in range(25):
        for provider in channels.values():
            provider.down = rng.random() < 0.4
        worker = notify.DeliveryWorker(engine, channels, clock, lease_s=60, batch_size=5, rng=rng)
        action = rng.choice(["run", "run", "crash_before", "crash_after"])
        if action == "run":
            asyncio.run(worker.run_once())
        else:
            for claimed in worker.claim():  # then the worker dies
                message = claimed.message
                if action == "crash_after" and not channels[message.channel].down:
                    asyncio.run(channels[message.channel].send(message))
                    crashed_after_handover[message.message_id] += 1
        clock.advance(rng.choice([0, 30, 61, 600, 3_600]))
    for provider in channels.values():
        provider.down = False
    for _ in range(MAX_ATTEMPTS):
        clock.advance(3_600)
        asyncio.run(notify.DeliveryWorker(engine, channels, clock, rng=rng).run_until_idle())

    log = rows(engine)
    assert {r.state for r in log} == {"sent"}, "nothing lost, nothing given up"
    assert delivered(channels) == {r.message_id for r in log}
    counts = handovers(channels)
    for record in log:
        assert counts[record.message_id] <= 1 + crashed_after_handover[record.message_id], record.message_id


def test_a_permanent_failure_is_failed_at_once_and_a_retryable_one_after_the_last_attempt(engine: Engine) -> None:
    site, account = setup(engine)
    notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    channels["sms"].reject = channels["voice"].reject = channels["email"].down = True
    worker = notify.DeliveryWorker(engine, channels, clock, rng=random.Random(3))
    for _ in range(MAX_ATTEMPTS + 2):
        asyncio.run(worker.run_until_idle())
        clock.advance(6_000)
    by_channel = {r.channel: r for r in rows(engine)}
    assert (by_channel["sms"].state, by_channel["sms"].attempts) == ("failed", 1)
    assert by_channel["sms"].last_error == "invalid phone number"
    assert (by_channel["email"].state, by_channel["email"].attempts) == ("failed", MAX_ATTEMPTS)
    assert by_channel["email"].last_error == f"HTTP 503 from provider (after {MAX_ATTEMPTS} attempts)"


def test_a_resend_is_audited_and_reaches_the_provider_as_a_new_message(engine: Engine) -> None:
    site, account = setup(engine)
    notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NOON)
    clock, channels = Clock(NOON), providers()
    worker = notify.DeliveryWorker(engine, channels, clock)
    asyncio.run(worker.run_until_idle())
    sms = next(r for r in rows(engine) if r.channel == "sms")
    with engine.begin() as conn:
        assert notify.mark_delivered(conn, sms.id, NOON)
        assert notify.resend(conn, sms.id, actor="ops1", reason="tenant lost the SMS", now=NOON) is None
        again = notify.resend(conn, sms.id, actor="ops1", reason="twice", now=NOON)
        assert again is not None and again.field == "state"
        assert [a.reason for a in audit_records(conn, subject=f"notification:{sms.id}")] == ["tenant lost the SMS"]
    asyncio.run(worker.run_until_idle())
    assert sorted(channels["sms"].delivered) == [sms.message_id, notify.message_id(sms.id, 1)]
    with engine.connect() as conn:
        log = notify.delivery_log(conn, recipient_id=sms.recipient_id, state="sent", event_key="trip:1", limit=10)
    (resent,) = [r for r in log if r.id == sms.id]
    assert resent.message_id == notify.message_id(sms.id, 1) and resent.delivered_at is None


def test_an_edited_template_is_audited_checked_and_used_for_new_messages(engine: Engine) -> None:
    site, account = setup(engine)
    with engine.begin() as conn:
        bad = notify.set_template(conn, EventKind.TRIPPED, "en", "sms", "", "Off: ${balanse}", actor="admin", now=NOON)
        assert bad == notify.Rejected("body", "unknown variable ${balanse}")
        assert notify.set_template(
            conn, EventKind.TRIPPED, "en", "sms", "", "Room ${room}: power off, balance ${balance}", actor="admin",
            now=NOON,
        ) is None  # fmt: skip
        (record,) = audit_records(conn, action="set_notification_template")
        assert record.subject == "template:tripped/en/sms"
    notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NOON)
    bodies = {r.channel: r.body for r in rows(engine)}
    assert bodies["sms"] == "Room 1-301: power off, balance ¥0.00"
    assert bodies["email"].startswith("Supply to account A-1"), "other channels keep the default"


def test_a_preview_renders_with_sample_data_and_lists_missing_variables() -> None:
    good = notify.preview_template(EventKind.LOW_BALANCE, "Low: ${balance}", "Room ${room}")
    assert (good.subject, good.body, good.missing, good.problem) == ("Low: ¥8.50", "Room 1-301", (), None)
    holes = notify.preview_template(EventKind.LOW_BALANCE, "${nope}", "Room ${room} ${also}")
    assert holes.missing == ("nope", "also") and holes.body == "Room 1-301 <also?>"
    assert holes.problem is not None and (holes.problem.field, holes.problem.variable) == ("subject", "nope")


def test_the_database_refuses_a_second_message_for_the_same_event_recipient_and_channel(engine: Engine) -> None:
    from sqlalchemy.exc import IntegrityError

    site, account = setup(engine)
    notify_once(engine, event(EventKind.TRIPPED, "trip:1", site, account, TRIP), NOON)
    with engine.connect() as conn:
        row = conn.execute(select(notifications).limit(1)).one()._asdict()
    row.pop("id")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(notifications.insert().values(**row))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(notifications)).scalar_one() == 3


# --- acceptance: the worker through the real adapters, a real SMTP server and a local webhook receiver ----------
# These use the channel adapters in ``powergate.notify`` (e-mail over SMTP to aiosmtpd; signed webhooks over HTTP).


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts, keyed by nothing: duplicates would show."""

    def __init__(self) -> None:
        self.message_ids: list[str] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        parsed = email.message_from_bytes(envelope.content)
        self.message_ids.append(str(parsed["Message-ID"]))
        return "250 OK"


def email_only(engine: Engine, site: int, account: int) -> None:
    with engine.begin() as conn:
        tenant = notify._tenant_recipient(conn, account)
        assert tenant is not None
        assert notify.set_preference(conn, tenant.id, EventKind.TRIPPED, ["email"]) is None


def test_acceptance_an_smtp_outage_delays_e_mail_but_never_loses_or_duplicates_it(engine: Engine) -> None:
    from aiosmtpd.controller import Controller

    from powergate.notify.email import EmailChannel, EmailConfig

    site, account = setup(engine, admins=0)
    email_only(engine, site, account)
    for index in range(6):
        notify_once(engine, event(EventKind.TRIPPED, f"trip:{index}", site, account, TRIP), NOON)
    port = free_port()  # nobody listens yet: the outage
    channel = EmailChannel(EmailConfig("127.0.0.1", port, "noreply@powergate.test", security="plain", timeout_s=5))
    clock = Clock(NOON)
    worker = notify.DeliveryWorker(engine, {"email": channel}, clock, rng=random.Random(5))
    for _ in range(3):
        assert asyncio.run(worker.run_until_idle()).retried == 6
        clock.advance(3_600)
    assert all(r.state == "queued" and "ConnectionRefusedError" in (r.last_error or "") for r in rows(engine))

    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert asyncio.run(worker.run_until_idle()).sent == 6
    finally:
        controller.stop()
    log = rows(engine)
    assert {r.state for r in log} == {"sent"} and {r.attempts for r in log} == {4}
    assert sorted(mailbox.message_ids) == sorted({r.provider_id for r in log}), "each e-mail once, none lost"
    assert len(set(mailbox.message_ids)) == 6 and all("ntf-" in m for m in mailbox.message_ids)


class WebhookReceiver:
    """An integrator's endpoint on 127.0.0.1 that verifies signatures and de-duplicates by ``webhook-id``.

    ``hold`` keeps the next request waiting (the answer not yet sent) until ``release`` is set: that is where the
    test kills the worker, after the receiver has the message and before the worker hears back.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: Counter[str] = Counter()
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from powergate.notify.webhook import VerifiedWebhook, verify_webhook

                body = self.rfile.read(int(self.headers["Content-Length"]))
                verified = verify_webhook(receiver.secret, dict(self.headers), body, int(time.time()))
                assert isinstance(verified, VerifiedWebhook), verified
                receiver.seen[self.headers["webhook-id"]] += 1
                if receiver.hold.is_set():
                    receiver.hold.clear()
                    receiver.holding.set()
                    receiver.release.wait(10)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_acceptance_a_worker_killed_mid_delivery_loses_nothing_and_the_receiver_sees_each_id_once(
    engine: Engine,
) -> None:
    from powergate.notify.webhook import WebhookChannel, WebhookConfig, generate_secret

    secret = generate_secret()
    with WebhookReceiver(secret) as receiver:
        site, _ = setup(engine, admins=0)
        with engine.begin() as conn:
            hook = notify.add_recipient(
                conn, site, "Integrator", admin_login="erp", addresses=notify.Addresses(webhook_url=receiver.url)
            )
            assert isinstance(hook, int)
            assert notify.set_preference(conn, hook, EventKind.METER_OFFLINE, ["webhook"]) is None
        offline = {"meter": "000000000001", "room": "1-301", "last_seen": "2026-11-24 12:00", "hours": "24"}
        for index in range(5):
            notify_once(engine, event(EventKind.METER_OFFLINE, f"offline:{index}", site, None, offline), NOON)

        clock = Clock(NOON)
        channels = {"webhook": WebhookChannel(WebhookConfig(default_secret=secret, timeout_s=5))}

        async def kill_mid_delivery() -> None:
            doomed = notify.DeliveryWorker(engine, channels, clock, lease_s=60, send_timeout_s=30)
            receiver.hold.set()
            task = asyncio.create_task(doomed.run_once())
            while not receiver.holding.is_set():
                await asyncio.sleep(0.01)
            task.cancel()  # the process dies: the receiver has the first message, the database has no result
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(kill_mid_delivery())
        receiver.release.set()
        assert [r.state for r in rows(engine)] == ["queued"] * 5, "nothing recorded, nothing lost"

        survivor = notify.DeliveryWorker(engine, channels, clock, lease_s=60, send_timeout_s=30)
        clock.advance(61)  # the dead worker's leases have expired
        assert asyncio.run(survivor.run_until_idle()).sent == 5
    log = rows(engine)
    assert {r.state for r in log} == {"sent"}
    assert set(receiver.seen) == {r.message_id for r in log}, "every message arrived"
    assert sorted(receiver.seen.values()) == [1, 1, 1, 1, 2], "the one in flight was handed over twice, same id"


def test_the_head_end_process_delivers_queued_notifications(engine: Engine) -> None:
    from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings

    site, account = setup(engine)
    notify_once(engine, event(EventKind.TRIPPED, "outbox:trip:9", site, account, TRIP), NOON)
    channels = providers()
    settings = HeadendSettings(name="notifier", dtu_listen=None, notify_channels=channels, notify_every_s=0.1)
    runtime = HeadendRuntime(engine, settings, clock=lambda: NOON)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runtime.run(stop))
        await asyncio.wait_for(runtime.ready.wait(), 10)
        for _ in range(100):
            if runtime.stats.notifications >= 3:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, 10)

    asyncio.run(scenario())
    assert runtime.stats.notifications == 3, "e-mail, SMS and a voice call for a trip"
    assert all(r.state == "sent" for r in rows(engine))
    assert sum(handovers(channels).values()) == 3
