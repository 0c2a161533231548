"""The ingest queue's payload: readings survive the trip through JSON text exactly; a bad payload is named."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from powergate.domain.rating import Reading, ReadingKind
from powergate.services.ingest import MAX_BATCH
from powergate.services.ingest_queue import BadBatch, decode, encode
from powergate.store.tables_ingest_queue import MAX_BATCH_READINGS

AT = dt.datetime(2026, 12, 5, 1, 15, 0, 123456, tzinfo=dt.UTC)


def test_readings_come_back_equal_from_their_payload() -> None:
    batch = [
        Reading("M-1@1", "M-1", AT, 12_345_678),
        Reading("M-2@1", "M-2", AT, 0, (1, 2, 3, 4), ReadingKind.FINAL),
        Reading("水-3@1", "水-3", AT + dt.timedelta(seconds=1), 999_999_990, None, ReadingKind.INITIAL),
    ]
    payload = encode(batch)
    assert decode(payload) == batch
    assert json.loads(payload)["readings"][1] == ["M-2@1", "M-2", "2026-12-05T01:15:00.123456+00:00", 0,
                                                   [1, 2, 3, 4], "final"]  # fmt: skip


def test_a_time_in_another_zone_is_the_same_instant_in_utc() -> None:
    shanghai = AT.astimezone(dt.timezone(dt.timedelta(hours=8)))
    (reading,) = decode(encode([Reading("r", "m", shanghai, 1)]))
    assert reading.at == AT and reading.at.tzinfo is dt.UTC


def row_payload(row: object) -> str:
    return json.dumps({"format": 1, "readings": [row]})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{", "payload is not JSON"),
        ('{"format": 2, "readings": []}', "not an ingest batch of format 1"),
        ('{"format": 1, "readings": []}', "must be a list of 1..20000 readings"),
        (row_payload(["r", "m", "2026-12-05T01:00:00+00:00", 1, None]), "reading 0: expected [id, meter id"),
        (row_payload(["", "m", "2026-12-05T01:00:00+00:00", 1, None, "regular"]), "reading 0: id must be"),
        (row_payload(["r", 7, "2026-12-05T01:00:00+00:00", 1, None, "regular"]), "reading 'r': meter id must"),
        (row_payload(["r", "m", "2026-12-05T01:00:00", 1, None, "regular"]), "with a UTC offset, got '2026"),
        (row_payload(["r", "m", "yesterday", 1, None, "regular"]), "time must be ISO 8601"),
        (row_payload(["r", "m", "2026-12-05T01:00:00Z", 1.5, None, "regular"]), "total Wh must be a whole number"),
        (row_payload(["r", "m", "2026-12-05T01:00:00Z", True, None, "regular"]), "total Wh must be a whole number"),
        (row_payload(["r", "m", "2026-12-05T01:00:00Z", -1, None, "regular"]), "total Wh must be a whole number"),
        (row_payload(["r", "m", "2026-12-05T01:00:00Z", 1, [1, 2, 3], "regular"]), "bands must be null or four"),
        (row_payload(["r", "m", "2026-12-05T01:00:00Z", 1, None, "bogus"]), "kind must be one of regular"),
    ],
)
def test_a_bad_payload_is_refused_naming_the_reading_and_field(payload: str, message: str) -> None:
    with pytest.raises(BadBatch) as raised:
        decode(payload)
    assert message in str(raised.value)


def test_the_store_bounds_a_batch_as_ingest_does() -> None:
    assert MAX_BATCH_READINGS == MAX_BATCH


def test_a_reading_without_a_utc_offset_is_refused_before_it_is_queued() -> None:
    with pytest.raises(ValueError, match="reading 'r': time has no UTC offset"):
        encode([Reading("r", "m", AT.replace(tzinfo=None), 1)])
