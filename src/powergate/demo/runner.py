"""The demo's composition root: every part of PowerGate in one process, on SQLite, on an accelerated clock.

``DemoRunner(options).run(stop)``:

1. a fresh SQLite database (``var/demo.db`` by default), migrated;
2. the embedded MQTT broker (Mosquitto, ``demo.broker``) when it can be had, and the notification inbox;
3. the demo organisation (``demo.seed``) through the real use cases;
4. the virtual meters (``demo.meters``): Modbus gateways first (their ports go into the endpoints), then the
   head-end runtime (DTU server, Modbus and MQTT links, scheduled reads, ingest, balance policy, command queue),
   then the DTUs that dial in and the MQTT meters;
5. the worker (notifications through the real SMS-gateway and webhook channels into the inbox, payment
   reconciliation) and the scheduler (daily / monthly freezes) job runners;
6. the web app (API, console, portal) under uvicorn, sharing the payment channel adapters with the worker
   (the sandbox keeps its trades in memory);

then prints the URLs and logins and runs until ``stop`` is set, and stops everything in reverse order.

Durations the platform measures on the demo clock (command leases and retry delays, notification claims) are
scaled by the speed, so that they last as long in real time as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, func, select

from powergate.demo import meters as demo_meters
from powergate.demo import seed as demo_seed
from powergate.demo.broker import EmbeddedBroker, find_mosquitto
from powergate.demo.clock import AcceleratedClock
from powergate.demo.inbox import Inbox

log = logging.getLogger(__name__)

MAX_SPEED = 600
"""Above this a policy decision's one-hour validity (demo time) would be a few real seconds: too tight."""
DEFAULT_READ_INTERVAL_DEMO_S = 600.0
STATUS_EVERY_S = 5.0
READINGS_LINE_EVERY = 6
"""The readings count is printed every sixth status round (30 s); balance and relay changes at once."""
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    port: int = 8000
    host: str = "127.0.0.1"
    speed: float = 60.0
    db: Path = Path("var") / "demo.db"
    read_interval_demo_s: float = DEFAULT_READ_INTERVAL_DEMO_S
    mqtt: bool = True
    watch: bool = True
    """Print what happens to the watched rooms (balance, warnings, trip, restore) as it happens."""

    def check(self) -> str | None:
        if not 1 <= self.speed <= MAX_SPEED:
            return f"--speed: {self.speed:g} must be 1..{MAX_SPEED} (demo seconds per real second)"
        if not 0 <= self.port < 65536:
            return f"--port: {self.port} is not a port"
        if self.db.suffix != ".db":
            return f"--db: {self.db} must name an SQLite file ending in .db"
        return None


class _Server:
    """uvicorn in this event loop, leaving signal handling to the caller."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
        self.server = Quiet(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it (a port in use, ...)
                raise RuntimeError("the HTTP server stopped before it started")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, STOP_TIMEOUT_S)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fresh_database(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


@dataclass(slots=True)
class WatchState:
    balance_micros: int | None = None
    relay_open: bool | None = None
    warnings: int = 0


@dataclass(slots=True)
class DemoRunner:
    options: DemoOptions
    out: TextIO
    clock: AcceleratedClock = field(init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    engine: Engine | None = None
    url: str = ""
    base_url: str = ""
    inbox_url: str = ""
    mqtt_problem: str | None = None
    made: demo_seed.DemoSeed | None = None
    fleets: list[demo_meters.DemoFleet] = field(default_factory=list)
    headend: Any = None
    inbox: Inbox | None = None
    sandbox_secret: bytes = b""
    channels: dict[str, Any] = field(default_factory=dict)
    worker: Any = None
    _cleanup: list[Callable[[], Any]] = field(default_factory=list)
    _watch: dict[str, WatchState] = field(default_factory=dict)
    _ticks: int = 0

    def __post_init__(self) -> None:
        problem = self.options.check()
        assert problem is None, problem
        self.clock = AcceleratedClock(self.options.speed)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def virtual_meter(self, meter_id: str) -> Any:
        for fleet in self.fleets:
            found = fleet.virtual(meter_id)
            if found is not None:
                return found
        return None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._start(stop)
            self.ready.set()
            watcher = asyncio.create_task(self._watch_rooms(stop))
            self._cleanup.append(watcher.cancel)
            await stop.wait()
        finally:
            await self._stop_all()

    # -- start ----------------------------------------------------------------------------------------------

    async def _start(self, stop: asyncio.Event) -> None:
        from powergate.store.db import make_engine, upgrade

        self.url = _fresh_database(self.options.db)
        await asyncio.to_thread(upgrade, self.url)
        self.engine = engine = make_engine(self.url)
        self._cleanup.append(engine.dispose)

        broker = await self._broker()
        notify_config = await self._inbox()
        self.sandbox_secret = secrets.token_bytes(32)
        self.channels = dict(demo_seed.payment_channels(self.sandbox_secret))
        from powergate.payments.bank import BankTransfer

        self.channels["bank"] = BankTransfer()
        self.say(f"seeding the demo organisation into {self.options.db} ...")
        assert self.inbox_url
        self.made = await asyncio.to_thread(
            demo_seed.seed, engine, self.clock(), self.channels, inbox_webhook=f"{self.inbox_url}/webhook"
        )
        await self._meters_and_headend(stop, broker)
        await self._workers(stop, notify_config)
        await self._web(notify_config)
        self._banner()

    async def _broker(self) -> tuple[str, int] | None:
        if not self.options.mqtt:
            self.mqtt_problem = "MQTT meters are off (--no-mqtt): the dormitory's meters are read through DTUs"
            return None
        binary = find_mosquitto()
        if binary is None:
            self.mqtt_problem = (
                "MQTT meters are disabled: no mosquitto binary (apt-get install mosquitto). The head-end's MQTT link "
                "needs MQTT 5 (shared subscriptions, subscription identifiers), which amqtt does not speak; the "
                "dormitory's meters are read through DTUs instead"
            )
            return None
        broker = EmbeddedBroker(binary)
        try:
            address = await broker.start()
        except RuntimeError as error:
            self.mqtt_problem = f"MQTT meters are disabled: the embedded Mosquitto did not start: {error}"
            return None
        self._cleanup.append(broker.stop)
        return address

    async def _inbox(self) -> Any:
        from powergate.notify._http import HttpProviderConfig
        from powergate.notify.config import NotifyConfig
        from powergate.notify.webhook import WebhookConfig, generate_secret

        secret = generate_secret()
        self.inbox = Inbox(secret, printer=self.say if self.options.watch else None)
        port = _free_port()
        server = _Server(self.inbox.app(), "127.0.0.1", port)
        await server.start()
        self._cleanup.append(server.stop)
        self.inbox_url = f"http://127.0.0.1:{port}"
        sms = HttpProviderConfig(
            url=f"{self.inbox_url}/sms",
            body={"to": "{address}", "text": "{body}", "ref": "{message_id}", "event": "{event}"},
            success_field="code",
            success_values=("0",),
            id_field="id",
            timeout_s=5.0,
        )
        return NotifyConfig(sms=sms, webhook=WebhookConfig(default_secret=secret, timeout_s=5.0))

    async def _meters_and_headend(self, stop: asyncio.Event, broker: tuple[str, int] | None) -> None:
        from powergate.headend.commands import DispatchOptions, RetryPolicy
        from powergate.headend.model import ReadItem
        from powergate.headend.scheduler import ScheduleConfig
        from powergate.headend.status import save_endpoints
        from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings

        assert self.made is not None and self.engine is not None
        speed = self.options.speed
        interval = self.options.read_interval_demo_s
        dtu_port = _free_port()
        plans = demo_meters.plan(self.made.meters, mqtt=broker is not None)
        fleet_stop = asyncio.Event()
        self._cleanup.append(fleet_stop.set)
        for transport in plans:
            self.fleets.append(
                demo_meters.build(
                    transport,
                    self.clock.epoch_s,
                    headend=("127.0.0.1", dtu_port),
                    broker=broker,
                    mqtt_interval_s=self.clock.real_seconds(interval),
                )
            )
        tasks: dict[str, asyncio.Task[None]] = {}
        for fleet in self.fleets:
            if fleet.mode == "modbus":  # listening first: its ports go into the endpoints
                tasks["modbus"] = asyncio.create_task(fleet.fleet.run(fleet_stop))
                await asyncio.wait_for(fleet.fleet.ready.wait(), 10)
        endpoints = [e for fleet in self.fleets for e in fleet.endpoints()]
        with self.engine.begin() as conn:
            save_endpoints(conn, endpoints)
        settings = HeadendSettings(
            name="demo-headend",
            dtu_listen=("127.0.0.1", dtu_port),
            mqtt_broker=broker,
            modbus=any(f.mode == "modbus" for f in self.fleets),
            schedule=ScheduleConfig(
                interval_s=interval,
                items=frozenset({ReadItem.ENERGY, ReadItem.RELAY}),
                batch_wait_s=0.3,
            ),
            status_every_s=1.0,
            offline_after_s=3 * interval,
            dispatch=DispatchOptions(
                poll_s=0.2,
                retry=RetryPolicy(
                    base_delay_s=2 * speed, max_delay_s=60 * speed, offline_recheck_s=2 * speed, lease_s=60 * speed
                ),
            ),
            prepaid_every_s=0.2,
            due_trips_every_s=2.0,
        )
        self.headend = HeadendRuntime(self.engine, settings, clock=self.clock)
        headend_stop = asyncio.Event()
        running = asyncio.create_task(self.headend.run(headend_stop))

        async def stop_headend() -> None:
            headend_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(running, STOP_TIMEOUT_S)

        async def stop_fleets() -> None:
            fleet_stop.set()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, STOP_TIMEOUT_S)

        self._cleanup.append(stop_headend)
        self._cleanup.append(stop_fleets)  # stopped first: the head-end keeps serving until its meters are gone
        await asyncio.wait_for(self.headend.ready.wait(), 20)
        for fleet in self.fleets:
            if fleet.mode != "modbus":
                tasks[fleet.mode] = asyncio.create_task(fleet.fleet.run(fleet_stop))
        for fleet in self.fleets:
            await asyncio.wait_for(fleet.fleet.ready.wait(), 20)

    async def _workers(self, stop: asyncio.Event, notify_config: Any) -> None:
        from powergate.notify.config import build_channels
        from powergate.services.worker import JobRunner, SchedulerSettings, WorkerSettings, scheduler_jobs, worker_jobs

        assert self.engine is not None
        speed = self.options.speed
        settings = WorkerSettings(
            name="demo-worker",
            relay_outbox=False,  # the head-end relays it every 200 ms and wakes its dispatcher at once
            notify_every_s=1.0,
            notify_lease_s=int(120 * speed),
            payments_every_s=5.0,
        )
        jobs = worker_jobs(
            self.engine,
            settings,
            self.clock,
            payment_channels=self.channels,
            notify_channels=build_channels(notify_config),
        )
        jobs += scheduler_jobs(self.engine, SchedulerSettings("demo-scheduler", freeze_every_s=10.0), self.clock)
        runner = JobRunner("demo-worker", jobs, self.clock)
        worker_stop = asyncio.Event()
        task = asyncio.create_task(runner.run(worker_stop))
        self.worker = runner

        async def stop_worker() -> None:
            worker_stop.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, STOP_TIMEOUT_S)

        self._cleanup.append(stop_worker)

    async def _web(self, notify_config: Any) -> None:
        from powergate.payments.base import ChannelName
        from powergate.payments.config import PaymentsConfig, SandboxConfig
        from powergate.services.payments import DEFAULT_EXPIRY_S, MAX_EXPIRY_S
        from powergate.web.app import create_app
        from powergate.web.settings import WebSettings

        settings = WebSettings(
            database_url=self.url,
            secret_key=secrets.token_urlsafe(32),
            demo=True,
            payment_channels=PaymentsConfig(sandbox=SandboxConfig(self.sandbox_secret)),
            notify=notify_config,
            clock=self.clock,
            order_expiry_s=min(int(DEFAULT_EXPIRY_S[ChannelName.SANDBOX] * self.options.speed), MAX_EXPIRY_S),
        )
        app = create_app(settings)
        app.state.payment_channels = self.channels  # one sandbox for the web app and the worker
        port = self.options.port or _free_port()
        server = _Server(app, self.options.host, port)
        await server.start()
        self._cleanup.append(server.stop)
        self.base_url = f"http://{self.options.host}:{port}"

    # -- the banner and the watcher -------------------------------------------------------------------------

    def _banner(self) -> None:
        assert self.made is not None
        made = self.made
        transports = ", ".join(f"{len(f.pairs)} {f.mode}" for f in self.fleets)
        lines = [
            "",
            "PowerGate demo is running  /  PowerGate 演示已启动",
            f"  demo time {self.clock():%Y-%m-%d %H:%M} UTC, {self.options.speed:g}x: one real minute is "
            f"{self.options.speed:g} demo minutes",
            f"  {made.rooms} rooms, {made.accounts} accounts, {len(made.meters)} meters ({transports})",
            f"  console   控制台  {self.base_url}/console/",
            f"  portal    租户端  {self.base_url}/portal/",
            f"  API docs  接口    {self.base_url}/api/docs",
            f"  inbox     收件箱  {self.inbox_url}/   (SMS and webhooks the platform sent)",
            "",
            "  logins (organisation DEMO):",
        ]
        for login in made.logins:
            lines.append(f"    {login.where:8} {login.username:10} / {login.password:15} {login.who}")
        lines += ["", "  rooms to watch:"]
        for watch in demo_seed.WATCH:
            lines.append(f"    {watch.room}: {watch.story}")
        if self.mqtt_problem:
            lines += ["", f"  note: {self.mqtt_problem}"]
        lines += ["", "  Ctrl-C stops the demo.", ""]
        self.say("\n".join(lines))

    async def _watch_rooms(self, stop: asyncio.Event) -> None:
        if not self.options.watch:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_EVERY_S)
            try:
                for line in await asyncio.to_thread(self._watch_lines):
                    self.say(line)
            except Exception:  # a status line is not worth stopping the demo for
                log.exception("demo watcher")

    def _watch_lines(self) -> list[str]:
        from powergate.domain.money import currency, format_money
        from powergate.services.prepaid import outbox_rows
        from powergate.store import ledger as ledger_store
        from powergate.store.tables import readings
        from powergate.store.tables_headend import meter_status

        assert self.engine is not None and self.made is not None
        lines: list[str] = []
        with self.engine.connect() as conn:
            for watch in demo_seed.WATCH[:1]:
                meter = self.made.meter(watch.room)
                balance = ledger_store.balance(conn, meter.wallet).balance_micros
                relay = conn.execute(
                    select(meter_status.c.relay_open).where(meter_status.c.meter_id == meter.meter_id)
                ).scalar()
                state = self._watch.setdefault(watch.room, WatchState())
                when = f"[demo {self.clock():%m-%d %H:%M}]"
                if relay is not None and relay != state.relay_open:
                    what = "TRIPPED 已断电" if relay else "power on 供电中"
                    lines.append(f"{when} {watch.room}: relay {what} (read back from the meter)")
                    state.relay_open = bool(relay)
                if state.balance_micros is None or abs(balance - state.balance_micros) >= 2_000_000:
                    lines.append(f"{when} {watch.room}: balance {format_money(balance, currency('CNY'))}")
                    state.balance_micros = balance
            total = conn.execute(select(func.count()).select_from(readings)).scalar_one()
            warnings = len(outbox_rows(conn, "warning", limit=10_000))
        lines.append(
            f"[demo {self.clock():%m-%d %H:%M}] {total} readings rated so far, {warnings} low-balance warnings"
        )
        return lines

    # -- stop -----------------------------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        for step in reversed(self._cleanup):
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # stop everything else even when one part fails to stop
                log.exception("demo: stopping a part failed")
        self._cleanup.clear()


def remove_demo_files(db: Path) -> None:
    """``--reset``: the database and anything the demo left next to it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(db.with_suffix(""), ignore_errors=True)


def demo_now(runner: DemoRunner) -> dt.datetime:
    return runner.clock()
