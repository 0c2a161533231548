"""The TCP server DTUs dial into, and one session per DTU that carries DL/T 645 requests over its RS485 bus.

A DTU (serial-to-network gateway) connects, sends its registration packet (its id), then forwards the bus's
bytes and, when idle, heartbeats (``protocols.dtu``). ``DtuServer`` accepts those connections; ``DtuSession``
is one registered DTU: ``request(frame)`` writes a request and waits for the matching reply.

Invariants:
- one session per DTU id: a DTU that reconnects replaces its stale session; the old one is closed and every
  request waiting on it fails as OFFLINE (never answered from the wrong connection);
- RS485 is half-duplex, so ONE request is in flight per DTU; the others wait in FIFO order, at most
  ``max_waiting`` of them (beyond that BUSY, at once: backpressure instead of an unbounded pile);
- every request has a timeout; a reply matches only if it is a reply with the request's function, from the
  request's address (any address for an AA wildcard) and, for a read, with the request's DI; anything else
  (a late reply to a timed-out request, noise, heartbeats) is counted and dropped;
- bytes that are not packets never raise: ``DtuStreamDecoder`` reports them and scanning goes on; the decoder
  is flushed when a request times out, so a false frame start cannot hold back later replies;
- a DTU silent for ``heartbeat_timeout_s`` (no heartbeat, no reply, no bytes at all) is disconnected.

Per DTU the head-end keeps a stream reader / writer pair, a decoder with a bounded buffer and a few counters:
no task or object per meter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from powergate.headend.model import FailureKind, LinkError
from powergate.protocols.dlt645 import (
    BROADCAST_ADDRESS,
    DecodeError,
    Frame,
    Function,
    encode_frame,
)
from powergate.protocols.dtu import DEFAULT_PROFILE, DtuProfile, DtuStreamDecoder, Heartbeat, Registration

READ_CHUNK_BYTES = 4096
DEFAULT_REQUEST_TIMEOUT_S = 2.0
DEFAULT_MAX_WAITING = 256
DEFAULT_HEARTBEAT_TIMEOUT_S = 300.0
DEFAULT_REGISTRATION_TIMEOUT_S = 30.0
DEFAULT_MAX_SESSIONS = 20_000
MAX_PRE_REGISTRATION_BYTES = 4096
"""Bytes a connection may send before its registration packet; more is not a DTU we know."""
LISTEN_BACKLOG = 4096
"""Thousands of DTUs redial together after a head-end restart."""

SessionListener = Callable[[str, bool], None]
"""Called with (DTU id, online) when a session starts or ends."""


@dataclass(slots=True)
class DtuStats:
    """Counters over every session of one server (the simulator and the benchmark read them)."""

    connections: int = 0
    registrations: int = 0
    replaced: int = 0
    refused: int = 0
    heartbeats: int = 0
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    busy: int = 0
    unmatched: int = 0
    noise_bytes: int = 0
    silent_closed: int = 0


def reply_matches(request: Frame, reply: Frame) -> bool:
    """Whether ``reply`` answers ``request`` (see the module invariants)."""
    if not reply.reply or reply.function is not request.function:
        return False
    if reply.address != request.address and "AA" not in request.address:
        return False
    if request.function in (Function.READ, Function.READ_FOLLOW_UP) and not reply.error:
        return reply.data[:4] == request.data[:4]
    return True


class DtuSession:
    """One registered DTU connection: serialised requests, reply matching, liveness."""

    __slots__ = (
        "_lock",
        "_pending",
        "_waiting",
        "closed",
        "connected_at",
        "decoder",
        "dtu_id",
        "last_seen",
        "max_waiting",
        "reason",
        "request_timeout_s",
        "server",
        "writer",
    )

    def __init__(
        self,
        dtu_id: str,
        writer: asyncio.StreamWriter,
        decoder: DtuStreamDecoder,
        server: DtuServer,
    ) -> None:
        self.dtu_id = dtu_id
        self.writer = writer
        self.decoder = decoder
        self.server = server
        self.request_timeout_s = server.request_timeout_s
        self.max_waiting = server.max_waiting
        self.connected_at = server.clock()
        self.last_seen = self.connected_at
        self.closed = False
        self.reason = ""
        self._lock = asyncio.Lock()
        self._pending: tuple[Frame, asyncio.Future[Frame | LinkError]] | None = None
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Requests queued behind the one in flight."""
        return self._waiting

    async def request(self, frame: Frame, timeout_s: float | None = None) -> Frame | LinkError:
        """Send ``frame`` when the bus is free; the matching reply, or why there is none."""
        assert not frame.reply and frame.address != BROADCAST_ADDRESS, frame
        if self.closed:
            return self._offline()
        if self._waiting >= self.max_waiting:
            self.server.stats.busy += 1
            return LinkError(FailureKind.BUSY, f"DTU {self.dtu_id}: {self._waiting} requests already waiting")
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            return await self._exchange(frame, timeout_s or self.request_timeout_s)
        finally:
            self._lock.release()

    async def broadcast(self, frame: Frame) -> LinkError | None:
        """Send a frame nobody answers (08H broadcast time); it still waits for the bus to be free."""
        assert not frame.reply
        if self.closed:
            return self._offline()
        async with self._lock:
            return await self._write(encode_frame(frame))

    async def _exchange(self, frame: Frame, timeout_s: float) -> Frame | LinkError:
        if self.closed:
            return self._offline()
        future: asyncio.Future[Frame | LinkError] = asyncio.get_running_loop().create_future()
        self._pending = (frame, future)
        self.server.stats.requests += 1
        try:
            async with asyncio.timeout(timeout_s):
                failed = await self._write(encode_frame(frame))
                return failed if failed is not None else await future
        except TimeoutError:
            self.server.stats.timeouts += 1
            self._pending = None
            for item in self.decoder.flush():
                self.handle(item)
            return LinkError(
                FailureKind.TIMEOUT, f"meter {frame.address} on DTU {self.dtu_id}: no reply in {timeout_s} s"
            )
        finally:
            self._pending = None

    async def _write(self, data: bytes) -> LinkError | None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as error:
            self.close(f"write failed: {error!r}")
            return self._offline()
        return None

    def _offline(self) -> LinkError:
        return LinkError(FailureKind.OFFLINE, f"DTU {self.dtu_id}: session closed ({self.reason})")

    def handle(self, item: object) -> None:
        """One decoded item from the connection."""
        stats = self.server.stats
        if isinstance(item, Frame):
            pending = self._pending
            if pending is not None and not pending[1].done() and reply_matches(pending[0], item):
                stats.replies += 1
                pending[1].set_result(item)
            else:
                stats.unmatched += 1
        elif isinstance(item, Heartbeat):
            stats.heartbeats += 1
        elif isinstance(item, DecodeError):
            stats.noise_bytes += item.skipped_bytes
        # a repeated Registration on a live connection changes nothing

    def feed(self, data: bytes) -> None:
        self.last_seen = self.server.clock()
        for item in self.decoder.feed(data):
            self.handle(item)

    def close(self, reason: str) -> None:
        """End the session: the connection is closed and a waiting request fails as OFFLINE."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        pending = self._pending
        if pending is not None and not pending[1].done():
            pending[1].set_result(self._offline())
        self.writer.close()


class DtuServer:
    """Accepts DTU connections; routes requests to the session of a DTU id."""

    def __init__(
        self,
        *,
        profile: DtuProfile = DEFAULT_PROFILE,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_waiting: int = DEFAULT_MAX_WAITING,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        registration_timeout_s: float = DEFAULT_REGISTRATION_TIMEOUT_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
        listener: SessionListener | None = None,
    ) -> None:
        assert request_timeout_s > 0 and heartbeat_timeout_s > 0 and registration_timeout_s > 0
        assert max_waiting > 0 and max_sessions > 0
        self.profile = profile
        self.request_timeout_s = request_timeout_s
        self.max_waiting = max_waiting
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.registration_timeout_s = registration_timeout_s
        self.max_sessions = max_sessions
        self.clock = clock
        self.listener = listener
        self.sessions: dict[str, DtuSession] = {}
        self.stats = DtuStats()
        self._server: asyncio.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[object]] = set()
        self._changed = asyncio.Condition()

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        assert self._server is None, "already started"
        self._server = await asyncio.start_server(self._handle_connection, host, port, backlog=LISTEN_BACKLOG)
        self._reaper = asyncio.create_task(self._reap_silent())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.close("head-end shutting down")
        if self._handlers:
            # let every connection handler see its closed session and end, rather than be cancelled later
            await asyncio.wait(self._handlers, timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- requests -------------------------------------------------------------------------------------------

    def session(self, dtu_id: str) -> DtuSession | None:
        session = self.sessions.get(dtu_id)
        return session if session is not None and not session.closed else None

    def online(self, dtu_id: str) -> bool:
        session = self.session(dtu_id)
        return session is not None and self.clock() - session.last_seen <= self.heartbeat_timeout_s

    async def request(self, dtu_id: str, frame: Frame, timeout_s: float | None = None) -> Frame | LinkError:
        session = self.session(dtu_id)
        if session is None:
            return LinkError(FailureKind.OFFLINE, f"DTU {dtu_id}: not connected")
        return await session.request(frame, timeout_s)

    async def broadcast(self, dtu_id: str, frame: Frame) -> LinkError | None:
        session = self.session(dtu_id)
        if session is None:
            return LinkError(FailureKind.OFFLINE, f"DTU {dtu_id}: not connected")
        return await session.broadcast(frame)

    async def wait_for_sessions(self, count: int, timeout_s: float) -> bool:
        """Wait until at least ``count`` DTUs are registered (start-up, tests); ``False`` on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: len(self.sessions) >= count)
        return len(self.sessions) >= count

    # -- connections ----------------------------------------------------------------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle_registered(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _handle_registered(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        decoder = DtuStreamDecoder(self.profile)
        try:
            async with asyncio.timeout(self.registration_timeout_s):
                registered = await self._read_registration(reader, decoder)
        except (TimeoutError, ConnectionError):
            registered = None
        if registered is None or (registered[0] not in self.sessions and len(self.sessions) >= self.max_sessions):
            self.stats.refused += 1
            writer.close()
            return
        dtu_id, rest = registered
        session = await self._register(dtu_id, writer, decoder)
        for item in rest:
            session.handle(item)
        try:
            await self._serve(session, reader)
        finally:
            session.close(session.reason or "connection closed")
            if self.sessions.get(dtu_id) is session:
                del self.sessions[dtu_id]
                if self.listener is not None:
                    self.listener(dtu_id, False)
            async with self._changed:
                self._changed.notify_all()

    async def _read_registration(
        self, reader: asyncio.StreamReader, decoder: DtuStreamDecoder
    ) -> tuple[str, list[object]] | None:
        """The DTU id and whatever followed the registration packet in the same reads."""
        seen_bytes = 0
        while seen_bytes <= MAX_PRE_REGISTRATION_BYTES:
            data = await reader.read(READ_CHUNK_BYTES)
            if not data:
                return None
            seen_bytes += len(data)
            items = decoder.feed(data)
            for index, item in enumerate(items):
                if isinstance(item, Registration):
                    return item.dtu_id, items[index + 1 :]
                if isinstance(item, DecodeError):
                    self.stats.noise_bytes += item.skipped_bytes
        return None

    async def _register(self, dtu_id: str, writer: asyncio.StreamWriter, decoder: DtuStreamDecoder) -> DtuSession:
        old = self.sessions.get(dtu_id)
        if old is not None:
            # the DTU redialled: the old TCP connection is dead or half-open; its waiting requests fail now
            old.close("replaced: the DTU connected again")
            self.stats.replaced += 1
        session = DtuSession(dtu_id, writer, decoder, self)
        self.sessions[dtu_id] = session
        self.stats.registrations += 1
        if self.listener is not None:
            self.listener(dtu_id, True)
        async with self._changed:
            self._changed.notify_all()
        return session

    async def _serve(self, session: DtuSession, reader: asyncio.StreamReader) -> None:
        while not session.closed:
            try:
                data = await reader.read(READ_CHUNK_BYTES)
            except ConnectionError as error:
                session.close(f"read failed: {error!r}")
                return
            if not data:
                session.close("the DTU closed the connection")
                return
            session.feed(data)

    async def _reap_silent(self) -> None:
        """Disconnect DTUs that have said nothing for a heartbeat timeout (dead or half-open TCP)."""
        period_s = max(self.heartbeat_timeout_s / 4, 0.05)
        while True:
            await asyncio.sleep(period_s)
            now = self.clock()
            for session in list(self.sessions.values()):
                if now - session.last_seen > self.heartbeat_timeout_s:
                    self.stats.silent_closed += 1
                    session.close(f"silent for more than {self.heartbeat_timeout_s} s")
