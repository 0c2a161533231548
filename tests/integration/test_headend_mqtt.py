"""``MqttLink`` against the real Mosquitto broker, with simulated MQTT meters (``powergate.sim.mqtt_face``) as peers.

Each test uses its own site and group names, so other tests' traffic on ``pg/v1/...`` cannot disturb its counts,
and clears the retained statuses it leaves behind. The transparent-mode peer is written here (the simulator's MQTT
face answers JSON commands only): it answers ``down/raw`` frames with the meter's DL/T 645 face.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

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
from powergate.headend.mqtt_link import MeterEvent, MqttLink, Notice, OnlineChange
from powergate.protocols import dlt645, mqtt
from powergate.sim import dlt645_face
from powergate.sim.meter import EventKind, VirtualMeter
from powergate.sim.mqtt_face import MqttGateway
from powergate.sim.profiles import RESIDENTIAL
from testkit import running, until

pytestmark = pytest.mark.mqtt
TIMEOUT_S = 20.0


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def meters(count: int) -> list[VirtualMeter]:
    start_s = int(time.time()) - 3600
    return [VirtualMeter(f"{i:012d}", RESIDENTIAL, seed=i, now_s=start_s) for i in range(1, count + 1)]


def endpoint(site: str, meter: VirtualMeter) -> MeterEndpoint:
    return MeterEndpoint(f"{site}-{meter.address}", Transport.MQTT, meter.address, site)


def command(kind: CommandKind, **fields: object) -> MeterCommand:
    valid_until = datetime.now(UTC) + timedelta(minutes=5)
    return MeterCommand(unique("cmd-"), kind, valid_until, **fields)  # type: ignore[arg-type]


class Collected:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.readings: list[MeterSnapshot] = []
        self.notices: list[Notice] = []

    async def take_readings(self, batch: Sequence[MeterSnapshot]) -> None:
        self.readings.extend(batch)

    async def take_notices(self, batch: Sequence[Notice]) -> None:
        self.notices.extend(batch)


def new_link(
    broker: tuple[str, int], site: str, group: str, sink: Collected | None = None, **options: object
) -> MqttLink:
    host, port = broker
    sink = sink or Collected()
    return MqttLink(
        host,
        port,
        group=group,
        sites=(site,),
        reading_sink=sink.take_readings,
        notice_sink=sink.take_notices,
        batch_wait_s=0.05,
        **options,  # type: ignore[arg-type]
    )


async def clear_retained(broker: tuple[str, int], site: str, addresses: Sequence[str]) -> None:
    """Remove the retained statuses a test leaves, so the broker does not collect them run after run."""
    host, port = broker
    async with aiomqtt.Client(host, port, identifier=unique("pg-clean-")) as client:
        for address in addresses:
            await client.publish(mqtt.topic(site, address, mqtt.Direction.UP, mqtt.Kind.STATUS), b"", retain=True)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(6 * TIMEOUT_S):
            await scenario()

    asyncio.run(bounded())


def test_two_links_in_one_shared_group_each_get_part_of_the_uplink_and_together_all_of_it(
    mqtt_broker: tuple[str, int],
) -> None:
    site, group = unique("s"), unique("g")
    fleet = meters(20)
    sinks = [Collected(), Collected()]

    async def scenario() -> None:
        links = [new_link(mqtt_broker, site, group, sink) for sink in sinks]
        for link in links:
            link.register(endpoint(site, m) for m in fleet)
        gateway = MqttGateway(fleet, host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=1.0)
        async with running(links[0].run, links[1].run):
            for link in links:
                await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
            async with running(gateway.run):
                await until(lambda: sum(len(s.readings) for s in sinks) >= 60, "three rounds of readings")
            published = gateway.stats.readings_published
            await until(lambda: sum(len(s.readings) for s in sinks) >= published, "the readings in flight")
            await asyncio.sleep(0.3)  # time for a duplicate to show up, if there were one
            assert sum(len(s.readings) for s in sinks) == published, "every reading handed over exactly once"
        await clear_retained(mqtt_broker, site, [m.address for m in fleet])

    run(scenario)
    first, second = ({r.meter_id for r in sink.readings} for sink in sinks)
    assert first and second, "the broker shared the readings between both links"
    assert first | second == {f"{site}-{m.address}" for m in fleet}
    reading = sinks[0].readings[0]
    assert reading.total_wh is not None and reading.bands_wh is not None and sum(reading.bands_wh) == reading.total_wh
    assert reading.relay_open is False and reading.voltage_dv is not None and reading.at.tzinfo is not None
    online_notices = [n for s in sinks for n in s.notices if isinstance(n, OnlineChange) and n.online]
    assert {n.meter_id for n in online_notices} == {f"{site}-{m.address}" for m in fleet}


def test_a_trip_is_acknowledged_and_the_open_relay_is_read_back(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    (meter,) = meters(1)
    target = endpoint(site, meter)

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group)
        gateway = MqttGateway([meter], host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=3600)
        async with running(link.run, gateway.run):
            await until(lambda: link.online(target), "the meter's online status")
            before = await link.read(target, frozenset({ReadItem.RELAY, ReadItem.ENERGY}))
            assert isinstance(before, MeterSnapshot) and before.relay_open is False, before
            assert before.meter_id == target.meter_id and before.total_wh is not None

            assert await link.execute(target, command(CommandKind.TRIP)) == CommandResult(ok=True)
            after = await link.read(target, frozenset({ReadItem.RELAY}))
            assert isinstance(after, MeterSnapshot) and after.relay_open is True, after
            assert meter.relay_open()

            assert await link.execute(target, command(CommandKind.CLOSE)) == CommandResult(ok=True)
            closed = await link.read(target, frozenset({ReadItem.RELAY}))
            assert isinstance(closed, MeterSnapshot) and closed.relay_open is False
        await clear_retained(mqtt_broker, site, [meter.address])

    run(scenario)


def test_a_repeated_recharge_is_reported_already_applied_and_credited_once(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    (meter,) = meters(1)
    target = endpoint(site, meter)

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group)
        gateway = MqttGateway([meter], host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=3600)
        async with running(link.run, gateway.run):
            await until(lambda: link.online(target), "the meter's online status")
            balance = meter.balance_micros
            recharge = command(CommandKind.RECHARGE, amount_micros=50_000_000, purchase_count=1)
            assert await link.execute(target, recharge) == CommandResult(ok=True)
            retry = MeterCommand(unique("cmd-"), CommandKind.RECHARGE, recharge.valid_until, 50_000_000, 1)
            again = await link.execute(target, retry)
            assert again == CommandResult(ok=True, already_applied=True, reason="already_applied")
            prepaid = await link.read(target, frozenset({ReadItem.PREPAID}))
            assert isinstance(prepaid, MeterSnapshot) and prepaid.purchase_count == 1
            assert 0 <= meter.balance_micros - balance - 50_000_000 < 1_000_000  # minus what the load used meanwhile
            stale = command(CommandKind.RECHARGE, amount_micros=10_000_000, purchase_count=5)
            refused = await link.execute(target, stale)
            assert isinstance(refused, LinkError) and refused.kind is FailureKind.REJECTED, refused
        await clear_retained(mqtt_broker, site, [meter.address])

    run(scenario)


def test_commands_the_mqtt_schema_cannot_carry_or_that_expired_are_refused_without_sending(
    mqtt_broker: tuple[str, int],
) -> None:
    site, group = unique("s"), unique("g")
    (meter,) = meters(1)
    target = endpoint(site, meter)

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group)
        gateway = MqttGateway([meter], host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=3600)
        async with running(link.run, gateway.run):
            await until(lambda: link.online(target), "the meter's online status")
            protect = await link.execute(target, command(CommandKind.PROTECT_ON))
            assert isinstance(protect, LinkError) and "protect_on" in protect.reason
            expired = MeterCommand("late-1", CommandKind.TRIP, datetime.now(UTC) - timedelta(seconds=1))
            refused = await link.execute(target, expired)
            assert (
                isinstance(refused, LinkError) and refused.kind is FailureKind.REJECTED and "expired" in refused.reason
            )
            incomplete = await link.execute(target, command(CommandKind.RECHARGE, amount_micros=1))
            assert isinstance(incomplete, LinkError) and "purchase_count" in incomplete.reason
            assert gateway.stats.commands_done == 0 and not meter.relay_open()
        await clear_retained(mqtt_broker, site, [meter.address])

    run(scenario)


def test_a_meter_that_never_answers_times_out(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    ghost = MeterEndpoint("ghost", Transport.MQTT, "000000009999", site)

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group, read_timeout_s=0.5, command_timeout_s=0.5)
        async with running(link.run):
            await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
            assert not link.online(ghost)
            read = await link.read(ghost, frozenset({ReadItem.ENERGY}))
            assert isinstance(read, LinkError) and read.kind is FailureKind.TIMEOUT and read.retryable
            trip = await link.execute(ghost, command(CommandKind.TRIP))
            assert isinstance(trip, LinkError) and trip.kind is FailureKind.TIMEOUT

    run(scenario)


def test_a_link_that_is_not_connected_answers_offline_at_once() -> None:
    async def scenario() -> None:
        link = MqttLink("127.0.0.1", 1)
        target = MeterEndpoint("m", Transport.MQTT, "000000000001", "site")
        read = await link.read(target, frozenset({ReadItem.ENERGY}))
        assert isinstance(read, LinkError) and read.kind is FailureKind.OFFLINE
        assert not link.online(target)

    asyncio.run(scenario())


def test_a_meter_whose_process_dies_is_seen_offline_by_its_last_will(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    site, group = unique("s"), unique("g")
    address = "000000000042"
    target = MeterEndpoint("m42", Transport.MQTT, address, site)
    program = textwrap.dedent(f"""
        import asyncio, time
        from powergate.sim.meter import VirtualMeter
        from powergate.sim.mqtt_face import MqttGateway
        from powergate.sim.profiles import RESIDENTIAL
        meter = VirtualMeter({address!r}, RESIDENTIAL, seed=42, now_s=int(time.time()))
        gateway = MqttGateway([meter], host={host!r}, port={port}, site={site!r}, interval_s=3600, keepalive_s=5)
        asyncio.run(gateway.run(asyncio.Event()))
    """)
    sink = Collected()

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group, sink)
        link.register([target])
        async with running(link.run):
            await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
            child = subprocess.Popen([sys.executable, "-c", program])
            try:
                await until(lambda: link.online(target), "the meter's online status")
            finally:
                child.kill()
                child.wait(timeout=10)
            await until(lambda: not link.online(target), "the last will")
            trip = await link.execute(target, command(CommandKind.TRIP))
            assert isinstance(trip, LinkError) and trip.kind is FailureKind.OFFLINE
            await until(lambda: any(isinstance(n, OnlineChange) and not n.online for n in sink.notices), "a notice")
        await clear_retained(mqtt_broker, site, [address])

    run(scenario)
    changes = [(n.meter_id, n.online, n.reason) for n in sink.notices if isinstance(n, OnlineChange)]
    assert changes == [("m42", True, None), ("m42", False, "last will")]


def test_a_new_link_learns_which_meters_are_online_from_the_retained_status(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    fleet = meters(3)

    async def scenario() -> None:
        gateway = MqttGateway(fleet, host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=3600)
        async with running(gateway.run):
            await asyncio.wait_for(gateway.connected.wait(), TIMEOUT_S)
            late = new_link(mqtt_broker, site, group)
            async with running(late.run):
                await until(lambda: all(late.online(endpoint(site, m)) for m in fleet), "retained statuses")
        await clear_retained(mqtt_broker, site, [m.address for m in fleet])

    run(scenario)


def test_events_pushed_by_a_meter_reach_the_notice_sink(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    (meter,) = meters(1)
    sink = Collected()

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group, sink)
        gateway = MqttGateway([meter], host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=3600)
        async with running(link.run, gateway.run):
            await until(lambda: link.online(endpoint(site, meter)), "the meter's online status")
            meter.begin_event(EventKind.COVER_OPEN, int(time.time()))
            await gateway.publish_events(meter)
            await until(lambda: any(isinstance(n, MeterEvent) for n in sink.notices), "the event")
        await clear_retained(mqtt_broker, site, [meter.address])

    run(scenario)
    (event,) = [n for n in sink.notices if isinstance(n, MeterEvent)]
    assert event.type == "cover_open" and event.meter_id == meter.address and event.count == 1


async def raw_peer(broker: tuple[str, int], site: str, meter: VirtualMeter, stop: asyncio.Event) -> None:
    """A meter in transparent mode: DL/T 645 frames in on ``down/raw``, its replies out on ``up/raw``."""
    host, port = broker
    async with aiomqtt.Client(host, port, identifier=unique("pg-raw-")) as client:
        await client.subscribe(mqtt.topic(site, meter.address, mqtt.Direction.DOWN, mqtt.Kind.RAW), qos=1)
        reader = asyncio.create_task(_answer_raw(client, site, meter))
        await stop.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _answer_raw(client: aiomqtt.Client, site: str, meter: VirtualMeter) -> None:
    async for message in client.messages:
        decoded = mqtt.decode_for_topic(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
        assert not isinstance(decoded, mqtt.SchemaError), decoded
        request = dlt645.decode_frame(decoded[1].frame)  # type: ignore[union-attr]
        assert not isinstance(request, dlt645.DecodeError), request
        reply = dlt645_face.answer(meter, request, int(time.time()))
        if reply is not None:
            answer = mqtt.RawFrame(meter.address, dlt645.encode_frame(reply), None, decoded[1].correlation_id)  # type: ignore[union-attr]
            await client.publish(mqtt.message_topic(site, answer, mqtt.Direction.UP), mqtt.encode(answer), qos=1)


def test_transparent_mode_carries_dlt645_reads_through_the_broker(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    (meter,) = meters(1)
    target = endpoint(site, meter)

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, group)

        async def peer(stop: asyncio.Event) -> None:
            await raw_peer(mqtt_broker, site, meter, stop)

        async with running(link.run, peer):
            await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
            await asyncio.sleep(0.3)  # the peer's SUBSCRIBE
            reply = await link.exchange(target, dlt645.read_request(meter.address, 0x0001FF00))
            assert isinstance(reply, dlt645.Frame) and reply.reply and not reply.error, reply
            assert int.from_bytes(reply.data[:4], "little") == 0x0001FF00
            value = dlt645.decode_data(0x0001FF00, reply.data[4:])
            assert isinstance(value, tuple), value
            total, *bands = value
            assert total == meter.total_ticks() * 10 > 0 and sum(bands) == total
            unknown = await link.exchange(target, dlt645.read_request(meter.address, 0x0FFFFFFF))
            assert isinstance(unknown, dlt645.Frame) and unknown.error

    run(scenario)


class Proxy:
    """A TCP relay between the link and the broker that a test can cut (every connection dropped, no new
    ones accepted) and restore on the same port: a broker restart or a network outage, seen from the link."""

    def __init__(self, broker: tuple[str, int]) -> None:
        self.broker = broker
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()
        self.server, self.writers = None, []

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.broker)
        self.writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def test_a_link_that_loses_the_broker_fails_its_waiters_offline_and_reconnects(mqtt_broker: tuple[str, int]) -> None:
    site, group = unique("s"), unique("g")
    (meter,) = meters(1)
    target = endpoint(site, meter)

    async def scenario() -> None:
        proxy = Proxy(mqtt_broker)
        await proxy.start()
        try:
            link = new_link(("127.0.0.1", proxy.port), site, group, read_timeout_s=15, reconnect_min_s=0.2)
            gateway = MqttGateway([meter], host=mqtt_broker[0], port=mqtt_broker[1], site=site, interval_s=3600)
            async with running(link.run, gateway.run):
                await until(lambda: link.online(target), "the meter's online status")
                ghost = MeterEndpoint("ghost", Transport.MQTT, "000000009999", site)
                waiting = asyncio.create_task(link.read(ghost, frozenset({ReadItem.ENERGY})))
                await asyncio.sleep(0.3)
                await proxy.cut()
                failed = await asyncio.wait_for(waiting, 5)
                assert isinstance(failed, LinkError) and failed.kind is FailureKind.OFFLINE, failed
                await until(lambda: not link.connected.is_set(), "the link to notice")
                assert not link.online(target)
                await asyncio.sleep(0.5)  # a few refused attempts, backing off
                await proxy.start()
                await until(lambda: link.counters.connects == 2 and link.online(target), "the reconnect")
                assert link.counters.disconnects >= 1
                after = await link.read(target, frozenset({ReadItem.ENERGY}))
                assert isinstance(after, MeterSnapshot) and after.total_wh is not None
        finally:
            await proxy.cut()
        await clear_retained(mqtt_broker, site, [meter.address])

    run(scenario)
