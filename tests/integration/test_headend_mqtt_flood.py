"""The MQTT head-end under floods, on the real local Mosquitto: a burst of retained statuses on connect, readings
arriving faster than they are written (few, large batches), and other sites' meters on a shared broker.

Each test uses its own random site and group names, so other tests on the same broker do not disturb its counts
(the link is given only its own sites, except the runtime test, which counts with ``>=`` where others may add).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest
from sqlalchemy import Engine, func, select

from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.headend.model import MeterEndpoint, MeterSnapshot, Transport
from powergate.headend.mqtt_link import MeterEvent, MqttLink, Notice, OnlineChange
from powergate.headend.status import save_endpoints
from powergate.protocols import mqtt
from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import readings
from powergate.store.tables_headend import meter_events
from testkit import FLAT_TARIFF, publish_and_wait, running, unique, until

pytestmark = pytest.mark.mqtt
TIMEOUT_S = 15.0
RETAINED = 3_000
AT = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def address(index: int) -> str:
    return f"{index:012d}"


class Collected:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.readings: list[MeterSnapshot] = []
        self.notices: list[Notice] = []
        self.write_s = 0.0
        """How long each readings batch takes to "write": readings pile up meanwhile."""

    async def take_readings(self, batch: Sequence[MeterSnapshot]) -> None:
        self.batches.append(len(batch))
        self.readings.extend(batch)
        await asyncio.sleep(self.write_s)

    async def take_notices(self, batch: Sequence[Notice]) -> None:
        self.notices.extend(batch)


def new_link(broker: tuple[str, int], sites: Sequence[str], sink: Collected, **options: object) -> MqttLink:
    return MqttLink(
        broker[0],
        broker[1],
        group=unique("g"),
        sites=tuple(sites),
        reading_sink=sink.take_readings,
        notice_sink=sink.take_notices,
        **options,  # type: ignore[arg-type]
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(3 * TIMEOUT_S):
            await scenario()

    asyncio.run(bounded())


def status_topic(site: str, meter: str) -> str:
    return mqtt.topic(site, meter, mqtt.Direction.UP, mqtt.Kind.STATUS)


async def publish(broker: tuple[str, int], messages: Sequence[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) at QoS 1, many in flight at once, and wait until the broker has them all."""
    await asyncio.to_thread(publish_and_wait, broker, messages, TIMEOUT_S)


def reading(site: str, meter: str, total_wh: int) -> tuple[str, bytes, bool]:
    message = mqtt.Reading(meter, unique("r"), AT, total_wh, instant={"voltage_dv": 2200}, purchase_count=3)
    return mqtt.message_topic(site, message), mqtt.encode(message), False


def event(site: str, meter: str, minute: int) -> tuple[str, bytes, bool]:
    message = mqtt.Event(meter, unique("e"), AT + dt.timedelta(minutes=minute), "cover_open")
    return mqtt.message_topic(site, message), mqtt.encode(message), False


def status(site: str, meter: str, state: str) -> tuple[str, bytes, bool]:
    message = mqtt.Status(meter, state, AT)
    return mqtt.message_topic(site, message), mqtt.encode(message), True


def test_a_burst_of_retained_statuses_on_connect_fills_the_online_map_and_nothing_else(
    mqtt_broker: tuple[str, int],
) -> None:
    site = unique("s")
    addresses = [address(i) for i in range(1, RETAINED + 1)]
    sink = Collected()

    async def scenario() -> None:
        await publish(mqtt_broker, [status(site, a, "online" if i % 3 else "offline") for i, a in enumerate(addresses)])
        link = new_link(mqtt_broker, [site], sink)
        link.register(MeterEndpoint(f"M-{a}", Transport.MQTT, a, site) for a in addresses)
        try:
            async with running(link.run):
                started = time.monotonic()
                await until(lambda: link.counters.retained >= RETAINED, "the retained statuses")
                taken_s = time.monotonic() - started
                online = [a for a in addresses if link.online(MeterEndpoint(f"M-{a}", Transport.MQTT, a, site))]
                assert len(online) == RETAINED - len(addresses[::3]) and link.known_offline(
                    MeterEndpoint("M-first", Transport.MQTT, addresses[0], site)
                )
                assert taken_s < 10, f"{RETAINED} retained statuses took {taken_s:.1f} s"
                # a live change after the burst is a notice (it reaches a sink, once, by the shared subscription)
                await publish(mqtt_broker, [status(site, addresses[0], "online")])
                await until(lambda: bool(sink.notices), "the live status change")
                await until(lambda: link.online(MeterEndpoint("M-first", Transport.MQTT, addresses[0], site)), "it")
        finally:
            await publish(mqtt_broker, [(status_topic(site, a), b"", True) for a in addresses])

    run(scenario)
    changes = [(n.meter_id, n.online) for n in sink.notices if isinstance(n, OnlineChange)]
    assert changes == [(f"M-{addresses[0]}", True)]
    assert sink.readings == []


def test_a_flood_of_readings_is_handed_over_in_few_large_batches_and_one_reading_alone_at_once(
    mqtt_broker: tuple[str, int],
) -> None:
    site = unique("s")
    sink = Collected()
    sink.write_s = 0.3  # a slow database: the link must keep taking messages and batch them meanwhile
    flood = 4_000

    async def scenario() -> None:
        link = new_link(mqtt_broker, [site], sink, batch_size=5_000, batch_wait_s=0.05)
        async with running(link.run):
            await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
            started = time.monotonic()
            await publish(mqtt_broker, [reading(site, address(1), 1_000)])
            await until(lambda: len(sink.readings) == 1, "one reading")
            assert time.monotonic() - started < 1.0, "an idle link hands a reading over without waiting for more"
            await asyncio.sleep(sink.write_s)  # (lets the first batch's slow "write" end: not a synchronisation)
            await publish(mqtt_broker, [reading(site, address(i % 500 + 1), 2_000 + i) for i in range(flood)])
            await until(lambda: len(sink.readings) == flood + 1, "the flood")

    run(scenario)
    assert sink.batches[0] == 1
    assert len(sink.batches) - 1 <= 20, f"{flood} readings in {len(sink.batches) - 1} batches: {sink.batches}"
    assert max(sink.batches) >= 500, sink.batches


def test_messages_of_meters_the_link_does_not_serve_are_dropped_counted_and_logged_once(
    mqtt_broker: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    site, foreign = unique("s"), unique("f")
    known = [address(i) for i in (1, 2)]
    sink = Collected()
    caplog.set_level(logging.WARNING, logger="powergate.headend.mqtt_link")

    link_counters: dict[str, int] = {}

    async def scenario() -> None:
        link = new_link(mqtt_broker, [site, foreign], sink, known_only=True)
        link.register(MeterEndpoint(f"M-{a}", Transport.MQTT, a, site) for a in known)
        try:
            async with running(link.run):
                await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
                mixed = []
                for i in range(1, 6):
                    for where, meter in ((site, address(i)), (foreign, address(i))):
                        mixed += [reading(where, meter, 1_000 * i), event(where, meter, i)]
                mixed += [status(foreign, address(1), "online"), status(site, address(3), "online")]
                await publish(mqtt_broker, mixed)
                await until(lambda: len(sink.readings) == 2 and link.counters.foreign >= 18, "the mixed traffic")
                await until(lambda: sum(isinstance(n, MeterEvent) for n in sink.notices) == 2, "the known events")
                link_counters["foreign"] = link.counters.foreign
        finally:
            await publish(mqtt_broker, [(status_topic(foreign, address(1)), b"", True),
                                        (status_topic(site, address(3)), b"", True)])  # fmt: skip

    run(scenario)
    assert sorted(s.meter_id for s in sink.readings) == ["M-000000000001", "M-000000000002"]
    assert sorted(n.meter_id for n in sink.notices if isinstance(n, MeterEvent)) == ["M-000000000001", "M-000000000002"]
    # 5 + 5 readings and events of the other site, 3 + 3 of our site's unregistered meters, 2 statuses: each once
    assert link_counters["foreign"] == 18
    dropped = [r for r in caplog.records if "does not serve" in r.getMessage()]
    assert len(dropped) == 1, [r.getMessage() for r in dropped]


def prepare(engine: Engine, endpoints: Sequence[MeterEndpoint]) -> None:
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", FLAT_TARIFF, now)
        for endpoint in endpoints:
            wallet = wallet_code(f"A-{endpoint.meter_id}")
            wallet_id = ledger_store.ensure_account(conn, wallet, now)
            metering.add_meter(conn, endpoint.meter_id, wallet_id, "flat", now, max_power_w=200_000)
            ledger_store.post(conn, recharge_entry(f"cash:{endpoint.meter_id}", wallet, "cash", 100_000_000, now), now)
        save_endpoints(conn, endpoints)


def test_the_head_end_stores_its_own_meters_data_from_a_batch_mixed_with_another_sites_meters(
    engine: Engine, mqtt_broker: tuple[str, int]
) -> None:
    site, foreign = unique("s"), unique("f")
    endpoints = [MeterEndpoint(f"M-{site}-{i}", Transport.MQTT, address(i), site) for i in (1, 2, 3)]
    prepare(engine, endpoints)
    settings = HeadendSettings(name="headend-flood", dtu_listen=None, mqtt_broker=mqtt_broker, mqtt_group=unique("g"))
    runtime = HeadendRuntime(engine, settings)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop))
        try:
            await asyncio.wait_for(runtime.ready.wait(), TIMEOUT_S)
            assert runtime.mqtt is not None
            link = runtime.mqtt
            await asyncio.wait_for(link.connected.wait(), TIMEOUT_S)
            assert link.sites == (site,)  # the other site's traffic is not even subscribed to
            mixed = []
            for i in (1, 2, 3):  # one batch: our meters, meters of our site we do not know, the other site's
                for where, meter in ((site, address(i)), (site, address(100 + i)), (foreign, address(i))):
                    mixed += [reading(where, meter, 1_000 * i), event(where, meter, i)]
            await publish(mqtt_broker, mixed)
            await until(lambda: runtime.stats.events == 3 and runtime.stats.readings == 3, "our meters' data")
            await until(lambda: link.counters.foreign >= 6, "the unknown meters' messages dropped")
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT_S)

    run(scenario)
    assert runtime.mqtt is not None and runtime.mqtt.counters.sink_failures == 0
    ids = [e.meter_id for e in endpoints]
    with engine.connect() as conn:
        stored_events = conn.execute(select(meter_events.c.meter_id).order_by(meter_events.c.meter_id)).scalars()
        assert list(stored_events) == ids
        count = select(func.count()).select_from(readings).where(readings.c.meter_id.in_(ids))
        assert conn.execute(count).scalar_one() == 3
    assert runtime.stats.samples == 3
