"""Real MQTT clients (``mosquitto_sub`` / ``mosquitto_pub``) and the local Mosquitto see a virtual meter's
readings, make it trip with a downlink command, and see its last will when its process dies; a connection
carrying 500 meters sends each one's reading once an interval, in order.

Needs the broker (``mqtt_broker`` fixture) and the Debian package mosquitto-clients: under CI=true a missing
command fails the test, elsewhere it is skipped with a loud reason.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from powergate.protocols import mqtt
from powergate.sim.fleet import build_meters
from powergate.sim.meter import VirtualMeter
from powergate.sim.mqtt_face import MqttGateway
from powergate.sim.profiles import RESIDENTIAL
from testkit import require_command

pytestmark = pytest.mark.mqtt


@pytest.fixture
def clients(mqtt_broker: tuple[str, int]) -> Iterator[tuple[str, int]]:
    require_command("mosquitto_sub", "mosquitto-clients")
    require_command("mosquitto_pub", "mosquitto-clients")
    yield mqtt_broker
    # the meter's retained status would outlive the test: clear it (an empty retained message deletes it)
    host, port = mqtt_broker
    for site in SITES:
        subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "-t", f"pg/v1/{site}/000000000042/up/status",
                        "-r", "-n"], check=True, timeout=15)  # fmt: skip
    SITES.clear()


SITES: list[str] = []


def new_site() -> str:
    site = f"t{uuid.uuid4().hex[:10]}"
    SITES.append(site)
    return site


async def subscribe(host: str, port: int, topic: str, count: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", host, "-p", str(port), "-t", topic, "-C", str(count), "-v", "-W", "15",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def messages(process: asyncio.subprocess.Process) -> list[tuple[str, mqtt.Message]]:
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    found: list[tuple[str, mqtt.Message]] = []
    for line in out.decode().splitlines():
        topic, _, payload = line.partition(" ")
        decoded = mqtt.decode_for_topic(topic, payload.encode())
        assert not isinstance(decoded, mqtt.SchemaError), (line, decoded)
        found.append((topic, decoded[1]))
    return found


def now_meter() -> VirtualMeter:
    return VirtualMeter("000000000042", RESIDENTIAL, seed=42, now_s=int(time.time()) - 3600)


def test_mosquitto_sub_sees_the_meters_readings_at_the_interval(clients: tuple[str, int]) -> None:
    host, port = clients
    site = new_site()

    async def scenario() -> None:
        meter = now_meter()
        gateway = MqttGateway([meter], host=host, port=port, site=site, interval_s=0.5)
        sub = await subscribe(host, port, f"pg/v1/{site}/+/up/reading", 2)
        await asyncio.sleep(0.3)
        stop = asyncio.Event()
        runner = asyncio.create_task(gateway.run(stop))
        readings = await messages(sub)
        stop.set()
        await asyncio.wait_for(runner, 10)
        assert len(readings) == 2
        for topic, reading in readings:
            assert topic == f"pg/v1/{site}/000000000042/up/reading"
            assert isinstance(reading, mqtt.Reading)
            assert reading.total_wh > 0 and reading.bands_wh is not None
            assert reading.total_wh == sum(reading.bands_wh)
            assert reading.relay == "closed" and reading.remaining_micros is not None
            assert 2134 <= reading.instant["voltage_dv"] <= 2266

    asyncio.run(scenario())


def test_a_trip_command_from_mosquitto_pub_trips_the_meter_and_is_acknowledged(clients: tuple[str, int]) -> None:
    host, port = clients
    site = new_site()

    async def scenario() -> None:
        meter = now_meter()
        gateway = MqttGateway([meter], host=host, port=port, site=site, interval_s=3600)
        stop = asyncio.Event()
        runner = asyncio.create_task(gateway.run(stop))
        await asyncio.wait_for(gateway.connected.wait(), 10)
        sub = await subscribe(host, port, f"pg/v1/{site}/000000000042/up/ack", 2)
        await asyncio.sleep(0.3)
        issued = datetime.now(UTC)
        for command_id, purchase_count in (("trip-1", None), ("recharge-1", 1)):
            body: dict[str, object] = {
                "v": 1, "command_id": command_id, "meter": meter.address,
                "kind": "trip" if purchase_count is None else "recharge",
                "issued_at": issued.isoformat(), "valid_until": (issued + timedelta(minutes=5)).isoformat(),
                "params": {"reason": "test"} if purchase_count is None
                else {"amount_micros": 10_000_000, "purchase_count": purchase_count},
            }  # fmt: skip
            subprocess.run(
                ["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1",
                 "-t", f"pg/v1/{site}/{meter.address}/down/cmd", "-m", json.dumps(body)],
                check=True, timeout=15,
            )  # fmt: skip
        acks = await messages(sub)
        stop.set()
        await asyncio.wait_for(runner, 10)
        assert [(a.command_id, a.result) for _, a in acks if isinstance(a, mqtt.Ack)] == [
            ("trip-1", "ok"),
            ("recharge-1", "ok"),
        ]
        assert meter.relay_open()  # a recharge does not lift a remote trip
        assert meter.purchase_count == 1

    asyncio.run(scenario())


def test_an_expired_command_is_refused_and_not_carried_out(clients: tuple[str, int]) -> None:
    host, port = clients
    site = new_site()

    async def scenario() -> None:
        meter = now_meter()
        gateway = MqttGateway([meter], host=host, port=port, site=site, interval_s=3600)
        stop = asyncio.Event()
        runner = asyncio.create_task(gateway.run(stop))
        await asyncio.wait_for(gateway.connected.wait(), 10)
        sub = await subscribe(host, port, f"pg/v1/{site}/000000000042/up/ack", 1)
        await asyncio.sleep(0.3)
        old = datetime.now(UTC) - timedelta(hours=1)
        body = {"v": 1, "command_id": "late", "meter": meter.address, "kind": "trip",
                "issued_at": old.isoformat(), "valid_until": (old + timedelta(minutes=1)).isoformat(),
                "params": {}}  # fmt: skip
        subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1",
                        "-t", f"pg/v1/{site}/{meter.address}/down/cmd", "-m", json.dumps(body)],
                       check=True, timeout=15)  # fmt: skip
        (_, ack), *_ = await messages(sub)
        stop.set()
        await asyncio.wait_for(runner, 10)
        assert isinstance(ack, mqtt.Ack) and ack.result == "error" and "expired" in (ack.reason or "")
        assert not meter.relay_open()

    asyncio.run(scenario())


def test_the_broker_publishes_the_last_will_when_the_meters_process_dies(clients: tuple[str, int]) -> None:
    host, port = clients
    site = new_site()
    program = textwrap.dedent(f"""
        import asyncio, time
        from powergate.sim.meter import VirtualMeter
        from powergate.sim.mqtt_face import MqttGateway
        from powergate.sim.profiles import RESIDENTIAL
        meter = VirtualMeter("000000000042", RESIDENTIAL, seed=42, now_s=int(time.time()))
        gateway = MqttGateway([meter], host={host!r}, port={port}, site={site!r}, interval_s=3600)
        asyncio.run(gateway.run(asyncio.Event()))
    """)
    status_topic = f"pg/v1/{site}/000000000042/up/status"
    child = subprocess.Popen([sys.executable, "-c", program])
    try:
        online = subprocess.run(["mosquitto_sub", "-h", host, "-p", str(port), "-t", status_topic, "-C", "1",
                                 "-W", "15"], capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
        assert json.loads(online.stdout)["state"] == "online"
    finally:
        child.kill()
        child.wait(timeout=10)
    offline = subprocess.run(["mosquitto_sub", "-h", host, "-p", str(port), "-t", status_topic, "-C", "1",
                              "-W", "15"], capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    will = json.loads(offline.stdout)
    assert will["state"] == "offline" and will["reason"] == "last will"


def test_one_connection_sends_each_of_its_500_meters_reading_once_an_interval_in_meter_order(
    clients: tuple[str, int],
) -> None:
    host, port = clients
    site = new_site()
    fleet = build_meters(500, seed=7, now_s=int(time.time()) - 3600)

    async def scenario() -> None:
        gateway = MqttGateway(fleet, host=host, port=port, site=site, interval_s=1.0)
        sub = await subscribe(host, port, f"pg/v1/{site}/+/up/reading", 1000)
        await asyncio.sleep(0.3)
        stop = asyncio.Event()
        runner = asyncio.create_task(gateway.run(stop))
        try:
            readings = await messages(sub)  # two intervals: readings leave in batches, not one sleep per meter
        finally:
            stop.set()
            await asyncio.wait_for(runner, 20)
            async with aiomqtt.Client(host, port) as cleaner:  # the statuses are retained: remove them
                await asyncio.gather(*(cleaner.publish(f"pg/v1/{site}/{m.address}/up/status", b"", qos=1, retain=True)
                                       for m in fleet))  # fmt: skip
        addresses = [m.address for m in fleet]
        assert [r.meter for _, r in readings] == addresses + addresses
        assert all(isinstance(r, mqtt.Reading) and r.total_wh == sum(r.bands_wh or ()) for _, r in readings)
        assert gateway.stats.readings_published >= 1000 and gateway.stats.dropped == 0

    asyncio.run(scenario())
