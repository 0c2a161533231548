"""Wake-ups (``store.wakeup``): a command or an outbox row written in one process wakes its consumer in another
within ~100 ms while the consumer's polling interval is 30 s.

- In one process (SQLite and PostgreSQL): a subscription fires when a transaction that queued a command
  commits, and not when it rolls back.
- Across processes (PostgreSQL, LISTEN/NOTIFY): a head-end CHILD process (this file run as a script) runs the
  real ``HeadendRuntime`` with its dispatcher polling every 30 s; a virtual DTU in the test dials into it; the
  test queues a trip and times it to the meter. And ``powergate serve --role worker`` with
  ``worker.outbox_every_s`` = 30 relays a payment's close decision, written by the test, into a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.headend import commands as queue
from powergate.headend.model import CommandKind, MeterCommand, MeterEndpoint, Transport
from powergate.headend.status import save_endpoints
from powergate.services import prepaid
from powergate.sim.faults import Faults, SimStats
from powergate.sim.meter import MeterError, RelayAction, VirtualMeter
from powergate.sim.profiles import PROFILES, ProfileKind
from powergate.store import ledger as ledger_store
from powergate.store import metering, wakeup
from powergate.store.db import make_engine
from powergate.store.tables_commands import meter_commands
from testkit import free_port

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 30.0
"""Every consumer's polling interval in these tests: a wake-up that works beats it by far."""
WAKE_LIMIT_S = 0.1
DTU_ID = "869000000000042"
ADDRESS = "000000004242"
METER_ID = "W-1"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def add_meter(engine: Engine, meter_id: str = METER_ID, balance_micros: int = 0) -> int:
    now = utc_now()
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", "{}", now)
        wallet_id = ledger_store.ensure_account(conn, wallet_code(f"A-{meter_id}"), now)
        metering.add_meter(conn, meter_id, wallet_id, "flat", now)
        if balance_micros:
            entry = recharge_entry(f"cash:{meter_id}", wallet_code(f"A-{meter_id}"), "cash", balance_micros, now)
            ledger_store.post(conn, entry, now)
        save_endpoints(conn, [MeterEndpoint(meter_id, Transport.DLT645, ADDRESS, DTU_ID)])
    return wallet_id


def enqueue_trip(engine: Engine, command_id: str) -> None:
    now = utc_now()
    command = MeterCommand(command_id, CommandKind.TRIP, now + dt.timedelta(hours=1))
    with engine.begin() as conn:
        queued = queue.enqueue(conn, METER_ID, command, requested_by="test", reason="wake-up test", now=now)
        assert isinstance(queued, queue.Enqueued) and queued.created, queued


# -- in one process --------------------------------------------------------------------------------------------


def test_a_committed_command_wakes_a_waiter_of_this_process_and_a_rolled_back_one_does_not(engine: Engine) -> None:
    add_meter(engine)

    async def scenario() -> tuple[float, bool]:
        with wakeup.subscribe(engine, wakeup.COMMANDS) as subscription:
            for _ in range(200):  # PostgreSQL: let the listener connect, so the test sees both paths at work
                if subscription.listening:
                    break
                await asyncio.sleep(0.02)
            assert subscription.listening
            while await subscription.wait(0.2):
                pass  # the listener's "look once" on connect
            started = time.perf_counter()
            await asyncio.to_thread(enqueue_trip, engine, "wake-1")
            assert await subscription.wait(POLL_S)
            latency_s = time.perf_counter() - started
            await asyncio.sleep(0.3)  # PostgreSQL: the listener's copy of the same wake-up comes too
            while await subscription.wait(0.05):
                pass

            def rolled_back() -> None:
                with contextlib.suppress(RuntimeError), engine.begin() as conn:
                    now = utc_now()
                    command = MeterCommand("wake-2", CommandKind.CLOSE, now + dt.timedelta(hours=1))
                    queue.enqueue(conn, METER_ID, command, requested_by="test", reason="rolled back", now=now)
                    raise RuntimeError("changed my mind")

            await asyncio.to_thread(rolled_back)
            return latency_s, await subscription.wait(0.5)

    latency_s, woken_by_rollback = asyncio.run(scenario())
    assert latency_s < WAKE_LIMIT_S, f"{latency_s * 1000:.0f} ms from commit to wake-up"
    assert not woken_by_rollback
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(meter_commands)).scalar_one() == 1


def test_the_worker_job_runner_runs_a_woken_job_at_once_not_at_its_interval(engine: Engine) -> None:
    from powergate.services.worker import Job, JobRunner

    runs: list[float] = []

    async def job(now: dt.datetime) -> str | None:
        runs.append(time.perf_counter())
        return None

    async def scenario() -> float:
        stop = asyncio.Event()
        runner = JobRunner("w", [Job("outbox", POLL_S, job, wake=lambda: wakeup.subscribe(engine, wakeup.OUTBOX))])
        running = asyncio.create_task(runner.run(stop))
        while len(runs) < 1:  # the first round runs at start
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        runs.clear()
        started = time.perf_counter()
        wallet_id = await asyncio.to_thread(add_meter, engine, METER_ID, 0)
        await asyncio.to_thread(write_trip_decision, engine, wallet_id)
        while not runs and time.perf_counter() - started < 5:
            await asyncio.sleep(0.005)
        stop.set()
        await running
        return (runs[0] - started) if runs else float("inf")

    assert asyncio.run(scenario()) < 1.0  # includes creating the meter; the interval is 30 s


def write_trip_decision(engine: Engine, wallet_id: int) -> None:
    """Spend a wallet below zero: the balance policy writes a trip into the outbox in the same transaction."""
    now = utc_now()
    with engine.begin() as conn:
        wallet = wallet_code(f"A-{METER_ID}")
        ledger_store.post(conn, charge_entry(f"spend:{now.timestamp()}", wallet, {"energy": 1_000_000}, now), now)
        assert prepaid.set_policy(conn, wallet_id, prepaid.WalletPolicy(friendly_window="off"), now) is None
        written = prepaid.after_ingest(conn, {wallet_id}, now)
        assert written, "the balance policy decided nothing"


# -- across processes (PostgreSQL) -------------------------------------------------------------------------------


class SeenMeter(VirtualMeter):
    """Notes when each relay command reaches it (test-process clock)."""

    __slots__ = ("seen",)

    def relay_command(self, action: RelayAction, now_s: int, valid_until_s: int | None = None) -> MeterError | None:
        self.seen.append(time.perf_counter())
        return super().relay_command(action, now_s, valid_until_s)


@contextlib.contextmanager
def dtu_dialing(meter: VirtualMeter, port: int) -> Iterator[None]:
    from powergate.sim.fleet import VirtualDtu

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    dtu = VirtualDtu(DTU_ID, [meter], headend=("127.0.0.1", port), clock=lambda: int(time.time()), faults=Faults(),
                     stats=SimStats(meters=1), heartbeat_s=1.0, connect_timeout_s=1.0)  # fmt: skip

    async def keep_dialing() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, TimeoutError):
                await dtu.run(stop)
            await asyncio.sleep(0.1)

    thread = threading.Thread(target=lambda: loop.run_until_complete(keep_dialing()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def listeners(url: str) -> int:
    """Connections of other processes that LISTEN on the wake-up channels (the last thing they ran)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            return int(conn.execute(text(query)).scalar_one())
    finally:
        engine.dispose()


def wait_until(
    condition: object, timeout_s: float, what: str, process: subprocess.Popen[str], every_s: float = 0.01
) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"{what}: the child exited: {process.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def stop_child(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return out + err


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    path = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen(args, env={**os.environ, "PYTHONPATH": path, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip


@pytest.mark.postgres
def test_a_command_queued_in_one_process_reaches_the_meter_through_another_in_100_ms_with_a_30_s_poll(
    migrated_postgres_url: str,
) -> None:
    from testkit import truncate_all as _truncate_all

    url = migrated_postgres_url
    _truncate_all(url)
    engine = make_engine(url)
    add_meter(engine)
    meter = SeenMeter(ADDRESS, PROFILES[ProfileKind.RESIDENTIAL], seed=1, now_s=int(time.time()))
    meter.seen = []
    port = free_port()
    child = spawn([sys.executable, str(Path(__file__).resolve()), url, str(port)], {})
    latencies: list[float] = []
    try:
        with dtu_dialing(meter, port):
            wait_until(lambda: listeners(url) >= 1, 60, "the head-end's listener", child)
            wait_until(lambda: dtu_online(child), 30, "the DTU to register", child)
            for n in range(5):
                before = len(meter.seen)
                started = time.perf_counter()
                enqueue_trip(engine, f"trip-{n}")
                wait_until(lambda before=before: len(meter.seen) > before, 10, "the trip at the meter", child)
                latencies.append(meter.seen[before] - started)
                wait_until(lambda: queue_idle(engine), 10, "the trip to be verified", child)
    finally:
        output = stop_child(child)
        engine.dispose()
    print(f"\ncommit -> meter (cross-process, poll {POLL_S:.0f} s): {[round(x * 1000) for x in latencies]} ms")
    # the frame exchange itself (DL/T 645 over the DTU, no reply delay) is part of the figure
    assert sorted(latencies)[len(latencies) // 2] < WAKE_LIMIT_S * 2, (latencies, output[-2000:])
    assert max(latencies) < 1.0, (latencies, output[-2000:])


_online_lines: dict[int, bool] = {}


def dtu_online(child: subprocess.Popen[str]) -> bool:
    """The child prints ``online`` once its DTU server saw the registration."""
    if _online_lines.get(child.pid):
        return True
    assert child.stdout is not None
    line = child.stdout.readline()
    _online_lines[child.pid] = "online" in line
    return _online_lines[child.pid]


def queue_idle(engine: Engine) -> bool:
    with engine.connect() as conn:
        return not any(n for state, n in queue.count_by_state(conn).items() if state in queue.OPEN)


@pytest.mark.postgres
def test_a_payments_close_decision_becomes_a_command_in_another_process_in_100_ms_with_a_30_s_poll(
    migrated_postgres_url: str,
) -> None:
    from testkit import truncate_all as _truncate_all

    url = migrated_postgres_url
    _truncate_all(url)
    engine = make_engine(url)
    wallet_id = add_meter(engine)
    env = {"POWERGATE_DATABASE_URL": url, "POWERGATE_WORKER_OUTBOX_EVERY_S": str(POLL_S), "POWERGATE_WORKER_NAME": "w1"}
    worker = spawn([sys.executable, "-m", "powergate", "serve", "--role", "worker"], env)
    latencies: list[float] = []
    try:
        wait_until(lambda: listeners(url) >= 1, 60, "the worker's listener", worker)
        time.sleep(0.5)  # past the worker's first round, which runs at start
        write_trip_decision(engine, wallet_id)
        for n in range(5):
            commands_before = count_commands(engine)
            pay_cashier(engine, wallet_id, n)  # the close decision goes to the outbox in the payment's transaction
            started = time.perf_counter()  # the payment has committed
            wait_until(lambda c=commands_before: count_commands(engine) > c, 10, "the close command", worker)
            latencies.append(time.perf_counter() - started)
            spend_again(engine, wallet_id, n)  # tripped again: the next payment decides a new close
    finally:
        output = stop_child(worker)
        engine.dispose()
    print(f"\npayment commit -> command (worker, poll {POLL_S:.0f} s): {[round(x * 1000) for x in latencies]} ms")
    assert max(latencies) < WAKE_LIMIT_S * 3, (latencies, output[-2000:])  # a loaded CI machine has outliers
    assert sorted(latencies)[len(latencies) // 2] < WAKE_LIMIT_S, (latencies, output[-2000:])


def count_commands(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(meter_commands)).scalar_one())


def pay_cashier(engine: Engine, wallet_id: int, n: int) -> None:
    now = utc_now()
    with engine.begin() as conn:
        wallet = wallet_code(f"A-{METER_ID}")
        ledger_store.post(conn, recharge_entry(f"cash:pay-{n}", wallet, "cashier", 5_000_000, now), now)
        prepaid.after_recharge(conn, wallet, now)


def spend_again(engine: Engine, wallet_id: int, n: int) -> None:
    now = utc_now()
    with engine.begin() as conn:
        wallet = wallet_code(f"A-{METER_ID}")
        ledger_store.post(conn, charge_entry(f"spend:again:{n}", wallet, {"energy": 5_000_000}, now), now)
        prepaid.after_ingest(conn, {wallet_id}, now)


# -- the child: a head-end whose dispatcher polls every 30 s --------------------------------------------------


async def child_main(url: str, port: int) -> int:
    from powergate.headend.commands import DispatchOptions, RetryPolicy
    from powergate.headend.model import ReadItem
    from powergate.headend.scheduler import ScheduleConfig
    from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings

    engine = make_engine(url)
    settings = HeadendSettings(
        name="headend-wakeup",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(interval_s=3600, items=frozenset({ReadItem.RELAY}), frozen_read=False),
        dispatch=DispatchOptions(poll_s=POLL_S, retry=RetryPolicy(offline_recheck_s=POLL_S)),
        prepaid_every_s=POLL_S,
    )
    runtime = HeadendRuntime(engine, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    running = asyncio.create_task(runtime.run(stop))
    await runtime.ready.wait()
    assert runtime.dtu_server is not None
    while not runtime.dtu_server.online(DTU_ID) and not stop.is_set():
        await asyncio.sleep(0.02)
    print("online", flush=True)
    await running
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(child_main(sys.argv[1], int(sys.argv[2]))))
