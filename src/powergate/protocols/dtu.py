"""DTU packets mixed into the TCP byte stream: the registration packet and heartbeats, beside DL/T 645 frames.

A DTU (serial-to-network gateway) dials in over TCP, first sends a *registration packet* carrying its id, then
forwards the RS485 bus's bytes and, when idle, sends *heartbeat packets*. Both are configurable on real DTUs,
so they are a ``DtuProfile``::

    registration:  <registration_prefix> <id: id_length bytes>     default  "REG:" + 15 ASCII digits (IMEI)
    heartbeat:     <heartbeat>                                      default  "HB"

With ``id_encoding="hex"`` the id is ``id_length`` raw bytes shown as upper-case hex (a binary id).

Invariants: a profile's packets never start with 68 or FE, so they cannot be confused with the start of a
DL/T 645 frame; decoding never raises; the decoder reports bytes consumed and keeps a bounded buffer (it is
the DL/T 645 ``StreamDecoder`` with two more matchers).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

from powergate.protocols.dlt645.datatypes import DecodeError
from powergate.protocols.dlt645.frame import MAX_FRAME_BYTES, MAX_PREAMBLE, PREAMBLE_BYTE, START
from powergate.protocols.dlt645.stream import (
    DEFAULT_MAX_BUFFER_BYTES,
    NEED_MORE,
    Match,
    Matcher,
    StreamDecoder,
    match_dlt645,
)

MAX_ID_BYTES = 64
MAX_MARKER_BYTES = 32
_ID_CHARACTERS = frozenset((string.ascii_letters + string.digits + "-_.:").encode())


@dataclass(frozen=True, slots=True)
class DtuProfile:
    """How one DTU model announces itself and keeps the connection alive."""

    registration_prefix: bytes = b"REG:"
    id_length: int = 15
    id_encoding: Literal["ascii", "hex"] = "ascii"
    heartbeat: bytes = b"HB"

    def __post_init__(self) -> None:
        for marker in (self.registration_prefix, self.heartbeat):
            assert 0 < len(marker) <= MAX_MARKER_BYTES, marker
            assert marker[0] not in (START, PREAMBLE_BYTE), f"{marker!r} would look like a DL/T 645 frame start"
        assert not self.heartbeat.startswith(self.registration_prefix), "heartbeat and registration must differ"
        assert not self.registration_prefix.startswith(self.heartbeat), "heartbeat and registration must differ"
        assert 0 < self.id_length <= MAX_ID_BYTES, self.id_length

    @property
    def longest_packet_bytes(self) -> int:
        return max(len(self.registration_prefix) + self.id_length, len(self.heartbeat))


DEFAULT_PROFILE = DtuProfile()


@dataclass(frozen=True, slots=True)
class Registration:
    dtu_id: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


def encode_registration(dtu_id: str, profile: DtuProfile = DEFAULT_PROFILE) -> bytes:
    """The registration packet for ``dtu_id``; ``ValueError`` naming the field if the id does not fit."""
    if profile.id_encoding == "hex":
        try:
            raw = bytes.fromhex(dtu_id)
        except ValueError:
            raise ValueError(f"dtu_id: {dtu_id!r} is not hex") from None
    else:
        raw = dtu_id.encode("ascii", errors="replace")
        if not set(raw) <= _ID_CHARACTERS:
            raise ValueError(f"dtu_id: {dtu_id!r} has characters other than letters, digits and -_.:")
    if len(raw) != profile.id_length:
        raise ValueError(f"dtu_id: {dtu_id!r} is {len(raw)} bytes, the profile expects {profile.id_length}")
    return profile.registration_prefix + raw


def encode_heartbeat(profile: DtuProfile = DEFAULT_PROFILE) -> bytes:
    return profile.heartbeat


def _match_marker(buffer: bytes, start: int, marker: bytes) -> bool | None:
    """True if ``marker`` is at ``start``; ``None`` if the buffer ends inside what could still be it."""
    window = buffer[start : start + len(marker)]
    if window == marker:
        return True
    return None if marker.startswith(window) else False


def match_registration(profile: DtuProfile) -> Matcher:
    def matcher(buffer: bytes, start: int) -> Match:
        found = _match_marker(buffer, start, profile.registration_prefix)
        if found is None:
            return NEED_MORE
        if not found:
            return None
        total = len(profile.registration_prefix) + profile.id_length
        if len(buffer) - start < total:
            return NEED_MORE
        raw = buffer[start + len(profile.registration_prefix) : start + total]
        if profile.id_encoding == "hex":
            return total, Registration(raw.hex().upper())
        if not set(raw) <= _ID_CHARACTERS:
            return DecodeError("dtu_id", f"registration id {raw!r} has bytes other than letters and digits")
        return total, Registration(raw.decode("ascii"))

    return matcher


def match_heartbeat(profile: DtuProfile) -> Matcher:
    def matcher(buffer: bytes, start: int) -> Match:
        found = _match_marker(buffer, start, profile.heartbeat)
        if found is None:
            return NEED_MORE
        return (len(profile.heartbeat), Heartbeat()) if found else None

    return matcher


class DtuStreamDecoder(StreamDecoder):
    """A DTU connection's bytes in, ``Registration`` / ``Heartbeat`` / ``Frame`` / ``DecodeError`` out."""

    def __init__(self, profile: DtuProfile = DEFAULT_PROFILE, max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES):
        longest = max(profile.longest_packet_bytes, MAX_FRAME_BYTES + MAX_PREAMBLE)
        matchers = (match_registration(profile), match_heartbeat(profile), match_dlt645)
        super().__init__(max_buffer_bytes, matchers, longest)
        self.profile = profile
