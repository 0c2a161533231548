"""The MQTT topic layout and JSON schema: golden payloads, refusals naming the field, round trips, fuzzing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergate.protocols import mqtt
from powergate.protocols.mqtt import (
    BANDS,
    COMMAND_KINDS,
    EVENT_TYPES,
    INSTANT_FIELDS,
    READ_ITEMS,
    Ack,
    Close,
    Command,
    Direction,
    Event,
    Kind,
    RawFrame,
    Read,
    Reading,
    Recharge,
    SchemaError,
    SetAlarm,
    SetPowerLimit,
    SetPrice,
    Status,
    TimeSync,
    Topic,
    Trip,
    decode,
    decode_for_topic,
    encode,
    message_topic,
    parse_topic,
    shared_uplink_filter,
    to_json,
)

CST = timezone(timedelta(hours=8))
AT = datetime(2026, 3, 1, 8, 0, tzinfo=CST)
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocols" / "mqtt.md"

# --- topics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pg/v1/site-01/000000000001/up/reading",
            Topic("site-01", "000000000001", Direction.UP, Kind.READING),
        ),
        ("pg/v1/s/m/up/status", Topic("s", "m", Direction.UP, Kind.STATUS)),
        ("pg/v1/s/m/up/raw", Topic("s", "m", Direction.UP, Kind.RAW)),
        ("pg/v1/s/m/down/cmd", Topic("s", "m", Direction.DOWN, Kind.COMMAND)),
        ("pg/v1/s/m/down/raw", Topic("s", "m", Direction.DOWN, Kind.RAW)),
    ],
)
def test_a_topic_parses_into_site_meter_direction_and_kind_and_prints_back(text: str, expected: Topic) -> None:
    assert parse_topic(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pg/v2/s/m/up/reading", "version 'v2' is not supported"),
        ("pg/v1/s/m/up/cmd", "kind 'cmd' is not one of"),
        ("pg/v1/s/m/down/reading", "kind 'reading' is not one of"),
        ("pg/v1/s/m/sideways/reading", "direction 'sideways'"),
        ("pg/v1/s/+/up/reading", "bad site or meter id"),
        ("pg/v1/s/m/up", "is not pg/v<version>"),
        ("other/v1/s/m/up/reading", "is not pg/v<version>"),
    ],
)
def test_a_topic_outside_the_layout_is_a_schema_error(text: str, message: str) -> None:
    error = parse_topic(text)
    assert isinstance(error, SchemaError) and error.field == "topic" and message in error.message


def test_head_end_workers_share_the_uplink_with_an_mqtt5_shared_subscription() -> None:
    assert shared_uplink_filter("headend") == "$share/headend/pg/v1/+/+/up/#"
    assert shared_uplink_filter("headend", "site-1") == "$share/headend/pg/v1/site-1/+/up/#"
    assert mqtt.downlink_filter("s", "m") == "pg/v1/s/m/down/#"


def test_a_message_knows_its_topic() -> None:
    reading = Reading("m1", "r1", AT, 1)
    assert message_topic("s1", reading) == "pg/v1/s1/m1/up/reading"
    command = Command("c1", "m1", AT, AT, Trip())
    assert message_topic("s1", command) == "pg/v1/s1/m1/down/cmd"
    assert message_topic("s1", RawFrame("m1", b"\x68"), Direction.DOWN) == "pg/v1/s1/m1/down/raw"


# --- golden payloads ------------------------------------------------------------------------------------

GOLDEN = [
    (
        Kind.READING,
        '{"v":1,"meter":"000000000001","reading_id":"r-20260301-0800","at":"2026-03-01T08:00:00+08:00",'
        '"total_wh":1234560,"bands_wh":{"sharp":100000,"peak":300000,"flat":500000,"valley":334560},'
        '"instant":{"voltage_dv":2203,"current_ma":5120},"remaining_micros":"-2500000","purchase_count":7,'
        '"relay":"tripped"}',
        Reading("000000000001", "r-20260301-0800", AT, 1_234_560, (100_000, 300_000, 500_000, 334_560),
                {"voltage_dv": 2203, "current_ma": 5120}, -2_500_000, 7, "tripped"),
    ),
    (
        Kind.EVENT,
        '{"v":1,"meter":"m1","event_id":"e1","at":"2026-03-01T08:00:00+08:00","type":"cover_open","count":3}',
        Event("m1", "e1", AT, "cover_open", 3),
    ),
    (
        Kind.COMMAND,
        '{"v":1,"command_id":"c1","meter":"m1","kind":"recharge","issued_at":"2026-03-01T08:00:00+08:00",'
        '"valid_until":"2026-03-01T08:05:00+08:00","params":{"amount_micros":100000000,"purchase_count":8}}',
        Command("c1", "m1", AT, AT + timedelta(minutes=5), Recharge(100_000_000, 8)),
    ),
    (
        Kind.COMMAND,
        '{"v":1,"command_id":"c2","meter":"m1","kind":"trip","issued_at":"2026-03-01T00:00:00Z",'
        '"valid_until":"2026-03-01T00:00:00Z"}',
        Command("c2", "m1", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC), Trip()),
    ),
    (
        Kind.ACK,
        '{"v":1,"command_id":"c1","meter":"m1","at":"2026-03-01T08:00:02+08:00","result":"ok",'
        '"reason":"already_applied","purchase_count":8}',
        Ack("c1", "m1", AT + timedelta(seconds=2), "ok", "already_applied", None, 8),
    ),
    (Kind.STATUS, '{"v":1,"meter":"m1","state":"offline"}', Status("m1", "offline")),
    (
        Kind.RAW,
        '{"v":1,"meter":"m1","frame_hex":"fefe6801","correlation_id":"q-1"}',
        RawFrame("m1", bytes.fromhex("FEFE6801"), None, "q-1"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "payload", "expected"), GOLDEN)
def test_a_golden_payload_decodes_to_its_message(kind: Kind, payload: str, expected: mqtt.Message) -> None:
    assert decode(kind, payload.encode()) == expected


def status(**extra: object) -> bytes:
    return json.dumps({"v": 1, "meter": "m", "state": "online", **extra}).encode()


def reading(**extra: object) -> bytes:
    base = {"v": 1, "meter": "m", "reading_id": "r", "at": "2026-03-01T08:00:00Z", "total_wh": 1}
    return json.dumps({**base, **extra}).encode()


def command(kind: str, params: object = None, **extra: object) -> bytes:
    base = {"v": 1, "command_id": "c", "meter": "m", "kind": kind, "issued_at": "2026-03-01T08:00:00Z"}
    body = {**base, "valid_until": "2026-03-01T08:05:00Z", **extra}
    return json.dumps(body if params is None else {**body, "params": params}).encode()


EVENT_FIRE = b'{"v":1,"meter":"m","event_id":"e","at":"2026-03-01T08:00:00Z","type":"fire"}'
ACK_ERROR = b'{"v":1,"command_id":"c","meter":"m","at":"2026-03-01T08:00:00Z","result":"error"}'
BAD_PAYLOADS = [
    (Kind.READING, b"\xff", "payload", "not UTF-8"),
    (Kind.READING, b"[1]", "payload", "expected a JSON object"),
    (Kind.READING, b"{", "payload", "not JSON"),
    (Kind.READING, b"[" * 5000 + b"]" * 5000, "payload", "not JSON"),
    (Kind.READING, b" " * 16_385, "payload", "at most 16384 bytes"),
    (Kind.READING, b'{"v":2}', "v", "version 2 is not supported; this build reads version 1"),
    (Kind.READING, b'{"v":"1"}', "v", "required: the integer schema version"),
    (Kind.READING, b'{"meter":"m"}', "v", "required"),
    (Kind.STATUS, b'{"v":1,"v":1,"meter":"m","state":"online"}', "v", "appears twice"),
    (Kind.STATUS, status(state="asleep"), "state", '"asleep" is not one of online, offline'),
    (Kind.STATUS, status(colour="red"), "colour", "unknown field"),
    (Kind.STATUS, status(meter="a/b"), "meter", "expected an id"),
    (Kind.STATUS, status(at="2026-03-01T08:00:00"), "at", "no UTC offset"),
    (Kind.STATUS, status(at="yesterday"), "at", "not an ISO 8601"),
    (Kind.EVENT, EVENT_FIRE, "type", "is not one of cover_open"),
    (Kind.READING, reading(total_wh=1.0), "total_wh", "floats are not accepted"),
    (Kind.READING, reading(total_wh="1.5"), "total_wh", 'expected an integer, got "1.5"'),
    (Kind.READING, reading(total_wh=-1), "total_wh", "outside 0.."),
    (Kind.READING, reading(bands_wh={"sharp": 1, "peak": 1, "flat": 1}), "bands_wh.valley", "required"),
    (Kind.READING, reading(instant={"power_factor_permille": 1001}), "instant.power_factor_permille",
     "outside"),
    (Kind.READING, reading(total_wh=float("nan")), "total_wh", "floats are not accepted"),
    (Kind.COMMAND, command("recharge", {"amount_micros": 0, "purchase_count": 1}), "params.amount_micros",
     "outside"),
    (Kind.COMMAND, command("recharge", {"amount_micros": 1}), "params.purchase_count", "required"),
    (Kind.COMMAND, command("set_alarm", {"alarm_1_micros": 1, "alarm_2_micros": 2}), "params.alarm_2_micros",
     "must not exceed alarm_1_micros"),
    (Kind.COMMAND, command("set_price", {"prices_micros_per_kwh": {}}), "params.prices_micros_per_kwh",
     "at least one band"),
    (Kind.COMMAND, command("read", {"items": ["energy", "energy"]}), "params.items", "twice"),
    (Kind.COMMAND, command("trip", valid_until="2026-03-01T07:00:00Z"), "valid_until", "before issued_at"),
    (Kind.COMMAND, command("trip", {"amount_micros": 1}), "params.amount_micros", "unknown field"),
    (Kind.ACK, ACK_ERROR, "reason", "required when result is error"),
    (Kind.RAW, b'{"v":1,"meter":"m","frame_hex":"FE FE"}', "frame_hex", "expected hex digits"),
    (Kind.RAW, b'{"v":1,"meter":"m","frame_hex":"' + b"00" * 513 + b'"}', "frame_hex", "at most 512 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "payload", "field", "message"), BAD_PAYLOADS)
def test_a_bad_payload_is_one_schema_error_naming_the_field(
    kind: Kind, payload: bytes, field: str, message: str
) -> None:
    error = decode(kind, payload)
    assert isinstance(error, SchemaError), error
    assert error.field == field and message in error.message, str(error)


def test_a_payload_naming_another_meter_than_its_topic_is_refused() -> None:
    payload = encode(Status("m1", "online"))
    assert decode_for_topic("pg/v1/s/m1/up/status", payload) == (
        Topic("s", "m1", Direction.UP, Kind.STATUS),
        Status("m1", "online"),
    )
    error = decode_for_topic("pg/v1/s/m2/up/status", payload)
    assert isinstance(error, SchemaError) and error.field == "meter"
    assert isinstance(decode_for_topic("pg/v1/s/m2/up/nope", payload), SchemaError)


def test_encoding_an_invalid_message_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError, match="total_wh"):
        encode(Reading("m", "r", AT, -5))
    with pytest.raises(AssertionError, match="offset"):
        encode(Reading("m", "r", datetime(2026, 3, 1), 5))


def test_a_command_expires_after_valid_until() -> None:
    command = Command("c", "m", AT, AT + timedelta(minutes=5), Close())
    assert not command.expired(AT + timedelta(minutes=5))
    assert command.expired(AT + timedelta(minutes=5, seconds=1))
    assert command.kind == "close"


# --- property tests: every message kind round-trips -----------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
times = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=offsets)
texts = st.text(min_size=1, max_size=50).filter(str.isprintable)
amounts = st.integers(-(10**15), 10**15)
counts = st.integers(0, 2**32)
instants = st.dictionaries(st.sampled_from(sorted(INSTANT_FIELDS)), st.integers(0, 1000))

readings = st.builds(
    Reading, ids, ids, times, st.integers(0, 10**15),
    st.none() | st.tuples(*[st.integers(0, 10**12)] * 4), instants,
    st.none() | amounts, st.none() | counts, st.none() | st.sampled_from(mqtt.RELAY_STATES),
)  # fmt: skip
events = st.builds(Event, ids, ids, times, st.sampled_from(EVENT_TYPES), st.none() | counts, st.none() | texts)
params = st.one_of(
    st.builds(Trip, st.none() | texts),
    st.builds(Close, st.none() | texts),
    st.builds(Recharge, st.integers(1, 10**12), st.integers(1, 2**32 - 1)),
    st.integers(0, 10**12).flatmap(lambda a1: st.builds(SetAlarm, st.just(a1), st.integers(0, a1))),
    st.builds(SetPrice, st.dictionaries(st.sampled_from(BANDS), st.integers(0, 10**9), min_size=1)),
    st.builds(SetPowerLimit, st.integers(0, 10**8)),
    st.builds(Read, st.lists(st.sampled_from(READ_ITEMS), min_size=1, unique=True).map(tuple)),
    st.builds(TimeSync, times),
)
commands = st.builds(
    lambda command_id, meter, at, valid_for, p: Command(command_id, meter, at, at + valid_for, p),
    ids, ids, times, st.timedeltas(timedelta(0), timedelta(days=30)), params,
)  # fmt: skip
acks = st.builds(
    lambda c, m, at, ok, reason, remaining, count: Ack(
        c, m, at, "ok" if ok else "error", reason if (reason or ok) else "failed", remaining, count
    ),
    ids, ids, times, st.booleans(), st.none() | texts, st.none() | amounts, st.none() | counts,
)  # fmt: skip
statuses = st.builds(Status, ids, st.sampled_from(mqtt.STATUS_STATES), st.none() | times, st.none() | texts)
raws = st.builds(RawFrame, ids, st.binary(min_size=1, max_size=512), st.none() | times, st.none() | ids)
MESSAGES = {
    Kind.READING: readings,
    Kind.EVENT: events,
    Kind.COMMAND: commands,
    Kind.ACK: acks,
    Kind.STATUS: statuses,
    Kind.RAW: raws,
}


@pytest.mark.parametrize("kind", list(Kind))
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_every_message_kind_round_trips_through_its_json(kind: Kind, data: st.DataObject) -> None:
    message = data.draw(MESSAGES[kind])
    payload = encode(message)
    decoded = decode(kind, payload)
    assert decoded == message
    for original, back in zip(vars_of(message), vars_of(decoded), strict=True):
        if isinstance(original, datetime):
            assert back.utcoffset() == original.utcoffset()  # the offset survives, not just the instant
    json.loads(payload, parse_float=lambda text: pytest.fail(f"a float {text} in {payload!r}"))


def vars_of(message: object) -> list[object]:
    return [getattr(message, name) for name in message.__dataclass_fields__]  # type: ignore[attr-defined]


@given(kind=st.sampled_from(list(Kind)), payload=st.binary(max_size=200))
@settings(max_examples=500)
def test_decoding_random_bytes_gives_a_schema_error_or_a_message(kind: Kind, payload: bytes) -> None:
    assert isinstance(decode(kind, payload), SchemaError | mqtt.Reading | Event | Command | Ack | Status | RawFrame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@given(data=st.data(), kind=st.sampled_from(list(Kind)))
@settings(max_examples=500, deadline=None)
def test_a_valid_payload_with_any_field_replaced_by_any_json_decodes_or_names_an_error(
    data: st.DataObject, kind: Kind
) -> None:
    obj = to_json(data.draw(MESSAGES[kind]))
    key = data.draw(st.sampled_from([*obj, "extra"]))
    target = obj
    if isinstance(obj.get("params"), dict) and data.draw(st.booleans()):
        target = obj["params"]  # type: ignore[assignment]
        key = data.draw(st.sampled_from([*target, "extra"]))
    target[key] = data.draw(json_values)
    result = decode(kind, json.dumps(obj).encode())
    assert isinstance(result, SchemaError | mqtt.Reading | Event | Command | Ack | Status | RawFrame)
    if isinstance(result, SchemaError):
        assert result.field and result.message


# --- the docs -------------------------------------------------------------------------------------------


def test_every_example_in_the_mqtt_docs_decodes_and_is_in_canonical_form() -> None:
    doc = DOC.read_text(encoding="utf-8")
    examples = re.findall(r"<!-- payload: (\S+) -->\s*```json\n(.*?)```", doc, flags=re.S)
    kinds = {Kind(topic.split("/")[-1]) for topic, _ in examples}
    assert kinds == set(Kind), "the docs show an example of every message kind"
    commands = set()
    for topic_suffix, text in examples:
        decoded = decode_for_topic(f"pg/v1/site-01/000000000001/{topic_suffix}", json.dumps(json.loads(text)).encode())
        assert not isinstance(decoded, SchemaError), f"{topic_suffix}: {decoded}"
        assert to_json(decoded[1]) == json.loads(text)
        if isinstance(decoded[1], Command):
            commands.add(decoded[1].kind)
    assert commands == set(COMMAND_KINDS), "the docs show every command kind"
