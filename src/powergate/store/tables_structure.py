"""Sites and tenants: organisations -> sites -> buildings -> floors -> rooms, accounts, meter assignments, audit.

Invariants the database keeps (style rule 4; ``powergate.domain.structure`` checks the same in Python first):
- Names are unique within their parent (a site's building names, a building's floor names, a floor's room
  numbers); an account number is unique within its organisation.
- Areas are integers in 0.01 m² (``area_centi_m2``), non-negative; money limits are integer micros, non-negative.
- Room uses and account states are closed lists (CHECK).
- An open account has a wallet; a closed account has a closing time.
- A meter has at most one open assignment (``valid_to IS NULL``): a partial UNIQUE index, so two transactions
  moving the same meter at once cannot both succeed. Closed assignments are kept: they are the meter's history.
- ``audit_log`` is append-only: who (``actor``) did what (``action``) to what (``subject``) and why (``reason``),
  with a JSON ``detail``; every money or relay change writes one (``powergate.store.audit``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from powergate.domain.structure import AccountState, CalendarKind, PaymentChannel, RoomUse
from powergate.store.tables import Id, UTCDateTime, metadata

ROOM_USES = tuple(u.value for u in RoomUse)
ACCOUNT_STATES = tuple(s.value for s in AccountState)
PAYMENT_CHANNELS = tuple(c.value for c in PaymentChannel)
CALENDAR_KINDS = tuple(k.value for k in CalendarKind)
MAX_AUDIT_DETAIL_CHARS = 16_000
OPENED_CHECK = (
    "(state = 'open' AND opened_at IS NOT NULL) OR (state = 'pre_staged' AND opened_at IS NULL) OR state = 'closed'"
)
"""An open account was opened at some time, a pre-staged one not yet; a closed one may never have opened."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(120), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False, server_default="{}"),
    CheckConstraint("actor <> '' AND action <> '' AND subject <> '' AND reason <> ''", name="who_why"),
    Index("ix_audit_log_subject_at", "subject", "at"),
    Index("ix_audit_log_at", "at"),
)


organisations = Table(
    "organisations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("code", String(32), nullable=False, unique=True),
    Column("name", String(120), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

sites = Table(
    "sites",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("calendar", String(16), nullable=False, server_default="china"),
    Column("calendar_overrides", Text, nullable=False, server_default="{}"),
    Column("min_purchase_micros", BigInteger, nullable=False, server_default="0"),
    Column("hoarding_limit_micros", BigInteger),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("organisation_id", "name"),
    CheckConstraint(_in("calendar", CALENDAR_KINDS), name="calendar"),
    CheckConstraint("min_purchase_micros >= 0", name="min_purchase"),
    CheckConstraint("hoarding_limit_micros IS NULL OR hoarding_limit_micros > 0", name="hoarding_limit"),
)

site_payment_channels = Table(
    "site_payment_channels",
    metadata,
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("channel", String(16), nullable=False),
    PrimaryKeyConstraint("site_id", "channel"),
    CheckConstraint(_in("channel", PAYMENT_CHANNELS), name="channel"),
)

buildings = Table(
    "buildings",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("name", String(64), nullable=False),
    UniqueConstraint("site_id", "name"),
)

floors = Table(
    "floors",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("building_id", Id, ForeignKey("buildings.id"), nullable=False),
    Column("name", String(64), nullable=False),
    UniqueConstraint("building_id", "name"),
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("floor_id", Id, ForeignKey("floors.id"), nullable=False),
    Column("number", String(64), nullable=False),
    Column("area_centi_m2", BigInteger, nullable=False),
    Column("use", String(16), nullable=False),
    UniqueConstraint("floor_id", "number"),
    CheckConstraint("area_centi_m2 >= 0", name="area"),
    CheckConstraint(_in("use", ROOM_USES), name="use"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("organisation_id", Id, ForeignKey("organisations.id"), nullable=False),
    Column("site_id", Id, ForeignKey("sites.id"), nullable=False),
    Column("account_no", String(32), nullable=False),
    Column("name", String(120), nullable=False),
    Column("phone", String(20)),
    Column("email", String(254)),
    Column("state", String(16), nullable=False),
    # Created with the account (even pre-staged): ``meters.wallet_account_id`` is NOT NULL, and a pre-staged
    # account's meters are installed before it opens.
    Column("wallet_account_id", Id, ForeignKey("ledger_accounts.id"), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("opened_at", UTCDateTime),
    Column("closed_at", UTCDateTime),
    UniqueConstraint("organisation_id", "account_no"),
    CheckConstraint(_in("state", ACCOUNT_STATES), name="state"),
    CheckConstraint(OPENED_CHECK, name="opened"),
    CheckConstraint("(state = 'closed') = (closed_at IS NOT NULL)", name="closed"),
    Index("ix_accounts_site_id", "site_id"),
)

meter_assignments = Table(
    "meter_assignments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("meter_id", String(64), ForeignKey("meters.id"), nullable=False),
    Column("room_id", Id, ForeignKey("rooms.id"), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_to", UTCDateTime),
    # The register total of the last stored reading when the assignment opened / closed: the handover reading.
    Column("start_total_wh", BigInteger),
    Column("end_total_wh", BigInteger),
    CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="period"),
    Index("ix_meter_assignments_meter_id", "meter_id", "valid_from"),
    Index("ix_meter_assignments_account_id", "account_id"),
    Index("ix_meter_assignments_room_id", "room_id"),
    # At most one open assignment per meter, enforced by the database against concurrent moves.
    Index(
        "uq_meter_assignments_open",
        "meter_id",
        unique=True,
        sqlite_where=text("valid_to IS NULL"),
        postgresql_where=text("valid_to IS NULL"),
    ),
)
