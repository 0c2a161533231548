"""The DTU server and the DL/T 645 link over real TCP: virtual DTUs and hand-driven raw DTUs dial in.

The raw DTU is a plain TCP client whose every byte the test writes, so noise, heartbeats, split frames, late and
misaddressed replies and a second connection with the same id are exactly what the test says they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from powergate.headend.dlt645_link import Dlt645Link
from powergate.headend.dtu import DtuServer
from powergate.headend.model import (
    CommandKind,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterSnapshot,
    ReadItem,
    Transport,
)
from powergate.protocols.dlt645 import (
    Credentials,
    Frame,
    StreamDecoder,
    encode_frame,
    read_reply,
    read_request,
)
from powergate.protocols.dtu import encode_heartbeat, encode_registration
from powergate.sim.faults import Faults, SimStats
from powergate.sim.fleet import VirtualDtu, build_meters
from powergate.sim.meter import VirtualMeter

DTU_ID = "860000000000001"
ENERGY_DI = 0x00010000


def run(test: Callable[[], Awaitable[None]], timeout_s: float = 30) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout_s))


@contextlib.asynccontextmanager
async def dtu_server(**options: float) -> AsyncIterator[tuple[DtuServer, int]]:
    server = DtuServer(**options)  # type: ignore[arg-type]
    port = await server.start()
    try:
        yield server, port
    finally:
        await server.close()


class RawDtu:
    """A DTU whose bytes the test writes itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = StreamDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def dial(cls, port: int, dtu_id: str = DTU_ID, before: bytes = b"") -> RawDtu:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(before + encode_registration(dtu_id))
        await writer.drain()
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_request(self, timeout_s: float = 2.0) -> Frame:
        async with asyncio.timeout(timeout_s):
            while not self.frames:
                data = await self.reader.read(4096)
                assert data, "the head-end closed the connection"
                self.frames += [item for item in self.decoder.feed(data) if isinstance(item, Frame)]
        return self.frames.pop(0)

    def close(self) -> None:
        self.writer.close()


def energy_reply(request: Frame, wh: int) -> bytes:
    # XXXXXX.XX kWh in BCD, low byte first: 1234.56 kWh -> 56 34 12 00
    bcd = bytes.fromhex(f"{wh // 10:08d}")[::-1]
    return encode_frame(read_reply(request.address, ENERGY_DI, bcd))


async def registered(server: DtuServer, count: int = 1) -> None:
    assert await server.wait_for_sessions(count, 5.0), server.stats


# -- sessions and framing ------------------------------------------------------------------------------------


def test_garbage_and_heartbeats_between_split_frames_do_not_disturb_a_read() -> None:
    async def scenario() -> None:
        async with dtu_server() as (server, port):
            dtu = await RawDtu.dial(port, before=b"\x00\xff garbage before registering ")
            await registered(server)
            asking = asyncio.create_task(server.request(DTU_ID, read_request("000000000007", ENERGY_DI)))
            request = await dtu.next_request()
            assert request == read_request("000000000007", ENERGY_DI)
            reply = energy_reply(request, 1_234_560)
            await dtu.send(encode_heartbeat() + b"\x11\x22 line noise \x68\x01" + reply[:7])
            await asyncio.sleep(0.02)
            await dtu.send(reply[7:] + encode_heartbeat())
            answer = await asyncio.wait_for(asking, 2)
            assert isinstance(answer, Frame) and answer.address == "000000000007" and answer.reply
            await asyncio.sleep(0.05)
            assert server.stats.heartbeats == 2 and server.stats.noise_bytes > 10
            dtu.close()

    run(scenario)


def test_a_dtu_that_reconnects_replaces_its_session_and_the_request_on_the_old_one_fails_as_offline() -> None:
    async def scenario() -> None:
        async with dtu_server() as (server, port):
            old = await RawDtu.dial(port)
            await registered(server)
            stranded = asyncio.create_task(server.request(DTU_ID, read_request("000000000001", ENERGY_DI)))
            await old.next_request()  # the old connection never answers: it is half-open
            new = await RawDtu.dial(port)
            outcome = await asyncio.wait_for(stranded, 2)
            assert isinstance(outcome, LinkError) and outcome.kind is FailureKind.OFFLINE
            assert server.stats.replaced == 1 and len(server.sessions) == 1
            asking = asyncio.create_task(server.request(DTU_ID, read_request("000000000001", ENERGY_DI)))
            request = await new.next_request()
            await new.send(energy_reply(request, 10))
            assert isinstance(await asyncio.wait_for(asking, 2), Frame)
            assert await old.reader.read(100) == b"", "the stale connection is closed"
            old.close()
            new.close()

    run(scenario)


def test_a_request_times_out_and_its_late_reply_never_answers_the_next_request() -> None:
    async def scenario() -> None:
        async with dtu_server(request_timeout_s=0.2) as (server, port):
            dtu = await RawDtu.dial(port)
            await registered(server)
            started = time.monotonic()
            outcome = await server.request(DTU_ID, read_request("000000000001", ENERGY_DI))
            assert isinstance(outcome, LinkError) and outcome.kind is FailureKind.TIMEOUT
            assert 0.15 < time.monotonic() - started < 1.0
            late = await dtu.next_request()
            asking = asyncio.create_task(server.request(DTU_ID, read_request("000000000002", ENERGY_DI)))
            current = await dtu.next_request()
            await dtu.send(energy_reply(late, 111))  # the first meter answers too late
            await asyncio.sleep(0.02)
            await dtu.send(energy_reply(current, 222))
            answer = await asyncio.wait_for(asking, 2)
            assert isinstance(answer, Frame) and answer.address == "000000000002"
            assert server.stats.unmatched == 1 and server.stats.timeouts == 1
            dtu.close()

    run(scenario)


def test_one_request_is_in_flight_per_bus_and_the_waiting_queue_is_bounded() -> None:
    async def scenario() -> None:
        async with dtu_server(max_waiting=3) as (server, port):
            dtu = await RawDtu.dial(port)
            await registered(server)
            addresses = [f"{n:012d}" for n in range(1, 7)]
            asking = [asyncio.create_task(server.request(DTU_ID, read_request(a, ENERGY_DI))) for a in addresses]
            answered = []
            for _ in range(4):  # one in flight + three waiting; the other two were refused at once
                request = await dtu.next_request()
                await asyncio.sleep(0.03)
                assert dtu.frames == [], "a second request was sent before the first was answered"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dtu.next_request(0.03), 0.05)
                    raise AssertionError("a second request was sent while one was in flight")
                await dtu.send(energy_reply(request, 10))
                answered.append(request.address)
            outcomes = await asyncio.gather(*asking)
            busy = [o for o in outcomes if isinstance(o, LinkError)]
            assert len(busy) == 2 and all(o.kind is FailureKind.BUSY for o in busy)
            assert answered == [o.address for o in outcomes if isinstance(o, Frame)], "FIFO order"
            dtu.close()

    run(scenario)


def test_a_silent_dtu_is_disconnected_after_the_heartbeat_timeout_but_heartbeats_keep_it() -> None:
    async def scenario() -> None:
        async with dtu_server(heartbeat_timeout_s=0.3) as (server, port):
            chatty = await RawDtu.dial(port, "860000000000001")
            silent = await RawDtu.dial(port, "860000000000002")
            await registered(server, 2)
            for _ in range(8):
                await chatty.send(encode_heartbeat())
                await asyncio.sleep(0.1)
            assert server.online("860000000000001") and not server.online("860000000000002")
            assert list(server.sessions) == ["860000000000001"] and server.stats.silent_closed == 1
            assert await silent.reader.read(100) == b""
            silent.close()
            chatty.close()

    run(scenario)


# -- the DL/T 645 link against virtual DTUs -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def virtual_bus(
    meters: list[VirtualMeter], faults: Faults | None = None, **options: float
) -> AsyncIterator[tuple[DtuServer, Dlt645Link]]:
    async with dtu_server(**options) as (server, port):
        stop = asyncio.Event()
        dtu = VirtualDtu(
            DTU_ID,
            meters,
            headend=("127.0.0.1", port),
            clock=lambda: int(time.time()),
            faults=faults or Faults(),
            stats=SimStats(),
            heartbeat_s=0.5,
        )
        task = asyncio.create_task(dtu.run(stop))
        await registered(server)
        try:
            yield server, Dlt645Link(server)
        finally:
            stop.set()
            await task


def endpoint(meter: VirtualMeter, index: int = 0) -> MeterEndpoint:
    return MeterEndpoint(f"M-{index}", Transport.DLT645, meter.address, DTU_ID)


def test_a_read_through_the_dtu_returns_what_the_meter_shows() -> None:
    async def scenario() -> None:
        meters = build_meters(3, seed=5, now_s=int(time.time()))
        async with virtual_bus(meters) as (_, link):
            for index, meter in enumerate(meters):
                snapshot = await link.read(endpoint(meter, index), frozenset(ReadItem))
                assert isinstance(snapshot, MeterSnapshot), snapshot
                assert snapshot.total_wh == meter.total_ticks() * 10
                assert snapshot.bands_wh == tuple(meter.band_ticks(band) * 10 for band in range(4))  # type: ignore[arg-type]
                assert snapshot.remaining_micros == meter.remaining_micros() // 10_000 * 10_000
                assert snapshot.purchase_count == 0 and snapshot.relay_open is False
                assert snapshot.voltage_dv == meter.voltage_dv()
                assert snapshot.meter_time is not None
                assert abs((snapshot.meter_time - dt.datetime.now(dt.UTC)).total_seconds()) < 3
                assert snapshot.frozen_at is None, "the virtual meter keeps no daily freeze"

    run(scenario)


def test_commands_through_the_dtu_trip_close_and_recharge_exactly_once() -> None:
    async def scenario() -> None:
        meters = build_meters(2, seed=5, now_s=int(time.time()))
        async with virtual_bus(meters) as (_, link):
            target = endpoint(meters[1], 1)
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            trip = await link.execute(target, MeterCommand("c-1", CommandKind.TRIP, until))
            assert not isinstance(trip, LinkError) and trip.ok and meters[1].relay_open()
            assert not meters[0].relay_open(), "only the addressed meter acts"
            close = await link.execute(target, MeterCommand("c-2", CommandKind.CLOSE, until))
            assert not isinstance(close, LinkError) and not meters[1].relay_open()
            before = meters[1].balance_micros
            recharge = MeterCommand("pay-1", CommandKind.RECHARGE, until, amount_micros=30_000_000, purchase_count=1)
            first = await link.execute(target, recharge)
            again = await link.execute(target, recharge)
            assert not isinstance(first, LinkError) and first.ok and not first.already_applied
            assert not isinstance(again, LinkError) and again.ok and again.already_applied
            assert meters[1].purchase_count == 1
            assert 30_000_000 - 1_000_000 < meters[1].balance_micros - before <= 30_000_000
            gap = MeterCommand("pay-3", CommandKind.RECHARGE, until, amount_micros=1_000_000, purchase_count=3)
            refused = await link.execute(target, gap)
            assert isinstance(refused, LinkError) and refused.kind is FailureKind.REJECTED
            assert "skips ahead" in refused.reason

    run(scenario)


def test_a_wrong_password_comes_back_as_rejected_with_the_meters_error_bits() -> None:
    async def scenario() -> None:
        meters = build_meters(1, seed=5, now_s=int(time.time()))
        async with virtual_bus(meters) as (server, _):
            link = Dlt645Link(server, credentials=Credentials(2, "123456", "00000000"))
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            outcome = await link.execute(endpoint(meters[0]), MeterCommand("c-1", CommandKind.TRIP, until))
            assert isinstance(outcome, LinkError) and outcome.kind is FailureKind.REJECTED
            assert "password" in outcome.reason and "ERR 04" in outcome.reason
            assert not meters[0].relay_open()

    run(scenario)


def test_lost_and_garbled_replies_become_timeouts_and_never_wrong_values() -> None:
    async def scenario() -> None:
        meters = build_meters(4, seed=5, now_s=int(time.time()))
        faults = Faults(drop=0.15, garble=0.15, seed=11)
        async with virtual_bus(meters, faults, request_timeout_s=0.15) as (server, link):
            outcomes = [
                await link.read(endpoint(m, i), frozenset({ReadItem.ENERGY}))
                for _ in range(10)
                for i, m in enumerate(meters)
            ]
            good = [o for o in outcomes if isinstance(o, MeterSnapshot)]
            bad = [o for o in outcomes if isinstance(o, LinkError)]
            assert len(good) > 20 and bad, (len(good), len(bad))
            assert all(o.kind is FailureKind.TIMEOUT for o in bad)
            by_id = {f"M-{i}": m for i, m in enumerate(meters)}
            assert all(s.total_wh == by_id[s.meter_id].total_ticks() * 10 for s in good)
            assert server.stats.noise_bytes > 0

    run(scenario)
