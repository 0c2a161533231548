"""Notice producers: the platform's events that become notifications, besides the prepaid relay's.

The prepaid outbox relay (``services.prepaid.process_outbox``) already notifies low balance, trip and restore.
This module produces the rest of issue 7's events, each with an idempotency key, so that a producer that runs
twice (two workers, a crash between notifying and moving its cursor) notifies nobody twice:

==============================  ==========================================  ==================================
event                           source                                      key
==============================  ==========================================  ==================================
recharge received               outbox rows of kind ``recharged`` written   ``outbox:recharged:<ledger key>``
                                by ``services.payments`` with the credit
refund                          ``refunds`` completed (state succeeded)     ``refund:<refund no>``
meter alarm                     ``meter_events`` of the alarm kinds         ``meter_event:<id>``
meter offline > N hours         ``meter_status.last_seen_at`` older than N  ``offline:<meter>:<last seen>``
daily report ready              a site's daily freeze finished              ``daily_report:<site>:<day>``
reconciliation discrepancy      the day's reconciliation, per site          ``reconcile:<site>:<day>``
run-out forecast below N days   the site's wallets after the daily freeze   ``runout:<wallet>:<day>``
==============================  ==========================================  ==================================

``run_notices(engine, now)`` runs every producer once (the worker calls it every few seconds); each is bounded
(``MAX_BATCH`` rows a pass) and moves a cursor in ``notice_cursors`` in the same transaction as the messages it
queued. The daily producers claim ``(daily_notices, site:<id>:<day>)`` in ``job_runs``, so across workers and
restarts they run once per site and day, and only after that day's freeze has finished. A run-out notice goes
out once per crossing: ``runout_alerts`` remembers the balance it was sent at, and a recharge above it re-arms.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, bindparam, insert, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from powergate.domain.forecast import forecast
from powergate.domain.money import currency as currency_of
from powergate.domain.money import format_money
from powergate.domain.notifications import EventKind, NotificationEvent
from powergate.services import freeze, notify, reconcile
from powergate.services.daily_report import NotFrozen, daily_report
from powergate.store.tables import ledger_accounts, meters
from powergate.store.tables_headend import meter_events, meter_status
from powergate.store.tables_notices import notice_cursors, runout_alerts
from powergate.store.tables_payments import refunds
from powergate.store.tables_prepaid import outbox
from powergate.store.tables_structure import accounts, meter_assignments, rooms, sites

log = logging.getLogger(__name__)

MAX_BATCH = 500
DEFAULT_OFFLINE_HOURS = 24
DEFAULT_RUNOUT_DAYS = 3
DAYS_OF_HISTORY = 7
JOB_DAILY_NOTICES = "daily_notices"
ALARM_KINDS = (
    "cover_open",
    "terminal_cover_open",
    "reverse_current",
    "abnormal_current",
    "voltage_loss",
    "current_loss",
    "magnetic_interference",
    "overload_trip",
)
"""Meter events an administrator hears about; power fail / restore are routine and only stored."""
ALARM_NAMES: Mapping[str, str] = {
    "cover_open": "cover open / 开表盖",
    "terminal_cover_open": "terminal cover open / 开端钮盖",
    "reverse_current": "reverse current / 电流反向",
    "abnormal_current": "abnormal current / 电流异常",
    "voltage_loss": "voltage loss / 失压",
    "current_loss": "current loss / 失流",
    "magnetic_interference": "magnetic interference / 恒定磁场干扰",
    "overload_trip": "overload trip / 过载跳闸",
}
"""Alarm names go to administrators of either language, so they carry both."""


@dataclass(frozen=True, slots=True)
class NoticeSettings:
    offline_hours: int = DEFAULT_OFFLINE_HOURS
    runout_days: int = DEFAULT_RUNOUT_DAYS

    def __post_init__(self) -> None:
        assert 1 <= self.offline_hours <= 24 * 90, f"offline_hours must be 1..2160, got {self.offline_hours}"
        assert 1 <= self.runout_days <= 60, f"runout_days must be 1..60, got {self.runout_days}"


@dataclass(slots=True)
class NoticeRun:
    """What one pass produced: events notified per producer, and problems (never raised)."""

    events: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.events.values())


def run_notices(engine: Engine, now: dt.datetime, settings: NoticeSettings | None = None) -> NoticeRun:
    """Run every producer once; one producer's problem never stops the others."""
    settings = settings or NoticeSettings()
    run = NoticeRun()
    producers: dict[str, Callable[[], int]] = {
        "recharge_received": lambda: recharges(engine, now, run.problems),
        "refund": lambda: completed_refunds(engine, now, run.problems),
        "meter_alarm": lambda: meter_alarms(engine, now, run.problems),
        "meter_offline": lambda: offline_meters(engine, now, settings.offline_hours, run.problems),
        "daily": lambda: daily_notices(engine, now, settings.runout_days, run.problems),
    }
    for name, produce in producers.items():
        try:
            run.events[name] = produce()
        except DBAPIError as exc:  # a race with another worker (a unique key), a lost connection: next pass
            run.events[name] = 0
            run.problems.append(f"{name}: {type(exc.orig).__name__}: {exc.orig}"[:500])
    for problem in run.problems:
        log.warning("notices: %s", problem)
    return run


# --- per-event producers -----------------------------------------------------------------------------------


def recharges(engine: Engine, now: dt.datetime, problems: list[str]) -> int:
    """Notify the ``recharged`` outbox rows (written with each credit) and mark them processed."""
    done = 0
    with engine.begin() as conn:
        rows = conn.execute(
            select(outbox.c.id, outbox.c.key, outbox.c.wallet_account_id, outbox.c.payload, outbox.c.created_at)
            .where(outbox.c.kind == "recharged", outbox.c.processed_at.is_(None), outbox.c.available_at <= now)
            .order_by(outbox.c.id)
            .limit(MAX_BATCH)
        ).all()
        for row in rows:
            payload = {**json.loads(row.payload), "wallet_account_id": int(row.wallet_account_id)}
            event = notify.event_from_outbox(conn, "recharged", str(row.key), payload, row.created_at)
            fault = _notify(conn, event, now)
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row.id, outbox.c.processed_at.is_(None))
                .values(processed_at=now, attempts=outbox.c.attempts + 1, last_error=fault)
            )
            if fault is not None:
                problems.append(f"{row.key}: {fault}")
            elif event is not None:
                done += 1
    return done


def completed_refunds(engine: Engine, now: dt.datetime, problems: list[str]) -> int:
    """Notify refunds that succeeded after the cursor (completion instant, then id)."""
    done = 0
    with engine.begin() as conn:
        query = select(refunds).where(refunds.c.state == "succeeded", refunds.c.completed_at <= now)
        query = _after(query, _cursor(conn, "refunds"), refunds.c.completed_at, refunds.c.id)
        rows = conn.execute(query.order_by(refunds.c.completed_at, refunds.c.id).limit(MAX_BATCH)).all()
        for row in rows:
            account = _account_of_wallet(conn, int(row.wallet_account_id))
            if account is None:
                continue
            data = {**account.data(conn, row.completed_at), "amount": account.money(int(row.amount_fen) * 10_000)}
            event = NotificationEvent(
                EventKind.REFUND, f"refund:{row.refund_no}", account.site_id, row.completed_at, account.id, data
            )
            fault = _notify(conn, event, now)
            if fault is not None:
                problems.append(f"refund {row.refund_no}: {fault}")
            else:
                done += 1
        if rows:
            _move(conn, "refunds", _position(rows[-1].completed_at, rows[-1].id), now)
    return done


def meter_alarms(engine: Engine, now: dt.datetime, problems: list[str]) -> int:
    """Notify site administrators of the alarm events stored after the cursor (by event id)."""
    done = 0
    with engine.begin() as conn:
        after = int(_cursor(conn, "meter_events") or 0)
        rows = conn.execute(
            select(meter_events).where(meter_events.c.id > after).order_by(meter_events.c.id).limit(MAX_BATCH)
        ).all()
        for row in rows:
            if row.kind not in ALARM_KINDS:
                continue
            place = _meter_place(conn, str(row.meter_id))
            if place is None:
                continue  # a meter in no site's account: nobody to tell
            site_id, room, zone = place
            data = {
                "alarm": ALARM_NAMES[row.kind],
                "meter": str(row.meter_id),
                "room": room,
                "time": _local(row.at, zone),
            }
            event = NotificationEvent(EventKind.METER_ALARM, f"meter_event:{row.id}", site_id, row.at, None, data)
            fault = _notify(conn, event, now)
            if fault is not None:
                problems.append(f"meter event {row.id}: {fault}")
            else:
                done += 1
        if rows:
            _move(conn, "meter_events", str(rows[-1].id), now)
    return done


def offline_meters(engine: Engine, now: dt.datetime, hours: int, problems: list[str]) -> int:
    """Notify meters offline for ``hours`` whose last contact passed that age since the previous pass.

    The cursor is the (last seen, meter) of the last meter notified; one notice per offline episode, since the
    key carries the instant the meter was last seen.
    """
    threshold = now - dt.timedelta(hours=hours)
    done = 0
    with engine.begin() as conn:
        s = meter_status.c
        query = select(s.meter_id, s.last_seen_at).where(s.online.is_(False), s.last_seen_at <= threshold)
        query = _after(query, _cursor(conn, "offline"), s.last_seen_at, s.meter_id)
        rows = conn.execute(query.order_by(s.last_seen_at, s.meter_id).limit(MAX_BATCH)).all()
        for row in rows:
            place = _meter_place(conn, str(row.meter_id))
            if place is None:
                continue
            site_id, room, zone = place
            last_seen: dt.datetime = row.last_seen_at
            data = {
                "meter": str(row.meter_id),
                "room": room,
                "hours": str(int((now - last_seen).total_seconds() // 3600)),
                "last_seen": _local(last_seen, zone),
            }
            key = f"offline:{row.meter_id}:{last_seen.isoformat()}"
            event = NotificationEvent(EventKind.METER_OFFLINE, key, site_id, now, None, data)
            fault = _notify(conn, event, now)
            if fault is not None:
                problems.append(f"meter {row.meter_id} offline: {fault}")
            else:
                done += 1
        if rows:
            _move(conn, "offline", _position(rows[-1].last_seen_at, rows[-1].meter_id), now)
    return done


# --- the daily notices: report ready, reconciliation, run-out forecast ------------------------------------


def daily_notices(engine: Engine, now: dt.datetime, runout_days: int, problems: list[str]) -> int:
    """For each site whose freeze of yesterday (site-local) has finished: once across workers, the daily report
    notice, the reconciliation discrepancy notice (if any) and the run-out forecast notices."""
    with engine.connect() as conn:
        site_rows = conn.execute(
            select(sites.c.id, sites.c.name, sites.c.timezone, sites.c.currency).order_by(sites.c.id)
        ).all()
    reports: dict[tuple[str, dt.date], reconcile.Report] = {}
    done = 0
    owner = freeze.default_owner()
    for site in site_rows:
        zone = str(site.timezone)
        day = now.astimezone(ZoneInfo(zone)).date() - dt.timedelta(days=1)
        with engine.connect() as conn:
            if not _freeze_finished(conn, int(site.id), zone, day):
                continue
        period = f"site:{site.id}:{day.isoformat()}"
        if freeze.claim(engine, JOB_DAILY_NOTICES, period, owner, now) not in (
            freeze.Claim.CLAIMED,
            freeze.Claim.TAKEN_OVER,
        ):
            continue
        with engine.begin() as conn:
            if (zone, day) not in reports:
                reports[(zone, day)] = reconcile.reconcile(conn, day, zone)
            context = _SiteDay(int(site.id), str(site.name), zone, str(site.currency), day)
            done += _report_ready(conn, context, now, problems)
            done += _discrepancies(conn, context, reports[(zone, day)], now, problems)
            done += _runouts(conn, context, runout_days, now, problems)
            freeze.finish_claim(conn, JOB_DAILY_NOTICES, period, owner, now)
    return done


@dataclass(frozen=True, slots=True)
class _SiteDay:
    site_id: int
    name: str
    zone: str
    currency: str
    day: dt.date

    def money(self, micros: int) -> str:
        return format_money(micros, currency_of(self.currency))


def _report_ready(conn: Connection, site: _SiteDay, now: dt.datetime, problems: list[str]) -> int:
    try:
        report = daily_report(conn, site.site_id, site.day)
    except NotFrozen:
        return 0  # a site without metered accounts that day: no report to announce
    data = {
        "site": site.name,
        "date": site.day.isoformat(),
        "energy": f"{report.energy_wh / 1000:.2f} kWh",
        "amount": site.money(report.cost_micros),
    }
    key = f"daily_report:{site.site_id}:{site.day.isoformat()}"
    fault = _notify(conn, NotificationEvent(EventKind.DAILY_REPORT_READY, key, site.site_id, now, None, data), now)
    if fault is not None:
        problems.append(f"{key}: {fault}")
        return 0
    return 1


def _discrepancies(
    conn: Connection, site: _SiteDay, report: reconcile.Report, now: dt.datetime, problems: list[str]
) -> int:
    """One notice for the site's share of the day's discrepancies: those of its wallets and meters, and those
    that belong to no site (a ledger-wide problem concerns every site)."""
    wallet_sites = _wallet_sites(conn)
    meter_sites = {f"meter:{meter}": wallet_sites.get(code) for meter, code in _meter_wallets(conn).items()}
    mine = [
        d
        for d in report.discrepancies
        if wallet_sites.get(d.subject, meter_sites.get(d.subject, site.site_id)) in (site.site_id, None)
    ]
    if not mine:
        return 0
    off_by = sum(
        abs(flow.explained_micros - (flow.closing_micros - flow.opening_micros))
        for flow in report.wallets
        if wallet_sites.get(flow.subject) == site.site_id
    )
    data = {"site": site.name, "date": site.day.isoformat(), "count": str(len(mine)), "amount": site.money(off_by)}
    key = f"reconcile:{site.site_id}:{site.day.isoformat()}"
    event = NotificationEvent(EventKind.RECONCILIATION_DISCREPANCY, key, site.site_id, now, None, data)
    fault = _notify(conn, event, now)
    if fault is not None:
        problems.append(f"{key}: {fault}")
        return 0
    return 1


def _runouts(conn: Connection, site: _SiteDay, days: int, now: dt.datetime, problems: list[str]) -> int:
    """Notify the site's open accounts whose credit runs out within ``days``, once per crossing."""
    rows = conn.execute(
        select(accounts.c.id, accounts.c.wallet_account_id, ledger_accounts.c.balance_micros)
        .join(ledger_accounts, ledger_accounts.c.id == accounts.c.wallet_account_id)
        .where(accounts.c.site_id == site.site_id, accounts.c.state == "open", ledger_accounts.c.balance_micros > 0)
        .order_by(accounts.c.id)
    ).all()
    if not rows:
        return 0
    costs = _daily_costs(conn, [int(r.wallet_account_id) for r in rows], site.day)
    alerted = {
        int(w): int(b)
        for w, b in conn.execute(
            select(runout_alerts.c.wallet_account_id, runout_alerts.c.balance_micros).where(
                runout_alerts.c.wallet_account_id.in_([int(r.wallet_account_id) for r in rows])
            )
        )
    }
    done = 0
    for row in rows:
        wallet, balance = int(row.wallet_account_id), int(row.balance_micros)
        history = costs.get(wallet)
        if not history:
            continue  # no frozen day yet: no rate to forecast from
        left = forecast(balance, history)
        if left.seconds_left >= days * 86_400 or (wallet in alerted and balance <= alerted[wallet]):
            continue
        account = _account_of_wallet(conn, wallet)
        assert account is not None, f"open account {row.id} lost its wallet"
        data = {**account.data(conn, now), "days": str(max(1, round(left.seconds_left / 86_400)))}
        key = f"runout:{wallet}:{site.day.isoformat()}"
        fault = _notify(
            conn, NotificationEvent(EventKind.RUNOUT_FORECAST, key, site.site_id, now, account.id, data), now
        )
        if fault is not None:
            problems.append(f"{key}: {fault}")
            continue
        values = {"balance_micros": balance, "alerted_at": now}
        changed = conn.execute(
            update(runout_alerts).where(runout_alerts.c.wallet_account_id == wallet).values(**values)
        )
        if changed.rowcount == 0:
            conn.execute(insert(runout_alerts).values(wallet_account_id=wallet, **values))
        done += 1
    return done


def _daily_costs(conn: Connection, wallets: list[int], day: dt.date) -> dict[int, list[int]]:
    """Per wallet, the summed daily costs of its meters over the last ``DAYS_OF_HISTORY`` frozen days up to
    ``day``, oldest first."""
    found: dict[int, dict[dt.date, int]] = {}
    first = day - dt.timedelta(days=DAYS_OF_HISTORY - 1)
    for start in range(0, len(wallets), MAX_BATCH):
        chunk = wallets[start : start + MAX_BATCH]
        rows = conn.execute(
            text(
                "SELECT wallet_account_id, day, SUM(cost_micros) FROM daily_freezes"
                " WHERE day >= :first AND day <= :last AND wallet_account_id IN :ids"
                " GROUP BY wallet_account_id, day"
            ).bindparams(_expanding("ids")),
            {"first": first, "last": day, "ids": chunk},
        )
        for wallet, frozen_day, cost in rows:
            found.setdefault(int(wallet), {})[_as_date(frozen_day)] = int(cost)
    return {wallet: [by_day[d] for d in sorted(by_day)] for wallet, by_day in found.items()}


def _freeze_finished(conn: Connection, site_id: int, zone: str, day: dt.date) -> bool:
    periods = [f"site:{site_id}:{day.isoformat()}", f"timezone:{zone}:{day.isoformat()}"]
    return (
        conn.execute(
            text(
                "SELECT 1 FROM job_runs WHERE job = :job AND period IN :periods AND finished_at IS NOT NULL"
            ).bindparams(_expanding("periods")),
            {"job": freeze.JOB_DAILY, "periods": periods},
        ).first()
        is not None
    )


def account_event(
    conn: Connection,
    kind: EventKind,
    key: str,
    wallet_account_id: int,
    at: dt.datetime,
    extra: Mapping[str, str],
    now: dt.datetime,
) -> str | None:
    """Notify an event about one account (its tenant) in the caller's transaction, with the account number, room,
    time and balance filled in; a problem as text, or None (also when the wallet has no account)."""
    account = _account_of_wallet(conn, wallet_account_id)
    if account is None:
        return None
    data = {**account.data(conn, at), **extra}
    return _notify(conn, NotificationEvent(kind, key, account.site_id, at, account.id, data), now)


def money_of_wallet(conn: Connection, wallet_account_id: int, micros: int) -> str:
    """``micros`` formatted in the currency of the wallet's site (CNY for a wallet without an account)."""
    account = _account_of_wallet(conn, wallet_account_id)
    return format_money(micros) if account is None else account.money(micros)


# --- helpers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Account:
    id: int
    site_id: int
    account_no: str
    name: str
    currency: str
    zone: str
    wallet_account_id: int

    def money(self, micros: int) -> str:
        return format_money(micros, currency_of(self.currency))

    def data(self, conn: Connection, at: dt.datetime) -> dict[str, str]:
        balance = conn.execute(
            select(ledger_accounts.c.balance_micros).where(ledger_accounts.c.id == self.wallet_account_id)
        ).scalar_one()
        room = notify.room_of(conn, self.id) or self.name
        return {
            "account_no": self.account_no,
            "room": room,
            "time": _local(at, self.zone),
            "balance": self.money(balance),
        }


def _account_of_wallet(conn: Connection, wallet_account_id: int) -> _Account | None:
    row = conn.execute(
        select(
            accounts.c.id,
            accounts.c.site_id,
            accounts.c.account_no,
            accounts.c.name,
            sites.c.currency,
            sites.c.timezone,
        )
        .join(sites, sites.c.id == accounts.c.site_id)
        .where(accounts.c.wallet_account_id == wallet_account_id)
    ).first()
    if row is None:
        return None
    return _Account(int(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]), wallet_account_id)


def _meter_place(conn: Connection, meter_id: str) -> tuple[int, str, str] | None:
    """(site id, room or account name, site time zone) of the account the meter's wallet belongs to."""
    row = conn.execute(
        select(accounts.c.id, accounts.c.site_id, accounts.c.name, sites.c.timezone)
        .join(meters, meters.c.wallet_account_id == accounts.c.wallet_account_id)
        .join(sites, sites.c.id == accounts.c.site_id)
        .where(meters.c.id == meter_id)
    ).first()
    if row is None:
        return None
    room = conn.execute(
        select(rooms.c.number)
        .join(meter_assignments, meter_assignments.c.room_id == rooms.c.id)
        .where(meter_assignments.c.meter_id == meter_id, meter_assignments.c.valid_to.is_(None))
        .limit(1)
    ).scalar_one_or_none()
    return int(row.site_id), str(room or row.name), str(row.timezone)


def _wallet_sites(conn: Connection) -> dict[str, int]:
    query = select(ledger_accounts.c.code, accounts.c.site_id).join(
        accounts, accounts.c.wallet_account_id == ledger_accounts.c.id
    )
    return {str(code): int(site) for code, site in conn.execute(query)}


def _meter_wallets(conn: Connection) -> dict[str, str]:
    query = select(meters.c.id, ledger_accounts.c.code).join(
        ledger_accounts, ledger_accounts.c.id == meters.c.wallet_account_id
    )
    return {str(meter): str(code) for meter, code in conn.execute(query)}


def _notify(conn: Connection, event: NotificationEvent | None, now: dt.datetime) -> str | None:
    """Queue the event's messages; a problem as text (the event is skipped, never half-queued)."""
    if event is None:
        return None
    done = notify.notify_event(conn, event, now)
    return f"{done.field}: {done.message}" if isinstance(done, notify.Rejected) else None


def _local(at: dt.datetime, zone: str) -> str:
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _position(at: dt.datetime, key: object) -> str:
    return f"{at.astimezone(dt.UTC).isoformat()}|{key}"


def _after(query: Any, cursor: str | None, at_column: Any, key_column: Any) -> Any:
    """Keyset continuation after a ``_position`` cursor: later instants, or the same instant and a later key."""
    if cursor is None:
        return query
    at_text, _, key_text = cursor.partition("|")
    at = dt.datetime.fromisoformat(at_text)
    key: object = int(key_text) if key_text.isdigit() and key_column.type.python_type is int else key_text
    return query.where(or_(at_column > at, and_(at_column == at, key_column > key)))


def _cursor(conn: Connection, name: str) -> str | None:
    value = conn.execute(select(notice_cursors.c.position).where(notice_cursors.c.name == name)).scalar()
    return None if value is None else str(value)


def _move(conn: Connection, name: str, position: str, now: dt.datetime) -> None:
    changed = conn.execute(
        update(notice_cursors).where(notice_cursors.c.name == name).values(position=position, updated_at=now)
    )
    if changed.rowcount == 0:
        conn.execute(insert(notice_cursors).values(name=name, position=position, updated_at=now))


def _expanding(name: str) -> Any:
    return bindparam(name, expanding=True)


def _as_date(value: object) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
