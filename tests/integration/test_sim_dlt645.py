"""The simulated fleet's DTUs dial in over real TCP and answer DL/T 645 requests like real meters.

A small head-end stand-in listens on a local port, takes each DTU's registration packet, then sends requests
(reads, writes, relay control, recharge, broadcast time) and checks the replies byte for byte through the
protocol codecs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from powergate.protocols.dlt645 import (
    Credentials,
    ErrorFlags,
    Frame,
    Function,
    Recharge,
    RelayAction,
    broadcast_time_request,
    decode_data,
    encode_data,
    encode_frame,
    read_address_request,
    read_reply,
    read_request,
    recharge_request,
    relay_command,
    write_request,
)
from powergate.protocols.dtu import DtuStreamDecoder, Heartbeat, Registration
from powergate.sim.faults import Faults
from powergate.sim.fleet import Fleet, FleetOptions
from powergate.sim.meter import Band, TripReason

T0 = 1_700_000_000
GOOD = Credentials(2, "000000", "12345678")
WRONG = Credentials(2, "999999", "12345678")


def run_async(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (the project has no asyncio pytest plugin)."""

    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(asyncio.wait_for(test(), 30))

    return wrapper


class Clock:
    def __init__(self) -> None:
        self.now_s = T0

    def __call__(self) -> int:
        return self.now_s


@dataclass
class DtuLink:
    """The head-end's side of one DTU connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: DtuStreamDecoder
    pending: list[object]

    async def next_packet(self, timeout_s: float = 5.0) -> object:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(4096), timeout_s)
            assert data, "the DTU closed the connection"
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def request(self, frame: Frame) -> Frame:
        self.writer.write(encode_frame(frame))
        await self.writer.drain()
        while True:
            packet = await self.next_packet()
            if isinstance(packet, Frame):
                return packet
            assert isinstance(packet, Heartbeat), packet

    async def silence(self, frame: Frame, wait_s: float = 0.3) -> None:
        self.writer.write(encode_frame(frame))
        await self.writer.drain()
        with contextlib.suppress(TimeoutError):
            packet = await self.next_packet(wait_s)
            assert isinstance(packet, Heartbeat), f"expected no reply, got {packet}"


@dataclass
class Running:
    fleet: Fleet
    clock: Clock
    links: dict[str, DtuLink]


@contextlib.asynccontextmanager
async def fleet_dialling_in(meters: int, dtus: int, heartbeat_s: float = 60.0) -> AsyncIterator[Running]:
    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connections.put((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = Clock()
    options = FleetOptions(meters=meters, dtus=dtus, mode="dtu", headend=("127.0.0.1", port),
                           heartbeat_s=heartbeat_s, seed=5, faults=Faults())  # fmt: skip
    fleet = Fleet(options, clock=clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(fleet.run(stop))
    links: dict[str, DtuLink] = {}
    try:
        for _ in range(dtus):
            reader, writer = await asyncio.wait_for(connections.get(), 10)
            link = DtuLink(reader, writer, DtuStreamDecoder(), [])
            registration = await link.next_packet()
            assert isinstance(registration, Registration)
            links[registration.dtu_id] = link
        yield Running(fleet, clock, links)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
        for link in links.values():
            link.writer.close()
        server.close()
        await server.wait_closed()


def link_of(running: Running, address: str) -> DtuLink:
    """The DTU whose bus carries ``address`` (DTUs are registered in order, meters split contiguously)."""
    index = int(address) - 1
    per_dtu = -(-len(running.fleet.meters) // len(running.links))
    return running.links[sorted(running.links)[index // per_dtu]]


@run_async
async def test_every_dtu_registers_and_its_meters_answer_reads_with_their_registers() -> None:
    async with fleet_dialling_in(meters=6, dtus=2) as running:
        assert sorted(running.links) == ["86005" + f"{i:010d}" for i in range(2)]
        running.clock.now_s += 3600
        for meter in running.fleet.meters:
            reply = await link_of(running, meter.address).request(read_request(meter.address, 0x0000FF00))
            assert reply.reply and not reply.error and reply.address == meter.address
            value = decode_data(0x0000FF00, reply.data[4:])
            assert value == (meter.total_ticks() * 10, *(meter.band_ticks(b) * 10 for b in Band))
            assert meter.total_ticks() > 0


@run_async
async def test_a_meter_on_another_bus_or_an_unknown_address_stays_silent() -> None:
    async with fleet_dialling_in(meters=4, dtus=2) as running:
        first_link = link_of(running, "000000000001")
        await first_link.silence(read_request("000000000004", 0x00000000))
        await first_link.silence(read_request("000000000099", 0x00000000))


@run_async
async def test_an_unknown_di_is_answered_with_the_no_data_error() -> None:
    async with fleet_dialling_in(meters=1, dtus=1) as running:
        reply = await link_of(running, "000000000001").request(read_request("000000000001", 0x12345678))
        assert reply.error and reply.error_flags == ErrorFlags.NO_DATA_REQUESTED
        assert reply.function is Function.READ


@run_async
async def test_read_address_answers_the_wildcard_when_the_meter_is_alone_on_its_bus() -> None:
    async with fleet_dialling_in(meters=1, dtus=1) as running:
        reply = await link_of(running, "000000000001").request(read_address_request())
        assert reply.address == "000000000001"
        assert reply.data == bytes.fromhex("000000000001")[::-1]


@run_async
async def test_a_write_with_a_wrong_password_is_refused_and_a_right_one_changes_the_alarm_amount() -> None:
    async with fleet_dialling_in(meters=1, dtus=1) as running:
        link, meter = link_of(running, "000000000001"), running.fleet.meters[0]
        payload = encode_data(0x04001001, 80_000_000)
        refused = await link.request(write_request(meter.address, 0x04001001, payload, WRONG))
        assert refused.error and refused.error_flags == ErrorFlags.UNAUTHORISED
        assert meter.settings.alarm1_micros == 50_000_000
        accepted = await link.request(write_request(meter.address, 0x04001001, payload, GOOD))
        assert accepted.reply and not accepted.error
        assert meter.settings.alarm1_micros == 80_000_000


@run_async
async def test_relay_control_trips_and_closes_and_status_word_3_follows() -> None:
    async with fleet_dialling_in(meters=1, dtus=1) as running:
        link, meter = link_of(running, "000000000001"), running.fleet.meters[0]
        until = datetime(2023, 11, 15, 12, 0, 0)
        reply = await link.request(relay_command(meter.address, RelayAction.TRIP, until, GOOD))
        assert not reply.error and meter.relay_open() and meter.flags & TripReason.REMOTE
        status = await link.request(read_request(meter.address, 0x04000503))
        word = decode_data(0x04000503, status.data[4:])
        assert getattr(word, "relay_open", None) is True
        expired = datetime(2023, 11, 14, 0, 0, 0)
        refused = await link.request(relay_command(meter.address, RelayAction.CLOSE_NOW, expired, GOOD))
        assert refused.error and meter.relay_open()
        await link.request(relay_command(meter.address, RelayAction.CLOSE_NOW, until, GOOD))
        assert not meter.relay_open()


@run_async
async def test_a_recharge_credits_once_and_a_repeat_is_acknowledged_without_credit() -> None:
    async with fleet_dialling_in(meters=1, dtus=1) as running:
        link, meter = link_of(running, "000000000001"), running.fleet.meters[0]
        before = meter.balance_micros
        request = recharge_request(meter.address, Recharge(50_000_000, 1), GOOD)
        assert not (await link.request(request)).error
        assert not (await link.request(request)).error  # the retry is harmless
        assert meter.balance_micros == before + 50_000_000 and meter.purchase_count == 1
        stale = await link.request(recharge_request(meter.address, Recharge(50_000_000, 5), GOOD))
        assert stale.error and stale.error_flags == ErrorFlags.OTHER
        count = await link.request(read_request(meter.address, 0x03330201))
        assert decode_data(0x03330201, count.data[4:]) == 1
        remaining = await link.request(read_request(meter.address, 0x00900200))
        assert decode_data(0x00900200, remaining.data[4:]) == meter.balance_micros // 10_000 * 10_000


@run_async
async def test_a_broadcast_time_sets_every_clock_and_nobody_answers() -> None:
    async with fleet_dialling_in(meters=3, dtus=1) as running:
        link = link_of(running, "000000000001")
        target = datetime(2023, 11, 15, 8, 0, 0)  # local (UTC+8)
        await link.silence(broadcast_time_request(target))
        for meter in running.fleet.meters:
            local = meter.meter_time_s(running.clock.now_s) + 8 * 3600
            assert local == int((target - datetime(1970, 1, 1)).total_seconds())
        reply = await link.request(read_request("000000000002", 0x04000102))
        assert decode_data(0x04000102, reply.data[4:]) == target.time()


@run_async
async def test_an_idle_dtu_sends_heartbeats() -> None:
    async with fleet_dialling_in(meters=1, dtus=1, heartbeat_s=0.1) as running:
        packet = await link_of(running, "000000000001").next_packet(2.0)
        assert isinstance(packet, Heartbeat)


@run_async
async def test_a_garbled_reply_arrives_with_exactly_one_bit_flipped() -> None:
    async with fleet_dialling_in(meters=1, dtus=1) as running:
        running.fleet.options.faults.garble = 1.0
        link, meter = link_of(running, "000000000001"), running.fleet.meters[0]
        link.writer.write(encode_frame(read_request(meter.address, 0x00000000)))
        await link.writer.drain()
        wire = await asyncio.wait_for(link.reader.read(4096), 5)
        expected = encode_frame(read_reply(meter.address, 0, encode_data(0, meter.total_ticks() * 10)))
        assert len(wire) == len(expected)
        assert sum(bin(a ^ b).count("1") for a, b in zip(wire, expected, strict=True)) == 1
        assert running.fleet.stats.garbled == 1
