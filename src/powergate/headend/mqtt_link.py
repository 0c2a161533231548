"""``MqttLink``: the head-end's MQTT transport (4G / NB-IoT meters through a broker such as Mosquitto or EMQX).

Two broker connections, subscriptions (MQTT 5, each tagged with a subscription identifier so a message tells
which one it came by)::

    bulk     <client_id>-bulk
    $share/{group}/pg/v1/{site}/+/up/#  SHARED   readings, events, statuses: each goes to ONE worker of the group
    control  <client_id>
    pg/v1/{site}/+/up/status            STATUS   every worker: the retained status of every meter (online map)
    pg/v1/{site}/+/up/ack               ACK      every worker: the ack of a command reaches the worker that sent it
    pg/v1/{site}/{meter}/up/reading     READING  only while a ``read`` of that meter waits for its reply
    pg/v1/{site}/{meter}/up/raw         RAW      only while a transparent ``exchange`` with that meter waits
    (and every publish: commands, reads, raw frames)

Why two connections: a broker sends a client's messages down one TCP stream in order. With one connection, a
head-end that could not keep up with the readings (100,000 meters at peak: 5,000 readings/s offered, 1,500/s
taken) had thousands of readings queued ahead of every PUBACK of its commands and every meter's ack, and paho sends
no more than 20 QoS 1 publishes before their PUBACKs: trip and close commands waited minutes, most were never
even sent. The readings now come by a connection of their own (``bulk``), which may fall behind and drop readings
(counted) without delaying anything on ``control``; a payment's close command is published and acked by a
connection that carries only a trickle. Each connection reconnects on its own. Losing ``control`` fails every
waiter; losing ``bulk`` fails none (readings published meanwhile go to the group's other workers, or are covered
by the next reading).

``{site}`` is ``+`` (every site) unless the link is given the sites it serves (a head-end sharded by site).
With ``known_only`` (the head-end's setting) messages of meters not registered are dropped before any sink:
a broker shared with other sites or tenants carries their meters too, and they have no rows here.

Why the extra non-shared subscriptions: a shared subscription hands a message to any one worker, but the ack of a
command or the reply to a read must reach the worker that waits for it; and a broker sends no retained message
to a shared subscription, so without ``STATUS`` a worker would not know which meters are online after a restart.
Acks and statuses are a trickle next to readings, so every worker taking all of them costs little.

Invariants kept:
- only messages that came by the SHARED subscription go to the sinks: across the workers of a group each uplink
  reading, event and status change is handed to a sink once (copies by the other subscriptions only wake
  waiters and update the online map); a retained status (the burst a broker sends on subscribe) never goes to
  a sink: it sets the online map and nothing else, and only for a meter not heard live since connect;
- statuses, acks and raw frames are taken on receipt (``_Intake``), never behind readings or a slow sink; only
  readings and events wait for the sinks, at most ``max_incoming`` of them, beyond which they are dropped and
  counted. Registered meters whose retained status the broker dropped from the burst are asked for again;
- the online map: the latest live message wins; a reading or an event says online, a status says what it says
  (an explicit ``offline`` holds until the meter's next reading or status);
- readings reach the sink in batches that grow with the load (``_Batcher``): under a flood one batch holds
  what arrived while the previous one was written, up to ``batch_size``;
- every wait has a timeout (``LinkError(TIMEOUT)``), every queue and table a bound (``LinkError(BUSY)`` when full):
  pending commands, waiting reads, per-meter subscriptions, the sink queues, the intake, the online map;
- a command is published at QoS 1 and answered by the ack carrying its ``command_id``; an ack ``error`` is
  ``LinkError(REJECTED)``, ``ok`` + ``already_applied`` is ``CommandResult(ok=True, already_applied=True)``;
- an expired command (``valid_until`` passed) is never published;
- losing the control connection fails every waiter at once with ``LinkError(OFFLINE)``; ``run`` reconnects each
  connection with capped, jittered exponential backoff and subscribes again. Sessions are clean: readings
  published while the head-end was away are not replayed, and need not be, because registers are cumulative (the
  next reading covers them).

The head-end clock stamps ``MeterSnapshot.at`` (time of receipt, UTC); the meter's own time goes to
``meter_time`` so time sync can compare the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, cast

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from powergate.headend.model import (
    CommandKind,
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterSnapshot,
    ReadItem,
)
from powergate.protocols import mqtt
from powergate.protocols.dlt645 import DecodeError, Frame, decode_frame, encode_frame

log = logging.getLogger(__name__)

SUB_SHARED, SUB_STATUS, SUB_ACK, SUB_READING, SUB_RAW = 1, 2, 3, 4, 5
"""MQTT 5 subscription identifiers: which of our subscriptions a message arrived by."""

MAX_PENDING_COMMANDS = 10_000
MAX_DIRECT_SUBSCRIPTIONS = 2_000
"""Meters with a read or a transparent exchange waiting at once (each holds one subscription)."""
MAX_INCOMING = 20_000
"""Sink-bound messages (readings and events by the shared subscription) received but not yet turned into
snapshots and notices; beyond this they are dropped and counted (``MqttCounters.dropped``). Nothing else waits
here: statuses, acks and raw frames are handled on receipt (see ``_Intake``)."""
MAX_RECEIVE = 65_535
"""The largest MQTT 5 Receive Maximum (QoS 1 messages the broker may send before our acks)."""
MAX_SINK_QUEUE = 50_000
MAX_BATCH = 10_000
MAX_ONLINE = 2_000_000
"""Meters whose status the link remembers (the online map); a meter beyond it is counted (``untracked``)."""
STATUS_CHUNK = 1_000
"""Per-meter status subscriptions in one SUBSCRIBE when the link asks again for statuses the broker dropped:
below Mosquitto's default ``max_queued_messages`` (1,000), so a chunk's retained statuses are never dropped."""
BURST_QUIET_S = 0.5
"""The retained burst is over when no retained status came for this long (or after ``BURST_WAIT_S``)."""
BURST_WAIT_S = 60.0
FOREIGN_LOG_EVERY_S = 60.0
"""At most one log line this often about messages of meters the link does not know (``known_only``), and about
messages dropped because the reading sink is behind."""
BROKER_TIMEOUT_S = 10.0
"""A limit on CONNACK, SUBACK and PUBACK: a stuck broker fails the connection instead of hanging it."""

_READ_ITEMS: dict[ReadItem, tuple[str, ...]] = {
    ReadItem.ENERGY: ("energy",),
    ReadItem.INSTANT: ("instant",),
    ReadItem.RELAY: ("relay",),
    ReadItem.PREPAID: ("remaining", "purchase_count"),
    ReadItem.CLOCK: ("clock",),
    ReadItem.FROZEN_DAY: (),
}
"""What each item asks an MQTT meter for; schema v1 has no frozen-data read (a reading is always current)."""

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def wire_command_id(command_id: str) -> str:
    """The id a command carries on the wire: its own when MQTT ids allow it, else a digest of it.

    Queue ids may hold characters MQTT ids do not (``close:12:3:M-1``, from the prepaid relay) or be longer
    than 64; the digest is deterministic, so a resend after a restart carries the same id as the first attempt.
    """
    if mqtt.valid_id(command_id):
        return command_id
    return "c-" + hashlib.sha256(command_id.encode()).hexdigest()[:40]


# --- what goes to the sinks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """An anti-theft or safety event a meter pushed (``event_id`` is its idempotency key)."""

    meter_id: str
    event_id: str
    type: str
    """One of ``protocols.mqtt.EVENT_TYPES``."""
    at: dt.datetime
    """The meter's time of the event."""
    received_at: dt.datetime
    count: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OnlineChange:
    """A meter's status message: online after it connects, offline when it stops or its last will fires."""

    meter_id: str
    online: bool
    at: dt.datetime
    """Head-end time of receipt (a last will carries no time of its own)."""
    reason: str | None = None


Notice = MeterEvent | OnlineChange
ReadingSink = Callable[[Sequence[MeterSnapshot]], Awaitable[None]]
NoticeSink = Callable[[Sequence[Notice]], Awaitable[None]]


@dataclass(slots=True)
class MqttCounters:
    connects: int = 0
    """Control connections made (subscribed); the bulk connection's are ``bulk_connects``."""
    disconnects: int = 0
    """Control connections lost (each failed every waiter); the bulk connection's are ``bulk_disconnects``."""
    bulk_connects: int = 0
    """Bulk connections made (the shared subscription: readings and events for the sinks)."""
    bulk_disconnects: int = 0
    """Bulk connections lost: readings published meanwhile went to the group's other workers, or nowhere (the
    next reading covers them); commands, reads and statuses went on by the control connection."""
    readings: int = 0
    events: int = 0
    statuses: int = 0
    acks: int = 0
    raw_frames: int = 0
    refused: int = 0
    """Messages whose topic or payload did not fit the schema."""
    unmatched: int = 0
    """Acks and raw frames nobody was waiting for (late, or another group's)."""
    sink_failures: int = 0
    retained: int = 0
    """Retained statuses (the broker's copy, sent on subscribe): folded into the online map, never a notice."""
    foreign: int = 0
    """Readings, events and statuses of meters not registered, dropped (``known_only``): another site or tenant
    on a shared broker."""
    dropped: int = 0
    """Readings and events lost because the sinks were behind: more than ``max_incoming`` waited for them (a
    reading is cumulative, the next one covers the energy; its meter is still marked online)."""
    dropped_notices: int = 0
    """Status notices lost because the notice queue was full (the online map itself is never behind)."""
    untracked: int = 0
    """Statuses of meters beyond ``MAX_ONLINE`` (not remembered)."""
    asked_again: int = 0
    """Registered meters whose retained status did not come in the burst on connect (the broker drops beyond its
    queue limits), asked for again by a per-meter subscription."""


# --- conversions -------------------------------------------------------------------------------------------


def snapshot_of(meter_id: str, reading: mqtt.Reading, received_at: dt.datetime) -> MeterSnapshot:
    """A reading in the head-end's units; a negative remaining amount becomes the overdraft amount."""
    instant = reading.instant
    power_w = instant.get("active_power_w")
    remaining = reading.remaining_micros
    return MeterSnapshot(
        meter_id=meter_id,
        at=received_at,
        total_wh=reading.total_wh,
        bands_wh=reading.bands_wh,
        voltage_dv=instant.get("voltage_dv", instant.get("voltage_a_dv")),
        current_ma=instant.get("current_ma", instant.get("current_a_ma")),
        power_dw=None if power_w is None else power_w * 10,
        power_factor_milli=instant.get("power_factor_permille"),
        frequency_chz=instant.get("frequency_centihz"),
        relay_open=None if reading.relay is None else reading.relay == "tripped",
        remaining_micros=None if remaining is None else max(remaining, 0),
        overdraft_micros=None if remaining is None else max(-remaining, 0),
        purchase_count=reading.purchase_count,
        meter_time=reading.at,
    )


def command_params(command: MeterCommand) -> mqtt.CommandParams | LinkError:
    """The schema v1 parameters of a command, or why it cannot travel over MQTT."""
    kind = command.kind
    if kind is CommandKind.TRIP:
        return mqtt.Trip()
    if kind is CommandKind.CLOSE:
        return mqtt.Close()
    if kind is CommandKind.RECHARGE:
        if command.amount_micros is None or command.purchase_count is None:
            return _refused("recharge needs amount_micros and purchase_count")
        return mqtt.Recharge(command.amount_micros, command.purchase_count)
    if kind is CommandKind.SET_ALARMS:
        if command.alarm1_micros is None or command.alarm2_micros is None:
            return _refused("set_alarms needs alarm1_micros and alarm2_micros")
        return mqtt.SetAlarm(command.alarm1_micros, command.alarm2_micros)
    if kind is CommandKind.SET_POWER_LIMIT:
        if command.power_limit_w is None:
            return _refused("set_power_limit needs power_limit_w")
        return mqtt.SetPowerLimit(command.power_limit_w)
    if kind is CommandKind.SET_PRICES:
        prices = command.prices_micros
        if prices is None or len(prices) not in (1, 4):
            return _refused("set_prices needs prices_micros: one price, or four (sharp, peak, flat, valley)")
        return mqtt.SetPrice(dict(zip(mqtt.BANDS, prices * 4 if len(prices) == 1 else prices, strict=True)))
    if kind is CommandKind.TIME_SYNC:
        if command.at is None or command.at.utcoffset() is None:
            return _refused("time_sync needs at, with a UTC offset")
        return mqtt.TimeSync(command.at)
    return _refused(f"{kind.value} is not a command of MQTT schema v1")


def _refused(reason: str) -> LinkError:
    return LinkError(FailureKind.REJECTED, reason)


def result_of(ack: mqtt.Ack) -> CommandResult | LinkError:
    if ack.result == "ok":
        return CommandResult(ok=True, already_applied=ack.reason == "already_applied", reason=ack.reason or "")
    return LinkError(FailureKind.REJECTED, f"meter refused: {ack.reason}")


def _key(site: str, meter: str) -> str:
    return f"{site}/{meter}"


def _subscription_ids(message: aiomqtt.Message) -> frozenset[int]:
    ids = getattr(message.properties, "SubscriptionIdentifier", None) if message.properties else None
    return frozenset(ids) if isinstance(ids, list) else frozenset()


def _connect_properties(receive_maximum: int) -> Properties:
    """MQTT 5 Receive Maximum: how many QoS 1 messages the broker may have in flight to us at once.

    The broker's own default is small (Mosquitto: 20 in flight, then 1,000 queued, then it DROPS), and on every
    connect it sends the retained status of every meter at once: with the default a head-end of 3,000 meters
    learned the status of 1,020 of them. In flight they cost the broker nothing more, and we take them as fast as
    they come (a retained status only sets the online map).
    """
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = receive_maximum
    return properties


def _subscribe_properties(identifier: int) -> Properties:
    properties = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
    properties.SubscriptionIdentifier = identifier
    return properties


# --- batching to a sink ------------------------------------------------------------------------------------

T = TypeVar("T")


class _Batcher(Generic[T]):
    """A bounded queue emptied into ``sink`` in batches of at most ``batch_size``, at least every ``wait_s``.

    The sink is called with one batch at a time; while it works, the queue keeps filling, and the next batch
    takes everything that came meanwhile (up to ``batch_size``) at once. So batches grow with the load by
    themselves: when idle, an item waits at most ``wait_s`` (small: low latency); under a flood, each batch holds
    what arrived while the previous one was being written (few, large batches: few transactions).

    ``put`` waits while the queue is full: a slow sink slows the link's consumer down rather than losing items
    here (what is received meanwhile waits in the link's bounded intake). ``offer`` is for code that may not
    wait (a status notice, taken on receipt): it tells whether the item was queued.
    A sink that raises loses that batch (counted and logged); the next batch is tried afresh.
    """

    def __init__(
        self,
        sink: Callable[[Sequence[T]], Awaitable[None]],
        counters: MqttCounters,
        batch_size: int,
        wait_s: float,
        max_queue: int = MAX_SINK_QUEUE,
    ) -> None:
        assert 0 < batch_size <= MAX_BATCH and wait_s > 0 and 0 < max_queue <= MAX_SINK_QUEUE
        self.sink = sink
        self.counters = counters
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.queue: asyncio.Queue[T] = asyncio.Queue(maxsize=max_queue)

    async def put(self, item: T) -> None:
        await self.queue.put(item)

    def offer(self, item: T) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self.queue.get())
                except TimeoutError:
                    break
            await self._deliver(batch)

    async def drain(self) -> None:
        """Hand over whatever is queued (at stop)."""
        while not self.queue.empty():
            batch = [self.queue.get_nowait() for _ in range(min(self.batch_size, self.queue.qsize()))]
            await self._deliver(batch)

    async def _deliver(self, batch: list[T]) -> None:
        try:
            await self.sink(batch)
        except Exception:  # the sink is someone else's code: one failure must not stop the link
            self.counters.sink_failures += 1
            log.exception("sink failed on a batch of %d", len(batch))


async def _discard(_batch: Sequence[object]) -> None:
    return None


# --- taking messages on receipt ---------------------------------------------------------------------------


class _Intake(asyncio.Queue[aiomqtt.Message]):
    """The MQTT client's incoming queue (aiomqtt's ``queue_type``), which takes most messages on receipt.

    paho hands every message it reads to ``put_nowait`` (in the event loop, from the socket's read callback) and
    acks a QoS 1 message right after. So what ``put_nowait`` does not keep is never lost nor delayed by what the
    link's consumer is doing:

    - statuses (the retained burst on connect: a status per meter at once), acks and raw frames need no sink, only
      the online map or a waiter: the link takes them here, at once, whatever the consumer waits for;
    - readings and events by the shared subscription go to the sinks (the database): they wait in this queue,
      at most ``maxsize`` (the link's ``max_incoming``), for the consumer, which may wait on a slow sink. Beyond
      that they are dropped and counted; the meter of a dropped reading is still marked online.

    Memory: at most ``maxsize`` messages wait here, each at most ``mqtt.MAX_PAYLOAD_BYTES`` (16 KiB) plus its
    objects: ~20 MiB for 20,000 real readings (~1 KiB each with the objects), 330 MiB in the worst case at the
    default; behind them the two sink queues (``MAX_SINK_QUEUE`` snapshots and notices each); the online map
    holds one entry per meter, at most ``MAX_ONLINE``. Statuses and acks add nothing that grows.
    Before this, every message queued here: the retained burst of 100,000 meters overflowed the queue and lost
    statuses, and a slow database held statuses and acks behind readings.

    Each of the link's two connections has its own intake; ``shared`` says which: the bulk connection carries
    only the shared subscription (so everything it brings is a shared copy, whatever identifiers the broker
    sends), the control connection none of it.
    """

    def __init__(self, link: MqttLink, maxsize: int = 0, *, shared: bool) -> None:
        super().__init__(maxsize)
        self.link = link
        self.shared = shared

    def put_nowait(self, item: aiomqtt.Message) -> None:
        link = self.link
        payload = item.payload
        if not isinstance(payload, bytes | bytearray):
            link.counters.refused += 1
            return
        try:
            taken = link.receive(
                str(item.topic), bytes(payload), _subscription_ids(item), bool(item.retain), shared=self.shared
            )
        except Exception:  # a bug must not end the connection (paho would re-raise it from its read loop)
            link.counters.refused += 1
            log.exception("MQTT link %s failed on a message on %s", link.client_id, item.topic)
            return
        if taken:
            return
        if self.full():
            link.lost_to_a_full_queue(str(item.topic))
            return
        super().put_nowait(item)


# --- the link ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _DirectSubscription:
    users: int
    ready: asyncio.Future[None]


class MqttLink:
    """A ``MeterLink`` over an MQTT broker; ``run(stop)`` keeps the two connections, the other methods use them.

    ``connected`` is set while the control connection is up: commands, reads and exchanges can be made and the
    online map is kept. ``bulk_connected`` is set while the bulk connection is up; while it is down the link still
    commands and reads meters, but hands no pushed readings, events or status notices to the sinks (the group's
    other workers take them, or the next reading covers them).

    Endpoints: ``link_id`` is the site and ``address`` the meter's name in its topics. Pushed readings are
    given the ``meter_id`` of an endpoint passed to ``register``, or the topic's meter name when there is none.
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        group: str = "headend",
        sites: Sequence[str] = ("+",),
        reading_sink: ReadingSink | None = None,
        notice_sink: NoticeSink | None = None,
        client_id: str | None = None,
        clock: Clock = utc_now,
        read_timeout_s: float = 10.0,
        command_timeout_s: float = 15.0,
        batch_size: int = 5_000,
        batch_wait_s: float = 0.05,
        known_only: bool = False,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        keepalive_s: int = 30,
        max_incoming: int = MAX_INCOMING,
        max_sink_queue: int = MAX_SINK_QUEUE,
    ) -> None:
        assert mqtt.valid_id(group), f"bad group name {group!r}"
        assert sites and all(site == "+" or mqtt.valid_id(site) for site in sites), sites
        assert 0 < read_timeout_s <= 300 and 0 < command_timeout_s <= 300
        assert 0 < reconnect_min_s <= reconnect_max_s <= 600
        assert 0 < max_incoming <= 1_000_000
        self.host, self.port, self.group = host, port, group
        self.sites = tuple(sites)
        self.client_id = client_id or f"pg-headend-{group}-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self.read_timeout_s = read_timeout_s
        self.command_timeout_s = command_timeout_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.keepalive_s = keepalive_s
        self.max_incoming = max_incoming
        self.known_only = known_only
        self.counters = MqttCounters()
        self._foreign_logged_at = float("-inf")
        self._foreign_unlogged = 0
        self._dropped_logged_at = float("-inf")
        self._dropped_unlogged = 0
        self.connected = asyncio.Event()
        """Set while the control connection is up (commands, reads, statuses); see the class docstring."""
        self.bulk_connected = asyncio.Event()
        """Set while the bulk connection is up (the shared subscription: readings and events for the sinks)."""
        self.last_error = ""
        """Why the control connection was last lost (or could not be made)."""
        self.last_bulk_error = ""
        self._readings = _Batcher[MeterSnapshot](
            reading_sink or _discard, self.counters, batch_size, batch_wait_s, max_sink_queue
        )
        self._notices = _Batcher[Notice](
            notice_sink or _discard, self.counters, batch_size, batch_wait_s, max_sink_queue
        )
        self._client: aiomqtt.Client | None = None
        """The control connection, while it is up and subscribed."""
        self._bulk: aiomqtt.Client | None = None
        """The bulk connection, while it is up and subscribed."""
        self._online: dict[str, bool] = {}
        self._heard: dict[str, bool] = {}
        """Meters heard from in this session: True when by a live message (a reading, a status change), False
        when only by a retained status. Cleared on connect; the ``_online`` map itself outlives reconnects."""
        self._meter_ids: dict[str, str] = {}
        self._pending: dict[str, asyncio.Future[mqtt.Ack]] = {}
        self._reading_waiters: dict[str, list[asyncio.Future[MeterSnapshot]]] = {}
        self._raw_waiters: dict[str, tuple[str, asyncio.Future[mqtt.RawFrame]]] = {}
        self._direct: dict[str, _DirectSubscription] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sequence = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._random = random.Random(self.client_id)  # jitter only: spreads reconnects of many workers

    # --- directory and status ---

    def register(self, endpoints: Iterable[MeterEndpoint]) -> None:
        """Remember the meter ids of MQTT endpoints, so pushed readings carry them."""
        for endpoint in endpoints:
            self._meter_ids[_key(endpoint.link_id, endpoint.address)] = endpoint.meter_id

    def online(self, endpoint: MeterEndpoint) -> bool:
        """Connected to the broker and the meter's last status was ``online``."""
        return self._client is not None and self._online.get(_key(endpoint.link_id, endpoint.address), False)

    def known_offline(self, endpoint: MeterEndpoint) -> bool:
        return self._online.get(_key(endpoint.link_id, endpoint.address)) is False

    # --- connection ---

    async def run(self, stop: asyncio.Event) -> None:
        """Keep both connections until ``stop`` is set, each reconnecting with backoff on its own; then hand over
        queued sink items.

        The bulk connection is made first (its first attempt, bounded by ``BROKER_TIMEOUT_S`` per step): so when
        ``connected`` is first set, pushed readings already flow too.
        """
        flushers = [asyncio.create_task(self._readings.run()), asyncio.create_task(self._notices.run())]
        bulk_tried = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep(stop, self._bulk_session, bulk_tried))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3 * BROKER_TIMEOUT_S):
                        await _first(self.bulk_connected.wait(), bulk_tried.wait(), stop.wait())
                group.create_task(self._keep(stop, self._control_session))
        finally:
            await _cancel(flushers)
            await self._readings.drain()
            await self._notices.drain()

    async def _keep(
        self,
        stop: asyncio.Event,
        session: Callable[[asyncio.Event], Awaitable[bool]],
        tried: asyncio.Event | None = None,
    ) -> None:
        """Run ``session`` again and again until stop, with capped, jittered exponential backoff after failures;
        set ``tried`` once the first session has ended."""
        failures = 0
        while not stop.is_set():
            failures = 0 if await session(stop) else failures + 1
            if tried is not None:
                tried.set()
            if stop.is_set():
                break
            delay_s = min(self.reconnect_max_s, self.reconnect_min_s * 2 ** min(failures, 16))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s * self._random.uniform(0.5, 1.0)):
                    await stop.wait()

    async def _control_session(self, stop: asyncio.Event) -> bool:
        """One control connection, until stop or loss; whether it got as far as subscribing. Losing it fails
        every waiter (commands, reads, exchanges): their acks and replies come by it."""
        subscribed = False
        try:
            async with self._connect(self.client_id, shared=False) as client:
                self._heard.clear()  # a new session: the retained burst may tell us again about every meter
                await self._subscribe_control(client)
                self._client = client  # only now: reads and commands need the ack and reply subscriptions
                subscribed = True
                self.counters.connects += 1
                self.connected.set()
                await self._serve(client, stop, self._ask_again(client))
        except aiomqtt.MqttError as error:
            self.counters.disconnects += 1
            self.last_error = str(error)
            log.warning("MQTT link %s lost the broker %s:%d: %s", self.client_id, self.host, self.port, error)
        finally:
            self._client = None
            self.connected.clear()
            self._fail_waiters("lost the connection to the broker")
        return subscribed

    async def _bulk_session(self, stop: asyncio.Event) -> bool:
        """One bulk connection (the shared subscription only), until stop or loss; whether it subscribed.
        Losing it fails no waiter: readings published meanwhile go to the group's other workers, or are lost
        (counted by nobody: the next reading covers the energy)."""
        subscribed = False
        client_id = f"{self.client_id}-bulk"
        try:
            async with self._connect(client_id, shared=True) as client:
                await self._subscribe_bulk(client)
                self._bulk = client
                subscribed = True
                self.counters.bulk_connects += 1
                self.bulk_connected.set()
                await self._serve(client, stop)
        except aiomqtt.MqttError as error:
            self.counters.bulk_disconnects += 1
            self.last_bulk_error = str(error)
            log.warning("MQTT link %s lost the broker %s:%d: %s", client_id, self.host, self.port, error)
        finally:
            self._bulk = None
            self.bulk_connected.clear()
        return subscribed

    def _connect(self, client_id: str, *, shared: bool) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.keepalive_s,
            timeout=BROKER_TIMEOUT_S,
            max_queued_incoming_messages=self.max_incoming,
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", functools.partial(_Intake, self, shared=shared)),
            properties=_connect_properties(MAX_RECEIVE),
        )

    async def _subscribe_bulk(self, client: aiomqtt.Client) -> None:
        """The shared subscription, without retained messages (retain handling 2): Mosquitto 2.0 sends them to
        shared subscriptions too, which doubled the burst on connect; ``STATUS`` (control) brings them once."""
        shared = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        await _subscribe(client, [f"$share/{self.group}/{mqtt.uplink_filter(site)}" for site in self.sites],
                         SUB_SHARED, shared)  # fmt: skip

    async def _subscribe_control(self, client: aiomqtt.Client) -> None:
        """Subscribe, the statuses last and all sites' in one SUBSCRIBE: the broker answers with the retained
        burst (a status per meter, tens of thousands), and a SUBACK queued behind it would wait for all of it."""
        ups = [mqtt.uplink_filter(site) for site in self.sites]
        await _subscribe(client, [up.removesuffix("#") + mqtt.Kind.ACK for up in ups], SUB_ACK)
        for topic_filter in list(self._direct):  # waiters that outlived a reconnect
            await client.subscribe(topic_filter, qos=1, properties=_subscribe_properties(_direct_id(topic_filter)))
        await _subscribe(client, [up.removesuffix("#") + mqtt.Kind.STATUS for up in ups], SUB_STATUS)

    async def _serve(
        self, client: aiomqtt.Client, stop: asyncio.Event, side: Coroutine[Any, Any, None] | None = None
    ) -> None:
        """Take the connection's messages until stop or loss (an ``MqttError``), running ``side`` meanwhile."""
        reader = asyncio.create_task(self._take_messages(client))
        stopper = asyncio.create_task(stop.wait())
        others = [asyncio.create_task(side)] if side is not None else []
        try:
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # re-raise the MqttError that ended it
        finally:
            await _cancel([reader, stopper, *others])

    async def _take_messages(self, client: aiomqtt.Client) -> None:
        # only readings and events for the sinks queue (``_Intake``), and only on the bulk connection: on the
        # control connection this waits for the connection's end
        async for message in client.messages:
            await self.take(str(message.topic), bytes(message.payload))

    async def _ask_again(self, client: aiomqtt.Client) -> None:
        """Ask again for the retained status of each registered meter not heard from since connect, by
        per-meter subscriptions, ``STATUS_CHUNK`` in one SUBSCRIBE, each chunk unsubscribed once subscribed.

        Why: a broker sends the retained status of every meter at once on subscribe and drops what exceeds its
        limits: Mosquitto keeps at most Receive Maximum (65,535) in flight plus ``max_queued_messages`` (1,000
        by default) queued, so on connect a head-end of 100,000 meters would miss a third of them however fast
        it takes them. A chunk fits those limits, and its statuses come right after its SUBACK.
        """
        loop = asyncio.get_running_loop()
        deadline, seen = loop.time() + BURST_WAIT_S, -1
        while self.counters.retained != seen and loop.time() < deadline:  # until the burst is over
            seen = self.counters.retained
            await asyncio.sleep(BURST_QUIET_S)
        missing = [key for key in self._meter_ids if key not in self._heard and self._serves(key)]
        try:
            for start in range(0, len(missing), STATUS_CHUNK):
                chunk = [key for key in missing[start : start + STATUS_CHUNK] if key not in self._heard]
                if not chunk:
                    continue
                self.counters.asked_again += len(chunk)
                filters = [_status_filter(key) for key in chunk]
                await _subscribe(client, filters, SUB_STATUS)
                await client.unsubscribe(filters)
        except aiomqtt.MqttError as error:  # the connection is going: the reader tells, and the next one asks again
            log.debug("MQTT link %s stopped asking for statuses: %s", self.client_id, error)

    def _serves(self, key: str) -> bool:
        site, _, meter = key.partition("/")
        return ("+" in self.sites or site in self.sites) and mqtt.valid_id(site) and mqtt.valid_id(meter)

    def _fail_waiters(self, reason: str) -> None:
        error = LinkError(FailureKind.OFFLINE, reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_Failed(error))
        for waiters in self._reading_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_Failed(error))
        for _, raw_waiter in self._raw_waiters.values():
            if not raw_waiter.done():
                raw_waiter.set_exception(_Failed(error))

    # --- uplink ---

    def receive(
        self,
        topic_text: str,
        payload: bytes,
        subscriptions: frozenset[int],
        retained: bool = False,
        *,
        shared: bool | None = None,
    ) -> bool:
        """Take one uplink message on receipt; False when it is a reading or an event for a sink, which the
        caller queues for ``take`` (the only messages that may wait: see ``_Intake``).

        Sinks get a message only when it came by the shared subscription: ``shared`` when the caller knows (the
        connection it came by: bulk or control), else by its subscription identifiers (a message without any is
        treated as shared: a broker that sends no identifiers). A retained message is the
        broker's stored copy, sent when we subscribe (every meter's status at once, a burst of thousands on
        connect): it only sets the online map. With ``known_only``, messages of meters not registered (another
        site or tenant on the same broker) are dropped, counted and logged in a summary.
        """
        if not payload and retained:
            return True  # a cleared retained status: nothing to learn
        topic = mqtt.parse_topic(topic_text)
        if isinstance(topic, mqtt.SchemaError):
            self._refuse(topic_text, topic)
            return True
        if shared is None:
            shared = SUB_SHARED in subscriptions or not subscriptions
        key = _key(topic.site, topic.meter)
        if self.known_only and key not in self._meter_ids and topic.kind not in (mqtt.Kind.ACK, mqtt.Kind.RAW):
            if shared or retained:  # count each message once, by the copy that would have reached a sink
                self._drop_foreign(key)
            return True
        if topic.kind in (mqtt.Kind.READING, mqtt.Kind.EVENT):
            if not retained:
                self._observe(key, online=True, live=True)  # a meter that publishes is connected (its topic says)
            if topic.kind is mqtt.Kind.READING and key in self._reading_waiters:
                self._wake_readers(key, topic_text, payload)  # a read's reply: at once, not behind the sinks
            return not shared
        decoded = mqtt.decode_for_topic(topic_text, payload)
        if isinstance(decoded, mqtt.SchemaError):
            self._refuse(topic_text, decoded)
            return True
        message = decoded[1]
        if isinstance(message, mqtt.Status):
            self._on_status(key, message, shared, retained)
        elif isinstance(message, mqtt.Ack):
            self._on_ack(message)
        elif isinstance(message, mqtt.RawFrame):
            self._on_raw(key, message)
        return True

    async def take(self, topic_text: str, payload: bytes) -> None:
        """Hand a reading or an event that came by the shared subscription to its sink; waits while the sink's
        queue is full (the database is behind), holding only readings and events back."""
        decoded = mqtt.decode_for_topic(topic_text, payload)
        if isinstance(decoded, mqtt.SchemaError):
            self._refuse(topic_text, decoded)
            return
        topic, message = decoded
        key = _key(topic.site, topic.meter)
        if isinstance(message, mqtt.Reading):
            self.counters.readings += 1
            await self._readings.put(snapshot_of(self._meter_id(key, message.meter), message, self.clock()))
        elif isinstance(message, mqtt.Event):
            self.counters.events += 1
            event = MeterEvent(
                self._meter_id(key, topic.meter),
                message.event_id,
                message.type,
                message.at,
                self.clock(),
                message.count,
                message.detail,
            )
            await self._notices.put(event)
        else:  # receive() takes every other kind itself
            self._refuse(topic_text, mqtt.SchemaError("topic", "not a reading or an event"))

    def _refuse(self, topic_text: str, error: mqtt.SchemaError) -> None:
        self.counters.refused += 1
        log.debug("refused %s: %s", topic_text, error)

    def _observe(self, key: str, *, online: bool, live: bool) -> None:
        """Set a meter's state in the online map: the latest live message wins (a status says online or
        offline; a reading or an event says online, so an explicit ``offline`` holds until the meter's next
        message). A retained status is the broker's stored copy, older than anything live: it counts only for a
        meter not heard live in this session (the burst on subscribe may come after the meter's first live
        messages)."""
        if not live and self._heard.get(key, False):
            return
        if key not in self._online and len(self._online) >= MAX_ONLINE:
            self.counters.untracked += 1
            return
        self._online[key] = online
        self._heard[key] = live

    def _meter_id(self, key: str, meter: str) -> str:
        return self._meter_ids.get(key, meter)

    def _drop_foreign(self, key: str) -> None:
        """Count a message of an unknown meter; log a summary at most every ``FOREIGN_LOG_EVERY_S``."""
        self.counters.foreign += 1
        self._foreign_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._foreign_logged_at >= FOREIGN_LOG_EVERY_S:
            log.warning(
                "MQTT link %s dropped %d message(s) of meters it does not serve (latest %s; %d in all): another "
                "site or tenant on this broker, or an endpoint not added yet",
                self.client_id, self._foreign_unlogged, key, self.counters.foreign,
            )  # fmt: skip
            self._foreign_logged_at, self._foreign_unlogged = now, 0

    def _wake_readers(self, key: str, topic_text: str, payload: bytes) -> None:
        decoded = mqtt.decode_for_topic(topic_text, payload)
        if isinstance(decoded, mqtt.SchemaError) or not isinstance(decoded[1], mqtt.Reading):
            return  # refused, and counted, by take() when it came by the shared subscription
        reading = decoded[1]
        snapshot = snapshot_of(self._meter_id(key, reading.meter), reading, self.clock())
        for waiter in self._reading_waiters.get(key, ()):
            if not waiter.done():
                waiter.set_result(snapshot)

    def _on_status(self, key: str, status: mqtt.Status, shared: bool, retained: bool) -> None:
        online = status.state == "online"
        if retained:
            self.counters.retained += 1
            self._observe(key, online=online, live=False)
            return
        self._observe(key, online=online, live=True)
        # Every status that came by the shared subscription is a notice, changed or not: the copy by the
        # STATUS subscription may have arrived first, and consumers of notices are idempotent anyway.
        if shared:
            self.counters.statuses += 1
            meter = key.partition("/")[2]
            change = OnlineChange(self._meter_id(key, meter), online, self.clock(), status.reason)
            if not self._notices.offer(change):
                self.counters.dropped_notices += 1

    def lost_to_a_full_queue(self, topic_text: str) -> None:
        """Count a reading or event the intake had no room for; log a summary at most every
        ``FOREIGN_LOG_EVERY_S`` (a flood would otherwise write a line per message)."""
        self.counters.dropped += 1
        self._dropped_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._dropped_logged_at >= FOREIGN_LOG_EVERY_S:
            log.warning(
                "MQTT link %s dropped %d reading(s) and event(s) (latest on %s; %d in all): more than %d waited "
                "for the sinks (the database is behind)",
                self.client_id, self._dropped_unlogged, topic_text, self.counters.dropped, self.max_incoming,
            )  # fmt: skip
            self._dropped_logged_at, self._dropped_unlogged = now, 0

    def _on_ack(self, ack: mqtt.Ack) -> None:
        future = self._pending.get(ack.command_id)
        if future is None or future.done():
            self.counters.unmatched += 1  # every worker sees every ack; most are for someone else
            return
        self.counters.acks += 1
        future.set_result(ack)

    def _on_raw(self, key: str, frame: mqtt.RawFrame) -> None:
        entry = self._raw_waiters.get(frame.correlation_id) if frame.correlation_id else None
        if entry is None and frame.correlation_id is None:
            # a meter that does not echo correlation ids: its oldest waiting exchange takes the frame
            entry = next((e for e in self._raw_waiters.values() if e[0] == key and not e[1].done()), None)
        if entry is None or entry[0] != key or entry[1].done():
            self.counters.unmatched += 1
            return
        self.counters.raw_frames += 1
        entry[1].set_result(frame)

    # --- downlink ---

    def _check(self, endpoint: MeterEndpoint) -> tuple[aiomqtt.Client, str] | LinkError:
        if not mqtt.valid_id(endpoint.link_id) or not mqtt.valid_id(endpoint.address):
            return _refused(f"endpoint {endpoint.meter_id}: site {endpoint.link_id!r} or meter "
                            f"{endpoint.address!r} is not a valid MQTT id")  # fmt: skip
        client = self._client
        if client is None:
            return LinkError(FailureKind.OFFLINE, f"not connected to the broker ({self.last_error or 'starting'})")
        if self.known_offline(endpoint):
            return LinkError(FailureKind.OFFLINE, f"meter {endpoint.meter_id} is offline (status)")
        return client, _key(endpoint.link_id, endpoint.address)

    async def _publish(self, client: aiomqtt.Client, topic_text: str, payload: bytes) -> LinkError | None:
        try:
            await client.publish(topic_text, payload, qos=1)
        except aiomqtt.MqttError as error:
            return LinkError(FailureKind.OFFLINE, f"publish failed: {error}")
        return None

    def _expect_ack(self, command_id: str) -> asyncio.Future[mqtt.Ack] | LinkError:
        if len(self._pending) >= MAX_PENDING_COMMANDS:
            return LinkError(FailureKind.BUSY, f"{MAX_PENDING_COMMANDS} commands already wait for their acks")
        if command_id in self._pending:
            return LinkError(FailureKind.BUSY, f"command {command_id} is already in flight")
        future: asyncio.Future[mqtt.Ack] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        return future

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        """Publish the command (QoS 1) and wait for the meter's ack by command id."""
        checked = self._check(endpoint)
        if isinstance(checked, LinkError):
            return checked
        client, _ = checked
        params = command_params(command)
        if isinstance(params, LinkError):
            return params
        now = self.clock()
        if command.valid_until <= now:
            return _refused(f"command {command.command_id} expired at {command.valid_until.isoformat()}")
        wire_id = wire_command_id(command.command_id)
        future = self._expect_ack(wire_id)
        if isinstance(future, LinkError):
            return future
        try:
            message = mqtt.Command(wire_id, endpoint.address, now, command.valid_until, params)
            error = await self._publish(client, mqtt.message_topic(endpoint.link_id, message), mqtt.encode(message))
            if error is not None:
                return error
            async with asyncio.timeout(self.command_timeout_s):
                return result_of(await future)
        except TimeoutError:
            return LinkError(FailureKind.TIMEOUT, f"no ack for {command.command_id} in {self.command_timeout_s} s")
        except _Failed as failed:
            return failed.error
        finally:
            _settled(self._pending.pop(wire_id, None))

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError:
        """Publish a ``read`` command and wait for the meter's next reading (it carries every register)."""
        checked = self._check(endpoint)
        if isinstance(checked, LinkError):
            return checked
        client, key = checked
        wanted = tuple(dict.fromkeys(name for item in sorted(items) for name in _READ_ITEMS[item]))
        if not wanted:
            return _refused(f"none of {', '.join(sorted(items))} can be read over MQTT schema v1")
        now = self.clock()
        command_id = f"rd-{self._prefix}-{next(self._sequence)}"
        message = mqtt.Command(command_id, endpoint.address, now, now + dt.timedelta(seconds=self.read_timeout_s),
                               mqtt.Read(wanted))  # fmt: skip
        ack = self._expect_ack(command_id)
        if isinstance(ack, LinkError):
            return ack
        try:
            async with self._subscribed(client, _direct_filter(endpoint, mqtt.Kind.READING)) as error:
                if error is not None:
                    return error
                reply: asyncio.Future[MeterSnapshot] = asyncio.get_running_loop().create_future()
                self._reading_waiters.setdefault(key, []).append(reply)
                try:
                    published = await self._publish(client, mqtt.message_topic(endpoint.link_id, message),
                                                     mqtt.encode(message))  # fmt: skip
                    if published is not None:
                        return published
                    snapshot = await self._reply_or_refusal(reply, ack)
                finally:
                    self._forget_reading_waiter(key, reply)
        except TimeoutError:
            return LinkError(FailureKind.TIMEOUT, f"no reading from {endpoint.meter_id} in {self.read_timeout_s} s")
        except _Failed as failed:
            return failed.error
        finally:
            _settled(self._pending.pop(command_id, None))
        if isinstance(snapshot, LinkError):
            return snapshot
        return _with_meter_id(snapshot, endpoint.meter_id)

    async def _reply_or_refusal(
        self, reply: asyncio.Future[MeterSnapshot], ack: asyncio.Future[mqtt.Ack]
    ) -> MeterSnapshot | LinkError:
        """The reading, unless the meter acks the read with an error first (then no reading will come)."""
        async with asyncio.timeout(self.read_timeout_s):
            waiting: list[asyncio.Future[Any]] = [reply, ack]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not reply.done():
                refused = result_of(ack.result())
                if isinstance(refused, LinkError):
                    return refused
            return await reply

    def _forget_reading_waiter(self, key: str, waiter: asyncio.Future[MeterSnapshot]) -> None:
        _settled(waiter)
        waiters = self._reading_waiters.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._reading_waiters.pop(key, None)

    async def exchange(self, endpoint: MeterEndpoint, request: Frame) -> Frame | LinkError:
        """Transparent mode: send one DL/T 645 request on ``down/raw`` and return the meter's reply frame.

        The reply must come from the addressed meter (any meter for an ``AA`` wildcard address), as a reply to
        the same function; a DL/T 645 error reply is returned as a frame (its ERR bits are the caller's to
        read). A broadcast (08H to 999999999999) is never answered: it is published, and the request itself is
        returned once the broker has it.
        """
        checked = self._check(endpoint)
        if isinstance(checked, LinkError):
            return checked
        client, key = checked
        correlation_id = f"q-{self._prefix}-{next(self._sequence)}"
        message = mqtt.RawFrame(endpoint.address, encode_frame(request), self.clock(), correlation_id)
        topic_text = mqtt.message_topic(endpoint.link_id, message, mqtt.Direction.DOWN)
        if request.address == "999999999999":
            error = await self._publish(client, topic_text, mqtt.encode(message))
            return error if error is not None else request
        if len(self._raw_waiters) >= MAX_PENDING_COMMANDS:
            return LinkError(FailureKind.BUSY, "too many transparent exchanges in flight")
        try:
            async with self._subscribed(client, _direct_filter(endpoint, mqtt.Kind.RAW)) as error:
                if error is not None:
                    return error
                future: asyncio.Future[mqtt.RawFrame] = asyncio.get_running_loop().create_future()
                self._raw_waiters[correlation_id] = (key, future)
                published = await self._publish(client, topic_text, mqtt.encode(message))
                if published is not None:
                    return published
                async with asyncio.timeout(self.read_timeout_s):
                    raw = await future
        except TimeoutError:
            return LinkError(FailureKind.TIMEOUT, f"no raw reply from {endpoint.meter_id} in {self.read_timeout_s} s")
        except _Failed as failed:
            return failed.error
        finally:
            entry = self._raw_waiters.pop(correlation_id, None)
            _settled(entry[1] if entry else None)
        return _reply_frame(request, raw.frame)

    @contextlib.asynccontextmanager
    async def _subscribed(self, client: aiomqtt.Client, topic_filter: str) -> AsyncIterator[LinkError | None]:
        """Hold a per-meter subscription (shared by concurrent users of the same filter) for the block."""
        entry = self._direct.get(topic_filter)
        if entry is None:
            if len(self._direct) >= MAX_DIRECT_SUBSCRIPTIONS:
                yield LinkError(FailureKind.BUSY, f"{MAX_DIRECT_SUBSCRIPTIONS} meters already have a reply pending")
                return
            entry = _DirectSubscription(0, asyncio.get_running_loop().create_future())
            self._direct[topic_filter] = entry
            task = asyncio.get_running_loop().create_task(self._subscribe_direct(client, topic_filter, entry.ready))
            self._tasks.add(task)  # a strong reference until it is done (the loop keeps only a weak one)
            task.add_done_callback(self._tasks.discard)
        entry.users += 1
        try:
            try:
                await asyncio.shield(entry.ready)
            except aiomqtt.MqttError as error:
                yield LinkError(FailureKind.OFFLINE, f"subscribe failed: {error}")
                return
            yield None
        finally:
            entry.users -= 1
            if entry.users == 0 and self._direct.get(topic_filter) is entry:
                del self._direct[topic_filter]
                if self._client is client:
                    with contextlib.suppress(aiomqtt.MqttError):
                        await client.unsubscribe(topic_filter)

    async def _subscribe_direct(self, client: aiomqtt.Client, topic_filter: str, ready: asyncio.Future[None]) -> None:
        try:
            await client.subscribe(topic_filter, qos=1, properties=_subscribe_properties(_direct_id(topic_filter)))
        except aiomqtt.MqttError as error:
            if not ready.done():
                ready.set_exception(error)
            self._direct.pop(topic_filter, None)
            return
        if not ready.done():
            ready.set_result(None)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel(tasks)


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them to end, without swallowing a cancellation of the caller itself
    (``suppress(CancelledError)`` around ``await task`` would)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Failed(Exception):
    """Internal: wakes a waiter with a ``LinkError`` (the broker went away); never leaves this module."""

    def __init__(self, error: LinkError) -> None:
        super().__init__(error.reason)
        self.error = error


def _settled(future: asyncio.Future[Any] | None) -> None:
    """Mark a waiter's failure as seen when its waiter is gone: losing the broker fails every waiter, also one
    whose caller is still in ``publish`` and leaves without awaiting it ("exception was never retrieved")."""
    if future is not None and future.done() and not future.cancelled():
        future.exception()


async def _subscribe(
    client: aiomqtt.Client, filters: Sequence[str], identifier: int, options: SubscribeOptions | None = None
) -> None:
    """One SUBSCRIBE for ``filters`` (QoS 1 unless ``options`` say otherwise), tagged with ``identifier``."""
    options = options or SubscribeOptions(qos=1)
    await client.subscribe([(f, options) for f in filters], properties=_subscribe_properties(identifier))


def _status_filter(key: str) -> str:
    site, _, meter = key.partition("/")
    return mqtt.topic(site, meter, mqtt.Direction.UP, mqtt.Kind.STATUS)


def _direct_filter(endpoint: MeterEndpoint, kind: mqtt.Kind) -> str:
    return mqtt.topic(endpoint.link_id, endpoint.address, mqtt.Direction.UP, kind)


def _direct_id(topic_filter: str) -> int:
    return SUB_RAW if topic_filter.endswith("/raw") else SUB_READING


def _with_meter_id(snapshot: MeterSnapshot, meter_id: str) -> MeterSnapshot:
    return snapshot if snapshot.meter_id == meter_id else replace(snapshot, meter_id=meter_id)


def _reply_frame(request: Frame, data: bytes) -> Frame | LinkError:
    reply = decode_frame(data)
    if isinstance(reply, DecodeError):
        return LinkError(FailureKind.GARBLED, f"raw reply is not a DL/T 645 frame: {reply}")
    addressed = "AA" in request.address or reply.address == request.address
    if not reply.reply or reply.function != request.function or not addressed:
        return LinkError(
            FailureKind.GARBLED,
            f"raw reply {reply.address} function {reply.function:02X} does not answer "
            f"{request.address} function {request.function:02X}",
        )
    return reply
