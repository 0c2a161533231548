"""The list cursor is a codec: what ``encode_cursor`` writes ``decode_cursor`` reads back exactly, and anything
else -- truncated, tampered, of another list, or random text -- is a ``BadCursor`` naming the field, never
another exception (which would be a 500)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.services.queries import MAX_CURSOR_CHARS, BadCursor, decode_cursor, encode_cursor

ids = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
texts = st.text(max_size=64)
moments = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC))


@given(st.lists(st.one_of(ids, texts, moments), min_size=1, max_size=3))
def test_a_cursor_reads_back_exactly_what_was_written(values: list[int | str | dt.datetime]) -> None:
    kinds = [dt.datetime if isinstance(v, dt.datetime) else type(v) for v in values]
    text = encode_cursor(values)
    assert all(c.isalnum() or c in "-_" for c in text), "a cursor is URL-safe"
    assert decode_cursor(text, kinds) == values


@given(st.text(max_size=MAX_CURSOR_CHARS + 10))
def test_any_other_text_is_a_bad_cursor_or_a_valid_key_never_a_crash(text: str) -> None:
    try:
        decoded = decode_cursor(text, [int])
    except BadCursor as error:
        assert str(error).startswith("cursor:")
    else:
        assert isinstance(decoded[0], int)


@given(ids, texts)
def test_a_cursor_of_another_list_is_refused(number: int, name: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor([number]), [str])
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor([name, number]), [dt.datetime, str])
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor([number]), [int, int])
