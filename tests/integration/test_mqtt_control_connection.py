"""Commands keep moving while readings flood an MQTT head-end: the link's control connection, on the real Mosquitto.

Before, one broker connection carried the readings and the control traffic: when the head-end fell behind the
readings, the PUBACKs of its commands and the meters' acks waited behind thousands of readings in the broker's
stream to it (a 100,000-meter peak: trip and close commands stayed unsent for minutes). Now the shared
subscription has a connection of its own (``<client_id>-bulk``), and commands, acks and statuses go by the control
connection. Each test uses its own site and group and clears the retained statuses it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt
import paho.mqtt.client as paho
import pytest

from powergate.headend.model import CommandKind, CommandResult, MeterCommand, MeterEndpoint, Transport
from powergate.headend.mqtt_link import MqttLink
from powergate.protocols import mqtt
from testkit import StalledSinks, running, unique, until

pytestmark = pytest.mark.mqtt
TIMEOUT_S = 20.0
COMMAND_S = 3.0
"""A paying tenant gets power back in a second or two (DESIGN.md); a loaded 2-core CI machine gets some slack."""
FLOOD_MAX = 60_000
AT = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def address(index: int) -> str:
    return f"{index:012d}"


def endpoint(site: str, meter: str) -> MeterEndpoint:
    return MeterEndpoint(f"M-{meter}", Transport.MQTT, meter, site)


def command(kind: CommandKind) -> MeterCommand:
    return MeterCommand(unique("cmd-"), kind, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))


def reading(site: str, meter: str, total_wh: int) -> tuple[str, bytes]:
    message = mqtt.Reading(meter, unique("r"), AT, total_wh)
    return mqtt.message_topic(site, message), mqtt.encode(message)


def status(site: str, meter: str, state: str) -> tuple[str, bytes]:
    message = mqtt.Status(meter, state, AT)
    return mqtt.message_topic(site, message), mqtt.encode(message)


class Meter:
    """A meter on the broker: acks each command on its ``down/cmd`` once ``answering`` is set."""

    def __init__(self, broker: tuple[str, int], site: str, address: str) -> None:
        self.broker, self.site, self.address = broker, site, address
        self.answering = asyncio.Event()
        self.answering.set()
        self.received: list[str] = []
        self.subscribed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(*self.broker, identifier=unique("pg-meter-")) as client:
            await client.subscribe(mqtt.downlink_filter(self.site, self.address), qos=1)
            self.subscribed.set()
            answer = asyncio.create_task(self._answer(client))
            try:
                await stop.wait()
            finally:
                answer.cancel()
                await asyncio.gather(answer, return_exceptions=True)

    async def _answer(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            decoded = mqtt.decode_for_topic(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
            assert not isinstance(decoded, mqtt.SchemaError), decoded
            sent = decoded[1]
            assert isinstance(sent, mqtt.Command)
            self.received.append(sent.command_id)
            await self.answering.wait()
            ack = mqtt.Ack(sent.command_id, self.address, dt.datetime.now(dt.UTC), "ok")
            await client.publish(mqtt.message_topic(self.site, ack), mqtt.encode(ack), qos=1)


class Flood:
    """Readings of many meters at QoS 0, as fast as one publisher goes, until stopped (at most ``FLOOD_MAX``)."""

    def __init__(self, broker: tuple[str, int], site: str) -> None:
        self.broker, self.site = broker, site
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=unique("pg-flood-"), protocol=paho.MQTTv5)
        client.connect(*self.broker)
        client.loop_start()
        try:
            while not self.stop.is_set() and self.sent < FLOOD_MAX:
                for _ in range(500):
                    client.publish(*reading(self.site, address(100 + self.sent % 1_000), 1_000 + self.sent), qos=0)
                    self.sent += 1
                time.sleep(0.01)  # lets paho's network thread send what is queued
        finally:
            client.disconnect()
            client.loop_stop()


async def publish(broker: tuple[str, int], messages: Sequence[tuple[str, bytes]], retain: bool = False) -> None:
    async with aiomqtt.Client(*broker, identifier=unique("pg-pub-")) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


async def clear_statuses(broker: tuple[str, int], site: str, meters: Sequence[str]) -> None:
    await publish(broker, [(mqtt.topic(site, m, mqtt.Direction.UP, mqtt.Kind.STATUS), b"") for m in meters], True)


async def settled(state: Callable[[], object], what: str, quiet_s: float = 0.5) -> None:
    """Wait until ``state()`` has not changed for ``quiet_s``."""
    deadline = time.monotonic() + TIMEOUT_S
    last, since = state(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
        now = state()
        if now != last:
            last, since = now, time.monotonic()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(6 * TIMEOUT_S):
            await scenario()

    asyncio.run(bounded())


def new_link(broker: tuple[str, int], site: str, sink: StalledSinks, **options: object) -> MqttLink:
    return MqttLink(
        *broker,
        group=unique("g"),
        sites=(site,),
        reading_sink=sink.take_readings,
        notice_sink=sink.take_notices,
        batch_size=100,
        batch_wait_s=0.05,
        **options,  # type: ignore[arg-type]
    )


async def timed(link: MqttLink, target: MeterEndpoint, kind: CommandKind) -> float:
    started = time.monotonic()
    result = await asyncio.wait_for(link.execute(target, command(kind)), TIMEOUT_S)
    assert isinstance(result, CommandResult) and result.ok, result
    return time.monotonic() - started


def test_commands_are_acked_in_seconds_while_readings_flood_a_link_whose_reading_sink_is_blocked(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meter = unique("s"), address(1)
    target = endpoint(site, meter)
    sink = StalledSinks()
    flood = Flood(mqtt_broker, site)
    latencies: list[float] = []

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, sink, max_incoming=2_000, max_sink_queue=1_000)
        link.register([target])
        peer = Meter(mqtt_broker, site, meter)
        flooding: asyncio.Future[None] | None = None
        try:
            async with running(link.run, peer.run):
                await asyncio.wait_for(asyncio.gather(link.connected.wait(), peer.subscribed.wait()), TIMEOUT_S)
                assert link.bulk_connected.is_set(), "the bulk connection is made before connected is set"
                await publish(mqtt_broker, [status(site, meter, "online")], retain=True)
                await until(lambda: link.online(target), "the meter's status")
                flooding = asyncio.ensure_future(asyncio.to_thread(flood.run))
                # the sink is blocked: the batch in its hands, its queue and the intake fill, the rest is dropped
                await until(lambda: link.counters.dropped > 0, "the bulk side to fall behind and drop readings")
                for kind in (CommandKind.TRIP, CommandKind.CLOSE, CommandKind.TRIP, CommandKind.CLOSE):
                    assert not flooding.done(), "the flood is still going while the command travels"
                    latencies.append(await timed(link, target, kind))
                flood.stop.set()
                await asyncio.wait_for(flooding, TIMEOUT_S)
                assert sink.readings == [] and link.counters.disconnects == 0
                sink.release.set()  # the database catches up: what the link kept reaches the sink, in order
                await settled(lambda: (len(sink.readings), link.counters.readings), "the backlog to drain")
                await publish(mqtt_broker, [reading(site, meter, 99_000)])
                await until(lambda: any(s.total_wh == 99_000 for s in sink.readings), "a reading after the flood")
                assert sink.readings[-1].total_wh == 99_000 and sink.readings[-1].meter_id == target.meter_id
                assert len(sink.readings) == link.counters.readings, "every reading the link kept reached the sink"
                assert len(sink.readings) + link.counters.dropped >= 3_000, (link.counters, flood.sent)
                assert len(peer.received) == 4
        finally:
            flood.stop.set()
            if flooding is not None:
                await asyncio.gather(flooding, return_exceptions=True)
            await clear_statuses(mqtt_broker, site, [meter])

    run(scenario)
    assert max(latencies) < COMMAND_S, f"command round trips under the flood: {latencies}"


def test_the_broker_dropping_the_bulk_connection_fails_no_command_and_readings_resume_after_it_reconnects(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meter = unique("s"), address(2)
    target = endpoint(site, meter)
    sink = StalledSinks()
    sink.release.set()

    async def scenario() -> None:
        link = new_link(mqtt_broker, site, sink, reconnect_min_s=0.2, command_timeout_s=TIMEOUT_S)
        link.register([target])
        peer = Meter(mqtt_broker, site, meter)
        peer.answering.clear()  # the meter holds its ack: the command waits while the bulk connection goes
        try:
            async with running(link.run, peer.run):
                await asyncio.wait_for(asyncio.gather(link.connected.wait(), peer.subscribed.wait()), TIMEOUT_S)
                await publish(mqtt_broker, [reading(site, meter, 1_000)])
                await until(lambda: len(sink.readings) == 1, "a reading by the bulk connection")
                waiting = asyncio.create_task(link.execute(target, command(CommandKind.CLOSE)))
                await until(lambda: len(peer.received) == 1, "the command at the meter")
                # another client with the bulk connection's id: the broker takes the session over and drops ours
                with contextlib.suppress(aiomqtt.MqttError):  # (our link may take the session back first)
                    async with aiomqtt.Client(*mqtt_broker, identifier=f"{link.client_id}-bulk"):
                        await until(lambda: link.counters.bulk_disconnects == 1, "the bulk connection to drop")
                assert link.connected.is_set() and not waiting.done(), "the command still waits for its ack"
                peer.answering.set()
                result = await asyncio.wait_for(waiting, TIMEOUT_S)
                assert isinstance(result, CommandResult) and result.ok, result
                await until(lambda: link.counters.bulk_connects == 2 and link.bulk_connected.is_set(), "bulk again")
                await publish(mqtt_broker, [reading(site, meter, 1_010)])
                await until(lambda: len(sink.readings) == 2, "a reading after the bulk reconnect")
                assert [s.total_wh for s in sink.readings] == [1_000, 1_010]
                assert link.counters.connects == 1 and link.counters.disconnects == 0
        finally:
            await clear_statuses(mqtt_broker, site, [meter])

    run(scenario)
