"""Head-end capacity: N virtual meters behind DTUs connected to ONE head-end process; RSS per meter, reads/s.

Two processes, so the RSS measured is the head-end's alone:
- the fleet: ``python -m powergate sim --mode dtu --meters N --dtus N/20`` (20 meters per RS485 bus), replies
  without the simulated line delay (``--delay-ms 0``) so the head-end, not the simulated 2400 baud, is the limit;
- the head-end: this module run as a worker (``python -m bench.bench_headend --worker ...``): a ``DtuServer``,
  a ``Dlt645Link`` and a ``ReadScheduler`` reading every meter's energy block every ``interval`` seconds into
  a counting sink (no database: ingest has its own benchmark).

Memory per meter = (worker RSS after every DTU registered, every meter scheduled and two intervals read) minus
(worker RSS after imports, before the server starts), divided by N: sessions, decoders, socket buffers,
endpoints and scheduling state included. Readings per second = collected reads over the measuring window.
Both processes share this 2-core machine, so reads/s is a lower bound for a head-end on its own host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METERS_PER_DTU = 20
SEED = 1


def _rss_kib(pid: int | None = None) -> int:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _worker(meters: int, port: int, interval_s: float, window_s: float) -> dict[str, float]:
    from powergate.headend.dlt645_link import Dlt645Link
    from powergate.headend.dtu import DtuServer
    from powergate.headend.model import MeterEndpoint, MeterSnapshot, ReadItem, Transport
    from powergate.headend.scheduler import ReadScheduler, ScheduleConfig

    baseline_kib = _rss_kib()
    dtus = meters // METERS_PER_DTU
    server = DtuServer(request_timeout_s=5.0, heartbeat_timeout_s=600.0)
    await server.start("127.0.0.1", port)
    print(json.dumps({"listening": port}), flush=True)
    connected = await server.wait_for_sessions(dtus, 300.0)
    assert connected, f"only {len(server.sessions)} of {dtus} DTUs registered"
    collected = 0

    async def sink(batch: Sequence[MeterSnapshot]) -> None:
        nonlocal collected
        collected += len(batch)

    # the fleet's layout (powergate.sim.fleet): addresses 1..N, contiguous slices per DTU, ids 86<seed><index>
    config = ScheduleConfig(interval_s=interval_s, items=frozenset({ReadItem.ENERGY}), frozen_read=False)
    scheduler = ReadScheduler({Transport.DLT645: Dlt645Link(server)}, sink, config)
    for index in range(meters):
        dtu_id = f"86{SEED % 1000:03d}{index // METERS_PER_DTU:010d}"
        address = f"{index + 1:012d}"
        scheduler.add(MeterEndpoint(f"M-{address}", Transport.DLT645, address, dtu_id))
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(interval_s)  # warm-up: one full interval
    start_collected, start_scheduled, started = scheduler.stats.collected, scheduler.stats.scheduled, time.monotonic()
    await asyncio.sleep(window_s)
    elapsed_s = time.monotonic() - started
    collected_window = scheduler.stats.collected - start_collected
    scheduled_window = scheduler.stats.scheduled - start_scheduled
    rss_kib = _rss_kib()
    stop.set()
    await running
    await server.close()
    return {
        "meters": meters,
        "dtus": dtus,
        "sessions": dtus,
        "baseline_kib": baseline_kib,
        "rss_kib": rss_kib,
        "bytes_per_meter": (rss_kib - baseline_kib) * 1024 / meters,
        "reads_per_s": collected_window / elapsed_s,
        "window_ratio": collected_window / scheduled_window if scheduled_window else 0.0,
        "ratio": scheduler.stats.collected_ratio,
        "timeouts": server.stats.timeouts,
    }


def measure(meters: int, interval_s: float, window_s: float) -> dict[str, float]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_headend", "--worker", "--meters", str(meters), "--port", str(port),
         "--interval", str(interval_s), "--window", str(window_s)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert worker.stdout is not None
    assert "listening" in worker.stdout.readline()
    fleet = subprocess.Popen(
        [sys.executable, "-m", "powergate", "sim", "--mode", "dtu", "--meters", str(meters),
         "--dtus", str(meters // METERS_PER_DTU), "--headend", f"127.0.0.1:{port}", "--delay-ms", "0",
         "--heartbeat", "60", "--seed", str(SEED), "--progress-s", "3600", "--duration", str(3 * window_s + 600)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        output = worker.stdout.read()
        worker.wait(timeout=60)
    finally:
        fleet.terminate()
        fleet.wait(timeout=30)
    return dict(json.loads(output.strip().splitlines()[-1]))


def run(quick: bool) -> str:
    sizes = [(2_000, 10.0, 10.0)] if quick else [(10_000, 20.0, 30.0), (50_000, 30.0, 60.0)]
    lines = [
        "## Head-end: memory per connected meter and readings per second",
        "",
        f"One head-end process (DtuServer + Dlt645Link + ReadScheduler, energy block 0001FF00 every interval) with "
        f"a simulated fleet of {METERS_PER_DTU} meters per DTU dialling in from a second process (`powergate sim "
        "--delay-ms 0`), both on this 2-core machine. Memory per meter: head-end RSS after all DTUs registered and "
        "one warm-up interval, minus RSS after imports, over N. Goal: <= 8 KB per meter.",
        "",
        "| Meters | DTUs | Interval | Head-end RSS | Bytes per meter | Reads/s (window) | Collected / scheduled |",
        "|---|---|---|---|---|---|---|",
    ]
    for meters, interval_s, window_s in sizes:
        result = measure(meters, interval_s, window_s)
        lines.append(
            f"| {meters:,} | {int(result['dtus']):,} | {interval_s:.0f} s | {result['rss_kib'] / 1024:.0f} MiB | "
            f"**{result['bytes_per_meter']:,.0f}** | {result['reads_per_s']:,.0f} | {result['window_ratio']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--meters", type=int, default=2_000)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args.meters, args.port, args.interval, args.window))), flush=True)
    else:
        print(run(quick=args.meters <= 2_000))


if __name__ == "__main__":
    main()
