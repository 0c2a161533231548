"""The DL/T 645 stream decoder: split reads, several frames per read, noise, false starts, a bounded buffer,
and one Hypothesis fuzz test (100,000 examples under CI=true)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powergate.protocols.dlt645 import (
    DecodeError,
    Frame,
    Function,
    StreamDecoder,
    encode_data,
    encode_frame,
    read_reply,
    read_request,
    scan,
)
from powergate.protocols.dlt645.stream import frames_only, match_dlt645

METER = "000000000001"
REQUEST = read_request(METER, 0x00010000)
REPLY = read_reply(METER, 0x00900200, encode_data(0x00900200, 123_450_000))
WIRE = encode_frame(REQUEST) + encode_frame(REPLY, 2)


def test_a_frame_split_at_every_point_comes_out_once() -> None:
    for split in range(len(WIRE) + 1):
        decoder = StreamDecoder()
        found = decoder.feed(WIRE[:split]) + decoder.feed(WIRE[split:])
        assert found == [REQUEST, REPLY], split
        assert decoder.buffered_bytes == 0 and decoder.consumed_bytes == len(WIRE)


def test_a_frame_fed_one_byte_at_a_time_comes_out_when_its_last_byte_arrives() -> None:
    decoder = StreamDecoder()
    outputs = [decoder.feed(bytes([byte])) for byte in encode_frame(REQUEST)]
    assert outputs[-1] == [REQUEST] and all(output == [] for output in outputs[:-1])


def test_several_frames_in_one_read_come_out_in_order() -> None:
    assert StreamDecoder().feed(WIRE * 3) == [REQUEST, REPLY] * 3


def test_noise_before_and_between_frames_is_reported_with_its_length() -> None:
    decoder = StreamDecoder()
    found = decoder.feed(b"\x00\x11garbage" + encode_frame(REQUEST) + b"\x16\x16" + encode_frame(REPLY))
    assert [type(item) for item in found] == [DecodeError, Frame, DecodeError, Frame]
    noise = found[0]
    assert isinstance(noise, DecodeError) and noise.field == "stream" and noise.skipped_bytes == 9
    assert decoder.skipped_bytes == 11


def test_a_false_start_costs_one_byte_and_says_why() -> None:
    false_start = bytes.fromhex("68 01 00 00 00 00 00 68 11 04 33 33 33 33 00 16")  # wrong checksum
    found = StreamDecoder().feed(false_start + encode_frame(REQUEST))
    assert found[-1] == REQUEST
    noise = found[0]
    assert isinstance(noise, DecodeError) and "checksum" in noise.message


def test_an_incomplete_false_start_waits_for_bytes_and_flush_gives_it_up() -> None:
    # 68 A0..A5 68 11 C8: a header announcing 200 data bytes, then a real frame inside those 200
    false_start = bytes.fromhex("68 01 00 00 00 00 00 68 11 C8")
    decoder = StreamDecoder()
    assert frames_only(decoder.feed(false_start + encode_frame(REQUEST))) == []
    assert frames_only(decoder.flush()) == [REQUEST]
    assert decoder.buffered_bytes == 0


def test_more_than_four_wake_up_bytes_still_find_the_frame() -> None:
    found = StreamDecoder().feed(b"\xfe" * 9 + encode_frame(REQUEST, 0))
    assert frames_only(found) == [REQUEST]


def test_scan_reports_the_bytes_it_consumed_pymodbus_style() -> None:
    wire = encode_frame(REQUEST)
    assert scan(wire + wire[:7], [match_dlt645]) == (len(wire), [REQUEST])
    consumed, found = scan(wire[:7], [match_dlt645], final=True)
    assert consumed == 7 and isinstance(found[0], DecodeError)


def test_the_buffer_never_grows_past_its_limit() -> None:
    decoder = StreamDecoder(max_buffer_bytes=512)
    header_only = bytes.fromhex("68 01 00 00 00 00 00 68 11 C8")  # waits for 212 bytes that never come right
    for _ in range(50):
        decoder.feed(header_only + bytes(range(256)) * 3)
        assert decoder.buffered_bytes < 512
    found = decoder.feed(b"\x00" * 300 + encode_frame(REQUEST))
    assert frames_only(found) == [REQUEST]


def test_a_buffer_smaller_than_a_frame_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        StreamDecoder(max_buffer_bytes=100)


small_frames = st.builds(
    lambda address, function, data, reply: Frame(f"{address:012d}", function, data, reply),
    st.integers(0, 999_999_999_999),
    st.sampled_from(Function),
    st.binary(max_size=12),
    st.booleans(),
)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@settings(
    max_examples=100_000 if os.environ.get("CI") == "true" else 2_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    frames=st.lists(st.tuples(st.binary(max_size=12), small_frames, st.integers(0, 4)), max_size=4),
    tail=st.binary(max_size=12),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_fuzz_noise_and_arbitrary_reads_give_back_exactly_the_frames(
    frames: list[tuple[bytes, Frame, int]], tail: bytes, cuts: list[int]
) -> None:
    """Noise, frames and noise again, cut into arbitrary reads: only our values come out, and the frames are
    exactly the ones sent (noise that happens to contain a frame of its own is not a counter-example)."""
    stream = b"".join(noise + encode_frame(frame, preamble) for noise, frame, preamble in frames) + tail
    decoder = StreamDecoder()
    found: list[object] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        found += decoder.feed(stream[start : max(start, cut)])
        start = max(start, cut)
    found += decoder.feed(stream[start:]) + decoder.flush()
    assert all(isinstance(item, Frame | DecodeError) for item in found)
    noise_frames = [frames_only(scan(noise, [match_dlt645], final=True)[1]) for noise, _, _ in frames]
    if not any(noise_frames) and not frames_only(scan(tail, [match_dlt645], final=True)[1]):
        assert frames_only(found) == [frame for _, frame, _ in frames]
    assert decoder.consumed_bytes == len(stream) and decoder.buffered_bytes == 0
