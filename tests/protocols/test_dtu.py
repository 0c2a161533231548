"""DTU registration and heartbeat packets, mixed with DL/T 645 frames in one TCP byte stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powergate.protocols.dlt645 import DecodeError, Frame, encode_frame, read_request
from powergate.protocols.dtu import (
    DEFAULT_PROFILE,
    DtuProfile,
    DtuStreamDecoder,
    Heartbeat,
    Registration,
    encode_heartbeat,
    encode_registration,
)

REQUEST = read_request("000000000001", 0x00010000)
IMEI = "860000000000001"
HEX_PROFILE = DtuProfile(registration_prefix=b"\xfa\x01", id_length=4, id_encoding="hex", heartbeat=b"\xfb")


def test_the_default_packets_are_documented_bytes() -> None:
    assert encode_registration(IMEI) == b"REG:860000000000001"
    assert encode_heartbeat() == b"HB"
    assert encode_registration("0A0B0C0D", HEX_PROFILE) == bytes.fromhex("FA 01 0A 0B 0C 0D")


def test_registration_then_heartbeats_between_frames_are_told_apart() -> None:
    wire = encode_registration(IMEI) + encode_frame(REQUEST) + b"HB" + b"HB" + encode_frame(REQUEST) + b"HB"
    decoder = DtuStreamDecoder()
    assert decoder.feed(wire) == [Registration(IMEI), REQUEST, Heartbeat(), Heartbeat(), REQUEST, Heartbeat()]
    assert decoder.consumed_bytes == len(wire)


def test_a_registration_split_across_reads_waits_for_its_id() -> None:
    decoder = DtuStreamDecoder()
    assert decoder.feed(b"RE") == []
    assert decoder.feed(b"G:86000") == []
    assert decoder.feed(b"0000000001H") == [Registration(IMEI)]
    assert decoder.feed(b"B") == [Heartbeat()]


def test_a_binary_id_profile_shows_the_id_in_hex() -> None:
    wire = encode_registration("0A0B0C0D", HEX_PROFILE) + b"\xfb" + encode_frame(REQUEST)
    assert DtuStreamDecoder(HEX_PROFILE).feed(wire) == [Registration("0A0B0C0D"), Heartbeat(), REQUEST]


def test_a_registration_with_a_bad_id_is_noise_saying_why() -> None:
    found = DtuStreamDecoder().feed(b"REG:86000\x00\x01\x02000000" + encode_frame(REQUEST))
    assert found[-1] == REQUEST
    noise = found[0]
    assert isinstance(noise, DecodeError) and "dtu_id" in noise.message


def test_flush_gives_up_a_partial_heartbeat() -> None:
    decoder = DtuStreamDecoder()
    assert decoder.feed(b"H") == []
    flushed = decoder.flush()
    assert len(flushed) == 1 and isinstance(flushed[0], DecodeError)


@pytest.mark.parametrize(("dtu_id", "words"), [("86000", "15"), ("86000000000000\u00e9", "characters"), ("zz", "hex")])
def test_ids_that_do_not_fit_the_profile_are_refused(dtu_id: str, words: str) -> None:
    profile = HEX_PROFILE if words == "hex" else DEFAULT_PROFILE
    with pytest.raises(ValueError, match=words):
        encode_registration(dtu_id, profile)


def test_a_profile_that_could_look_like_a_frame_start_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        DtuProfile(heartbeat=b"\x68\x00")


packets = st.one_of(
    st.just(encode_heartbeat()),
    st.text("0123456789", min_size=15, max_size=15).map(encode_registration),
    st.integers(0, 999_999_999_999).map(lambda n: encode_frame(read_request(f"{n:012d}", 0x00900200))),
)


@given(st.lists(packets, max_size=8), st.lists(st.integers(1, 40), max_size=8))
def test_any_mix_cut_anywhere_decodes_to_the_packets_sent(parts: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(parts)
    decoder = DtuStreamDecoder()
    found: list[object] = []
    start = 0
    for size in cuts:
        found += decoder.feed(wire[start : start + size])
        start += size
    found += decoder.feed(wire[start:]) + decoder.flush()
    assert not any(isinstance(item, DecodeError) for item in found)
    assert len(found) == len(parts)
    assert all(isinstance(item, Registration | Heartbeat | Frame) for item in found)
