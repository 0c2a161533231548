"""``ModbusLink`` over real TCP against the simulator's Modbus server (``powergate.sim.modbus_face``).

The RTU-over-TCP peer is the same meter context behind pymodbus's TCP server with the RTU framer (what a serial
server in transparent mode puts on the wire); the slow and silent peers are written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from powergate.headend.modbus_link import Gateway, ModbusLink
from powergate.headend.model import (
    CommandKind,
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterSnapshot,
    ReadItem,
    Transport,
)
from powergate.sim.meter import Band, EventKind, VirtualMeter
from powergate.sim.modbus_face import MeterContext, bound_port, start_modbus_server
from powergate.sim.profiles import RESIDENTIAL
from testkit import free_port

TIMEOUT_S = 20.0
EVERYTHING = frozenset({ReadItem.ENERGY, ReadItem.INSTANT, ReadItem.RELAY, ReadItem.PREPAID})


class Clock:
    """The simulated meters' clock (seconds), frozen unless a test moves it: values read are exact."""

    def __init__(self) -> None:
        self.now_s = int(time.time())

    def __call__(self) -> int:
        return self.now_s


def make_meters(count: int, now_s: int) -> list[VirtualMeter]:
    return [
        VirtualMeter(f"{i:012d}", RESIDENTIAL, seed=i, now_s=now_s - 7200, band_ticks=(i, 2 * i, 3 * i, 4 * i))
        for i in range(1, count + 1)
    ]


def endpoint(link_id: str, unit: int, model: str = "default") -> MeterEndpoint:
    return MeterEndpoint(f"meter-{unit}", Transport.MODBUS, str(unit), link_id, model)


def command(kind: CommandKind, **fields: object) -> MeterCommand:
    return MeterCommand(f"cmd-{kind.value}", kind, datetime.now(UTC) + timedelta(minutes=5), **fields)  # type: ignore[arg-type]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(3 * TIMEOUT_S):
            await scenario()

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def served(
    meters: Sequence[VirtualMeter], clock: Clock, *, rtu: bool = False, context: MeterContext | None = None
) -> AsyncIterator[tuple[str, MeterContext]]:
    """A Modbus server for ``meters`` on a free port; yields its link id and the meter context."""
    if rtu or context is not None:
        context = context or MeterContext(dict(enumerate(meters, start=1)), clock=clock)
        server = ModbusTcpServer(context, address=("127.0.0.1", 0), framer=FramerType.RTU if rtu else FramerType.SOCKET)
        await server.serve_forever(background=True)
        await asyncio.sleep(0)
    else:
        server, context = await start_modbus_server(meters, "127.0.0.1", 0, clock=clock)
    try:
        yield f"{'rtu://' if rtu else ''}127.0.0.1:{bound_port(server)}", context
    finally:
        await server.shutdown()


def test_a_read_returns_energy_relay_prepaid_and_instant_values_as_the_meter_holds_them() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(3, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock) as (link_id, _):
            snapshot = await link.read(endpoint(link_id, 2), EVERYTHING)
            assert link.online(endpoint(link_id, 2))
        await link.close()
        meter = meters[1]
        assert isinstance(snapshot, MeterSnapshot), snapshot
        assert snapshot.meter_id == "meter-2" and snapshot.at.tzinfo is not None
        assert snapshot.total_wh == meter.total_ticks() * 10 > 0
        assert snapshot.bands_wh == tuple(meter.band_ticks(band) * 10 for band in Band)
        assert snapshot.relay_open is False
        assert snapshot.remaining_micros == meter.balance_micros // 10_000 * 10_000 and snapshot.overdraft_micros == 0
        assert snapshot.purchase_count == 0
        assert snapshot.voltage_dv == meter.voltage_dv() and snapshot.frequency_chz == meter.frequency_chz()
        assert snapshot.power_dw == meter.signed_power_w() * 10

    run(scenario)


def test_rtu_over_tcp_reads_the_same_registers() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(2, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock, rtu=True) as (link_id, _):
            assert link_id.startswith("rtu://")
            snapshot = await link.read(endpoint(link_id, 1), frozenset({ReadItem.ENERGY}))
        await link.close()
        assert isinstance(snapshot, MeterSnapshot), snapshot
        assert snapshot.total_wh == meters[0].total_ticks() * 10 and snapshot.relay_open is None

    run(scenario)


def test_a_trip_opens_the_relay_and_a_close_closes_it_as_read_back() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(2, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock) as (link_id, _):
            target = endpoint(link_id, 1)
            assert await link.execute(target, command(CommandKind.TRIP)) == CommandResult(ok=True)
            tripped = await link.read(target, frozenset({ReadItem.RELAY}))
            assert isinstance(tripped, MeterSnapshot) and tripped.relay_open is True
            assert meters[0].relay_open() and not meters[1].relay_open()
            assert await link.execute(target, command(CommandKind.CLOSE)) == CommandResult(ok=True)
            closed = await link.read(target, frozenset({ReadItem.RELAY}))
            assert isinstance(closed, MeterSnapshot) and closed.relay_open is False
        await link.close()

    run(scenario)


def test_a_recharge_is_written_once_and_a_repeat_is_already_applied_without_a_write() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(1, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock) as (link_id, context):
            target = endpoint(link_id, 1)
            meters[0].advance(clock.now_s)  # the clock stands still from here: the balance moves only by recharges
            before = meters[0].balance_micros
            recharge = command(CommandKind.RECHARGE, amount_micros=30_000_000, purchase_count=1)
            assert await link.execute(target, recharge) == CommandResult(ok=True)
            assert context.counters.writes == 1
            again = await link.execute(target, recharge)
            assert isinstance(again, CommandResult) and again.ok and again.already_applied
            assert context.counters.writes == 1, "the repeat was not written"
            assert meters[0].balance_micros == before + 30_000_000 and meters[0].purchase_count == 1
            gap = await link.execute(target, command(CommandKind.RECHARGE, amount_micros=1_000_000, purchase_count=5))
            assert (
                isinstance(gap, LinkError) and gap.kind is FailureKind.REJECTED and "illegal data value" in gap.reason
            )
            prepaid = await link.read(target, frozenset({ReadItem.PREPAID}))
            assert isinstance(prepaid, MeterSnapshot) and prepaid.purchase_count == 1
        await link.close()

    run(scenario)


def test_settings_are_written_through_the_register_map() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(1, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock) as (link_id, _):
            target = endpoint(link_id, 1)
            alarms = command(CommandKind.SET_ALARMS, alarm1_micros=50_000_000, alarm2_micros=20_000_000)
            assert await link.execute(target, alarms) == CommandResult(ok=True)
            assert await link.execute(
                target, command(CommandKind.SET_POWER_LIMIT, power_limit_w=4400)
            ) == CommandResult(ok=True)
            prices = command(CommandKind.SET_PRICES, prices_micros=(1_234_500, 987_600, 650_000, 312_300))
            assert await link.execute(target, prices) == CommandResult(ok=True)
            odd = await link.execute(target, command(CommandKind.SET_PRICES, prices_micros=(1_234_567,)))
            assert isinstance(odd, LinkError) and "step" in odd.reason  # 4 decimals of a yuan, no more
            sync = await link.execute(target, command(CommandKind.TIME_SYNC, at=datetime.now(UTC)))
            assert isinstance(sync, LinkError) and sync.kind is FailureKind.REJECTED
        await link.close()
        settings = meters[0].settings
        assert (settings.alarm1_micros, settings.alarm2_micros, settings.power_limit_w) == (
            50_000_000,
            20_000_000,
            4400,
        )
        assert settings.prices_micros == (1_234_500, 987_600, 650_000, 312_300)

    run(scenario)


def test_an_expired_command_is_never_written() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(1, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock) as (link_id, context):
            late = MeterCommand("late", CommandKind.TRIP, datetime.now(UTC) - timedelta(seconds=1))
            refused = await link.execute(endpoint(link_id, 1), late)
            assert isinstance(refused, LinkError) and "expired" in refused.reason
            assert context.counters.writes == 0 and not meters[0].relay_open()
        await link.close()

    run(scenario)


def test_a_meter_without_supply_times_out_through_its_gateway_and_reads_offline() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(2, clock.now_s)
        meters[1].begin_event(EventKind.POWER_FAIL, clock.now_s)
        link = ModbusLink()
        async with served(meters, clock) as (link_id, _):
            silent = await link.read(endpoint(link_id, 2), frozenset({ReadItem.ENERGY}))
            assert isinstance(silent, LinkError) and silent.kind is FailureKind.TIMEOUT
            assert "failed to respond" in silent.reason
            assert not link.online(endpoint(link_id, 2)) and link.online(endpoint(link_id, 1))
            unknown_model = await link.read(endpoint(link_id, 1, "no-such-model"), frozenset({ReadItem.ENERGY}))
            assert isinstance(unknown_model, LinkError) and unknown_model.kind is FailureKind.REJECTED
        await link.close()

    run(scenario)


def test_an_unreachable_gateway_is_offline_and_not_redialled_before_its_backoff() -> None:
    async def scenario() -> None:
        link = ModbusLink(backoff_min_s=30)
        target = endpoint(f"127.0.0.1:{free_port()}", 1)
        first = await link.read(target, frozenset({ReadItem.ENERGY}))
        second = await link.read(target, frozenset({ReadItem.ENERGY}))
        assert isinstance(first, LinkError) and first.kind is FailureKind.OFFLINE
        assert isinstance(second, LinkError) and "backoff" in second.reason
        assert link.counters.connect_failures == 1
        assert not link.online(target)

    run(scenario)


def test_a_gateway_that_never_answers_gives_a_timeout_after_the_request_timeout() -> None:
    async def scenario() -> None:
        hung_up = asyncio.Event()

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(-1)  # takes every request, answers none, until the client hangs up
            finally:
                writer.close()
                await writer.wait_closed()
                hung_up.set()

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = ModbusLink(timeout_s=0.3)
        started = time.monotonic()
        result = await link.read(endpoint(f"127.0.0.1:{port}", 1), frozenset({ReadItem.RELAY}))
        elapsed_s = time.monotonic() - started
        await link.close()
        await asyncio.wait_for(hung_up.wait(), 5)
        server.close()
        await server.wait_closed()
        assert isinstance(result, LinkError) and result.kind is FailureKind.TIMEOUT, result
        assert elapsed_s < 2.0

    run(scenario)


class SlowContext(MeterContext):
    """Answers after ``delay_s`` and records how many requests it was working on at once."""

    def __init__(self, meters: dict[int, VirtualMeter], clock: Clock, delay_s: float) -> None:
        super().__init__(meters, clock=clock)
        self.delay_s = delay_s
        self.in_flight = 0
        self.most_in_flight = 0

    async def async_getValues(  # noqa: N802 (pymodbus's name)
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return await super().async_getValues(device_id, func_code, address, count)
        finally:
            self.in_flight -= 1


def test_one_request_is_in_flight_per_gateway_and_the_queue_behind_it_is_bounded() -> None:
    async def scenario() -> None:
        clock = Clock()
        meters = make_meters(8, clock.now_s)
        context = SlowContext(dict(enumerate(meters, start=1)), clock, delay_s=0.02)
        link = ModbusLink(max_waiting=4)
        async with served(meters, clock, context=context) as (link_id, _):
            reads = [link.read(endpoint(link_id, unit), frozenset({ReadItem.ENERGY})) for unit in range(1, 9)]
            results = await asyncio.gather(*reads)
        await link.close()
        served_ok = [r for r in results if isinstance(r, MeterSnapshot)]
        busy = [r for r in results if isinstance(r, LinkError) and r.kind is FailureKind.BUSY]
        assert len(served_ok) == 4 and len(busy) == 4, results
        assert context.most_in_flight == 1

    run(scenario)


def test_gateway_addresses_name_the_framing() -> None:
    assert Gateway.parse("10.0.0.5:502") == Gateway("10.0.0.5", 502, rtu=False)
    assert Gateway.parse("tcp://gw.site-1:1502") == Gateway("gw.site-1", 1502, rtu=False)
    assert Gateway.parse("rtu://10.0.0.6:4001") == Gateway("10.0.0.6", 4001, rtu=True)
    assert Gateway.parse("[::1]:502") == Gateway("::1", 502, rtu=False)
    for bad in ("10.0.0.5", "udp://10.0.0.5:502", "host:0", "host:99999", ":502"):
        assert isinstance(Gateway.parse(bad), LinkError), bad
