"""``ModbusLink``: the head-end's Modbus transport, outbound to gateways (pymodbus 3.16).

An endpoint's ``link_id`` names the gateway: ``host:port`` (or ``tcp://host:port``) for Modbus TCP, and
``rtu://host:port`` for RTU-over-TCP (a serial server passing raw RTU frames, CRC included, through a TCP socket);
``address`` is the meter's unit id (1..247); ``model`` selects the register map (``default`` is the Acrel-style
single-phase prepaid map). Reads are planned with ``protocols.modbus.read_plan`` and decoded with
``decode_block``; writes are built with ``encode_write`` / ``encode_group``, so this module knows no addresses.

Invariants kept:
- one request in flight per gateway (behind it is one RS485 bus, half-duplex), at most ``max_waiting`` requests
  queued for it (``LinkError(BUSY)`` beyond), every request bounded by ``timeout_s`` and sent once: retrying is the
  caller's decision (the scheduler's, the command queue's), never hidden here;
- a gateway that cannot be reached is not redialled before its backoff has passed (``LinkError(OFFLINE)`` until
  then), so a dead gateway costs nothing but a clock comparison;
- a command whose ``valid_until`` has passed is never written (Modbus carries no validity time on the wire);
- a recharge first reads the meter's purchase count: a meter that already holds the count is
  ``CommandResult(ok=True, already_applied=True)`` and is not written at all. Whether a command took effect is
  verified by the command queue reading the meter back, not here.

Exception replies map to ``LinkError``: 0x0A / 0x0B (the gateway found no path / the meter did not answer) are
``OFFLINE`` / ``TIMEOUT``, anything else is ``REJECTED`` with the exception named.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

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
from powergate.protocols.modbus import (
    ACREL_SINGLE_PHASE,
    BUILT_IN_MAPS,
    CodecError,
    ReadBlock,
    RegisterMap,
    Table,
    WriteRequest,
    decode_block,
    encode_group,
    encode_write,
    read_plan,
)

log = logging.getLogger(__name__)

MAX_GATEWAYS = 10_000
MAX_WAITING = 64
"""Requests queued behind the one in flight on a gateway; a meter answers in 20-500 ms, so 64 is ~30 s of bus."""
EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
_RELAY_CHOICES = {CommandKind.TRIP: "trip", CommandKind.CLOSE: "close", CommandKind.CLOSE_ALLOWED: "close_allowed"}
_ITEM_REGISTERS: dict[ReadItem, tuple[str, ...]] = {
    ReadItem.ENERGY: ("total_energy_wh", "sharp_energy_wh", "peak_energy_wh", "flat_energy_wh", "valley_energy_wh"),
    ReadItem.INSTANT: (
        "voltage_dv",
        "voltage_a_dv",
        "current_ma",
        "current_a_ma",
        "active_power_w",
        "power_factor_permille",
        "frequency_centihz",
    ),
    ReadItem.RELAY: ("relay_state",),
    ReadItem.PREPAID: ("remaining_amount_micros", "overdraft_amount_micros", "purchase_count"),
    ReadItem.CLOCK: (),
    ReadItem.FROZEN_DAY: (),
}
"""Register names each item reads, where the meter's map has them (maps share names; see modbus/maps.py)."""

Clock = Callable[[], dt.datetime]
_Request = Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Gateway:
    """Where a ``link_id`` points."""

    host: str
    port: int
    rtu: bool

    @staticmethod
    def parse(link_id: str) -> Gateway | LinkError:
        scheme, _, rest = link_id.rpartition("://")
        if scheme not in ("", "tcp", "rtu"):
            return _refused(f"gateway {link_id!r}: scheme must be tcp:// or rtu://")
        host, _, port_text = rest.rpartition(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return _refused(f"gateway {link_id!r} is not host:port")
        return Gateway(host.strip("[]"), int(port_text), scheme == "rtu")


def _refused(reason: str) -> LinkError:
    return LinkError(FailureKind.REJECTED, reason)


@dataclass(slots=True)
class _Session:
    """One gateway: its client, the lock that keeps one request in flight, and its reconnect backoff."""

    gateway: Gateway
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    client: AsyncModbusTcpClient | None = None
    waiting: int = 0
    failures: int = 0
    retry_at: float = 0.0
    """Monotonic time before which the gateway is not dialled again."""
    silent_units: set[int] = field(default_factory=set)
    """Unit ids whose last request went unanswered (they read as offline until they answer)."""


@dataclass(slots=True)
class ModbusCounters:
    requests: int = 0
    timeouts: int = 0
    exceptions: int = 0
    connects: int = 0
    connect_failures: int = 0


class ModbusLink:
    """A ``MeterLink`` to meters behind Modbus TCP / RTU-over-TCP gateways."""

    def __init__(
        self,
        *,
        clock: Clock = utc_now,
        timeout_s: float = 2.0,
        connect_timeout_s: float = 3.0,
        max_waiting: int = MAX_WAITING,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
        maps: dict[str, RegisterMap] | None = None,
    ) -> None:
        assert 0 < timeout_s <= 60 and 0 < connect_timeout_s <= 60 and 0 < max_waiting <= 10_000
        assert 0 < backoff_min_s <= backoff_max_s <= 3600
        self.clock = clock
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_waiting = max_waiting
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.maps = {"default": ACREL_SINGLE_PHASE, **BUILT_IN_MAPS, **(maps or {})}
        self.counters = ModbusCounters()
        self._sessions: dict[str, _Session] = {}

    # --- MeterLink ---

    def online(self, endpoint: MeterEndpoint) -> bool:
        """Connected to the meter's gateway and the meter answered its last request."""
        session = self._sessions.get(endpoint.link_id)
        if session is None or session.client is None or not session.client.connected:
            return False
        return endpoint.address.isdigit() and int(endpoint.address) not in session.silent_units

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError:
        resolved = self._resolve(endpoint)
        if isinstance(resolved, LinkError):
            return resolved
        register_map, unit = resolved
        names = [name for item in items for name in _ITEM_REGISTERS[item] if register_map.get(name) is not None]
        if not names:
            return _refused(f"model {register_map.model} has no registers for {', '.join(sorted(items))}")
        values = await self._read_values(endpoint, unit, register_map, sorted(set(names)))
        if isinstance(values, LinkError):
            return values
        return snapshot_of(endpoint.meter_id, self.clock(), values)

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        resolved = self._resolve(endpoint)
        if isinstance(resolved, LinkError):
            return resolved
        register_map, unit = resolved
        if command.valid_until <= self.clock():
            return _refused(f"command {command.command_id} expired at {command.valid_until.isoformat()}")
        if command.kind is CommandKind.RECHARGE:
            return await self._recharge(endpoint, unit, register_map, command)
        request = write_request(register_map, command)
        if isinstance(request, LinkError):
            return request
        written = await self._exchange(endpoint.link_id, unit, partial(_write, unit=unit, request=request))
        return written if isinstance(written, LinkError) else CommandResult(ok=True)

    async def close(self) -> None:
        """Close every gateway connection."""
        for session in self._sessions.values():
            if session.client is not None:
                session.client.close()
                session.client = None

    # --- reads ---

    def _resolve(self, endpoint: MeterEndpoint) -> tuple[RegisterMap, int] | LinkError:
        register_map = self.maps.get(endpoint.model)
        if register_map is None:
            return _refused(f"meter {endpoint.meter_id}: no Modbus map for model {endpoint.model!r}")
        if not endpoint.address.isdigit() or not 1 <= int(endpoint.address) <= 247:
            return _refused(f"meter {endpoint.meter_id}: unit id {endpoint.address!r} is not 1..247")
        return register_map, int(endpoint.address)

    async def _read_values(
        self, endpoint: MeterEndpoint, unit: int, register_map: RegisterMap, names: list[str]
    ) -> dict[str, int] | LinkError:
        values: dict[str, int] = {}
        for block in read_plan(register_map, names):
            words = await self._exchange(endpoint.link_id, unit, partial(_read_block, unit=unit, block=block))
            if isinstance(words, LinkError):
                return words
            decoded, errors = decode_block(register_map, block.table, block.address, words)
            if errors:
                return LinkError(FailureKind.GARBLED, "; ".join(str(e) for e in errors[:3]))
            values.update(decoded)
        return values

    # --- commands ---

    async def _recharge(
        self, endpoint: MeterEndpoint, unit: int, register_map: RegisterMap, command: MeterCommand
    ) -> CommandResult | LinkError:
        if command.amount_micros is None or command.purchase_count is None:
            return _refused("recharge needs amount_micros and purchase_count")
        if register_map.get("purchase_count") is not None:
            held = await self._read_values(endpoint, unit, register_map, ["purchase_count"])
            if isinstance(held, LinkError):
                return held
            if held["purchase_count"] >= command.purchase_count:
                # the meter applies purchase counts in order: holding this one (or a later one) means it has it
                return CommandResult(ok=True, already_applied=True, reason=f"meter holds {held['purchase_count']}")
        values = {"recharge_amount_micros": command.amount_micros, "recharge_purchase_count": command.purchase_count}
        request = encode_group(register_map, "recharge", values)
        if isinstance(request, CodecError):
            return _refused(f"model {register_map.model}: {request}")
        written = await self._exchange(endpoint.link_id, unit, partial(_write, unit=unit, request=request))
        return written if isinstance(written, LinkError) else CommandResult(ok=True)

    # --- the one place that talks to a gateway ---

    async def _exchange(self, link_id: str, unit: int, send: _Request) -> list[int] | LinkError:
        session = self._session(link_id)
        if isinstance(session, LinkError):
            return session
        if session.waiting >= self.max_waiting:
            return LinkError(FailureKind.BUSY, f"gateway {link_id}: {session.waiting} requests already queued")
        session.waiting += 1
        try:
            async with session.lock:
                client = await self._connected(session, link_id)
                if isinstance(client, LinkError):
                    return client
                return await self._send(session, link_id, unit, client, send)
        finally:
            session.waiting -= 1

    def _session(self, link_id: str) -> _Session | LinkError:
        session = self._sessions.get(link_id)
        if session is None:
            gateway = Gateway.parse(link_id)
            if isinstance(gateway, LinkError):
                return gateway
            if len(self._sessions) >= MAX_GATEWAYS:
                return LinkError(FailureKind.BUSY, f"already talking to {MAX_GATEWAYS} gateways")
            session = self._sessions[link_id] = _Session(gateway)
        return session

    async def _connected(self, session: _Session, link_id: str) -> AsyncModbusTcpClient | LinkError:
        if session.client is not None and session.client.connected:
            return session.client
        if time.monotonic() < session.retry_at:
            return LinkError(FailureKind.OFFLINE, f"gateway {link_id} unreachable; next attempt after backoff")
        gateway = session.gateway
        client = AsyncModbusTcpClient(
            gateway.host,
            port=gateway.port,
            framer=FramerType.RTU if gateway.rtu else FramerType.SOCKET,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,  # 0 turns pymodbus's own reconnect loop off: backoff is ours
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                connected = await client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            client.close()
            self._failed(session)
            self.counters.connect_failures += 1
            return LinkError(FailureKind.OFFLINE, f"gateway {link_id} does not accept a connection")
        self.counters.connects += 1
        session.client, session.failures, session.retry_at = client, 0, 0.0
        return client

    def _failed(self, session: _Session) -> None:
        session.failures += 1
        delay_s = min(self.backoff_max_s, self.backoff_min_s * 2 ** min(session.failures - 1, 16))
        session.retry_at = time.monotonic() + delay_s

    async def _send(
        self,
        session: _Session,
        link_id: str,
        unit: int,
        client: AsyncModbusTcpClient,
        send: _Request,
    ) -> list[int] | LinkError:
        self.counters.requests += 1
        try:
            # pymodbus times the request out itself; this outer bound only guards against a hang in it
            async with asyncio.timeout(self.timeout_s + 1.0):
                reply = await send(client)
        except (TimeoutError, ModbusException) as error:
            self.counters.timeouts += 1
            session.silent_units.add(unit)
            if not client.connected:
                client.close()
                session.client = None
                self._failed(session)
                return LinkError(FailureKind.OFFLINE, f"gateway {link_id} connection lost: {error}")
            return LinkError(FailureKind.TIMEOUT, f"unit {unit} on {link_id} did not answer in {self.timeout_s} s")
        if reply.isError():
            return self._exception(session, link_id, unit, reply)
        session.silent_units.discard(unit)
        return [int(bit) for bit in reply.bits] if _is_bits(reply) else list(reply.registers)

    def _exception(self, session: _Session, link_id: str, unit: int, reply: ModbusPDU) -> LinkError:
        self.counters.exceptions += 1
        code = int(getattr(reply, "exception_code", 0))
        name = EXCEPTION_NAMES.get(code, f"exception {code:#04x}")
        if code in (0x0A, 0x0B):
            session.silent_units.add(unit)
            kind = FailureKind.OFFLINE if code == 0x0A else FailureKind.TIMEOUT
            return LinkError(kind, f"unit {unit} on {link_id}: {name}")
        session.silent_units.discard(unit)  # the meter answered, if only to refuse
        if code == 0x06:
            return LinkError(FailureKind.BUSY, f"unit {unit} on {link_id}: {name}")
        return LinkError(FailureKind.REJECTED, f"unit {unit} on {link_id}: {name}")


def _is_bits(reply: ModbusPDU) -> bool:
    return reply.function_code in (0x01, 0x02)


def _read_block(client: AsyncModbusTcpClient, unit: int, block: ReadBlock) -> Awaitable[ModbusPDU]:
    read = {
        Table.COIL: client.read_coils,
        Table.DISCRETE_INPUT: client.read_discrete_inputs,
        Table.HOLDING: client.read_holding_registers,
        Table.INPUT: client.read_input_registers,
    }[block.table]
    return read(block.address, count=block.count, device_id=unit)


def _write(client: AsyncModbusTcpClient, unit: int, request: WriteRequest) -> Awaitable[ModbusPDU]:
    if request.function == 0x05:
        return client.write_coil(request.address, bool(request.words[0]), device_id=unit)
    if request.function == 0x0F:
        return client.write_coils(request.address, [bool(w) for w in request.words], device_id=unit)
    return client.write_registers(request.address, list(request.words), device_id=unit)


def write_request(register_map: RegisterMap, command: MeterCommand) -> WriteRequest | LinkError:
    """The one write that carries ``command`` on a meter of ``register_map`` (not recharges: see ``_recharge``)."""
    values: dict[str, int]
    group: str | None = None
    kind = command.kind
    if kind in _RELAY_CHOICES:
        register = register_map.get("relay_command")
        choice = _RELAY_CHOICES[kind]
        if register is None or choice not in {name for _, name in register.choices}:
            return _refused(f"model {register_map.model} cannot {kind.value}")
        values = {"relay_command": register.choice_value(choice)}
    elif kind is CommandKind.SET_ALARMS:
        if command.alarm1_micros is None or command.alarm2_micros is None:
            return _refused("set_alarms needs alarm1_micros and alarm2_micros")
        group = "alarm_amounts"
        values = {"alarm_amount_1_micros": command.alarm1_micros, "alarm_amount_2_micros": command.alarm2_micros}
    elif kind is CommandKind.SET_POWER_LIMIT:
        if command.power_limit_w is None:
            return _refused("set_power_limit needs power_limit_w")
        values = {"power_limit_w": command.power_limit_w}
    elif kind is CommandKind.SET_PRICES:
        prices = command.prices_micros
        if prices is None or len(prices) not in (1, 4):
            return _refused("set_prices needs prices_micros: one price, or four (sharp, peak, flat, valley)")
        bands = ("sharp", "peak", "flat", "valley")
        group = "prices"
        values = {
            f"{band}_price_micros_per_kwh": price
            for band, price in zip(bands, prices * 4 if len(prices) == 1 else prices, strict=True)
        }
    else:
        return _refused(f"{kind.value} is not available over Modbus")
    request = encode_group(register_map, group, values) if group else encode_write(register_map, values)
    if isinstance(request, CodecError):
        return _refused(f"model {register_map.model}: {request}")
    return request


def snapshot_of(meter_id: str, at: dt.datetime, values: dict[str, int]) -> MeterSnapshot:
    """Register values (named as in the maps, in our units) as a snapshot; absent registers stay ``None``."""
    bands = tuple(values.get(f"{band}_energy_wh") for band in ("sharp", "peak", "flat", "valley"))
    power_w = values.get("active_power_w")
    remaining = values.get("remaining_amount_micros")
    overdraft = values.get("overdraft_amount_micros")
    if remaining is not None and overdraft is None:
        overdraft = max(-remaining, 0)
    relay = values.get("relay_state")
    return MeterSnapshot(
        meter_id=meter_id,
        at=at,
        total_wh=values.get("total_energy_wh"),
        bands_wh=(bands[0], bands[1], bands[2], bands[3]) if None not in bands else None,  # type: ignore[arg-type]
        voltage_dv=values.get("voltage_dv", values.get("voltage_a_dv")),
        current_ma=values.get("current_ma", values.get("current_a_ma")),
        power_dw=None if power_w is None else power_w * 10,
        power_factor_milli=values.get("power_factor_permille"),
        frequency_chz=values.get("frequency_centihz"),
        relay_open=None if relay is None else relay == 1,
        remaining_micros=None if remaining is None else max(remaining, 0),
        overdraft_micros=overdraft,
        purchase_count=values.get("purchase_count"),
    )
