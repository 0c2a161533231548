"""A seeded fleet of virtual meters behind virtual DTUs, Modbus TCP servers or MQTT connections.

``build_meters`` makes N meters whose addresses, load profiles, sizes, starting registers and balances follow
from one seed; ``Fleet.run`` puts them on the wire in one of three modes, all in one asyncio event loop:

- ``dtu``: M virtual DTUs dial in over TCP to a head-end, send their registration packet, send heartbeats,
  and answer DL/T 645 requests for the meters on their RS485 bus, one request at a time per DTU (the bus is
  half-duplex), after a reply delay;
- ``modbus``: M Modbus TCP servers on consecutive ports, the meters of each as unit ids 1..247;
- ``mqtt``: M MQTT connections to a broker, each carrying its share of the meters.

Invariants:
- the same seed gives the same meters, and (given the same requests in the same order) the same faults;
- meters are advanced lazily, when a request or a report needs them: there is no task per meter, so
  10,000 meters cost little CPU between reports;
- a limit on everything: meters per fleet, meters per DTU bus, reconnect back-off, request sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from powergate.domain.energy import Commodity
from powergate.domain.money import MICROS_PER_UNIT
from powergate.protocols.dlt645 import (
    DEFAULT_RECHARGE_LAYOUT,
    DecodeError,
    Frame,
    RechargeLayout,
    StreamDecoder,
    encode_frame,
)
from powergate.protocols.dtu import DEFAULT_PROFILE, DtuProfile, encode_heartbeat, encode_registration
from powergate.sim.dlt645_face import Bus
from powergate.sim.faults import Faults, SimStats
from powergate.sim.meter import DEFAULT_SETTINGS, MeterSettings, VirtualMeter
from powergate.sim.profiles import PROFILES, ProfileKind, mix64

if TYPE_CHECKING:
    from pymodbus.server import ModbusTcpServer

    from powergate.sim.modbus_face import MeterContext

MAX_METERS = 200_000
MAX_METERS_PER_BUS = 1024
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0

DEFAULT_MIX: tuple[tuple[ProfileKind, int], ...] = (
    (ProfileKind.RESIDENTIAL, 50),
    (ProfileKind.DORMITORY, 20),
    (ProfileKind.SHOP, 20),
    (ProfileKind.OFFICE, 10),
)
"""Electricity profiles by weight (percent) when no single profile is asked for."""


def _pick_profile(seed: int, index: int, mix: Sequence[tuple[ProfileKind, int]]) -> ProfileKind:
    total = sum(weight for _, weight in mix)
    draw = mix64(seed, index, 0xF1EE7) % total
    for kind, weight in mix:
        if draw < weight:
            return kind
        draw -= weight
    raise AssertionError("unreachable: weights cover the draw")


def build_meters(
    count: int,
    *,
    seed: int,
    now_s: int,
    load_scale_permille: int = 1000,
    profile: ProfileKind | None = None,
    first_address: int = 1,
    settings: MeterSettings = DEFAULT_SETTINGS,
) -> list[VirtualMeter]:
    """``count`` meters with addresses ``first_address``.. (12 digits), all drawn from ``seed``."""
    assert 0 < count <= MAX_METERS, count
    mix = DEFAULT_MIX if profile is None else ((profile, 1),)
    meters: list[VirtualMeter] = []
    for index in range(count):
        meter_seed = mix64(seed, index)
        kind = _pick_profile(seed, index, mix)
        draw = mix64(meter_seed, 0xBA1)
        history_kwh = draw % 5000  # a meter that has been in service for a while
        bands = (history_kwh * 5 // 100, history_kwh * 30 // 100, history_kwh * 40 // 100)
        ticks = [b * 100 for b in bands] + [(history_kwh - sum(bands)) * 100]
        meters.append(
            VirtualMeter(
                f"{first_address + index:012d}",
                PROFILES[kind],
                seed=meter_seed,
                now_s=now_s,
                balance_micros=(20 + (draw >> 16) % 480) * MICROS_PER_UNIT,
                band_ticks=ticks,
                settings=settings,
                scale_permille=load_scale_permille,
                commodity=Commodity.WATER if kind is ProfileKind.WATER else Commodity.ELECTRICITY,
            )
        )
    return meters


def split(meters: Sequence[VirtualMeter], groups: int) -> list[list[VirtualMeter]]:
    """``groups`` contiguous, nearly equal slices (the first ones one larger), none empty."""
    groups = max(1, min(groups, len(meters)))
    size, extra = divmod(len(meters), groups)
    slices: list[list[VirtualMeter]] = []
    start = 0
    for group in range(groups):
        end = start + size + (1 if group < extra else 0)
        slices.append(list(meters[start:end]))
        start = end
    return slices


def parse_host_port(text: str, *, field_name: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ``ValueError`` naming the option when it is not one."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{field_name}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port_text)


@dataclass(slots=True)
class FleetOptions:
    meters: int
    dtus: int
    mode: str = "dtu"
    headend: tuple[str, int] | None = None
    broker: tuple[str, int] | None = None
    listen: tuple[str, int] = ("127.0.0.1", 1502)
    interval_s: float = 60.0
    heartbeat_s: float = 60.0
    seed: int = 1
    load_scale_permille: int = 1000
    profile: ProfileKind | None = None
    site: str = "sim"
    faults: Faults = field(default_factory=Faults)

    def check(self) -> str | None:
        """``None`` when the options make a fleet, else the problem, naming the option."""
        if not 0 < self.meters <= MAX_METERS:
            return f"--meters: {self.meters} is not in 1..{MAX_METERS}"
        if self.dtus < 1:
            return f"--dtus: {self.dtus} must be at least 1"
        if self.mode not in ("dtu", "modbus", "mqtt"):
            return f"--mode: {self.mode!r} is not dtu, modbus or mqtt"
        if self.mode == "dtu" and self.headend is None:
            return "--headend: needed in dtu mode"
        if self.mode == "dtu" and math.ceil(self.meters / self.dtus) > MAX_METERS_PER_BUS:
            return f"--dtus: {self.dtus} DTUs put more than {MAX_METERS_PER_BUS} meters on one bus"
        if self.mode == "mqtt" and self.broker is None:
            return "--broker: needed in mqtt mode"
        if self.mode == "modbus" and math.ceil(self.meters / self.dtus) > 247:
            return f"--dtus: {self.dtus} servers put more than 247 meters (unit ids) on one server"
        if self.interval_s <= 0:
            return f"--interval: {self.interval_s} must be positive"
        return None


class Fleet:
    """Meters plus the faces that put them on the wire; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, options: FleetOptions, clock: Callable[[], int] = lambda: int(time.time())) -> None:
        problem = options.check()
        assert problem is None, problem
        self.options = options
        self.clock = clock
        self.meters = build_meters(
            options.meters,
            seed=options.seed,
            now_s=clock(),
            load_scale_permille=options.load_scale_permille,
            profile=options.profile,
        )
        self.by_address = {meter.address: meter for meter in self.meters}
        self.stats = SimStats(meters=len(self.meters))
        self.faces: Sequence[object] = []
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        runner = {"dtu": self._run_dtus, "modbus": self._run_modbus, "mqtt": self._run_mqtt}[self.options.mode]
        await runner(stop)

    async def _run_mqtt(self, stop: asyncio.Event) -> None:
        from powergate.sim.mqtt_face import MqttGateway

        assert self.options.broker is not None
        host, port = self.options.broker
        gateways = [
            MqttGateway(
                group,
                host=host,
                port=port,
                site=self.options.site,
                interval_s=self.options.interval_s,
                # unique per process: two simulators with one client id would keep kicking each other off
                client_id=f"pg-sim-{self.options.seed}-{os.getpid()}-{index}",
                clock=self.clock,
                faults=self.options.faults,
                stats=self.stats,
            )
            for index, group in enumerate(split(self.meters, self.options.dtus))
        ]
        self.faces = list(gateways)
        tasks = [asyncio.create_task(_keep_running(gateway.run, stop, self.stats)) for gateway in gateways]
        await _wait_ready([gateway.connected for gateway in gateways], stop)
        self.ready.set()
        await _gather_until(tasks, stop)

    async def _run_modbus(self, stop: asyncio.Event) -> None:
        from powergate.sim.modbus_face import bound_port, start_modbus_server

        host, port = self.options.listen
        servers: list[tuple[ModbusTcpServer, MeterContext, int]] = []
        try:
            for index, group in enumerate(split(self.meters, self.options.dtus)):
                server, context = await start_modbus_server(group, host, port + index if port else 0, clock=self.clock)
                servers.append((server, context, bound_port(server)))
            self.faces = servers
            self.ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.5)
                self.stats.frames_answered = sum(c.counters.reads + c.counters.writes for _, c, _ in servers)
                self.stats.commands_done = sum(c.counters.writes for _, c, _ in servers)
        finally:
            for server, _, _ in servers:
                await server.shutdown()  # type: ignore[no-untyped-call]

    async def _run_dtus(self, stop: asyncio.Event) -> None:
        assert self.options.headend is not None
        dtus = [
            VirtualDtu(
                f"86{self.options.seed % 1000:03d}{index:010d}",
                group,
                headend=self.options.headend,
                clock=self.clock,
                faults=self.options.faults,
                stats=self.stats,
                heartbeat_s=self.options.heartbeat_s,
            )
            for index, group in enumerate(split(self.meters, self.options.dtus))
        ]
        self.faces = list(dtus)
        tasks = [asyncio.create_task(_keep_running(dtu.run, stop, self.stats)) for dtu in dtus]
        await _wait_ready([dtu.registered for dtu in dtus], stop)
        self.ready.set()
        await _gather_until(tasks, stop)


async def _keep_running(run: Callable[[asyncio.Event], object], stop: asyncio.Event, stats: SimStats) -> None:
    """Run a connection; when it fails, count the error and reconnect with a bounded back-off."""
    backoff_s = RECONNECT_MIN_S
    while not stop.is_set():
        try:
            await run(stop)  # type: ignore[misc]
            backoff_s = RECONNECT_MIN_S
        except Exception as error:  # a broker restart must not end the simulation
            stats.error(f"connection: {error!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)


async def _wait_ready(events: Sequence[asyncio.Event], stop: asyncio.Event) -> None:
    waiter: asyncio.Future[Any] = asyncio.gather(*(event.wait() for event in events))
    stopper: asyncio.Future[Any] = asyncio.gather(stop.wait())
    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    for future in (waiter, stopper):
        if not future.done():
            future.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await future


async def _gather_until(tasks: Sequence[asyncio.Task[None]], stop: asyncio.Event) -> None:
    try:
        await stop.wait()
    finally:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


class VirtualDtu:
    """A serial-to-TCP gateway: dials the head-end, registers, sends heartbeats, relays its RS485 bus.

    Requests are served strictly one at a time (the reader waits for the reply delay before reading on), as on
    a half-duplex line. Faults: a dropped reply never arrives, a garbled one has one bit flipped.
    """

    def __init__(
        self,
        dtu_id: str,
        meters: Sequence[VirtualMeter],
        *,
        headend: tuple[str, int],
        clock: Callable[[], int],
        faults: Faults,
        stats: SimStats,
        heartbeat_s: float = 60.0,
        profile: DtuProfile = DEFAULT_PROFILE,
        layout: RechargeLayout = DEFAULT_RECHARGE_LAYOUT,
        connect_timeout_s: float = 10.0,
    ) -> None:
        assert heartbeat_s > 0
        self.dtu_id = dtu_id
        self.registration = encode_registration(dtu_id, profile)
        self.heartbeat = encode_heartbeat(profile)
        self.bus = Bus(meters, clock, layout)
        self.headend = headend
        self.faults = faults
        self.stats = stats
        self.heartbeat_s = heartbeat_s
        self.connect_timeout_s = connect_timeout_s
        self.registered = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """One connection, until the head-end closes it (raises ``ConnectionError``) or ``stop`` is set."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.headend), self.connect_timeout_s)
        self.stats.connections += 1
        stopped = asyncio.ensure_future(stop.wait())
        try:
            writer.write(self.registration)
            await writer.drain()
            self.registered.set()
            decoder = StreamDecoder()
            while not stop.is_set():
                reading = asyncio.ensure_future(reader.read(4096))
                done, _ = await asyncio.wait({reading, stopped}, timeout=self.heartbeat_s,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if reading not in done:
                    reading.cancel()
                    if stopped in done:
                        break
                    writer.write(self.heartbeat)  # idle for a heartbeat interval
                    await writer.drain()
                    continue
                data = reading.result()
                if not data:
                    raise ConnectionError(f"DTU {self.dtu_id}: the head-end closed the connection")
                await self._serve(decoder.feed(data), writer)
        finally:
            stopped.cancel()
            self.stats.connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, items: Sequence[object], writer: asyncio.StreamWriter) -> None:
        for item in items:
            if isinstance(item, DecodeError):
                self.stats.error(f"DTU {self.dtu_id}: line noise: {item}")
                continue
            if not isinstance(item, Frame):
                continue
            reply = self.bus.answer(item)
            if reply is None:
                continue
            delay_s = self.faults.delay_s()
            if delay_s:
                await asyncio.sleep(delay_s)  # the meter's answer time at 2400 baud; the line stays busy
            if self.faults.should_drop():
                self.stats.dropped += 1
                continue
            wire = encode_frame(reply)
            garbled = self.faults.maybe_garble(wire)
            self.stats.garbled += garbled != wire
            writer.write(garbled)
            await writer.drain()
            self.stats.frames_answered += 1
