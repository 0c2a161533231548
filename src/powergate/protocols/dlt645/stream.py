"""Bytes to frames on a byte stream (TCP from a DTU, a serial port): noise, split reads, many frames a read.

``scan`` is the pure core, in the style of pymodbus' framers: given a buffer it returns how many bytes it
consumed and what it found. ``StreamDecoder`` keeps the unconsumed tail between reads. Packet kinds are
pluggable (``Matcher``), so the DTU decoder adds registration and heartbeat packets to the same scan.

Invariants:

- Nothing raises on any input; what is not a frame is reported as one ``DecodeError`` per run of skipped
  bytes (its ``skipped_bytes`` says how many).
- A candidate that fails (bad checksum, bad header) costs one byte: scanning resumes at the next byte, so a
  real frame hidden after a false start is still found.
- The buffer is bounded: it never holds more than ``max_buffer_bytes``; a longer read is scanned in slices.
- ``flush`` (the line went idle, or the connection closed) gives up on an incomplete candidate and rescans
  what follows it, so bytes are never held forever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

from powergate.protocols.dlt645.datatypes import DecodeError
from powergate.protocols.dlt645.frame import (
    MAX_FRAME_BYTES,
    MAX_PREAMBLE,
    PREAMBLE_BYTE,
    START,
    Frame,
    decode_at,
)


class _NeedMore:
    """Sentinel: the bytes so far could start a packet of this kind; wait for more."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()
Match: TypeAlias = "tuple[int, object] | _NeedMore | DecodeError | None"
"""What a matcher says about the bytes at a position: ``(length, packet)``, wait for more, or not mine (with
a reason, or ``None``)."""
Matcher: TypeAlias = Callable[[bytes, int], Match]

NOISE_PREVIEW_BYTES = 16
DEFAULT_MAX_BUFFER_BYTES = 4096


def match_dlt645(buffer: bytes, start: int) -> Match:
    """A DL/T 645 frame at ``start``, with up to four FE wake-up bytes before it."""
    preamble = 0
    while preamble < MAX_PREAMBLE and start + preamble < len(buffer) and buffer[start + preamble] == PREAMBLE_BYTE:
        preamble += 1
    if start + preamble == len(buffer):
        return NEED_MORE if preamble else None
    if buffer[start + preamble] != START:
        return None
    used, frame = decode_at(buffer, start + preamble)
    if frame is None:
        return NEED_MORE
    if isinstance(frame, DecodeError):
        return frame
    return preamble + used, frame


def _noise(buffer: bytes, start: int, end: int, reason: DecodeError | None) -> DecodeError:
    preview = buffer[start : min(end, start + NOISE_PREVIEW_BYTES)].hex(" ").upper()
    more = " ..." if end - start > NOISE_PREVIEW_BYTES else ""
    why = f"; first false start: {reason}" if reason is not None else ""
    message = f"skipped {end - start} bytes that are not a packet: {preview}{more}{why}"
    return DecodeError("stream", message, skipped_bytes=end - start)


def _match_at(buffer: bytes, position: int, matchers: Sequence[Matcher]) -> Match:
    """The first matcher that claims ``position``, else the first reason given for a false start."""
    reason: DecodeError | None = None
    for matcher in matchers:
        outcome = matcher(buffer, position)
        if isinstance(outcome, tuple) or outcome is NEED_MORE:
            return outcome
        if reason is None and isinstance(outcome, DecodeError):
            reason = outcome
    return reason


def scan(buffer: bytes, matchers: Sequence[Matcher], *, final: bool = False) -> tuple[int, list[object]]:
    """Find packets in ``buffer``: ``(bytes consumed, packets and noise reports in order)``.

    Unless ``final``, an incomplete packet at the end stays unconsumed for the next call. With ``final`` the
    bytes are all there will be: an incomplete candidate is noise and the scan goes on after its first byte.
    """
    found: list[object] = []
    position = 0
    noise_start: int | None = None
    reason: DecodeError | None = None
    while position < len(buffer):
        outcome = _match_at(buffer, position, matchers)
        if outcome is NEED_MORE and not final:
            break
        if isinstance(outcome, tuple):
            if noise_start is not None:
                found.append(_noise(buffer, noise_start, position, reason))
                noise_start, reason = None, None
            length, packet = outcome
            assert length > 0
            found.append(packet)
            position += length
            continue
        if noise_start is None:
            noise_start = position
            reason = outcome if isinstance(outcome, DecodeError) else None
        position += 1
    if noise_start is not None:
        found.append(_noise(buffer, noise_start, position, reason))
    return position, found


class StreamDecoder:
    """Feed it reads from a connection; get DL/T 645 frames (and noise reports) out. Not thread-safe."""

    def __init__(
        self,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        matchers: Sequence[Matcher] = (match_dlt645,),
        longest_packet_bytes: int = MAX_FRAME_BYTES + MAX_PREAMBLE,
    ) -> None:
        # A pending candidate is at most one packet long; the buffer must hold it plus at least one new byte.
        assert max_buffer_bytes > longest_packet_bytes, (max_buffer_bytes, longest_packet_bytes)
        self.max_buffer_bytes = max_buffer_bytes
        self.matchers = tuple(matchers)
        self.buffer = b""
        self.consumed_bytes = 0
        self.skipped_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self.buffer)

    def feed(self, data: bytes) -> list[object]:
        """Everything complete in ``data`` plus what was buffered; the incomplete tail stays buffered."""
        found: list[object] = []
        offset = 0
        while offset < len(data):
            room = self.max_buffer_bytes - len(self.buffer)
            self.buffer += data[offset : offset + room]
            offset += room
            found += self._scan(final=False)
        return found

    def flush(self) -> list[object]:
        """The line is idle or closed: decide about every buffered byte now."""
        return self._scan(final=True)

    def _scan(self, *, final: bool) -> list[object]:
        consumed, found = scan(self.buffer, self.matchers, final=final)
        self.buffer = self.buffer[consumed:]
        self.consumed_bytes += consumed
        for item in found:
            if isinstance(item, DecodeError):
                self.skipped_bytes += item.skipped_bytes
        assert len(self.buffer) < self.max_buffer_bytes
        return found


def frames_only(items: Sequence[object]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]
