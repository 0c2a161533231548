"""Virtual meters as MQTT clients (aiomqtt): readings at an interval, events, status with a last will, and
downlink commands executed and acknowledged, in the topic layout and JSON schema of ``protocols.mqtt``.

One ``MqttGateway`` is one MQTT connection carrying one or more meters: a 4G meter has its own connection
(one meter, and its last will is exactly its ``offline`` status), while a fleet of 10,000 rides on a few
hundred connections, as a concentrator would, because each aiomqtt client keeps its own socket, executor
connect and once-a-second housekeeping task. With several meters on a connection the last will can name only
the first meter; a clean stop publishes ``offline`` for every one of them.

Invariants:
- readings are spread evenly over the interval (meter ``i`` of ``n`` reports at ``i/n`` of it), and a meter
  is advanced only when it reports or is commanded: there is no task per meter;
- every command gets exactly one ack (``ok``, ``ok`` + ``already_applied`` for a repeated recharge, or
  ``error`` with the reason), and an expired command is refused, never executed;
- every payload is made by ``protocols.mqtt`` (``encode``, or ``to_json`` for readings); every command, ack,
  event and status passes ``encode``'s own schema check, and readings are checked the same way on a sample
  (``READING_CHECK_EVERY``: the check decodes the payload again and would double the cost of the fleet's
  hottest path); ``remaining_micros`` is the meter's exact balance (signed: negative while in overdraft).

Throughput: readings are QoS 0. They are handed to the MQTT client's send queue without waiting for the
client to confirm each write (aiomqtt's ``publish`` waits for the write and costs a timer task, an event and
a loop round trip per message, ~120 us of CPU: a fleet offering 1,667 readings/s took 68 % of a core that
way, 29 % now, and fell behind on a busy machine).
The report loop wakes at most every ``REPORT_TICK_S`` and sends every reading that has come due,
instead of sleeping once per meter; a batch is bounded by the meters on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

import aiomqtt
import paho.mqtt.client as paho

from powergate.protocols import mqtt
from powergate.sim.faults import Faults, SimStats
from powergate.sim.meter import (
    Band,
    EventKind,
    MeterError,
    RechargeOutcome,
    RelayAction,
    TripReason,
    VirtualMeter,
)

MAX_METERS_PER_CONNECTION = 1000
OPERATION_TIMEOUT_S = 10.0
"""A limit on waiting for the broker (CONNACK, SUBACK, PUBACK): a stuck broker fails the connection."""
SUBSCRIBE_BATCH = 100
"""Topic filters per SUBSCRIBE packet: keeps each packet small for brokers with a packet size limit."""
STATUS_BATCH = 10
"""Status messages (QoS 1) in flight at once when a connection comes up or stops (aiomqtt warns above 10)."""
REPORT_TICK_S = 0.05
"""The report loop sleeps at least this long between batches: a reading leaves at most this late."""
MAX_SEND_QUEUE = 10_000
"""Packets waiting for the socket on one connection beyond which a reading is dropped, not queued."""
SEND_QUEUE_PER_METER = 2
"""...and at most this many per meter of the connection: a real meter has its own connection and never more than
a reading or two waiting, so its command ack is never stuck behind thousands of other meters' readings (at 500
meters a connection and a 10,000-packet queue, acks waited so long under a flood that commands timed out)."""
READING_CHECK_EVERY = 64
"""Every this many readings a connection sends, the payload is decoded again against the schema."""

_EVENT_TYPE = {
    EventKind.COVER_OPEN: "cover_open",
    EventKind.TERMINAL_COVER_OPEN: "terminal_cover_open",
    EventKind.REVERSE_CURRENT: "reverse_current",
    EventKind.VOLTAGE_LOSS: "voltage_loss",
    EventKind.CURRENT_LOSS: "current_loss",
    EventKind.MAGNETIC_INTERFERENCE: "magnetic_interference",
    EventKind.OVERLOAD: "overload_trip",
    EventKind.POWER_FAIL: "power_fail",
}


def meter_datetime(meter: VirtualMeter, now_s: int) -> datetime:
    """The meter's own clock as an aware datetime in the site's offset."""
    zone = timezone(timedelta(minutes=meter.settings.utc_offset_minutes))
    return datetime.fromtimestamp(meter.meter_time_s(now_s), tz=zone)


def reading_of(meter: VirtualMeter, now_s: int) -> mqtt.Reading:
    meter.advance(now_s)
    bands = tuple(meter.band_ticks(band) * 10 for band in Band)
    voltage, current, power, power_factor, frequency = meter.instant_values()
    instant = {
        "voltage_dv": voltage,
        "current_ma": abs(current),
        "active_power_w": power,
        "power_factor_permille": power_factor,
        "frequency_centihz": frequency,
    }
    return mqtt.Reading(
        meter=meter.address,
        reading_id=f"{meter.address}-{now_s}",
        at=meter_datetime(meter, now_s),
        total_wh=meter.total_ticks() * 10,
        bands_wh=(bands[0], bands[1], bands[2], bands[3]),
        instant=instant,
        remaining_micros=meter.balance_micros,
        purchase_count=meter.purchase_count,
        relay="tripped" if meter.relay_open() else "closed",
    )


def events_of(meter: VirtualMeter, now_s: int) -> list[mqtt.Event]:
    """Events for the meter's pending notices (relay and alarm notices travel in readings instead)."""
    events: list[mqtt.Event] = []
    for notice in meter.drain_notices():
        if notice.kind != "event":
            continue
        name = notice.detail.removesuffix(" ended")
        kind = EventKind[name.upper()]
        ended = notice.detail.endswith(" ended")
        if ended and kind is not EventKind.POWER_FAIL:
            continue  # the schema has an end event for power only
        count = meter.event_count(kind)
        events.append(
            mqtt.Event(
                meter=meter.address,
                event_id=f"{meter.address}-{kind.name.lower()}-{count}{'-end' if ended else ''}",
                at=meter_datetime(meter, notice.at_s),
                type="power_restore" if ended else _EVENT_TYPE[kind],
                count=count,
                detail=notice.detail,
            )
        )
    return events


def execute(meter: VirtualMeter, command: mqtt.Command, now_s: int) -> mqtt.Ack:
    """Carry out a downlink command on the meter and say how it went."""
    now = meter_datetime(meter, now_s)
    if command.expired(now):
        return _ack(meter, command, now_s, "error", "expired: valid_until has passed")
    params = command.params
    outcome: MeterError | RechargeOutcome | None = None
    if isinstance(params, mqtt.Trip):
        outcome = meter.relay_command(RelayAction.TRIP, now_s)
    elif isinstance(params, mqtt.Close):
        outcome = meter.relay_command(RelayAction.CLOSE_NOW, now_s)
    elif isinstance(params, mqtt.Recharge):
        result = meter.recharge(params.purchase_count, params.amount_micros, now_s)
        if result.outcome is RechargeOutcome.ALREADY_APPLIED:
            return _ack(meter, command, now_s, "ok", "already_applied")
        if not result.credited:
            return _ack(meter, command, now_s, "error", result.message)
    elif isinstance(params, mqtt.SetAlarm):
        outcome = meter.update_settings(now_s, alarm1_micros=params.alarm_1_micros,
                                        alarm2_micros=params.alarm_2_micros)  # fmt: skip
    elif isinstance(params, mqtt.SetPrice):
        prices = list(meter.settings.prices_micros)
        for band, price in params.prices_micros_per_kwh.items():
            prices[mqtt.BANDS.index(band)] = price
        outcome = meter.update_settings(now_s, prices_micros=tuple(prices))
    elif isinstance(params, mqtt.SetPowerLimit):
        outcome = meter.update_settings(now_s, power_limit_w=params.power_limit_w)
    elif isinstance(params, mqtt.TimeSync):
        meter.set_clock(int(params.at.timestamp()), now_s)
    if isinstance(outcome, MeterError):
        return _ack(meter, command, now_s, "error", outcome.message)
    if isinstance(params, mqtt.Trip) and not meter.flags & TripReason.REMOTE:
        return _ack(meter, command, now_s, "error", "relay: the trip did not take")
    return _ack(meter, command, now_s, "ok", None)


def _ack(meter: VirtualMeter, command: mqtt.Command, now_s: int, result: str, reason: str | None) -> mqtt.Ack:
    return mqtt.Ack(
        command_id=command.command_id,
        meter=meter.address,
        at=meter_datetime(meter, now_s),
        result=result,
        reason=reason,
        remaining_micros=meter.balance_micros,
        purchase_count=meter.purchase_count,
    )


class MqttGateway:
    """One MQTT connection for ``meters``; ``run()`` until ``stop`` is set."""

    def __init__(
        self,
        meters: Sequence[VirtualMeter],
        *,
        host: str,
        port: int,
        site: str = "sim",
        interval_s: float = 60.0,
        client_id: str | None = None,
        clock: Callable[[], int] = lambda: int(time.time()),
        faults: Faults | None = None,
        stats: SimStats | None = None,
        keepalive_s: int = 60,
    ) -> None:
        assert 0 < len(meters) <= MAX_METERS_PER_CONNECTION, len(meters)
        assert mqtt.valid_id(site) and interval_s > 0
        self.meters = list(meters)
        self.by_address = {meter.address: meter for meter in meters}
        self.host, self.port, self.site = host, port, site
        self.interval_s = interval_s
        self.client_id = client_id or f"pg-sim-{site}-{meters[0].address}"
        self.clock = clock
        self.faults = faults or Faults()
        self.stats = stats or SimStats()
        self.keepalive_s = keepalive_s
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._readings_encoded = 0
        self.send_queue_limit = min(MAX_SEND_QUEUE, SEND_QUEUE_PER_METER * len(self.meters))

    def _status(self, meter: VirtualMeter, state: str, reason: str | None = None) -> tuple[str, bytes]:
        at = None if reason == "last will" else meter_datetime(meter, self.clock())
        message = mqtt.Status(meter.address, state, at, reason)
        return mqtt.message_topic(self.site, message), mqtt.encode(message)

    async def run(self, stop: asyncio.Event) -> None:
        will_topic, will_payload = self._status(self.meters[0], "offline", "last will")
        will = aiomqtt.Will(will_topic, will_payload, qos=1, retain=True)
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            will=will,
            keepalive=self.keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
        ) as client:
            self._client = client
            self.stats.connections += 1
            try:
                await self._subscribe(client)
                await self._publish_statuses(client, "online")
                self.connected.set()
                await self._serve(client, stop)
                await self._publish_statuses(client, "offline", "stopped")
            finally:
                self.stats.connections -= 1
                self._client = None

    async def _publish_statuses(self, client: aiomqtt.Client, state: str, reason: str | None = None) -> None:
        """Every meter's retained status, ``STATUS_BATCH`` in flight at a time (one by one, a fleet of 100,000
        would wait for 100,000 round trips to the broker)."""
        for start in range(0, len(self.meters), STATUS_BATCH):
            batch = self.meters[start : start + STATUS_BATCH]
            await asyncio.gather(
                *(client.publish(*self._status(meter, state, reason), qos=1, retain=True) for meter in batch)
            )

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        filters = [(mqtt.downlink_filter(self.site, m.address), 1) for m in self.meters]
        for start in range(0, len(filters), SUBSCRIBE_BATCH):
            await client.subscribe(filters[start : start + SUBSCRIBE_BATCH])

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._report_loop(client)),
            asyncio.create_task(self._command_loop(client)),
        ]
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            for task in [*tasks, stopper]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _report_loop(self, client: aiomqtt.Client) -> None:
        """Meter ``i`` of ``n`` reports at ``start + (cycle + i/n) * interval``: every wake-up sends the readings
        that have come due since the last one, then sleeps until the next is due (at least ``REPORT_TICK_S``)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = len(self.meters)
        step_s = self.interval_s / count
        sent = 0  # reports sent so far, over all cycles: report p is meter p % count, due at start + p * step
        while True:
            due = min(int((loop.time() - start) / step_s) + 1, sent + count)  # a batch: at most one cycle
            for position in range(sent, due):
                await self.publish_reading(self.meters[position % count])
            sent = max(sent, due)
            await asyncio.sleep(max(start + sent * step_s - loop.time(), REPORT_TICK_S))

    async def publish_reading(self, meter: VirtualMeter) -> None:
        """Publish one reading and any pending events of ``meter`` now (also used for on-demand reads)."""
        client = self._client
        assert client is not None, "not connected"
        if meter.event_in_progress(EventKind.POWER_FAIL):
            await self.publish_events(meter)  # a meter without supply sends its last gasp, not readings
            return
        now_s = self.clock()
        reading = reading_of(meter, now_s)
        if self.faults.should_drop():
            self.stats.dropped += 1
        else:
            payload = self._encode_reading(reading)
            garbled = self.faults.maybe_garble(payload)
            self.stats.garbled += garbled != payload
            if _send_now(client, mqtt.message_topic(self.site, reading), garbled, self.send_queue_limit):
                self.stats.readings_published += 1
            else:
                self.stats.dropped += 1
        if meter.has_notices():  # nothing pending is the common case
            await self.publish_events(meter)

    def _encode_reading(self, reading: mqtt.Reading) -> bytes:
        """``mqtt.encode`` without its schema check, except on every ``READING_CHECK_EVERY``-th reading."""
        payload = json.dumps(mqtt.to_json(reading), ensure_ascii=False, separators=(",", ":")).encode()
        self._readings_encoded += 1
        if self._readings_encoded % READING_CHECK_EVERY == 1:
            checked = mqtt.decode(mqtt.Kind.READING, payload)
            assert not isinstance(checked, mqtt.SchemaError), f"refusing to send an invalid reading: {checked}"
        return payload

    async def publish_events(self, meter: VirtualMeter) -> None:
        client = self._client
        assert client is not None, "not connected"
        for event in events_of(meter, self.clock()):
            await client.publish(mqtt.message_topic(self.site, event), mqtt.encode(event), qos=1)
            self.stats.events_published += 1

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                await self._handle(client, str(message.topic), bytes(message.payload))
            except aiomqtt.MqttError:
                raise
            except Exception as error:  # one bad command must not take the other meters down
                self.stats.error(f"command on {message.topic}: {error!r}")

    async def _handle(self, client: aiomqtt.Client, topic_text: str, payload: bytes) -> None:
        decoded = mqtt.decode_for_topic(topic_text, payload)
        if isinstance(decoded, mqtt.SchemaError):
            self.stats.error(f"downlink {topic_text}: {decoded}")
            return
        topic, message = decoded
        meter = self.by_address.get(topic.meter)
        if meter is None or not isinstance(message, mqtt.Command):
            return  # raw frames and other meters' traffic are not ours
        if meter.event_in_progress(EventKind.POWER_FAIL):
            return  # no supply: the command goes unanswered, as on a real meter
        delay_s = self.faults.delay_s()
        if delay_s:
            await asyncio.sleep(delay_s)
        now_s = self.clock()
        ack = execute(meter, message, now_s)
        self.stats.commands_done += 1
        await client.publish(mqtt.message_topic(self.site, ack), mqtt.encode(ack), qos=1)
        if isinstance(message.params, mqtt.Read) or ack.result == "ok":
            await self.publish_reading(meter)


def _send_now(client: aiomqtt.Client, topic: str, payload: bytes, limit: int = MAX_SEND_QUEUE) -> bool:
    """Queue a QoS 0 message on the connection without waiting for the write to be confirmed; ``False`` (not
    sent) when ``limit`` packets already wait for the socket, as a concentrator drops what it cannot send.

    aiomqtt's ``publish`` waits for paho's ``on_publish`` even at QoS 0; its underlying paho client
    (``Client._client``) queues the packet, and the event loop's writer callback (aiomqtt's) sends it.
    Order with the awaited QoS 1 messages is kept: paho has one send queue.
    A connection that is gone raises, as ``publish`` would.
    """
    sender = client._client  # the private attribute: see above
    if len(getattr(sender, "_out_packet", ())) >= limit:
        return False
    info = sender.publish(topic, payload, qos=0)
    if info.rc != paho.MQTT_ERR_SUCCESS:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
    return True
