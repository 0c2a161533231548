"""Site calendars: an administrator's per-site day-type overrides, and the calendar each site's wallets and
meters are judged by.

A site follows China's statutory calendar (or weekends only: ``sites.calendar``); the overrides given when
the site was created (``sites.calendar_overrides``) and the ones an administrator sets later
(``site_calendar_days``, audited) win over it, the later ones last. The result, a
``powergate.domain.calendar.SiteCalendar``, drives both the friendly-credit windows of the balance policy
(``services.prepaid``) and the TOU day types of rating (``services.ingest``) and of the TOU table pushed to
meters.

Caching: ``SiteCalendars`` keeps one calendar per site with the site's revision (``site_calendar_revisions``,
bumped in the transaction of every change). A batch asks once for the revisions of the sites it touches (one
indexed query) and rebuilds only the calendars that changed, so an override applies from the next batch on.
A wallet or meter without an account (ledger tools, tests) gets China's statutory calendar.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from threading import Lock

from sqlalchemy import Connection, delete, func, insert, select, update

from powergate.domain.calendar import DayType, SiteCalendar
from powergate.domain.structure import CalendarKind, FieldError, parse_calendar_overrides
from powergate.headend.commands import Problem
from powergate.store.audit import record_audit
from powergate.store.tables import meters
from powergate.store.tables_calendar import site_calendar_days, site_calendar_revisions
from powergate.store.tables_structure import accounts, sites

ID_CHUNK = 1_000
MAX_OVERRIDES_PER_SITE = 5_000
"""Bound on the override rows read for one site (decades of daily exceptions)."""
MAX_CACHED_SITES = 10_000
MAX_REASON_CHARS = 2_000
EARLIEST_DAY = dt.date(2000, 1, 1)
LATEST_DAY = dt.date(2099, 12, 31)

NO_SITE = -1
"""The cache key of wallets and meters that belong to no site: they use China's statutory calendar."""
_STATUTORY = SiteCalendar.china()


@dataclass(frozen=True, slots=True)
class CalendarDay:
    """One override: ``day`` of site ``site_id`` is ``day_type``; who set it, why and when."""

    site_id: int
    day: dt.date
    day_type: DayType
    reason: str
    updated_by: str
    updated_at: dt.datetime


def set_day(
    conn: Connection,
    site_id: int,
    day: dt.date,
    day_type: DayType | None,
    *,
    actor: str,
    reason: str,
    now: dt.datetime,
) -> Problem | None:
    """Override one date of a site (``None`` removes the override); audited in the caller's transaction."""
    problem = _check_change(conn, site_id, day, actor, reason)
    if problem is not None:
        return problem
    key = (site_calendar_days.c.site_id == site_id) & (site_calendar_days.c.day == day)
    before = conn.execute(select(site_calendar_days.c.day_type).where(key)).scalar()
    if day_type is None:
        conn.execute(delete(site_calendar_days).where(key))
    elif before is None:
        values = {"day_type": day_type.value, "reason": reason, "updated_by": actor, "updated_at": now}
        conn.execute(insert(site_calendar_days).values(site_id=site_id, day=day, **values))
    else:
        values = {"day_type": day_type.value, "reason": reason, "updated_by": actor, "updated_at": now}
        conn.execute(update(site_calendar_days).where(key).values(**values))
    after = None if day_type is None else day_type.value
    if before == after:
        return None
    _bump(conn, site_id)
    detail = {"day": day.isoformat(), "before": before, "after": after}
    record_audit(conn, actor, "set_calendar_day", f"site:{site_id}", reason, detail, now)
    return None


def _check_change(conn: Connection, site_id: int, day: dt.date, actor: str, reason: str) -> Problem | None:
    if not actor.strip() or len(actor) > 120:
        return Problem("actor", "who changes the calendar must be named (1..120 characters)")
    if not reason.strip() or len(reason) > MAX_REASON_CHARS:
        return Problem("reason", f"why must be given (1..{MAX_REASON_CHARS} characters): the change is audited")
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        return Problem("day", f"{day.isoformat()} is outside {EARLIEST_DAY.year}..{LATEST_DAY.year}")
    if conn.execute(select(sites.c.id).where(sites.c.id == site_id)).scalar() is None:
        return Problem("site_id", f"no site {site_id}")
    count = conn.execute(
        select(func.count()).select_from(site_calendar_days).where(site_calendar_days.c.site_id == site_id)
    ).scalar_one()
    if int(count) >= MAX_OVERRIDES_PER_SITE:
        return Problem("day", f"site {site_id} already has {MAX_OVERRIDES_PER_SITE} overrides; remove old ones")
    return None


def _bump(conn: Connection, site_id: int) -> None:
    table = site_calendar_revisions
    done = conn.execute(update(table).where(table.c.site_id == site_id).values(revision=table.c.revision + 1))
    if done.rowcount == 0:
        conn.execute(insert(table).values(site_id=site_id, revision=1))


def days(conn: Connection, site_id: int) -> list[CalendarDay]:
    """The administrator's overrides of a site, by date."""
    table = site_calendar_days
    query = select(table).where(table.c.site_id == site_id).order_by(table.c.day).limit(MAX_OVERRIDES_PER_SITE)
    return [
        CalendarDay(int(r.site_id), r.day, DayType(r.day_type), str(r.reason), str(r.updated_by), r.updated_at)
        for r in conn.execute(query)
    ]


def calendar_of_site(conn: Connection, site_id: int) -> SiteCalendar:
    """The site's calendar now: statutory (or weekends only), creation-time overrides, then admin overrides."""
    row = conn.execute(select(sites.c.calendar, sites.c.calendar_overrides).where(sites.c.id == site_id)).first()
    if row is None:
        return _STATUTORY
    try:
        overrides = parse_calendar_overrides(json.loads(row.calendar_overrides or "{}"))
    except (FieldError, ValueError):  # validated when the site was created; never let it stop billing
        overrides = {}
    overrides.update((d.day, d.day_type) for d in days(conn, site_id))
    if row.calendar == CalendarKind.WEEKENDS_ONLY.value:
        return SiteCalendar.weekends_only(overrides)
    return SiteCalendar.china(overrides)


def revisions(conn: Connection, site_ids: Iterable[int]) -> dict[int, int]:
    ids = sorted(set(site_ids) - {NO_SITE})
    found: dict[int, int] = {}
    for start in range(0, len(ids), ID_CHUNK):
        query = select(site_calendar_revisions).where(
            site_calendar_revisions.c.site_id.in_(ids[start : start + ID_CHUNK])
        )
        found.update((int(r.site_id), int(r.revision)) for r in conn.execute(query))
    return found


def sites_of_wallets(conn: Connection, wallet_ids: Sequence[int]) -> dict[int, int]:
    """wallet ledger account id -> site id, for the wallets an account owns."""
    found: dict[int, int] = {}
    for start in range(0, len(wallet_ids), ID_CHUNK):
        chunk = wallet_ids[start : start + ID_CHUNK]
        query = select(accounts.c.wallet_account_id, accounts.c.site_id).where(accounts.c.wallet_account_id.in_(chunk))
        found.update((int(w), int(s)) for w, s in conn.execute(query))
    return found


def sites_of_meters(conn: Connection, meter_ids: Sequence[str]) -> dict[str, int]:
    """meter id -> site id, through the account owning the meter's wallet."""
    found: dict[str, int] = {}
    for start in range(0, len(meter_ids), ID_CHUNK):
        chunk = meter_ids[start : start + ID_CHUNK]
        query = (
            select(meters.c.id, accounts.c.site_id)
            .join(accounts, accounts.c.wallet_account_id == meters.c.wallet_account_id)
            .where(meters.c.id.in_(chunk))
        )
        found.update((str(m), int(s)) for m, s in conn.execute(query))
    return found


class SiteCalendars:
    """One calendar per site, rebuilt when the site's revision changes; thread-safe, bounded."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[int, SiteCalendar]] = {}
        self._lock = Lock()

    def for_sites(self, conn: Connection, site_ids: Iterable[int]) -> dict[int, SiteCalendar]:
        """The current calendar of each site (``NO_SITE``: the statutory one); one query when nothing changed."""
        wanted = set(site_ids)
        current = revisions(conn, wanted)
        found: dict[int, SiteCalendar] = {NO_SITE: _STATUTORY}
        for site_id in wanted - {NO_SITE}:
            revision = current.get(site_id, 0)
            with self._lock:
                cached = self._cache.get(site_id)
            if cached is not None and cached[0] == revision:
                found[site_id] = cached[1]
                continue
            calendar = calendar_of_site(conn, site_id)
            with self._lock:
                if len(self._cache) >= MAX_CACHED_SITES:
                    self._cache.clear()
                self._cache[site_id] = (revision, calendar)
            found[site_id] = calendar
        return found

    def for_wallets(self, conn: Connection, wallet_ids: Sequence[int]) -> dict[int, SiteCalendar]:
        """wallet id -> its site's calendar (the statutory one for a wallet no account owns)."""
        site_of = sites_of_wallets(conn, wallet_ids)
        calendars = self.for_sites(conn, site_of.values())
        return {wallet_id: calendars[site_of.get(wallet_id, NO_SITE)] for wallet_id in wallet_ids}

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()


def parse_overrides(raw: Mapping[str, str]) -> dict[dt.date, DayType] | Problem:
    """``{"2027-10-08": "workday"}`` as dates -> day types, or a Problem naming the bad entry."""
    try:
        return parse_calendar_overrides(raw)
    except FieldError as error:
        return Problem(error.field, error.message)
