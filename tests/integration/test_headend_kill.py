"""THE crash test: a head-end killed with SIGKILL mid-queue resumes with no command lost or applied twice.

Design. The virtual meters must outlive the head-end, so they live in THIS process (the test); the head-end is
a CHILD process (this file run as a script) that runs the command dispatcher against the test's database (a
SQLite file, or PostgreSQL) and reaches the meters over real TCP, in one of two ways:

- ``dtu``: the production path. The test runs virtual DTUs that dial in to the child's ``DtuServer``, and the
  child drives them with ``Dlt645Link``: DL/T 645-2007 frames on a simulated RS485 bus, one request at a time
  per DTU. After each kill the DTUs redial the restarted head-end.
- ``json``: a minimal meter host (newline-delimited JSON answered by a ``MemoryLink``), which isolates the
  queue from the transport and lets more commands through per second.

The child is killed with SIGKILL, restarted, killed again, ..., then allowed to finish. Kills land in the two
places that matter:
- right after a meter has APPLIED a command and before its reply leaves (the meter itself pulls the trigger),
  so the database says ``sent`` while the meter has it: the case that would double a credit if resent blind;
- on a timer, at an arbitrary moment once the queue is moving (inside a claim, a send, a database write).

"Applied twice" is DETECTED, not assumed: every meter counts each recharge and relay command that reaches it,
by purchase count / command; it also keeps its purchase count, its total credited and its relay. The test
asserts every command ended ``verified``, reached its meter exactly once, every meter was credited exactly the
sum of its recharges, and the relays ended as commanded. Marked ``slow`` (6-10 s per database and path on a
quiet machine): it is an acceptance test of issue 4 and runs in ``make test``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powergate.domain.ledger import wallet_code
from powergate.domain.money import MICROS_PER_UNIT
from powergate.headend import commands as queue
from powergate.headend.commands import CommandState, Dispatcher, DispatchOptions, RetryPolicy
from powergate.headend.memory import MemoryLink
from powergate.headend.model import (
    CommandKind,
    CommandResult,
    FailureKind,
    LinkError,
    MeterCommand,
    MeterEndpoint,
    MeterLink,
    MeterSnapshot,
    ReadItem,
    Transport,
)
from powergate.sim.faults import Faults, SimStats
from powergate.sim.meter import MeterError, RechargeResult, RelayAction, VirtualMeter
from powergate.sim.profiles import PROFILES, ProfileKind
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.db import make_engine
from testkit import free_port

METERS = 40
METERS_PER_DTU = 10
CHILD_NAME = "headend-kill-test"
REQUEST_TIMEOUT_S = 2.0
JSON_REPLY_DELAY_S = 0.02
"""A meter's answer time on the JSON path (real meters take 20-500 ms; the DTU path delays 20-40 ms). Requests
are answered in turn, so the whole queue takes seconds and every round's kill lands while work is still queued."""
YUAN = MICROS_PER_UNIT
AMOUNTS = (7, 11, 13)
ROUNDS: tuple[tuple[str, float], ...] = (
    ("after_apply", 3),  # a meter kills the child right after applying the 3rd command of the round
    ("timer", 0.1),  # kill 0.1 s after the queue started moving
    ("after_apply", 11),
    ("timer", 0.2),
    ("after_apply", 1),
)
"""The kills, in order; then one last run to completion."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def address(index: int) -> str:
    return f"{index + 1:012d}"


def dtu_id(index: int) -> str:
    return f"86900{index // METERS_PER_DTU:010d}"


# -- the meters (in the test process; they survive every kill) -------------------------------------------------


class Killer:
    """Counts what reaches the meters; kills the head-end right after the N-th command of a round."""

    def __init__(self) -> None:
        self.deliveries: dict[str, int] = {}
        self.child_pid: int | None = None
        self.kill_after: int | None = None
        self.this_round = 0
        self.kills_after_apply = 0

    def new_round(self, pid: int, kill_after: int | None) -> None:
        self.child_pid, self.kill_after, self.this_round = pid, kill_after, 0

    def delivered(self, key: str) -> None:
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        self.this_round += 1
        if self.this_round == self.kill_after and self.child_pid is not None:
            os.kill(self.child_pid, signal.SIGKILL)  # applied on the meter; the head-end never hears of it
            self.kills_after_apply += 1
            self.kill_after = None


class CountingMeter(VirtualMeter):
    """A virtual meter that reports every recharge and relay command reaching it (whatever the outcome)."""

    __slots__ = ("index", "killer")

    def recharge(self, purchase_count: int, amount_micros: int, now_s: int) -> RechargeResult:
        result = super().recharge(purchase_count, amount_micros, now_s)
        self.killer.delivered(f"pay-{self.index}-{purchase_count}")
        return result

    def relay_command(self, action: RelayAction, now_s: int, valid_until_s: int | None = None) -> MeterError | None:
        error = super().relay_command(action, now_s, valid_until_s)
        self.killer.delivered(f"relay-{self.index}")
        return error


def make_meters(killer: Killer, now_s: int) -> dict[str, CountingMeter]:
    meters: dict[str, CountingMeter] = {}
    for index in range(METERS):
        meter = CountingMeter(address(index), PROFILES[ProfileKind.RESIDENTIAL], seed=index, now_s=now_s)
        meter.index, meter.killer = index, killer
        if index % 2:
            VirtualMeter.relay_command(meter, RelayAction.TRIP, now_s)  # tripped before the test, not counted
        meters[f"K-{index}"] = meter
    return meters


# -- the JSON meter host and its client link ------------------------------------------------------------------


def command_to_json(command: MeterCommand) -> dict[str, Any]:
    return {
        "id": command.command_id,
        "kind": command.kind.value,
        "valid_until": command.valid_until.isoformat(),
        "parameters": queue.encode_parameters(command),
    }


def outcome_to_json(outcome: MeterSnapshot | CommandResult | LinkError) -> dict[str, Any]:
    if isinstance(outcome, LinkError):
        return {"error": outcome.kind.value, "reason": outcome.reason}
    if isinstance(outcome, CommandResult):
        return {"ok": outcome.ok, "already_applied": outcome.already_applied, "reason": outcome.reason}
    return {
        "meter_id": outcome.meter_id,
        "at": outcome.at.isoformat(),
        "relay_open": outcome.relay_open,
        "purchase_count": outcome.purchase_count,
    }


def outcome_from_json(data: dict[str, Any]) -> MeterSnapshot | CommandResult | LinkError:
    if "error" in data:
        return LinkError(FailureKind(data["error"]), data["reason"])
    if "ok" in data:
        return CommandResult(data["ok"], data["already_applied"], data["reason"])
    at = dt.datetime.fromisoformat(data.pop("at"))
    return MeterSnapshot(at=at, **data)


async def serve_json(meters: dict[str, CountingMeter], port: int, stop: asyncio.Event) -> None:
    link = MemoryLink(meters, utc_now, timeout_s=REQUEST_TIMEOUT_S)

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(JSON_REPLY_DELAY_S)
        endpoint = MeterEndpoint(request["meter_id"], Transport.DLT645, request["meter_id"], "host")
        if request["op"] == "read":
            items = frozenset(ReadItem(item) for item in request["items"])
            return outcome_to_json(await link.read(endpoint, items))
        data = request["command"]
        valid_until = dt.datetime.fromisoformat(data["valid_until"])
        command = queue.decode_command(data["id"], data["kind"], valid_until, data["parameters"])
        return outcome_to_json(await link.execute(endpoint, command))

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                request = json.loads(line)
                writer.write(json.dumps({"n": request["n"], **await answer(request)}).encode() + b"\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    async with server:
        await stop.wait()


class JsonLink:
    """The child's ``MeterLink`` to the JSON host: one TCP connection, every request with a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.counter = 0
        self.receiver = asyncio.create_task(self._receive(reader))

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            reply = json.loads(line)
            future = self.waiting.pop(reply.pop("n"), None)
            if future is not None and not future.done():
                future.set_result(reply)

    def online(self, endpoint: MeterEndpoint) -> bool:
        return not self.receiver.done()

    async def _call(self, request: dict[str, Any]) -> MeterSnapshot | CommandResult | LinkError:
        self.counter += 1
        number = self.counter
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[number] = future
        self.writer.write(json.dumps({"n": number, **request}).encode() + b"\n")
        try:
            return outcome_from_json(await asyncio.wait_for(future, REQUEST_TIMEOUT_S))
        except TimeoutError:
            self.waiting.pop(number, None)
            return LinkError(FailureKind.TIMEOUT, f"no reply within {REQUEST_TIMEOUT_S} s")

    async def read(self, endpoint: MeterEndpoint, items: frozenset[ReadItem]) -> MeterSnapshot | LinkError:
        outcome = await self._call({"op": "read", "meter_id": endpoint.meter_id, "items": sorted(items)})
        assert not isinstance(outcome, CommandResult)
        return outcome

    async def execute(self, endpoint: MeterEndpoint, command: MeterCommand) -> CommandResult | LinkError:
        request = {"op": "execute", "meter_id": endpoint.meter_id, "command": command_to_json(command)}
        outcome = await self._call(request)
        assert not isinstance(outcome, MeterSnapshot)
        return outcome


# -- the DTU path: virtual DTUs in the test dial in to the child's DtuServer ---------------------------------


async def dial_dtus(meters: dict[str, CountingMeter], port: int, stop: asyncio.Event) -> None:
    from powergate.sim.fleet import VirtualDtu

    buses: dict[str, list[CountingMeter]] = {}
    for meter in meters.values():
        buses.setdefault(dtu_id(meter.index), []).append(meter)
    dtus = [
        VirtualDtu(
            name,
            bus,
            headend=("127.0.0.1", port),
            clock=lambda: int(time.time()),
            faults=Faults(delay_min_ms=20, delay_max_ms=40),  # real meters answer in 20-500 ms
            stats=SimStats(meters=len(bus)),
            heartbeat_s=1.0,
            connect_timeout_s=1.0,
        )
        for name, bus in buses.items()
    ]

    async def keep_dialing(dtu: VirtualDtu) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, TimeoutError):
                await dtu.run(stop)  # ends with ConnectionError (an OSError) when the head-end dies
            await asyncio.sleep(0.05)

    await asyncio.gather(*(keep_dialing(dtu) for dtu in dtus))


@contextlib.contextmanager
def meters_on_the_wire(path: str, meters: dict[str, CountingMeter], port: int) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    serve = serve_json if path == "json" else dial_dtus
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve(meters, port, stop)), daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


# -- the child: a head-end process running the dispatcher -----------------------------------------------------


async def open_link(path: str, port: int) -> MeterLink:
    if path == "json":
        for _ in range(100):  # the host may still be starting
            with contextlib.suppress(OSError):
                return JsonLink(*await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0.05)
        raise ConnectionError(f"no meter host on port {port}")
    from powergate.headend.dlt645_link import Dlt645Link
    from powergate.headend.dtu import DtuServer

    server = DtuServer(request_timeout_s=REQUEST_TIMEOUT_S)
    await server.start("127.0.0.1", port)
    return Dlt645Link(server, clock=utc_now)


def endpoint_of(path: str, meter_id: str) -> MeterEndpoint:
    index = int(meter_id.removeprefix("K-"))
    if path == "json":
        return MeterEndpoint(meter_id, Transport.DLT645, meter_id, "host")
    return MeterEndpoint(meter_id, Transport.DLT645, address(index), dtu_id(index))


async def child_main(path: str, db_url: str, port: int) -> int:
    engine = make_engine(db_url)
    link = await open_link(path, port)
    retry = RetryPolicy(base_delay_s=0.2, max_delay_s=1.0, offline_recheck_s=0.1, lease_s=30)
    dispatcher = Dispatcher(
        engine,
        link,
        lambda meter_id: endpoint_of(path, meter_id),
        name=CHILD_NAME,
        clock=utc_now,
        options=DispatchOptions(poll_s=0.05, batch=50, max_in_flight=50, retry=retry),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))
    while True:
        await asyncio.sleep(0.1)
        with engine.connect() as conn:
            states = queue.count_by_state(conn)
        if not any(states.get(state) for state in queue.OPEN):
            break
    stop.set()
    await running
    engine.dispose()
    return 0


# -- the test ---------------------------------------------------------------------------------------------------


def plan(index: int) -> list[MeterCommand]:
    """Even meters: recharge, recharge, trip, recharge. Odd meters (tripped at the start): the same with close."""
    until = utc_now() + dt.timedelta(hours=1)
    recharges = [
        MeterCommand(f"pay-{index}-{n}", CommandKind.RECHARGE, until, amount_micros=yuan * YUAN, purchase_count=n)
        for n, yuan in enumerate(AMOUNTS, start=1)
    ]
    kind = CommandKind.TRIP if index % 2 == 0 else CommandKind.CLOSE
    return [recharges[0], recharges[1], MeterCommand(f"relay-{index}", kind, until), recharges[2]]


def enqueue_all(db_url: str) -> None:
    now = utc_now()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "flat", "electricity", "{}", now)
        for index in range(METERS):
            meter_id = f"K-{index}"
            wallet = ledger_store.ensure_account(conn, wallet_code(f"A-{meter_id}"), now)
            metering.add_meter(conn, meter_id, wallet, "flat", now)
            for command in plan(index):
                # one priority for all, so each meter gets its commands in plan order: a close that jumped ahead of
                # the recharges would reach a meter with no credit, which trips itself again (this test is about
                # exactly-once delivery, not about priorities)
                result = queue.enqueue(
                    conn, meter_id, command, requested_by="test", reason="kill test", now=now, priority=500
                )
                assert isinstance(result, queue.Enqueued) and result.created, result
    engine.dispose()


def spawn(path: str, db_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), path, db_url, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def states(db_url: str) -> dict[CommandState, int]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return queue.count_by_state(conn)
    finally:
        engine.dispose()


def unfinished(db_url: str) -> list[str]:
    """Why the commands that did not end verified ended where they did."""
    from sqlalchemy import select

    from powergate.store.tables_commands import meter_commands

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(
                meter_commands.c.id, meter_commands.c.state, meter_commands.c.attempts, meter_commands.c.last_error
            )
            rows = conn.execute(query.where(meter_commands.c.state != CommandState.VERIFIED.value)).all()
    finally:
        engine.dispose()
    return [f"{r.id} {r.state} after {r.attempts} attempts: {r.last_error}" for r in rows]


def wait_for_progress(db_url: str, child: subprocess.Popen[bytes]) -> None:
    """Until the child has settled one more command than before (the queue is moving)."""
    before = states(db_url).get(CommandState.VERIFIED, 0)
    deadline = time.monotonic() + 30
    while states(db_url).get(CommandState.VERIFIED, 0) == before:
        assert child.poll() is None and time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["dtu", "json"])
def test_a_head_end_killed_with_sigkill_mid_queue_resumes_with_nothing_lost_or_applied_twice(
    db_url: str, path: str
) -> None:
    enqueue_all(db_url)
    killer = Killer()
    meters = make_meters(killer, int(time.time()))
    port = free_port()
    seen_at_kills: list[dict[CommandState, int]] = []
    started = time.perf_counter()
    with meters_on_the_wire(path, meters, port):
        for how, value in ROUNDS:
            child = spawn(path, db_url, port)
            killer.new_round(child.pid, int(value) if how == "after_apply" else None)
            if how == "timer":
                wait_for_progress(db_url, child)
                time.sleep(value)
                child.send_signal(signal.SIGKILL)
            output, _ = child.communicate(timeout=60)
            assert child.returncode == -signal.SIGKILL, output.decode()
            seen_at_kills.append(states(db_url))
        final = spawn(path, db_url, port)
        killer.new_round(final.pid, None)
        output, _ = final.communicate(timeout=120)
        assert final.returncode == 0, output.decode()
    elapsed = time.perf_counter() - started

    # the kills did land mid-queue, some with a command applied on the meter but recorded only as sent
    assert killer.kills_after_apply == sum(1 for how, _ in ROUNDS if how == "after_apply")
    assert all(snapshot.get(CommandState.PENDING, 0) > 0 for snapshot in seen_at_kills)
    assert any(snapshot.get(CommandState.SENT, 0) > 0 for snapshot in seen_at_kills)
    # nothing lost
    assert states(db_url) == {CommandState.VERIFIED: 4 * METERS}, unfinished(db_url)
    # nothing applied twice: every recharge and relay command reached its meter exactly once
    assert len(killer.deliveries) == 4 * METERS
    assert {key: n for key, n in killer.deliveries.items() if n != 1} == {}
    for meter_id, meter in meters.items():
        assert meter.purchase_count == len(AMOUNTS), meter_id
        assert meter.purchased_micros == sum(AMOUNTS) * YUAN, meter_id
        assert meter.relay_open() == (meter.index % 2 == 0), meter_id
    print(f"\n{path}: {len(ROUNDS)} SIGKILLs, {4 * METERS} commands, all verified once, in {elapsed:.1f} s")


if __name__ == "__main__":
    sys.exit(asyncio.run(child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
