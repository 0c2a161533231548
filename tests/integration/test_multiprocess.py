"""THE production-topology test (issue 10): two head-ends and two workers as separate processes on PostgreSQL and
the Mosquitto broker; one head-end and one worker are killed with SIGKILL mid-run; nothing is lost or done twice.

The parts, all real:
- ``powergate serve --role headend`` x2 (``headend-a``, ``headend-b``): each a DTU server on its own port, both in
  one MQTT shared-subscription group, reading every meter every ``INTERVAL_S``; ``headend-a`` ingests directly,
  ``headend-b`` in queue mode (``headend.ingest = "queue"``: its batches go through ``ingest_batches`` to the
  workers, which take them with ``SKIP LOCKED``; a SIGKILLed worker's claimed batch goes to the other one);
- ``powergate serve --role worker`` x2: the outbox relay (trip / close decisions into commands) and the rest;
- the virtual meters live in THIS process (they must outlive every kill): DL/T 645 meters behind virtual DTUs
  that dial into either head-end (chosen at random at every connection, so a DTU whose head-end died redials
  the other one or the restarted one), and MQTT meters on two broker connections, shared by the head-ends;
- payments flow through ``services.payments`` (the cashier channel) from a thread of the test; balances run
  down under load, the balance policy trips meters at zero and a payment closes them again.

Kills: ``headend-a`` and ``worker-a`` get SIGKILL mid-run and are restarted 2 s later with the same names, as
systemd would (``Restart=always``, ``RestartSec=2``); ``headend-b`` is killed later and restarted too. At the end
the meters' clocks stop (no more consumption), the platform catches up, and the test checks, against the
meters' own registers and counters:
- registers: every meter's last stored reading equals its register; every stored reading is unique and every
  rated one is posted once (one ledger entry each); each wallet was charged exactly price x (last - first
  register), so no energy was lost or billed twice across the kills;
- commands: every trip / close decision became exactly one command, every command ended ``verified``, and each
  meter saw exactly the verified relay commands, once each, in order; its relay ends as its last command left it;
- money: every payment credited once; balance = payments - charges for every wallet; the ledger audit is exact.
MQTT readings are QoS 0 on clean sessions (docs/headend.md): a reading a killed head-end had received but not
yet committed is gone as a sample (its energy is in the next reading). The test counts such readings and
checks that every one of them was published within ``LOSS_WINDOW_S`` of a SIGKILL of a head-end.

About 60 s on a quiet machine, so marked ``slow`` (``make test`` and CI run it). The other tests here are fast:
two ingesters on one meter (the rating-state lock), the put-off command taken by the head-end that holds its
DTU, and the MQTT wire id of a queue command id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.headend.commands import CommandState
from powergate.headend.model import MeterEndpoint, Transport
from powergate.headend.status import save_endpoints
from powergate.payments.cashier import Cashier
from powergate.services import payments, prepaid
from powergate.services.ingest import Ingestor
from powergate.sim.faults import Faults, SimStats
from powergate.sim.fleet import build_meters
from powergate.sim.meter import MeterError, RelayAction, VirtualMeter
from powergate.sim.mqtt_face import MqttGateway
from powergate.sim.profiles import PROFILES, ProfileKind
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.db import make_engine
from powergate.store.tables import ledger_accounts, ledger_entries, readings
from powergate.store.tables_commands import meter_commands
from powergate.store.tables_ingest_queue import ingest_batches
from powergate.store.tables_prepaid import outbox
from testkit import FLAT_TARIFF as TARIFF
from testkit import free_port
from testkit import truncate_all as _truncate_all

ROOT = Path(__file__).resolve().parents[2]
DTU_METERS, DTUS = 12, 4
MQTT_METERS, MQTT_CONNECTIONS = 12, 2
INTERVAL_S = 2.0
PRICE_MICROS_PER_WH = 1_000
"""1 yuan/kWh: one Wh costs 1,000 micros exactly, so the expected charge of a meter is an integer."""
TARGET_WH_PER_S = 8
"""Each meter's load is scaled to about this, so a balance of a few jiao runs out within the test."""
START_BALANCE_FEN = (15, 25, 40)
PAYMENT_FEN = 20
RUN_S = 40.0
KILLS: tuple[tuple[float, str], ...] = ((10.0, "headend-a"), (17.0, "worker-a"), (26.0, "headend-b"))
"""(seconds into the run, process): SIGKILL, then a restart RESTART_AFTER_S later."""
RESTART_AFTER_S = 2.0
LOSS_WINDOW_S = (3.0, 1.0)
"""A reading lost with a killed head-end was published at most 3 s before the kill (in its batch, not yet
committed) or 1 s after it (in flight to the dying connection)."""
SETTLE_TIMEOUT_S = 45.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- the meters ---------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """What the meters saw, in the test's clock."""

    relay: dict[str, list[tuple[float, RelayAction]]] = field(default_factory=dict)
    published: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """MQTT meter address -> (time, total Wh) of each reading it published."""


RECORD = Record()


def register_wh(meter: VirtualMeter) -> int:
    """The total register as the meter reports it (DL/T 645 and MQTT alike: in 0.01 kWh steps)."""
    return meter.total_ticks() * 10


class CountingMeter(VirtualMeter):
    """A virtual meter that notes every relay command reaching it (same layout: ``__class__`` can be swapped)."""

    __slots__ = ()

    def relay_command(self, action: RelayAction, now_s: int, valid_until_s: int | None = None) -> MeterError | None:
        RECORD.relay.setdefault(self.address, []).append((time.monotonic(), action))
        return super().relay_command(action, now_s, valid_until_s)


class RecordingGateway(MqttGateway):
    async def publish_reading(self, meter: VirtualMeter) -> None:
        before = self.stats.readings_published
        await super().publish_reading(meter)
        if self.stats.readings_published > before:
            RECORD.published.setdefault(meter.address, []).append((time.monotonic(), register_wh(meter)))


class SimClock:
    """Wall-clock seconds until ``freeze()``: then time stands still for the meters (they stop consuming)."""

    def __init__(self) -> None:
        self.frozen_at: int | None = None

    def __call__(self) -> int:
        return self.frozen_at if self.frozen_at is not None else int(time.time())

    def freeze(self) -> None:
        self.frozen_at = int(time.time())


def make_meters(clock: SimClock) -> list[CountingMeter]:
    """Meters with their load scaled to about ``TARGET_WH_PER_S`` each, platform-billed (never self-tripping)."""
    count = DTU_METERS + MQTT_METERS
    now_s = clock()
    probe = build_meters(count, seed=42, now_s=now_s, load_scale_permille=100_000)
    meters = build_meters(count, seed=42, now_s=now_s, load_scale_permille=100_000)
    for probed, meter in zip(probe, meters, strict=True):
        start = register_wh(probed)
        probed.advance(now_s + 60)
        rate = max((register_wh(probed) - start) / 60, 0.5)
        meter.scale_permille = max(1, min(int(100_000 * TARGET_WH_PER_S / rate), 2_000_000))
        meter.balance_micros = 10**12  # the meter's own balance must never trip it: the platform bills
        meter.__class__ = CountingMeter
    return meters  # type: ignore[return-value]


def dtu_of(index: int) -> str:
    return f"8690{index % DTUS:011d}"


def endpoints(meters: list[CountingMeter], site: str) -> list[MeterEndpoint]:
    found = []
    for index, meter in enumerate(meters):
        if index < DTU_METERS:
            found.append(MeterEndpoint(f"D-{meter.address}", Transport.DLT645, meter.address, dtu_of(index)))
        else:
            found.append(MeterEndpoint(f"Q-{meter.address}", Transport.MQTT, meter.address, site))
    return found


async def run_meters(
    meters: list[CountingMeter], ports: list[int], site: str, clock: SimClock, stop: asyncio.Event
) -> None:
    from powergate.sim.fleet import VirtualDtu, split

    stats = SimStats(meters=len(meters))
    buses: dict[str, list[VirtualMeter]] = {}
    for index, meter in enumerate(meters[:DTU_METERS]):
        buses.setdefault(dtu_of(index), []).append(meter)
    rng = random.Random(7)

    async def dial(dtu_id: str, bus: list[VirtualMeter]) -> None:
        faults = Faults(delay_min_ms=5, delay_max_ms=20, seed=len(bus))
        while not stop.is_set():
            port = rng.choice(ports)  # a DTU may dial into either head-end
            dtu = VirtualDtu(dtu_id, bus, headend=("127.0.0.1", port), clock=clock, faults=faults, stats=stats,
                             heartbeat_s=1.0, connect_timeout_s=1.0)  # fmt: skip
            with contextlib.suppress(OSError, TimeoutError):
                await dtu.run(stop)  # ends with ConnectionError (an OSError) when its head-end dies
            await asyncio.sleep(0.1)

    async def publish(index: int, group: list[VirtualMeter]) -> None:
        gateway = RecordingGateway(group, host="127.0.0.1", port=1883, site=site, interval_s=INTERVAL_S,
                                   client_id=f"{site}-{index}", clock=clock, stats=stats)  # fmt: skip
        while not stop.is_set():
            with contextlib.suppress(Exception):  # the broker stays; a hiccup reconnects
                await gateway.run(stop)
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(dial(dtu_id, bus)) for dtu_id, bus in buses.items()]
    groups = split(meters[DTU_METERS:], MQTT_CONNECTIONS)
    tasks += [asyncio.create_task(publish(index, list(group))) for index, group in enumerate(groups)]
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def meters_running(meters: list[CountingMeter], ports: list[int], site: str, clock: SimClock) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(run_meters(meters, ports, site, clock, stop)), daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()


def clear_retained(topics: list[str], host: str = "127.0.0.1", port: int = 1883) -> None:
    """Remove retained messages (the meters' statuses) this run left on the shared broker: a head-end that
    connects later would otherwise be handed every one of them."""
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(host, port)
    client.loop_start()
    try:
        for info in [client.publish(topic, b"", qos=1, retain=True) for topic in topics]:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


# -- the processes -------------------------------------------------------------------------------------------


class Roles:
    """The ``powergate serve`` children, by name; output goes to files (a pipe nobody reads would block them)."""

    def __init__(self, url: str, tmp: Path, ports: dict[str, int], group: str) -> None:
        self.url, self.tmp, self.ports, self.group = url, tmp, ports, group
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}

    def env(self, name: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "POWERGATE_DATABASE_URL": self.url,
            "POWERGATE_LOG_LEVEL": os.environ.get("POWERGATE_TEST_ROLE_LOG_LEVEL", "warning"),
        }
        if name.startswith("headend"):
            env |= {
                "POWERGATE_HEADEND_NAME": name,
                "POWERGATE_HEADEND_DTU_LISTEN": f"127.0.0.1:{self.ports[name]}",
                "POWERGATE_HEADEND_MQTT_BROKER": "127.0.0.1:1883",
                "POWERGATE_HEADEND_MQTT_GROUP": self.group,
                "POWERGATE_HEADEND_MODBUS": "false",
                "POWERGATE_HEADEND_READ_INTERVAL_S": str(INTERVAL_S),
                "POWERGATE_HEADEND_READ_ITEMS": "energy,relay",
                "POWERGATE_HEADEND_INGEST": "queue" if name == "headend-b" else "direct",
            }
        else:
            env |= {"POWERGATE_WORKER_NAME": name, "POWERGATE_WORKER_OUTBOX_EVERY_S": "1.0"}
        return env

    def start(self, name: str) -> None:
        self.starts[name] = self.starts.get(name, 0) + 1
        role = "headend" if name.startswith("headend") else "worker"
        log = open(self.tmp / f"{name}.{self.starts[name]}.log", "wb")  # noqa: SIM115 - the child owns it
        with log:
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "powergate", "serve", "--role", role], env=self.env(name), stdout=log,
                stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip

    def kill(self, name: str) -> None:
        process = self.running[name]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.returncode == -signal.SIGKILL
        del self.running[name]

    def alive(self) -> None:
        for name, process in self.running.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}: {self.output(name)}"

    def output(self, name: str) -> str:
        path = self.tmp / f"{name}.{self.starts[name]}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self) -> dict[str, int]:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.running.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


def listeners(engine: Engine) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    with engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one())


# -- the world --------------------------------------------------------------------------------------------------


@dataclass
class Wallet:
    code: str
    account_id: int
    meter_id: str
    address: str
    paid_fen: int = 0


def prepare(engine: Engine, meters: list[CountingMeter], site: str) -> dict[str, Wallet]:
    now = utc_now()
    wallets: dict[str, Wallet] = {}
    found = endpoints(meters, site)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", TARIFF, now)
        for index, endpoint in enumerate(found):
            code = wallet_code(f"A-{endpoint.meter_id}")
            account_id = ledger_store.ensure_account(conn, code, now)
            metering.add_meter(conn, endpoint.meter_id, account_id, "flat", now, max_power_w=2_000_000)
            start_fen = START_BALANCE_FEN[index % len(START_BALANCE_FEN)]
            ledger_store.post(conn, recharge_entry(f"opening:{code}", code, "cash", start_fen * 10_000, now), now)
            policy = prepaid.WalletPolicy(reconnect_micros=0, friendly_window="off")
            assert prepaid.set_policy(conn, account_id, policy, now) is None
            wallets[code] = Wallet(code, account_id, endpoint.meter_id, endpoint.address, start_fen)
        save_endpoints(conn, found)
    return wallets


def balances(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(ledger_accounts.c.id, ledger_accounts.c.balance_micros))
        return {int(i): int(b) for i, b in rows}


@dataclass
class Payments:
    """Pays 20 fen at the cashier into a random wallet that is out of credit, until stopped; times each close."""

    engine: Engine
    wallets: dict[str, Wallet]
    closes: list[tuple[float, str]] = field(default_factory=list)
    """(time the payment committed, meter address) of payments into a tripped wallet."""
    count: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(3)
        channels: payments.Channels = {"cashier": Cashier()}
        policy = payments.PaymentPolicy(frozenset({"cashier"}))
        while not self.stop.wait(0.15):
            short = [w for w in self.wallets.values() if balances(self.engine)[w.account_id] <= 0]
            if not short:
                continue
            wallet = rng.choice(short)
            order = payments.NewOrder(wallet.code, PAYMENT_FEN, "cashier", "cash", operator="cashier:test")
            settled = payments.pay_at_cashier(self.engine, channels, order, f"R{uuid.uuid4().hex[:12]}", policy,
                                              utc_now())  # fmt: skip
            assert isinstance(settled, payments.Settlement) and settled.verdict is payments.Verdict.ACCEPTED, settled
            wallet.paid_fen += PAYMENT_FEN
            self.count += 1
            self.closes.append((time.monotonic(), wallet.address))


# -- the checks ----------------------------------------------------------------------------------------------------


def open_work(engine: Engine) -> int:
    """Commands not yet settled plus trip / close decisions not yet relayed plus batches of readings queued."""
    with engine.connect() as conn:
        states = queue.count_by_state(conn)
        relaying = conn.execute(
            select(func.count()).where(outbox.c.processed_at.is_(None), outbox.c.kind.in_(("trip", "close")))
        ).scalar_one()
        batches = conn.execute(select(func.count()).select_from(ingest_batches)).scalar_one()
    return sum(n for state, n in states.items() if state in queue.OPEN) + int(relaying) + int(batches)


def last_registers(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(readings.c.meter_id, func.max(readings.c.total_wh)).group_by(readings.c.meter_id))
        return {str(m): int(t) for m, t in rows}


def behind(engine: Engine, meters: list[CountingMeter], wallets: dict[str, Wallet]) -> list[tuple[str, int, int]]:
    """(meter id, last stored register, the meter's register) of meters whose last reading is not stored yet."""
    by_address = {w.address: w for w in wallets.values()}
    registers = last_registers(engine)
    found = [(by_address[m.address].meter_id, register_wh(m)) for m in meters]
    return [(meter_id, registers.get(meter_id, -1), wh) for meter_id, wh in found if registers.get(meter_id) != wh]


def settled(engine: Engine, meters: list[CountingMeter], wallets: dict[str, Wallet]) -> bool:
    return not behind(engine, meters, wallets) and open_work(engine) == 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_head_ends_and_two_workers_survive_sigkill_with_nothing_lost_or_done_twice(
    migrated_postgres_url: str, mqtt_broker: tuple[str, int], tmp_path: Path
) -> None:
    url = migrated_postgres_url
    _truncate_all(url)
    engine = make_engine(url)
    site = f"mp{uuid.uuid4().hex[:8]}"
    clock = SimClock()
    meters = make_meters(clock)
    wallets = prepare(engine, meters, site)
    ports = {"headend-a": free_port(), "headend-b": free_port()}
    roles = Roles(url, tmp_path, ports, group=f"g{uuid.uuid4().hex[:8]}")
    RECORD.relay.clear()
    RECORD.published.clear()
    kills_at: list[float] = []
    payer = Payments(engine, wallets)
    paying = threading.Thread(target=payer.run, daemon=True)
    started = time.monotonic()
    try:
        for name in ("headend-a", "headend-b", "worker-a", "worker-b"):
            roles.start(name)
        deadline = time.monotonic() + 60
        while listeners(engine) < 4:  # every role subscribes to its wake-ups once it runs
            roles.alive()
            assert time.monotonic() < deadline, "the roles did not start"
            time.sleep(0.2)
        with meters_running(meters, list(ports.values()), site, clock):
            run_started = time.monotonic()
            paying.start()
            plan = sorted([(at, "kill", name) for at, name in KILLS] +
                          [(at + RESTART_AFTER_S, "start", name) for at, name in KILLS])  # fmt: skip
            for at, action, name in plan:
                time.sleep(max(0.0, run_started + at - time.monotonic()))
                roles.alive()
                if action == "kill":
                    roles.kill(name)
                    if name.startswith("headend"):
                        kills_at.append(time.monotonic())
                else:
                    roles.start(name)
            time.sleep(max(0.0, run_started + RUN_S - time.monotonic()))
            payer.stop.set()
            paying.join(10)
            clock.freeze()  # the meters stop consuming; the platform must catch up with their registers
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while not settled(engine, meters, wallets):
                roles.alive()
                assert time.monotonic() < deadline, (
                    f"not settled: {open_work(engine)} open; {unfinished(engine)}; behind: "
                    f"{behind(engine, meters, wallets)}"
                )
                time.sleep(0.5)
            time.sleep(2 * INTERVAL_S)  # a trip decided by the very last reading would show up now
            while not settled(engine, meters, wallets):
                assert time.monotonic() < deadline, (
                    f"not settled: {open_work(engine)} open; {unfinished(engine)}; behind: "
                    f"{behind(engine, meters, wallets)}"
                )
                time.sleep(0.5)
        codes = roles.stop_all()
    finally:
        payer.stop.set()
        roles.stop_all()
        engine.dispose()
        clear_retained([f"pg/v1/{site}/{m.address}/up/status" for m in meters[DTU_METERS:]])
    elapsed = time.monotonic() - started
    assert all(code == 0 for code in codes.values()), {n: roles.output(n) for n in codes}
    started_as = {name: (tmp_path / f"{name}.1.log").read_text(errors="replace") for name in ports}
    assert "ingest direct" in started_as["headend-a"] and "ingest queue" in started_as["headend-b"]

    check_registers_and_charges(engine, meters, wallets)
    check_commands(engine, meters, wallets)
    check_money(engine, wallets)
    lost = lost_mqtt_readings(engine, wallets)
    outside = [(address, at) for address, at in lost if not near_a_kill(at, kills_at)]
    assert outside == [], f"MQTT readings lost away from any head-end kill: {outside}"
    closes = close_latencies(payer)
    published = sum(len(v) for v in RECORD.published.values())
    assert payer.count > 10 and len(closes) > 5, (payer.count, len(closes))
    print(
        f"\n{len(meters)} meters, {payer.count} payments, {sum(len(v) for v in RECORD.relay.values())} relay "
        f"commands, {stored_readings(engine)} readings stored; {len(kills_at)} head-end and 1 worker SIGKILLs; "
        f"MQTT readings lost with a killed head-end: {len(lost)} of {published}; payment -> relay closed at the "
        f"meter p50 {percentile(closes, 0.5):.2f} s, p99 {percentile(closes, 0.99):.2f} s, max {max(closes):.2f} s; "
        f"{elapsed:.0f} s"
    )
    engine.dispose()


def unfinished(engine: Engine, *, all_but_done: bool = False) -> list[str]:
    with engine.connect() as conn:
        query = select(meter_commands.c.id, meter_commands.c.state, meter_commands.c.claimed_by,
                       meter_commands.c.last_error, meter_commands.c.next_attempt_at,
                       meter_commands.c.created_at, meter_commands.c.attempts)  # fmt: skip
        done = ("verified", "cancelled")
        where = meter_commands.c.state.not_in(done) if all_but_done else meter_commands.c.state.in_(queue.OPEN_STATES)
        rows = conn.execute(query.where(where)).all()
    now = utc_now()
    return [
        f"{r.id} {r.state} ({r.claimed_by}, {r.attempts} attempts, created {(now - r.created_at).total_seconds():.1f}"
        f" s ago, due in {(r.next_attempt_at - now).total_seconds():.1f} s): {r.last_error}"
        for r in rows
    ][:20]


def stored_readings(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(readings)).scalar_one())


def billed(engine: Engine) -> dict[str, tuple[int, int, int]]:
    """meter id -> (baseline register, last register, charged micros) from the stored readings.

    The first reading rated of a meter is its baseline (stored as skipped, billed nothing); every later one is
    billed from the last rated one before it, and an older one arriving late is skipped: so a meter billed each
    Wh once has been charged exactly price x (last register - baseline)."""
    with engine.connect() as conn:
        query = select(readings.c.meter_id, readings.c.total_wh).where(readings.c.reason.like("baseline:%"))
        baselines = {str(m): int(t) for m, t in conn.execute(query)}
        rows = conn.execute(
            select(readings.c.meter_id, func.max(readings.c.total_wh),
                   func.coalesce(func.sum(readings.c.amount_micros), 0))
            .group_by(readings.c.meter_id)
        ).all()  # fmt: skip
    return {str(m): (int(baselines[m]), int(last), int(charged)) for m, last, charged in rows}


def check_registers_and_charges(engine: Engine, meters: list[CountingMeter], wallets: dict[str, Wallet]) -> None:
    by_meter = {w.meter_id: w for w in wallets.values()}
    with engine.connect() as conn:
        entries = conn.execute(
            select(func.count()).select_from(ledger_entries).where(ledger_entries.c.idempotency_key.like("reading:%"))
        ).scalar_one()
        posted, distinct = conn.execute(
            select(func.count(readings.c.entry_id), func.count(func.distinct(readings.c.entry_id)))
        ).one()
    assert entries == posted == distinct, "every reading entry in the ledger belongs to exactly one stored reading"
    registers = {m.address: register_wh(m) for m in meters}
    found = billed(engine)
    assert len(found) == len(meters)
    for meter_id, (baseline_wh, last_wh, charged_micros) in found.items():
        assert last_wh == registers[by_meter[meter_id].address], f"{meter_id}: last stored register != the meter's"
        expected = (last_wh - baseline_wh) * PRICE_MICROS_PER_WH
        assert charged_micros == expected, f"{meter_id}: charged {charged_micros}, expected {expected}"


def check_commands(engine: Engine, meters: list[CountingMeter], wallets: dict[str, Wallet]) -> None:
    by_meter = {w.meter_id: w for w in wallets.values()}
    with engine.connect() as conn:
        commands = conn.execute(
            select(meter_commands.c.id, meter_commands.c.meter_id, meter_commands.c.kind, meter_commands.c.state,
                   meter_commands.c.attempts)
            .order_by(meter_commands.c.updated_at, meter_commands.c.seq)
        ).all()  # fmt: skip
        decisions = conn.execute(
            select(func.count()).where(outbox.c.kind.in_(("trip", "close")), outbox.c.processed_at.is_not(None))
        ).scalar_one()
    assert len(commands) == decisions, "every trip / close decision became exactly one command (one meter each)"
    states = {row.state for row in commands}
    assert states <= {CommandState.VERIFIED.value, CommandState.CANCELLED.value}, unfinished(engine, all_but_done=True)
    never_sent = [row.id for row in commands if row.state == CommandState.CANCELLED.value and row.attempts]
    assert never_sent == [], f"superseded after an attempt: {never_sent}"
    expected: dict[str, list[RelayAction]] = {}
    for row in commands:
        if row.state == CommandState.VERIFIED.value:
            action = RelayAction.TRIP if row.kind == "trip" else RelayAction.CLOSE_NOW
            expected.setdefault(by_meter[row.meter_id].address, []).append(action)
    seen = {address: [action for _, action in got] for address, got in RECORD.relay.items()}
    assert seen == expected, "each meter saw exactly the verified relay commands, once each, in order"
    for meter in meters:
        last = expected.get(meter.address, [RelayAction.CLOSE_NOW])[-1]
        assert meter.relay_open() == (last is RelayAction.TRIP), meter.address


def check_money(engine: Engine, wallets: dict[str, Wallet]) -> None:
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []
        charged = dict(
            conn.execute(
                select(readings.c.meter_id, func.coalesce(func.sum(readings.c.amount_micros), 0)).group_by(
                    readings.c.meter_id
                )
            ).all()
        )
    now = balances(engine)
    for wallet in wallets.values():
        expected = wallet.paid_fen * 10_000 - int(charged.get(wallet.meter_id, 0))
        assert now[wallet.account_id] == expected, f"{wallet.code}: balance {now[wallet.account_id]} != {expected}"


def lost_mqtt_readings(engine: Engine, wallets: dict[str, Wallet]) -> list[tuple[str, float]]:
    """Published MQTT readings with no stored reading of their meter from 1 s before to 1.5 s after.

    A stored reading is stamped with the head-end's time of receipt and keyed by meter and second
    (``headend.scheduler.snapshot_readings``): two readings of one meter received in the same second (the
    regular one and the one a meter sends after a command) are one reading, the first; the window allows that."""
    by_address = {w.address: w for w in wallets.values()}
    offset = time.time() - time.monotonic()
    with engine.connect() as conn:
        rows = conn.execute(select(readings.c.meter_id, readings.c.at)).all()
    stored: dict[str, list[float]] = {}
    for meter_id, at in rows:
        stored.setdefault(str(meter_id), []).append(at.timestamp() - offset)
    lost = []
    for address, published in RECORD.published.items():
        times = stored.get(by_address[address].meter_id, [])
        lost.extend((address, at) for at, _ in published if not any(-1.0 <= t - at <= 1.5 for t in times))
    return lost


def near_a_kill(at: float, kills_at: list[float]) -> bool:
    before, after = LOSS_WINDOW_S
    return any(kill - before <= at <= kill + after for kill in kills_at)


def close_latencies(payer: Payments) -> list[float]:
    """For each payment into a tripped meter's wallet: seconds until the meter saw its next close."""
    latencies = []
    for paid_at, address in payer.closes:
        closes = [t for t, action in RECORD.relay.get(address, []) if action is RelayAction.CLOSE_NOW and t >= paid_at]
        if closes:
            latencies.append(closes[0] - paid_at)
    return latencies


# -- two ingesters, one meter -------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_two_processes_ingesting_readings_of_the_same_meters_at_once_charge_each_wh_once(
    migrated_postgres_url: str,
) -> None:
    """MQTT shared subscriptions hand consecutive readings of one meter to different head-ends: the rating
    state is locked per meter, so two concurrent batches never both charge from the same previous register."""
    from powergate.domain.rating import Reading

    url = migrated_postgres_url
    _truncate_all(url)
    engine = make_engine(url)
    now = utc_now()
    meter_ids = [f"C-{n}" for n in range(20)]
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", TARIFF, now)
        for meter_id in meter_ids:
            account_id = ledger_store.ensure_account(conn, wallet_code(f"A-{meter_id}"), now)
            metering.add_meter(conn, meter_id, account_id, "flat", now, max_power_w=2_000_000)
    base = now - dt.timedelta(hours=2)
    steps = 60

    def reading(meter_id: str, step: int) -> Reading:
        return Reading(f"{meter_id}@{step}", meter_id, base + dt.timedelta(minutes=step), 1_000 + step * 100)

    errors: list[BaseException] = []

    def ingest(parity: int) -> None:
        ingestor = Ingestor(make_engine(url))
        try:
            for step in range(parity, steps, 2):  # odd steps to one ingester, even to the other, as a broker would
                ingestor.ingest([reading(meter_id, step) for meter_id in meter_ids])
        except BaseException as error:
            errors.append(error)
        finally:
            ingestor.engine.dispose()

    threads = [threading.Thread(target=ingest, args=(parity,)) for parity in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    with engine.connect() as conn:
        assert ledger_store.audit(conn) == []
    found = billed(engine)
    engine.dispose()
    for meter_id in meter_ids:
        baseline_wh, last_wh, charged_micros = found[meter_id]
        assert last_wh == 1_000 + (steps - 1) * 100
        assert charged_micros == (last_wh - baseline_wh) * PRICE_MICROS_PER_WH, (meter_id, found[meter_id])


def test_a_queue_command_id_mqtt_ids_do_not_allow_goes_on_the_wire_as_a_stable_digest() -> None:
    """The prepaid relay's command ids (``close:12:3:M-1``) hold colons, which MQTT ids refuse: they travel as a
    digest, the same at every attempt (a resend after a restart is matched by the meter's ack)."""
    from powergate.headend.mqtt_link import wire_command_id
    from powergate.protocols import mqtt

    assert wire_command_id("pay-1-2") == "pay-1-2"
    relayed = wire_command_id("close:12:3:Q-000000000013")
    assert mqtt.valid_id(relayed) and relayed == wire_command_id("close:12:3:Q-000000000013")
    assert relayed != wire_command_id("close:12:4:Q-000000000013")
    assert mqtt.valid_id(wire_command_id("x" * 128))


def test_the_head_end_a_dtu_dialled_into_takes_its_commands_at_once_though_another_put_them_off(
    engine: Engine,
) -> None:
    """Two dispatchers share a queue: the one without the DTU finds the meter offline and puts its command off
    (``offline_recheck_s``); the one the DTU is connected to still takes it at once (``put_off_heads``)."""
    from powergate.headend.commands import Dispatcher, DispatchOptions, RetryPolicy
    from powergate.headend.memory import MemoryLink
    from powergate.headend.model import CommandKind, MeterCommand

    now = utc_now()
    endpoint = MeterEndpoint("P-1", Transport.DLT645, "000000000001", "869000000000007")
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", TARIFF, now)
        metering.add_meter(conn, "P-1", ledger_store.ensure_account(conn, wallet_code("A-P-1"), now), "flat", now)
        save_endpoints(conn, [endpoint])
        command = MeterCommand("trip-p1", CommandKind.TRIP, now + dt.timedelta(hours=1))
        assert isinstance(queue.enqueue(conn, "P-1", command, requested_by="test", reason="put off", now=now),
                          queue.Enqueued)  # fmt: skip
    meter = VirtualMeter("000000000001", PROFILES[ProfileKind.RESIDENTIAL], seed=1, now_s=int(time.time()))
    options = DispatchOptions(retry=RetryPolicy(offline_recheck_s=300))
    elsewhere = Dispatcher(engine, MemoryLink({}, utc_now), lambda _: endpoint, name="far", clock=utc_now,
                           options=options)  # fmt: skip
    here = Dispatcher(engine, MemoryLink({"P-1": meter}, utc_now), lambda _: endpoint, name="near", clock=utc_now,
                      options=options)  # fmt: skip

    async def scenario() -> tuple[int, int]:
        put_off = await elsewhere.run_once()  # offline there: put off for 300 s
        without_links = await here.run_once()
        here.reachable_links = lambda: [endpoint.link_id]
        return put_off + without_links, await here.run_once()

    before, taken = asyncio.run(scenario())
    assert (before, taken) == (0, 1)
    assert meter.relay_open()
    with engine.connect() as conn:
        assert queue.count_by_state(conn) == {CommandState.VERIFIED: 1}
