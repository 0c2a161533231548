"""Payment notification -> relay confirmed closed, while 10,000 virtual meters report (issue #5 acceptance).

Two processes, as deployed: the **head-end** (``HeadendRuntime``, the composition root of ``powergate headend
run``: DTU server, DL/T 645 link, read scheduler, ingest with the balance policy, outbox relay, command
dispatcher) runs as a child (``python -m bench.bench_relay --worker``); this process plays the **API node**
that receives payment notifications (``services.payments.handle_notification`` with the sandbox channel,
signed and verified) and the **fleet** (``powergate.sim.fleet``: N virtual DL/T 645 meters behind N/20
virtual DTUs that dial in to the head-end over loopback TCP), so the meters' own relays can be watched.

Set-up: every meter has a wallet (flat 1 yuan/kWh, no friendly window); the wallets of ``payments`` meters
start at zero, so the head-end's first relay pass trips them (verified by read-back). The head-end reads every
meter's energy registers once per ``interval`` (spread over it) and ingests them, for the whole run. Then, one
payment at a time, spaced out: the order is placed and paid at the sandbox (not timed), and the clock starts
when the signed notification is handed to ``handle_notification``; it stops when (a) the meter's own relay
reads closed in the simulator and (b) the close command is ``verified`` in the database (the dispatcher
read the relay back). Reported: p50 / p99 / max of (a) and (b) on SQLite (WAL file) and PostgreSQL (loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED = 5
METERS_PER_DTU = 20
YUAN = 1_000_000
TARIFF = 'id = "flat"\n[[versions]]\neffective_from = "2020-01-01"\nprice = "1.0000"\n'
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
SETUP_TIMEOUT_S = 300.0
PAYMENT_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _dtu_id(index: int) -> str:
    return f"86{SEED % 1000:03d}{index // METERS_PER_DTU:010d}"


# -- the database -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str) -> Any:
    """A fresh migrated database URL (SQLite file in a temporary directory, or a new PostgreSQL database)."""
    from powergate.store.db import upgrade

    if kind == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="bench-relay-"))
        url = f"sqlite:///{directory / 'powergate.db'}"
        upgrade(url)
        try:
            yield url
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    import psycopg

    name = f"bench_relay_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def populate(url: str, meters: int, tripped: int, now: dt.datetime) -> list[str]:
    """Wallets, meters and endpoints for the fleet; the first ``tripped`` wallets start at zero (they trip)."""
    from sqlalchemy import insert, select

    from powergate.domain.ledger import recharge_entry, wallet_code
    from powergate.headend.model import MeterEndpoint, Transport
    from powergate.headend.status import save_endpoints
    from powergate.services import prepaid
    from powergate.store import ledger as ledger_store
    from powergate.store import metering
    from powergate.store.db import make_engine
    from powergate.store.tables import ledger_accounts
    from powergate.store.tables import meters as meters_table
    from powergate.store.tables_prepaid import wallet_policies

    engine = make_engine(url)
    meter_ids = [f"M-{index + 1:012d}" for index in range(meters)]
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", TARIFF, now)
        codes = [wallet_code(f"B-{index}") for index in range(meters)]
        conn.execute(
            insert(ledger_accounts),
            [{"code": code, "kind": "wallet", "balance_micros": 0, "created_at": now} for code in codes],
        )
        ids = dict(conn.execute(select(ledger_accounts.c.code, ledger_accounts.c.id)).all())
        conn.execute(
            insert(meters_table),
            [
                {"id": meter_id, "wallet_account_id": ids[code], "tariff_id": "flat", "timezone": "Asia/Shanghai",
                 "register_max_wh": 999_999_990, "max_power_w": 1_000_000, "created_at": now}
                for meter_id, code in zip(meter_ids, codes, strict=True)
            ],
        )  # fmt: skip
        conn.execute(
            insert(wallet_policies),
            [{"wallet_account_id": ids[code], "friendly_window": "off", "updated_at": now} for code in codes],
        )
        cache = ledger_store.AccountCache()
        credits = [
            recharge_entry(f"cash:bench:{index}", code, "cash", 1_000 * YUAN, now)
            for index, code in enumerate(codes)
            if index >= tripped
        ]
        ledger_store.post_batch(conn, credits, now, cache)
        save_endpoints(
            conn,
            [
                MeterEndpoint(meter_id, Transport.DLT645, f"{index + 1:012d}", _dtu_id(index))
                for index, meter_id in enumerate(meter_ids)
            ],
        )
        prepaid.evaluate(conn, [ids[code] for code in codes[:tripped]], now)  # at zero: trip decisions
    engine.dispose()
    return meter_ids[:tripped]


# -- the head-end worker (child process) ------------------------------------------------------------------------


async def _worker(url: str, port: int, interval_s: float) -> dict[str, Any]:
    from powergate.headend.model import ReadItem
    from powergate.headend.scheduler import ScheduleConfig
    from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings
    from powergate.store.db import make_engine

    engine = make_engine(url)
    settings = HeadendSettings(
        name="bench-headend",
        dtu_listen=("127.0.0.1", port),
        schedule=ScheduleConfig(interval_s=interval_s, items=frozenset({ReadItem.ENERGY}), frozen_read=False),
        status_every_s=10.0,
    )
    runtime = HeadendRuntime(engine, settings)
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    await runtime.ready.wait()
    print(json.dumps({"ready": port}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the parent closes our stdin when it is done
    stop.set()
    await asyncio.wait_for(running, 60)
    engine.dispose()
    stats = runtime.stats
    return {"readings": stats.readings, "batches": stats.batches, "relayed": stats.relayed}


# -- the measurement (this process) -----------------------------------------------------------------------------


@dataclass
class Timing:
    meter_id: str
    started: float
    wall: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    settled: float | None = None
    relay_closed: float | None = None
    verified: float | None = None
    queued_s: float | None = None
    """From the notification handed over to the close command's ``created_at`` (the head-end's relay)."""


@dataclass
class Result:
    kind: str
    meters: int
    payments: int
    relay_s: list[float] = field(default_factory=list)
    verified_s: list[float] = field(default_factory=list)
    readings: int = 0
    window_s: float = 0.0
    timeouts: int = 0
    stages: dict[str, list[float]] = field(default_factory=dict)


def pay(engine: Any, sandbox: Any, wallet: str) -> tuple[dict[str, str], bytes]:
    """Place and pay an order at the sandbox (not timed); returns the signed notification."""
    from powergate.services import payments

    now = dt.datetime.now(dt.UTC)
    channels = {"sandbox": sandbox}
    order = payments.NewOrder(wallet, 5_000, "sandbox", "instant")
    placed = payments.create_order(engine, channels, order, payments.PaymentPolicy(frozenset({"sandbox"})), now)
    assert isinstance(placed, payments.OrderPlaced), placed
    return sandbox.pay(placed.order_no, now)  # type: ignore[no-any-return]


def notify(engine: Any, sandbox: Any, notification: tuple[dict[str, str], bytes]) -> None:
    from powergate.services import payments

    headers, body = notification
    outcome = payments.handle_notification(
        engine, {"sandbox": sandbox}, "sandbox", headers, body, dt.datetime.now(dt.UTC)
    )
    assert outcome.verdict is payments.Verdict.ACCEPTED, outcome.reason


def verified_closes(engine: Any, meter_ids: list[str]) -> set[str]:
    from sqlalchemy import select

    from powergate.store.tables_commands import meter_commands

    c = meter_commands.c
    query = select(c.meter_id).where(c.meter_id.in_(meter_ids), c.kind == "close", c.state == "verified")
    with engine.connect() as conn:
        return {str(m) for m in conn.execute(query).scalars()}


async def measure(kind: str, meters: int, payments: int, spacing_s: float, interval_s: float) -> Result:
    from powergate.domain.ledger import wallet_code
    from powergate.payments.sandbox import Sandbox
    from powergate.sim.fleet import Fleet, FleetOptions
    from powergate.store.db import make_engine

    result = Result(kind, meters, payments)
    with database(kind) as url:
        targets = populate(url, meters, payments, dt.datetime.now(dt.UTC))
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_relay", "--worker", "--url", url, "--port", str(port),
             "--interval", str(interval_s)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert worker.stdout is not None and worker.stdin is not None
        assert "ready" in worker.stdout.readline(), "the head-end worker did not start"
        fleet = Fleet(FleetOptions(meters=meters, dtus=meters // METERS_PER_DTU, headend=("127.0.0.1", port),
                                   seed=SEED, interval_s=3600.0, heartbeat_s=60.0))  # fmt: skip
        for meter in fleet.meters:
            meter.balance_micros = 10**12  # the meter's own purse never trips it: the platform bills
        by_id = {f"M-{meter.address}": meter for meter in fleet.meters}
        engine = make_engine(url)
        sandbox = Sandbox(b"bench-relay-sandbox-secret")
        stop = asyncio.Event()
        running = asyncio.create_task(fleet.run(stop))
        try:
            await asyncio.wait_for(fleet.ready.wait(), SETUP_TIMEOUT_S)
            await _until(lambda: all(by_id[m].relay_open() for m in targets), SETUP_TIMEOUT_S, "the trips")
            await asyncio.sleep(min(interval_s, 10.0))  # the scheduler's reads are spread: let them flow
            readings_before = await asyncio.to_thread(_readings, engine)
            started = time.perf_counter()
            rng = random.Random(SEED)
            timings: list[Timing] = []
            for index, meter_id in enumerate(targets):
                notification = await asyncio.to_thread(pay, engine, sandbox, wallet_code(f"B-{index}"))
                timing = Timing(meter_id, time.perf_counter())
                timings.append(timing)
                await asyncio.to_thread(notify, engine, sandbox, notification)
                timing.settled = time.perf_counter()
                watch = asyncio.create_task(_watch(timing, by_id[meter_id], engine))
                await asyncio.sleep(spacing_s * rng.uniform(0.5, 1.5))
                if index == len(targets) - 1:
                    await watch
            await _until(lambda: all(t.verified is not None for t in timings), PAYMENT_TIMEOUT_S, "the closes")
            result.window_s = time.perf_counter() - started
            await asyncio.to_thread(_queued_at, engine, timings)
            result.readings = await asyncio.to_thread(_readings, engine) - readings_before
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 30)
            engine.dispose()
            out, _ = worker.communicate(input="", timeout=120)
        result.relay_s = sorted(t.relay_closed - t.started for t in timings if t.relay_closed is not None)
        result.verified_s = sorted(t.verified - t.started for t in timings if t.verified is not None)
        result.timeouts = sum(1 for t in timings if t.verified is None)
        result.stages = _stages(timings)
        worker_stats = json.loads(out.strip().splitlines()[-1])
        assert worker_stats["readings"] > 0, worker_stats
    return result


async def _watch(timing: Timing, meter: Any, engine: Any) -> None:
    """Stamp the moment the meter's own relay reads closed, then the moment the close is verified."""
    deadline = time.perf_counter() + PAYMENT_TIMEOUT_S
    while timing.relay_closed is None and time.perf_counter() < deadline:
        if not meter.relay_open():
            timing.relay_closed = time.perf_counter()
            break
        await asyncio.sleep(0.002)
    while timing.verified is None and time.perf_counter() < deadline:
        if timing.meter_id in await asyncio.to_thread(verified_closes, engine, [timing.meter_id]):
            timing.verified = time.perf_counter()
            break
        await asyncio.sleep(0.01)


async def _until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        assert time.perf_counter() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _queued_at(engine: Any, timings: list[Timing]) -> None:
    from sqlalchemy import select

    from powergate.store.tables_commands import meter_commands

    c = meter_commands.c
    with engine.connect() as conn:
        created = dict(
            conn.execute(
                select(c.meter_id, c.created_at).where(c.meter_id.in_([t.meter_id for t in timings]), c.kind == "close")
            ).all()
        )
    for timing in timings:
        at = created.get(timing.meter_id)
        if at is not None:
            timing.queued_s = (at.replace(tzinfo=dt.UTC) - timing.wall).total_seconds()


def _stages(timings: list[Timing]) -> dict[str, list[float]]:
    """Where the time goes: payment transaction; outbox relay; dispatcher to the meter; read-back."""
    done = [t for t in timings if None not in (t.settled, t.relay_closed, t.verified, t.queued_s)]
    return {
        "payment committed": sorted(t.settled - t.started for t in done),  # type: ignore[operator]
        "close queued": sorted(t.queued_s for t in done),  # type: ignore[misc]
        "queued to relay closed": sorted(t.relay_closed - t.started - t.queued_s for t in done),  # type: ignore[operator]
        "relay closed to verified": sorted(t.verified - t.relay_closed for t in done),  # type: ignore[operator]
    }


def _readings(engine: Any) -> int:
    from sqlalchemy import func, select

    from powergate.store.tables import readings

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(readings)).scalar_one())


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(fraction * len(values) + 0.5) - 1))]


def _postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1.0):
            return True
    except OSError:
        return False


def run(quick: bool) -> str:
    if quick:
        plans = [("sqlite", 1_000, 20, 0.2, 30.0)]
    else:
        plans = [("sqlite", 10_000, 200, 0.5, 60.0), ("postgres", 10_000, 200, 0.5, 60.0)]
    if not _postgres_available():
        plans = [plan for plan in plans if plan[0] != "postgres"]
    lines = [
        "## Prepaid: payment notification to relay confirmed closed",
        "",
        "Head-end process (`HeadendRuntime`: DTU server, DL/T 645, read scheduler, ingest + balance policy, outbox "
        "relay, dispatcher) and an API process (payments through `services.payments`, sandbox channel, signed "
        "notifications) on one database, with N virtual meters behind N/20 virtual DTUs dialling in over loopback "
        "and every meter's energy read and ingested once per interval throughout. Payments to tripped meters one "
        "at a time, spaced 0.5x..1.5x the spacing; the clock runs from the notification handed to "
        "`handle_notification` to (a) the meter's own relay closed in the simulator and (b) the close command "
        "`verified` in the database (relay read back). Meters answer at once (no simulated line delay): add two "
        "meter reply times (close, read-back) for an RS485 bus. Goal: p99 <= 1 s. `bench/bench_relay.py`.",
        "",
        "| Database | Meters | Interval | Payments | Relay closed p50 | p99 | max | Verified p50 | p99 | max "
        "| Readings ingested meanwhile | Timeouts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    results: list[Result] = []
    for kind, meters, payments, spacing_s, interval_s in plans:
        result = asyncio.run(measure(kind, meters, payments, spacing_s, interval_s))
        results.append(result)
        relay, verified = result.relay_s, result.verified_s
        per_s = result.readings / result.window_s if result.window_s else 0.0
        name = "SQLite (WAL file)" if kind == "sqlite" else "PostgreSQL (loopback)"
        lines.append(
            f"| {name} | {meters:,} | {interval_s:.0f} s | {payments} | {_percentile(relay, 0.5):.3f} s | "
            f"**{_percentile(relay, 0.99):.3f} s** | {max(relay, default=float('nan')):.3f} s | "
            f"{_percentile(verified, 0.5):.3f} s | **{_percentile(verified, 0.99):.3f} s** | "
            f"{max(verified, default=float('nan')):.3f} s | {result.readings:,} ({per_s:,.0f}/s) | {result.timeouts} |"
        )
    lines += ["", "Where the time goes (p50 / p99 of each stage, from the notification handed over):", ""]
    lines += ["| Database | Payment committed | Close command queued | Queued to relay closed | Closed to verified |",
              "|---|---|---|---|---|"]  # fmt: skip
    for result in results:
        cells = [f"{_percentile(v, 0.5):.3f} / {_percentile(v, 0.99):.3f} s" for v in result.stages.values()]
        lines.append(f"| {result.kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--url")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args.url, args.port, args.interval))), flush=True)
    else:
        print(run(quick=args.quick))


if __name__ == "__main__":
    threading.current_thread().name = "bench-relay"
    main()
