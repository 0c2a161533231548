"""Site calendar overrides and per-tariff-plan warning levels.

- ``site_calendar_days``: an administrator's choice for one local date of one site (workday, weekend or
  holiday), overriding China's statutory calendar (and the site's creation-time ``sites.calendar_overrides``).
  One row per (site, date): the primary key keeps two admins from storing two answers for the same day.
- ``site_calendar_revisions``: one counter per site, bumped in the transaction of every override change, so a
  worker that caches a site's calendar knows with one indexed query per batch whether it is still current.
- ``tariff_warning_levels``: the low-balance warning levels of a tariff plan (JSON list of micros, highest
  first), used by every wallet on that plan whose own policy sets none.

Each change is audited by the service that makes it (``powergate.services.site_calendar``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Column, Date, ForeignKey, PrimaryKeyConstraint, String, Table, Text

from powergate.store.tables import Id, UTCDateTime, metadata

DAY_TYPES = ("workday", "weekend", "holiday")

site_calendar_days = Table(
    "site_calendar_days",
    metadata,
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("day", Date, nullable=False),
    Column("day_type", String(8), nullable=False),
    Column("reason", Text, nullable=False),
    Column("updated_by", String(120), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("site_id", "day"),
    CheckConstraint("day_type IN ('workday', 'weekend', 'holiday')", name="day_type"),
)

site_calendar_revisions = Table(
    "site_calendar_revisions",
    metadata,
    Column("site_id", Id, ForeignKey("sites.id"), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    CheckConstraint("revision >= 1", name="revision"),
)

tariff_warning_levels = Table(
    "tariff_warning_levels",
    metadata,
    Column("tariff_id", String(64), ForeignKey("tariffs.id"), primary_key=True),
    Column("levels", Text, nullable=False),
    Column("updated_by", String(120), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
