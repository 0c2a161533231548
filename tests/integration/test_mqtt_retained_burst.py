"""An MQTT head-end that (re)starts under a connected fleet, on the real local Mosquitto.

On connect the broker sends the retained status of every meter at once; the link used to queue each in the MQTT
client's bounded incoming queue, which overflowed (100,000 meters: 20,000 believed online), and a slow database
held statuses and acks behind readings there. Now statuses and acks are taken on receipt and only readings and
events wait for the sinks. Each test uses its own site and group, and clears the retained statuses it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import aiomqtt
import pytest

from powergate.headend.model import CommandKind, CommandResult, MeterCommand, MeterEndpoint, Transport
from powergate.headend.mqtt_link import MqttLink, OnlineChange
from powergate.protocols import mqtt
from testkit import StalledSinks, publish_and_wait, unique, until

pytestmark = pytest.mark.mqtt
TIMEOUT_S = 20.0
AT = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def address(index: int) -> str:
    return f"{index:012d}"


def endpoint(site: str, meter: str) -> MeterEndpoint:
    return MeterEndpoint(f"M-{meter}", Transport.MQTT, meter, site)


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(4 * TIMEOUT_S):
            await scenario()

    asyncio.run(bounded())


async def publish(broker: tuple[str, int], messages: Sequence[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) at QoS 1, many in flight, and wait until the broker has them all."""
    await asyncio.to_thread(publish_and_wait, broker, messages, TIMEOUT_S)


def status(site: str, meter: str, state: str) -> tuple[str, bytes, bool]:
    message = mqtt.Status(meter, state, AT)
    return mqtt.message_topic(site, message), mqtt.encode(message), True


def cleared(site: str, meters: Sequence[str]) -> list[tuple[str, bytes, bool]]:
    return [(mqtt.topic(site, m, mqtt.Direction.UP, mqtt.Kind.STATUS), b"", True) for m in meters]


def reading(site: str, meter: str, total_wh: int) -> tuple[str, bytes, bool]:
    message = mqtt.Reading(meter, unique("r"), AT, total_wh)
    return mqtt.message_topic(site, message), mqtt.encode(message), False


def test_a_link_that_connects_after_the_fleet_learns_every_status_even_beyond_its_buffer(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meters = unique("s"), [address(i) for i in range(1, 3_001)]
    offline = set(meters[::3])

    async def scenario() -> None:
        await publish(mqtt_broker, [status(site, m, "offline" if m in offline else "online") for m in meters])
        # a buffer of 200 for a burst of 3,000: before, it believed 200 meters online (and logged 2,800 drops)
        link = MqttLink(*mqtt_broker, group=unique("g"), sites=(site,), max_incoming=200, known_only=True)
        link.register(endpoint(site, m) for m in meters)
        try:
            async with running(link):
                await until(lambda: link.counters.retained >= len(meters), "the retained statuses")
                online = {m for m in meters if link.online(endpoint(site, m))}
                assert online == set(meters) - offline
                assert all(link.known_offline(endpoint(site, m)) for m in offline)
                assert link.counters.retained == len(meters), "each retained status came once (not by SHARED)"
                assert link.counters.dropped == 0
        finally:
            await publish(mqtt_broker, cleared(site, meters))

    run(scenario)


def test_with_the_reading_sink_stalled_statuses_and_acks_are_still_taken_and_only_readings_are_dropped(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meter, other = unique("s"), address(1), address(2)
    sink = StalledSinks()
    flood = 600
    acked: list[str] = []
    dropped: list[int] = []

    async def answer(client: aiomqtt.Client) -> None:
        """The meter: acks every command it gets."""
        async for message in client.messages:
            decoded = mqtt.decode_for_topic(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
            assert not isinstance(decoded, mqtt.SchemaError), decoded
            command = decoded[1]
            assert isinstance(command, mqtt.Command)
            ack = mqtt.Ack(command.command_id, meter, dt.datetime.now(dt.UTC), "ok")
            acked.append(command.command_id)
            await client.publish(mqtt.message_topic(site, ack), mqtt.encode(ack), qos=1)

    async def scenario() -> None:
        link = MqttLink(
            *mqtt_broker,
            group=unique("g"),
            sites=(site,),
            reading_sink=sink.take_readings,
            notice_sink=sink.take_notices,
            batch_size=10,
            max_incoming=50,
            max_sink_queue=50,
        )
        try:
            async with running(link), aiomqtt.Client(*mqtt_broker, identifier=unique("pg-meter-")) as peer:
                await peer.subscribe(mqtt.downlink_filter(site, meter), qos=1)
                responder = asyncio.create_task(answer(peer))
                await publish(mqtt_broker, [status(site, meter, "online"), status(site, other, "online")])
                await until(lambda: link.online(endpoint(site, other)), "the statuses")
                # the database is behind: 600 readings fill the batch in the sink (10), the sink queue (50), the
                # consumer's hand (1) and the intake (50); the rest are dropped and counted
                await publish(mqtt_broker, [reading(site, address(3 + i % 50), 1_000 + i) for i in range(flood)])
                await until(lambda: link.counters.dropped >= flood - 111, "the readings taken or dropped")
                await publish(mqtt_broker, [status(site, other, "offline")])
                await until(lambda: link.known_offline(endpoint(site, other)), "a status while the sink is stalled")
                valid_until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
                command = MeterCommand(unique("cmd-"), CommandKind.TRIP, valid_until)
                result = await asyncio.wait_for(link.execute(endpoint(site, meter), command), TIMEOUT_S)
                assert isinstance(result, CommandResult) and result.ok, result
                assert acked == [command.command_id]
                assert sink.readings == []
                sink.release.set()
                await until(lambda: len(sink.readings) == flood - link.counters.dropped, "the kept readings")
                dropped.append(link.counters.dropped)
                responder.cancel()
                await asyncio.gather(responder, return_exceptions=True)
        finally:
            await publish(mqtt_broker, cleared(site, [meter, other]))

    run(scenario)
    assert flood - 111 <= dropped[0] < flood and len(sink.readings) == flood - dropped[0]
    changes = [(n.meter_id, n.online) for n in sink.notices if isinstance(n, OnlineChange)]
    assert changes == [(meter, True), (other, True), (other, False)]


def test_a_reading_says_its_meter_is_online_until_an_explicit_offline_status_and_that_until_the_next_reading(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meter = unique("s"), address(7)
    target = endpoint(site, meter)

    async def scenario() -> None:
        await publish(mqtt_broker, [status(site, meter, "offline")])  # retained: what a new link learns first
        link = MqttLink(*mqtt_broker, group=unique("g"), sites=(site,), known_only=True)
        link.register([target])
        try:
            async with running(link):
                await until(lambda: link.known_offline(target), "the retained offline status")
                await publish(mqtt_broker, [reading(site, meter, 1_000)])
                await until(lambda: link.online(target), "the reading")
                await publish(mqtt_broker, [status(site, meter, "offline")])
                await until(lambda: link.known_offline(target), "the explicit offline status")
                await publish(mqtt_broker, [reading(site, meter, 1_010)])
                await until(lambda: link.online(target), "the next reading")
        finally:
            await publish(mqtt_broker, cleared(site, [meter]))

    run(scenario)
