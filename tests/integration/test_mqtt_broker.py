"""Our MQTT topics and payloads through the real local Mosquitto broker (aiomqtt, MQTT 5).

Each test uses its own random site id and group name, so tests of other modules publishing on ``pg/v1/...``
at the same time cannot disturb the counts here.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

import aiomqtt
import pytest
from aiomqtt import Client, ProtocolVersion

from powergate.protocols.mqtt import (
    Ack,
    Command,
    Direction,
    Event,
    Message,
    RawFrame,
    Reading,
    Recharge,
    SchemaError,
    Status,
    decode_for_topic,
    encode,
    message_topic,
    shared_uplink_filter,
    topic,
    uplink_filter,
)
from powergate.protocols.mqtt import Kind as MessageKind

pytestmark = pytest.mark.mqtt

AT = datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=8)))
TIMEOUT_S = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def client(broker: tuple[str, int], **options: object) -> Client:
    host, port = broker
    return Client(host, port, protocol=ProtocolVersion.V5, identifier=unique("pg-test"), **options)  # type: ignore[arg-type]


def run(coroutine: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(4 * TIMEOUT_S):
            await coroutine()

    asyncio.run(bounded())


async def receive(subscriber: Client, count: int, site: str) -> list[tuple[str, bytes]]:
    """The next ``count`` messages of ``site`` (others' traffic is skipped)."""
    received: list[tuple[str, bytes]] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for message in subscriber.messages:
            if f"/{site}/" in message.topic.value:
                assert isinstance(message.payload, bytes)
                received.append((message.topic.value, message.payload))
                if len(received) == count:
                    return received
    return received


def test_every_message_kind_crosses_the_broker_and_decodes_to_what_was_sent(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meter = unique("site"), "000000000001"
    sent: list[tuple[str, Message]] = [
        (message_topic(site, m), m)
        for m in (
            Reading(
                meter,
                "r1",
                AT,
                1_234_560,
                (1, 2, 3, 1_234_554),
                {"voltage_dv": 2203},
                -2_500_000,
                7,
                "closed",
            ),
            Event(meter, "e1", AT, "magnetic_interference"),
            Ack("c1", meter, AT, "ok", "already_applied", None, 8),
            Status(meter, "online", AT),
            Command("c1", meter, AT, AT + timedelta(minutes=5), Recharge(100_000_000, 8)),
        )
    ]
    sent.append((message_topic(site, RawFrame(meter, b"\x68\x16"), Direction.DOWN), RawFrame(meter, b"\x68\x16")))

    async def scenario() -> None:
        async with client(mqtt_broker) as subscriber, client(mqtt_broker) as publisher:
            await subscriber.subscribe(f"pg/v1/{site}/+/#", qos=1)
            for topic_text, message in sent:
                await publisher.publish(topic_text, encode(message), qos=1)
            received = await receive(subscriber, len(sent), site)
            decoded = [decode_for_topic(t, p) for t, p in received]
            assert [d if isinstance(d, SchemaError) else (str(d[0]), d[1]) for d in decoded] == sent

    run(scenario)


def test_a_shared_subscription_hands_each_uplink_message_to_exactly_one_worker(
    mqtt_broker: tuple[str, int],
) -> None:
    site, group, total = unique("site"), unique("headend"), 40
    readings = [Reading(f"m{i % 5}", f"r{i}", AT, i) for i in range(total)]
    per_worker: dict[str, list[str]] = {"a": [], "b": []}

    async def worker(name: str, subscriber: Client, done: asyncio.Event) -> None:
        async for message in subscriber.messages:
            decoded = decode_for_topic(message.topic.value, message.payload)  # type: ignore[arg-type]
            assert not isinstance(decoded, SchemaError), decoded
            assert decoded[0].site == site, "the group subscribed to this test's site only"
            assert isinstance(decoded[1], Reading)
            per_worker[name].append(decoded[1].reading_id)
            if sum(map(len, per_worker.values())) == total:
                done.set()

    async def scenario() -> None:
        async with client(mqtt_broker) as a, client(mqtt_broker) as b, client(mqtt_broker) as publisher:
            for subscriber in (a, b):
                await subscriber.subscribe(shared_uplink_filter(group, site), qos=1)
            done = asyncio.Event()
            tasks = [asyncio.create_task(worker(n, c, done)) for n, c in (("a", a), ("b", b))]
            for reading in readings:
                await publisher.publish(message_topic(site, reading), encode(reading), qos=1)
            async with asyncio.timeout(TIMEOUT_S):
                await done.wait()
            await asyncio.sleep(0.3)  # a duplicate delivery would arrive now
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario)
    everything = per_worker["a"] + per_worker["b"]
    assert sorted(everything) == sorted(r.reading_id for r in readings), "each message reached exactly one worker"
    assert per_worker["a"] and per_worker["b"], "the broker spread the group's messages over both workers"


METER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from aiomqtt import Client, ProtocolVersion, Will
    host, port, status_topic, will_payload, online_payload = sys.argv[1:6]

    async def main():
        will = Will(status_topic, will_payload.encode(), qos=1, retain=True)
        async with Client(host, int(port), protocol=ProtocolVersion.V5, will=will, keepalive=5) as meter:
            await meter.publish(status_topic, online_payload.encode(), qos=1, retain=True)
            print("online", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_status_is_retained_and_the_last_will_says_offline_when_a_meter_dies(
    mqtt_broker: tuple[str, int],
) -> None:
    site, meter = unique("site"), "000000000042"
    status_topic = topic(site, meter, Direction.UP, MessageKind.STATUS)
    online, offline = Status(meter, "online", AT), Status(meter, "offline")

    async def latest_status() -> Message:
        async with client(mqtt_broker) as late_subscriber:
            await late_subscriber.subscribe(status_topic, qos=1)
            [(topic_text, payload)] = await receive(late_subscriber, 1, site)
            decoded = decode_for_topic(topic_text, payload)
            assert not isinstance(decoded, SchemaError)
            return decoded[1]

    async def scenario() -> None:
        host, port = mqtt_broker
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", METER_PROCESS, host, str(port), status_topic,
            encode(offline).decode(), encode(online).decode(),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            async with asyncio.timeout(TIMEOUT_S):
                assert (await process.stdout.readline()).strip() == b"online"
            assert await latest_status() == online  # retained: a subscriber arriving later still sees it
            async with client(mqtt_broker) as watcher:
                await watcher.subscribe(status_topic, qos=1)
                await receive(watcher, 1, site)  # the retained "online"
                process.kill()  # no DISCONNECT: the broker must publish the will
                [(_, payload)] = await receive(watcher, 1, site)
                decoded = decode_for_topic(status_topic, payload)
                assert not isinstance(decoded, SchemaError) and decoded[1] == offline
            assert await latest_status() == offline  # the will was retained too
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            async with client(mqtt_broker) as cleaner:
                await cleaner.publish(status_topic, b"", qos=1, retain=True)  # clear the retained status

    run(scenario)


def test_the_uplink_filter_matches_uplink_topics_only() -> None:
    filter_text = uplink_filter()
    assert aiomqtt.Topic("pg/v1/s/m/up/reading").matches(filter_text)
    assert not aiomqtt.Topic("pg/v1/s/m/down/cmd").matches(filter_text)
