"""Rules for sites, rooms and tenants: what a valid room, account, contact and site payment policy look like.

Everything here is pure (no I/O, no clock). Parsers turn operator text (a form field, a spreadsheet cell) into
values and raise ``FieldError`` -- a ``ValueError`` that names the field -- when the text is wrong; callers
that check many fields (the importer) collect those errors as values and report all of them at once.

Invariants:
- A room's area is an integer in 0.01 m² (``area_centi_m2``), never a float: "35.5" is 3550. At most two
  decimals are accepted, because that is what a floor plan states; more would be a precision we do not have.
- A room's use is one of ``RoomUse``; common Chinese names are accepted and mapped to it.
- An account number is 1..32 characters of letters, digits, ``-`` and ``_``, starting with a letter or digit,
  unique within its organisation (the database keeps that). Its wallet is ``wallet:<org>/<account no>``, unique
  across organisations.
- A purchase is at least the site's minimum purchase and may not lift the balance above the hoarding limit
  (``purchase_problem``); both limits are integer micros.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from powergate.domain.calendar import DayType
from powergate.domain.ledger import wallet_code
from powergate.domain.money import format_money

MAX_NAME_CHARS = 64
MAX_PERSON_NAME_CHARS = 120
MAX_EMAIL_CHARS = 254
MAX_AREA_CENTI_M2 = 100_000_000
"""1,000,000 m²: bigger than any single room; a larger value is a typo."""
MAX_CALENDAR_OVERRIDES = 1_000


class FieldError(ValueError):
    """Operator input that is wrong; ``field`` names where, the message says what and how to fix it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RoomUse(StrEnum):
    APARTMENT = "apartment"
    SHOP = "shop"
    OFFICE = "office"
    DORMITORY = "dormitory"
    PUBLIC_AREA = "public_area"


ROOM_USE_ALIASES: Mapping[str, RoomUse] = {
    "public area": RoomUse.PUBLIC_AREA,
    "公寓": RoomUse.APARTMENT,
    "住宅": RoomUse.APARTMENT,
    "商铺": RoomUse.SHOP,
    "店铺": RoomUse.SHOP,
    "办公": RoomUse.OFFICE,
    "办公室": RoomUse.OFFICE,
    "宿舍": RoomUse.DORMITORY,
    "公共区域": RoomUse.PUBLIC_AREA,
    "公区": RoomUse.PUBLIC_AREA,
}


class AccountState(StrEnum):
    PRE_STAGED = "pre_staged"
    OPEN = "open"
    CLOSED = "closed"


class PaymentChannel(StrEnum):
    """Channels a site may enable; the names are the ledger's clearing account names (``clearing:<channel>``)."""

    WECHAT = "wechat"
    ALIPAY = "alipay"
    CASHIER = "cashier"
    BANK = "bank"
    SANDBOX = "sandbox"


class CalendarKind(StrEnum):
    """Which statutory calendar a site's TOU day types follow (``domain.calendar.SiteCalendar``)."""

    CHINA = "china"
    WEEKENDS_ONLY = "weekends_only"


_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_AREA_RE = re.compile(r"^\d+(\.\d+)?$")
# Mainland mobile (11 digits starting 1[3-9]) or a landline with its area code (0xx / 0xxx, 7-8 digits),
# optionally written with +86 and separators; stored without separators.
_MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")
_LANDLINE_RE = re.compile(r"^0\d{2,3}\d{7,8}$")
# Deliberately loose: one @, no spaces, a dot in the domain. Delivery is the real test of an address.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def parse_name(text: object, field: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """A building, floor, room or site name: trimmed, non-empty, at most ``max_chars`` characters."""
    value = _text(text)
    if not value:
        raise FieldError(field, "is required")
    if len(value) > max_chars:
        raise FieldError(field, f"is {len(value)} characters long; at most {max_chars} are allowed")
    return value


def parse_code(text: object, field: str) -> str:
    """An organisation code or account number: 1..32 letters, digits, '-' or '_', starting alphanumeric."""
    value = _text(text)
    if not value:
        raise FieldError(field, "is required")
    if not _CODE_RE.match(value):
        raise FieldError(field, f"{value!r} must be 1-32 letters, digits, '-' or '_' and start with a letter or digit")
    return value


def parse_area(text: str | int | Decimal, field: str = "area_m2") -> int:
    """Square metres with at most two decimals ("35.5", 120) as an integer in 0.01 m² (3550, 12000)."""
    if isinstance(text, bool):
        raise FieldError(field, f"expected an area in m², got {text!r}")
    raw = str(text).strip()
    if not _AREA_RE.match(raw):
        raise FieldError(field, f"{raw!r} is not an area in m² (a non-negative number such as 35.5)")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise FieldError(field, f"{raw!r} is not an area in m²") from None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > 2:
        raise FieldError(field, f"{raw!r} has more than 2 decimals (the unit is 0.01 m²)")
    area_centi_m2 = int(value * 100)
    if area_centi_m2 > MAX_AREA_CENTI_M2:
        raise FieldError(field, f"{raw} m² is more than {MAX_AREA_CENTI_M2 // 100} m²")
    return area_centi_m2


def format_area(area_centi_m2: int) -> str:
    """0.01 m² as text: 3550 -> "35.50"."""
    return f"{area_centi_m2 // 100}.{area_centi_m2 % 100:02d}"


def parse_room_use(text: object, field: str = "use") -> RoomUse:
    value = _text(text).lower()
    if not value:
        raise FieldError(field, "is required")
    alias = ROOM_USE_ALIASES.get(value)
    if alias is not None:
        return alias
    try:
        return RoomUse(value)
    except ValueError:
        known = ", ".join(u.value for u in RoomUse)
        raise FieldError(field, f"{value!r} is not a room use; expected one of {known}") from None


def parse_phone(text: object, field: str = "phone") -> str | None:
    """A mainland mobile or landline number without separators; ``None`` when blank (phone is optional)."""
    value = re.sub(r"[\s()-]", "", _text(text))
    if not value:
        return None
    for prefix in ("+86", "0086"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    if _MOBILE_RE.match(value) or _LANDLINE_RE.match(value):
        return value
    raise FieldError(
        field, f"{_text(text)!r} is not a phone number (11-digit mobile such as 13800138000, or 010-12345678)"
    )


def parse_email(text: object, field: str = "email") -> str | None:
    """An e-mail address (lower-cased domain); ``None`` when blank (e-mail is optional)."""
    value = _text(text)
    if not value:
        return None
    if len(value) > MAX_EMAIL_CHARS or not _EMAIL_RE.match(value):
        raise FieldError(field, f"{value!r} is not an e-mail address")
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


def parse_channels(names: object, field: str = "payment_channels") -> frozenset[PaymentChannel]:
    """A site's enabled payment channels from a list of names (or a comma-separated string)."""
    items = names.split(",") if isinstance(names, str) else names
    if not isinstance(items, list | tuple | set | frozenset):
        raise FieldError(field, f"expected a list of channel names, got {names!r}")
    channels: set[PaymentChannel] = set()
    for item in items:
        name = _text(item).lower()
        if not name:
            continue
        try:
            channels.add(PaymentChannel(name))
        except ValueError:
            known = ", ".join(c.value for c in PaymentChannel)
            raise FieldError(field, f"{name!r} is not a payment channel; expected one of {known}") from None
    return frozenset(channels)


def parse_calendar_overrides(raw: Mapping[str, str], field: str = "calendar_overrides") -> dict[date, DayType]:
    """An admin's per-date day types, ``{"2027-10-08": "workday"}``, as dates -> ``DayType``."""
    if len(raw) > MAX_CALENDAR_OVERRIDES:
        raise FieldError(field, f"{len(raw)} overrides; at most {MAX_CALENDAR_OVERRIDES} are allowed")
    overrides: dict[date, DayType] = {}
    for day_text, kind_text in raw.items():
        try:
            day = date.fromisoformat(str(day_text))
        except ValueError:
            raise FieldError(field, f"{day_text!r} is not a date (YYYY-MM-DD)") from None
        try:
            overrides[day] = DayType(str(kind_text))
        except ValueError:
            known = ", ".join(d.value for d in DayType)
            raise FieldError(field, f"{day_text}: {kind_text!r} is not a day type; expected one of {known}") from None
    return overrides


def account_wallet(organisation_code: str, account_no: str) -> str:
    """The ledger code of an account's wallet; the organisation makes it unique across organisations."""
    return wallet_code(f"{organisation_code}/{account_no}")


@dataclass(frozen=True, slots=True)
class PaymentPolicy:
    """What a site allows a tenant to pay: enabled channels, minimum purchase, hoarding limit (max balance)."""

    site_id: int
    currency: str
    min_purchase_micros: int
    hoarding_limit_micros: int | None
    """``None``: no maximum balance."""
    channels: frozenset[PaymentChannel]


def purchase_problem(policy: PaymentPolicy, channel: str, amount_micros: int, balance_micros: int) -> FieldError | None:
    """Why a purchase of ``amount_micros`` through ``channel`` into a wallet at ``balance_micros`` is refused.

    ``None`` when it is allowed. The hoarding limit caps the balance *after* the purchase, so a tenant near the
    limit may still buy up to it.
    """
    if channel not in policy.channels:
        enabled = ", ".join(sorted(c.value for c in policy.channels)) or "none"
        return FieldError("channel", f"{channel!r} is not enabled at this site (enabled: {enabled})")
    if amount_micros <= 0:
        return FieldError("amount", "must be positive")
    if amount_micros < policy.min_purchase_micros:
        return FieldError(
            "amount",
            f"{format_money(amount_micros)} is below the minimum purchase of "
            f"{format_money(policy.min_purchase_micros)}",
        )
    limit = policy.hoarding_limit_micros
    if limit is not None and balance_micros + amount_micros > limit:
        room = max(limit - balance_micros, 0)
        return FieldError(
            "amount",
            f"{format_money(amount_micros)} would lift the balance to {format_money(balance_micros + amount_micros)}, "
            f"above the hoarding limit of {format_money(limit)}; at most {format_money(room)} can be bought now",
        )
    return None


def _text(value: object) -> str:
    """A cell or form value as trimmed text; ``None`` is blank. Integers keep their digits (phone numbers)."""
    if value is None:
        return ""
    return str(value).strip()
