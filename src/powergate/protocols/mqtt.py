"""MQTT topics and the versioned JSON payloads that meters and the head-end exchange.

Topics (``site`` and ``meter`` are ids of 1-64 characters from ``A-Z a-z 0-9 _ . -``, starting with a letter
or digit; no ``/ + # $``)::

    pg/v1/{site}/{meter}/up/reading   meter -> platform  periodic or on-demand reading
    pg/v1/{site}/{meter}/up/event     meter -> platform  anti-theft / safety event
    pg/v1/{site}/{meter}/up/ack       meter -> platform  result of a downlink command
    pg/v1/{site}/{meter}/up/status    meter -> platform  online / offline, RETAINED; offline is the last will
    pg/v1/{site}/{meter}/up/raw       meter -> platform  transparent mode: a raw DL/T 645 frame from the meter
    pg/v1/{site}/{meter}/down/cmd     platform -> meter  command
    pg/v1/{site}/{meter}/down/raw     platform -> meter  transparent mode: a raw DL/T 645 frame to the meter

Head-end workers share the uplink with the MQTT 5 shared subscription ``$share/{group}/pg/v1/+/+/up/#``: the
broker hands each message to exactly one worker of the group.

Payloads are JSON objects with ``"v": 1``. Invariants kept:
- decoding never raises and never half-parses: ``decode`` returns a complete message or one ``SchemaError``
  naming the field at fault (``params.amount_micros``, ``bands_wh.peak``). Unknown fields are errors: an
  additive change is a new version, so a typo is never silently dropped.
- an unknown ``v`` is refused with a message saying which versions this build reads.
- money and energy are integers in the unit the field name ends with (``_wh``, ``_micros``); JSON integers,
  or strings of digits for consumers whose numbers are doubles. Floats are refused.
- timestamps are ISO 8601 with an explicit UTC offset (``2026-03-01T08:00:00+08:00``); naive ones are refused.
- raw frames travel as hex (upper case, no spaces): readable in a broker console and the same text
  ``powergate frame decode`` takes. Base64 would save a third of a ~50-byte frame, which is not worth it.
- a limit on everything: payload size, id and text lengths, raw frame size, integer magnitude.

Standard library only; no I/O and no clock (times are passed in).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NoReturn

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)
TOPIC_ROOT = "pg"
MAX_PAYLOAD_BYTES = 16_384
MAX_ID_LENGTH = 64
MAX_TEXT_LENGTH = 200
MAX_RAW_FRAME_BYTES = 512
MAX_ABS_INTEGER = 10**18
"""Largest magnitude of any integer field: fits a signed 64-bit database column."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INT_TEXT_RE = re.compile(r"^-?[0-9]{1,19}$")
_HEX_RE = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


class Kind(StrEnum):
    READING = "reading"
    EVENT = "event"
    ACK = "ack"
    STATUS = "status"
    COMMAND = "cmd"
    RAW = "raw"


TOPIC_KINDS: dict[Direction, tuple[Kind, ...]] = {
    Direction.UP: (Kind.READING, Kind.EVENT, Kind.ACK, Kind.STATUS, Kind.RAW),
    Direction.DOWN: (Kind.COMMAND, Kind.RAW),
}

BANDS = ("sharp", "peak", "flat", "valley")
"""TOU bands, rates 1..4 on meters."""
RELAY_STATES = ("closed", "tripped")
STATUS_STATES = ("online", "offline")
ACK_RESULTS = ("ok", "error")
EVENT_TYPES = (
    "cover_open",
    "terminal_cover_open",
    "reverse_current",
    "abnormal_current",
    "voltage_loss",
    "current_loss",
    "magnetic_interference",
    "overload_trip",
    "power_fail",
    "power_restore",
)
COMMAND_KINDS = (
    "trip",
    "close",
    "recharge",
    "set_alarm",
    "set_price",
    "set_power_limit",
    "read",
    "time_sync",
)
READ_ITEMS = ("energy", "instant", "remaining", "purchase_count", "relay", "events", "clock")
INSTANT_FIELDS: dict[str, tuple[int, int]] = {
    "voltage_dv": (0, 10**6),
    "current_ma": (0, 10**9),
    "active_power_w": (-(10**9), 10**9),
    "power_factor_permille": (-1000, 1000),
    "frequency_centihz": (0, 10**5),
    **{f"voltage_{p}_dv": (0, 10**6) for p in "abc"},
    **{f"current_{p}_ma": (0, 10**9) for p in "abc"},
    **{f"active_power_{p}_w": (-(10**9), 10**9) for p in "abc"},
}
"""Instantaneous values a reading may carry, with their legal range (0.1 V, mA, W, x1000, 0.01 Hz)."""


@dataclass(frozen=True, slots=True)
class SchemaError:
    """A topic or payload that does not fit the schema: which field and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# --- topics ---------------------------------------------------------------------------------------------


def valid_id(text: str) -> bool:
    """Whether ``text`` can be a site id, meter id or message id."""
    return isinstance(text, str) and _ID_RE.match(text) is not None


@dataclass(frozen=True, slots=True)
class Topic:
    site: str
    meter: str
    direction: Direction
    kind: Kind

    def __post_init__(self) -> None:
        assert valid_id(self.site) and valid_id(self.meter), f"bad site or meter id: {self.site!r}/{self.meter!r}"
        assert self.kind in TOPIC_KINDS[self.direction], f"no {self.kind} topic {self.direction}"

    def __str__(self) -> str:
        return f"{TOPIC_ROOT}/v{SCHEMA_VERSION}/{self.site}/{self.meter}/{self.direction}/{self.kind}"


def topic(site: str, meter: str, direction: Direction, kind: Kind) -> str:
    """The topic string; ids must be valid (``valid_id``): an invalid one is a programmer error."""
    return str(Topic(site, meter, direction, kind))


def parse_topic(text: str) -> Topic | SchemaError:
    """Site, meter, direction and kind of a PowerGate topic."""
    if not isinstance(text, str) or len(text) > 256:
        return SchemaError("topic", "not a topic string of at most 256 characters")
    parts = text.split("/")
    if len(parts) != 6 or parts[0] != TOPIC_ROOT:
        return SchemaError("topic", f"{text!r} is not pg/v<version>/<site>/<meter>/<up|down>/<kind>")
    _root, version, site, meter, direction, kind = parts
    if version != f"v{SCHEMA_VERSION}":
        return SchemaError("topic", f"version {version!r} is not supported; this build reads v{SCHEMA_VERSION}")
    if not valid_id(site) or not valid_id(meter):
        return SchemaError("topic", f"bad site or meter id in {text!r}")
    if direction not in ("up", "down"):
        return SchemaError("topic", f"direction {direction!r} is not up or down")
    allowed = TOPIC_KINDS[Direction(direction)]
    if kind not in [k.value for k in allowed]:
        return SchemaError("topic", f"kind {kind!r} is not one of {', '.join(allowed)} for {direction}")
    return Topic(site, meter, Direction(direction), Kind(kind))


def uplink_filter(site: str = "+", meter: str = "+") -> str:
    """Subscription filter for every uplink message of a site / meter (``+`` for all)."""
    return f"{TOPIC_ROOT}/v{SCHEMA_VERSION}/{site}/{meter}/up/#"


def downlink_filter(site: str, meter: str) -> str:
    """Subscription filter a meter uses for its downlink."""
    assert valid_id(site) and valid_id(meter)
    return f"{TOPIC_ROOT}/v{SCHEMA_VERSION}/{site}/{meter}/down/#"


def shared_uplink_filter(group: str, site: str = "+") -> str:
    """MQTT 5 shared subscription: each uplink message of ``site`` (all by default) goes to exactly one member
    of ``group``."""
    assert valid_id(group), f"bad group name {group!r}"
    return f"$share/{group}/{uplink_filter(site)}"


# --- messages -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """Register values at one instant; ``bands_wh`` is sharp, peak, flat, valley (the meter's TOU split)."""

    meter: str
    reading_id: str
    at: datetime
    total_wh: int
    bands_wh: tuple[int, int, int, int] | None = None
    instant: Mapping[str, int] = field(default_factory=dict)
    remaining_micros: int | None = None
    purchase_count: int | None = None
    relay: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    meter: str
    event_id: str
    at: datetime
    type: str
    count: int | None = None
    """The meter's own counter for this event type, when it keeps one."""
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Trip:
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Recharge:
    amount_micros: int
    purchase_count: int
    """Must be the meter's last purchase count + 1; a repeat is acknowledged, never credited twice."""


@dataclass(frozen=True, slots=True)
class SetAlarm:
    alarm_1_micros: int
    alarm_2_micros: int


@dataclass(frozen=True, slots=True)
class SetPrice:
    prices_micros_per_kwh: Mapping[str, int]
    """Band -> price; 1 to 4 of ``BANDS``."""


@dataclass(frozen=True, slots=True)
class SetPowerLimit:
    power_limit_w: int
    """0 removes the limit."""


@dataclass(frozen=True, slots=True)
class Read:
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TimeSync:
    at: datetime


CommandParams = Trip | Close | Recharge | SetAlarm | SetPrice | SetPowerLimit | Read | TimeSync
_PARAMS_KIND: dict[type, str] = {
    Trip: "trip",
    Close: "close",
    Recharge: "recharge",
    SetAlarm: "set_alarm",
    SetPrice: "set_price",
    SetPowerLimit: "set_power_limit",
    Read: "read",
    TimeSync: "time_sync",
}


@dataclass(frozen=True, slots=True)
class Command:
    """A downlink command. The meter ignores it after ``valid_until`` and acks it by ``command_id``."""

    command_id: str
    meter: str
    issued_at: datetime
    valid_until: datetime
    params: CommandParams

    @property
    def kind(self) -> str:
        return _PARAMS_KIND[type(self.params)]

    def expired(self, now: datetime) -> bool:
        return now > self.valid_until


@dataclass(frozen=True, slots=True)
class Ack:
    command_id: str
    meter: str
    at: datetime
    result: str
    reason: str | None = None
    """Required when ``result`` is ``error``; ``already_applied`` for a repeated recharge (result ok)."""
    remaining_micros: int | None = None
    purchase_count: int | None = None


@dataclass(frozen=True, slots=True)
class Status:
    meter: str
    state: str
    at: datetime | None = None
    """Absent in a last will, which the broker publishes long after it was written."""
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RawFrame:
    """Transparent mode: one DL/T 645 frame, as bytes."""

    meter: str
    frame: bytes
    at: datetime | None = None
    correlation_id: str | None = None


Message = Reading | Event | Command | Ack | Status | RawFrame
_MESSAGE_KIND: dict[type, Kind] = {
    Reading: Kind.READING,
    Event: Kind.EVENT,
    Command: Kind.COMMAND,
    Ack: Kind.ACK,
    Status: Kind.STATUS,
    RawFrame: Kind.RAW,
}


def kind_of(message: Message) -> Kind:
    return _MESSAGE_KIND[type(message)]


def message_topic(site: str, message: Message, direction: Direction | None = None) -> str:
    """Where ``message`` is published. Raw frames go both ways, so they need ``direction``."""
    kind = kind_of(message)
    if direction is None:
        assert kind is not Kind.RAW, "a raw frame needs a direction"
        direction = Direction.DOWN if kind is Kind.COMMAND else Direction.UP
    return topic(site, message.meter, direction, kind)


# --- encoding -------------------------------------------------------------------------------------------


def _time(value: datetime) -> str:
    assert value.utcoffset() is not None, "timestamps must carry an offset"
    return value.isoformat()


def _drop_none(obj: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in obj.items() if value is not None}


def _reading_json(m: Reading) -> dict[str, object]:
    bands = dict(zip(BANDS, m.bands_wh, strict=True)) if m.bands_wh is not None else None
    instant = {name: m.instant[name] for name in INSTANT_FIELDS if name in m.instant} or None
    return {
        "meter": m.meter,
        "reading_id": m.reading_id,
        "at": _time(m.at),
        "total_wh": m.total_wh,
        "bands_wh": bands,
        "instant": instant,
        "remaining_micros": m.remaining_micros,
        "purchase_count": m.purchase_count,
        "relay": m.relay,
    }


def _params_json(params: CommandParams) -> dict[str, object]:
    if isinstance(params, TimeSync):
        return {"at": _time(params.at)}
    if isinstance(params, Read):
        return {"items": list(params.items)}
    if isinstance(params, SetPrice):
        return {
            "prices_micros_per_kwh": {
                b: params.prices_micros_per_kwh[b] for b in BANDS if b in params.prices_micros_per_kwh
            }
        }
    return _drop_none({name: getattr(params, name) for name in params.__dataclass_fields__})


def _command_json(m: Command) -> dict[str, object]:
    return {
        "command_id": m.command_id,
        "meter": m.meter,
        "kind": m.kind,
        "issued_at": _time(m.issued_at),
        "valid_until": _time(m.valid_until),
        "params": _params_json(m.params),
    }


def to_json(message: Message) -> dict[str, object]:
    """The JSON object of a message (``v`` first, absent optional fields left out)."""
    body: dict[str, object]
    if isinstance(message, Reading):
        body = _reading_json(message)
    elif isinstance(message, Command):
        body = _command_json(message)
    elif isinstance(message, RawFrame):
        body = {
            "meter": message.meter,
            "frame_hex": message.frame.hex().upper(),
            "at": _time(message.at) if message.at else None,
            "correlation_id": message.correlation_id,
        }
    else:
        body = {name: getattr(message, name) for name in message.__dataclass_fields__}
        body = {k: _time(v) if isinstance(v, datetime) else v for k, v in body.items()}
    return {"v": SCHEMA_VERSION, **_drop_none(body)}


def encode(message: Message) -> bytes:
    """The payload bytes of a message (compact UTF-8 JSON).

    The message is checked against the schema on the way out: emitting a payload our own decoder would refuse
    is a programmer error.
    """
    payload = json.dumps(to_json(message), ensure_ascii=False, separators=(",", ":")).encode()
    checked = decode(kind_of(message), payload)
    assert not isinstance(checked, SchemaError), f"refusing to encode an invalid {kind_of(message)}: {checked}"
    return payload


# --- decoding -------------------------------------------------------------------------------------------


class _InvalidError(Exception):
    """Internal: carries a SchemaError out of nested validation; never leaves this module."""

    def __init__(self, error: SchemaError) -> None:
        super().__init__(str(error))
        self.error = error


def _fail(name: str, message: str) -> NoReturn:
    raise _InvalidError(SchemaError(name, message))


class _Object:
    """A JSON object being validated; field names are reported with their path (``params.amount_micros``)."""

    def __init__(self, raw: object, path: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            _fail(path or "payload", "expected a JSON object")
        self.raw: dict[str, object] = raw
        self.path = path
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            _fail(self.name(unknown[0]), f"unknown field (schema v{SCHEMA_VERSION})")

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def need(self, key: str) -> object:
        if key not in self.raw or self.raw[key] is None:
            _fail(self.name(key), "required")
        return self.raw[key]

    def integer(self, key: str, low: int = -MAX_ABS_INTEGER, high: int = MAX_ABS_INTEGER) -> int:
        value = self.need(key)
        if isinstance(value, float):
            _fail(self.name(key), "floats are not accepted; write an integer or a string of digits")
        if isinstance(value, str) and _INT_TEXT_RE.match(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(self.name(key), f"expected an integer, got {_show(value)}")
        if not low <= value <= high:
            _fail(self.name(key), f"{value} is outside {low}..{high}")
        return value

    def optional_integer(self, key: str, low: int = -MAX_ABS_INTEGER, high: int = MAX_ABS_INTEGER) -> int | None:
        return self.integer(key, low, high) if self.has(key) else None

    def text(self, key: str, limit: int = MAX_TEXT_LENGTH) -> str:
        value = self.need(key)
        if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
            _fail(self.name(key), f"expected printable text of 1..{limit} characters")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def ident(self, key: str) -> str:
        value = self.need(key)
        if not valid_id(value):  # type: ignore[arg-type]
            _fail(self.name(key), "expected an id of 1-64 characters A-Z a-z 0-9 _ . - (starting alphanumeric)")
        return value  # type: ignore[return-value]

    def optional_ident(self, key: str) -> str | None:
        return self.ident(key) if self.has(key) else None

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.need(key)
        if not isinstance(value, str) or value not in choices:
            _fail(self.name(key), f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    def optional_choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        return self.choice(key, choices) if self.has(key) else None

    def timestamp(self, key: str) -> datetime:
        value = self.need(key)
        if not isinstance(value, str) or len(value) > 40:
            _fail(self.name(key), "expected an ISO 8601 timestamp with offset, e.g. 2026-03-01T08:00:00+08:00")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            _fail(self.name(key), f"{value!r} is not an ISO 8601 timestamp")
        if parsed.utcoffset() is None:
            _fail(self.name(key), f"{value!r} has no UTC offset; add one, e.g. +08:00")
        return parsed

    def optional_timestamp(self, key: str) -> datetime | None:
        return self.timestamp(key) if self.has(key) else None

    def child(self, key: str, allowed: tuple[str, ...]) -> _Object:
        return _Object(self.need(key), self.name(key), allowed)


def _show(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _reading(o: _Object) -> Reading:
    bands = None
    if o.has("bands_wh"):
        b = o.child("bands_wh", BANDS)
        sharp, peak, flat, valley = (b.integer(band, 0) for band in BANDS)
        bands = (sharp, peak, flat, valley)
    instant: dict[str, int] = {}
    if o.has("instant"):
        i = o.child("instant", tuple(INSTANT_FIELDS))
        instant = {name: i.integer(name, *INSTANT_FIELDS[name]) for name in INSTANT_FIELDS if i.has(name)}
    return Reading(
        o.ident("meter"),
        o.ident("reading_id"),
        o.timestamp("at"),
        o.integer("total_wh", 0),
        bands,
        instant,
        o.optional_integer("remaining_micros"),
        o.optional_integer("purchase_count", 0),
        o.optional_choice("relay", RELAY_STATES),
    )


def _event(o: _Object) -> Event:
    return Event(
        o.ident("meter"),
        o.ident("event_id"),
        o.timestamp("at"),
        o.choice("type", EVENT_TYPES),
        o.optional_integer("count", 0),
        o.optional_text("detail"),
    )


def _set_alarm(p: _Object) -> SetAlarm:
    first, second = p.integer("alarm_1_micros", 0), p.integer("alarm_2_micros", 0)
    if second > first:
        _fail(p.name("alarm_2_micros"), "must not exceed alarm_1_micros (alarm 1 warns first)")
    return SetAlarm(first, second)


def _set_price(p: _Object) -> SetPrice:
    prices = p.child("prices_micros_per_kwh", BANDS)
    if not any(prices.has(band) for band in BANDS):
        _fail(prices.path, "needs at least one band price")
    return SetPrice({band: prices.integer(band, 0, 10**9) for band in BANDS if prices.has(band)})


def _read(p: _Object) -> Read:
    items = p.need("items")
    if not isinstance(items, list) or not 1 <= len(items) <= len(READ_ITEMS):
        _fail(p.name("items"), f"expected a list of 1..{len(READ_ITEMS)} of {', '.join(READ_ITEMS)}")
    for item in items:
        if item not in READ_ITEMS:
            _fail(p.name("items"), f"{_show(item)} is not one of {', '.join(READ_ITEMS)}")
    if len(set(items)) != len(items):
        _fail(p.name("items"), "lists an item twice")
    return Read(tuple(items))


def _params(kind: str, o: _Object) -> CommandParams:
    fields = {
        "trip": ("reason",),
        "close": ("reason",),
        "recharge": ("amount_micros", "purchase_count"),
        "set_alarm": ("alarm_1_micros", "alarm_2_micros"),
        "set_price": ("prices_micros_per_kwh",),
        "set_power_limit": ("power_limit_w",),
        "read": ("items",),
        "time_sync": ("at",),
    }[kind]
    p = _Object(o.raw.get("params", {}), "params", fields)
    if kind in ("trip", "close"):
        reason = p.optional_text("reason")
        return Trip(reason) if kind == "trip" else Close(reason)
    if kind == "recharge":
        return Recharge(p.integer("amount_micros", 1, 10**12), p.integer("purchase_count", 1, 2**32 - 1))
    if kind == "set_alarm":
        return _set_alarm(p)
    if kind == "set_price":
        return _set_price(p)
    if kind == "set_power_limit":
        return SetPowerLimit(p.integer("power_limit_w", 0, 10**8))
    if kind == "read":
        return _read(p)
    return TimeSync(p.timestamp("at"))


def _command(o: _Object) -> Command:
    command_id, meter = o.ident("command_id"), o.ident("meter")
    kind = o.choice("kind", COMMAND_KINDS)
    issued_at, valid_until = o.timestamp("issued_at"), o.timestamp("valid_until")
    if valid_until < issued_at:
        _fail("valid_until", "is before issued_at")
    return Command(command_id, meter, issued_at, valid_until, _params(kind, o))


def _ack(o: _Object) -> Ack:
    result = o.choice("result", ACK_RESULTS)
    reason = o.optional_text("reason")
    if result == "error" and reason is None:
        _fail("reason", "required when result is error")
    return Ack(
        o.ident("command_id"),
        o.ident("meter"),
        o.timestamp("at"),
        result,
        reason,
        o.optional_integer("remaining_micros"),
        o.optional_integer("purchase_count", 0),
    )


def _status(o: _Object) -> Status:
    return Status(
        o.ident("meter"),
        o.choice("state", STATUS_STATES),
        o.optional_timestamp("at"),
        o.optional_text("reason"),
    )


def _raw(o: _Object) -> RawFrame:
    text = o.need("frame_hex")
    if not isinstance(text, str) or not _HEX_RE.match(text) or len(text) > 2 * MAX_RAW_FRAME_BYTES:
        _fail("frame_hex", f"expected hex digits (pairs, no spaces), at most {MAX_RAW_FRAME_BYTES} bytes")
    return RawFrame(
        o.ident("meter"), bytes.fromhex(text), o.optional_timestamp("at"), o.optional_ident("correlation_id")
    )


_SCHEMAS: dict[Kind, tuple[Callable[[_Object], Message], tuple[str, ...]]] = {
    Kind.READING: (
        _reading,
        (
            "meter",
            "reading_id",
            "at",
            "total_wh",
            "bands_wh",
            "instant",
            "remaining_micros",
            "purchase_count",
            "relay",
        ),
    ),
    Kind.EVENT: (_event, ("meter", "event_id", "at", "type", "count", "detail")),
    Kind.COMMAND: (_command, ("command_id", "meter", "kind", "issued_at", "valid_until", "params")),
    Kind.ACK: (_ack, ("command_id", "meter", "at", "result", "reason", "remaining_micros", "purchase_count")),
    Kind.STATUS: (_status, ("meter", "state", "at", "reason")),
    Kind.RAW: (_raw, ("meter", "frame_hex", "at", "correlation_id")),
}


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        duplicate = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        _fail(duplicate, "appears twice in one object")
    return obj


def _load(payload: bytes) -> object:
    if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_PAYLOAD_BYTES:
        _fail("payload", f"expected at most {MAX_PAYLOAD_BYTES} bytes")
    try:
        return json.loads(bytes(payload).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        _fail("payload", "is not UTF-8")
    except (ValueError, RecursionError) as error:
        _fail("payload", f"is not JSON ({str(error)[:80]})")


def _check_version(raw: object) -> None:
    if not isinstance(raw, dict):
        _fail("payload", "expected a JSON object")
    version = raw.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        _fail("v", f"required: the integer schema version ({SCHEMA_VERSION})")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        _fail("v", f"version {version} is not supported; this build reads version {supported}")


def decode(kind: Kind, payload: bytes) -> Message | SchemaError:
    """The message of ``kind`` in ``payload``, complete, or the first ``SchemaError`` found."""
    parse, allowed = _SCHEMAS[kind]
    try:
        raw = _load(payload)
        _check_version(raw)
        return parse(_Object(raw, "", ("v", *allowed)))
    except _InvalidError as invalid:
        return invalid.error


def decode_for_topic(topic_text: str, payload: bytes) -> tuple[Topic, Message] | SchemaError:
    """Parse the topic, decode the payload for its kind, and check both name the same meter."""
    parsed = parse_topic(topic_text)
    if isinstance(parsed, SchemaError):
        return parsed
    message = decode(parsed.kind, payload)
    if isinstance(message, SchemaError):
        return message
    if message.meter != parsed.meter:
        return SchemaError("meter", f"payload names meter {message.meter!r} but the topic names {parsed.meter!r}")
    return parsed, message
