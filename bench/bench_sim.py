"""Simulator cost: CPU of ``powergate sim --meters 10000`` at a 60 s interval, and memory per meter.

- MQTT mode against the local broker (127.0.0.1:1883): every meter publishes one reading a minute.
- DTU mode against a local sink listener (a separate process) that reads every meter once a minute over
  DL/T 645, one request at a time per DTU.

CPU is measured from ``/proc/<pid>/stat`` (user + system time of the simulator process only) over a window of
at least 60 s after a warm-up, in 10 s slices; the report gives the median slice and the whole-window mean,
as a percentage of one core. Memory per meter: RSS growth of a fresh process while it builds N meters, divided
by N, and tracemalloc's count of the same, medians of three runs. ``quick`` uses 2,000 meters and 20 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BROKER = ("127.0.0.1", 1883)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure_sim(args: list[str], warmup_s: float, window_s: float) -> dict[str, float]:
    """Run ``powergate sim ARGS`` and sample its CPU in 10 s slices after ``warmup_s``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "powergate", "sim", *args, "--duration", str(warmup_s + window_s + 5)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(warmup_s)
        slices: list[float] = []
        start_cpu, start_wall = _cpu_s(process.pid), time.monotonic()
        last_cpu, last_wall = start_cpu, start_wall
        while time.monotonic() - start_wall < window_s:
            time.sleep(10)
            cpu, wall = _cpu_s(process.pid), time.monotonic()
            slices.append(100 * (cpu - last_cpu) / (wall - last_wall))
            last_cpu, last_wall = cpu, wall
        rss = _rss_kib(process.pid)
        mean = 100 * (last_cpu - start_cpu) / (last_wall - start_wall)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    return {"median_pct": statistics.median(slices), "mean_pct": mean, "window_s": last_wall - start_wall,
            "rss_mib": rss / 1024, "summary": summary}  # type: ignore[dict-item]  # fmt: skip


_MEMORY_PROGRAM = """
import gc, json, sys, tracemalloc
from pathlib import Path
from powergate.sim.fleet import build_meters
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
n = int(sys.argv[1])
build_meters(10, seed=9, now_s=1_700_000_000)  # import and warm every code path first
gc.collect()
before = rss()
tracemalloc.start()
meters = build_meters(n, seed=1, now_s=1_700_000_000)
for m in meters:
    m.advance(1_700_000_060)
traced, _ = tracemalloc.get_traced_memory()
tracemalloc.stop()
gc.collect()
print(json.dumps({"rss_per_meter": (rss() - before) / n, "traced_per_meter": traced / n}))
"""


def measure_memory(count: int, runs: int = 3) -> tuple[float, float]:
    rss: list[float] = []
    traced: list[float] = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROGRAM, str(count)], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=300)  # fmt: skip
        figures = json.loads(out.stdout)
        rss.append(figures["rss_per_meter"])
        traced.append(figures["traced_per_meter"])
    return statistics.median(rss), statistics.median(traced)


def sink_main(port: int, meters: int, dtus: int, interval_s: float) -> None:
    """A head-end stand-in: reads every meter of every DTU once per interval, one request at a time per DTU."""
    from powergate.protocols.dlt645 import Frame, encode_frame, read_request
    from powergate.protocols.dtu import DtuStreamDecoder, Registration

    per_dtu = [meters // dtus + (1 if i < meters % dtus else 0) for i in range(dtus)]
    first = [sum(per_dtu[:i]) + 1 for i in range(dtus)]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder, pending = DtuStreamDecoder(), []
        while not pending:
            data = await reader.read(4096)
            if not data:
                return  # a port probe, or a DTU that hung up before registering
            pending += decoder.feed(data)
        registration = pending.pop(0)
        assert isinstance(registration, Registration)
        index = int(registration.dtu_id[-10:])
        addresses = [f"{first[index] + k:012d}" for k in range(per_dtu[index])]
        loop = asyncio.get_running_loop()
        start = loop.time()
        cycle = 0
        while True:
            for k, address in enumerate(addresses):
                delay = start + (cycle + k / len(addresses)) * interval_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(encode_frame(read_request(address, 0x0000FF00)))
                got = False
                while not got:
                    data = await asyncio.wait_for(reader.read(4096), 5)
                    got = any(isinstance(item, Frame) for item in decoder.feed(data))
            cycle += 1

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _dtu_run(meters: int, dtus: int, warmup_s: float, window_s: float) -> dict[str, float]:
    port = _free_port()
    sink = subprocess.Popen([sys.executable, "-c",
                             f"from bench.bench_sim import sink_main; sink_main({port}, {meters}, {dtus}, 60.0)"],
                            cwd=ROOT)  # fmt: skip
    try:
        for _ in range(50):
            if _port_open("127.0.0.1", port):
                break
            time.sleep(0.1)
        return measure_sim(["--meters", str(meters), "--dtus", str(dtus), "--mode", "dtu", "--headend",
                            f"127.0.0.1:{port}", "--delay-ms", "0"], warmup_s, window_s)  # fmt: skip
    finally:
        sink.kill()
        sink.wait(timeout=10)


def run(quick: bool) -> str:
    meters = 2_000 if quick else 10_000
    warmup_s, window_s = (10.0, 20.0) if quick else (20.0, 60.0)
    lines = [
        "## Simulator: CPU and memory per meter",
        "",
        f"`powergate sim --meters {meters}` at a 60 s reporting interval; CPU of the simulator process only "
        f"(user + system), {window_s:.0f} s window after a {warmup_s:.0f} s warm-up, in 10 s slices. Goal: "
        "< 50 % of one core.",
        "",
        "| Mode | Connections | CPU median of slices | CPU mean over window | RSS | Final summary |",
        "|---|---|---|---|---|---|",
    ]
    if _port_open(*BROKER):
        mqtt = measure_sim(["--meters", str(meters), "--mode", "mqtt", "--broker", f"{BROKER[0]}:{BROKER[1]}",
                            "--interval", "60"], warmup_s, window_s)  # fmt: skip
        lines.append(f"| MQTT (local Mosquitto) | {meters // 100} | {mqtt['median_pct']:.1f} % | "
                     f"{mqtt['mean_pct']:.1f} % | {mqtt['rss_mib']:.0f} MiB | {mqtt['summary']} |")  # fmt: skip
    else:
        lines.append("| MQTT | - | not measured: no broker at 127.0.0.1:1883 | | | |")
    dtus = meters // 32
    dtu = _dtu_run(meters, dtus, warmup_s, window_s)
    lines.append(f"| DTU (local sink reads every meter once a minute) | {dtus} | {dtu['median_pct']:.1f} % | "
                 f"{dtu['mean_pct']:.1f} % | {dtu['rss_mib']:.0f} MiB | {dtu['summary']} |")  # fmt: skip
    rss_per_meter, traced_per_meter = measure_memory(meters)
    lines += [
        "",
        f"Memory per meter (building {meters} meters in a fresh process, median of 3): RSS growth / N = "
        f"**{rss_per_meter:.0f} bytes**, tracemalloc / N = **{traced_per_meter:.0f} bytes**.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
