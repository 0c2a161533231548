"""One MQTT head-end under a reading flood (issue 10): how many readings/s it turns into ledger entries, and how
long a reading takes from arrival to commit.

Three processes on PostgreSQL and Mosquitto, so the head-end is the only thing measured:
- the head-end: ``powergate serve --role headend`` (MQTT only, ingest direct: samples, rating and the ledger and
  the meter-side mirror of each batch in its process);
- the publisher: this module run as ``python -m bench.bench_mqtt_ingest --publish ...``: one paho client that
  publishes ready-encoded schema v1 readings (with instantaneous values, remaining amount and purchase count, as
  the simulator's) at a fixed rate, QoS 0, round-robin over the meters. Unlike ``powergate sim`` (an aiomqtt
  client per 500 meters, which on this shared 2-core machine publishes only 300..450 readings/s) it offers the
  rate asked for, so the head-end, not the fleet, is the limit;
- this module: first one reading of every meter (its baseline; the first sight of a wallet writes its policy
  state), waited for until committed; then the flood, and after 5 s of it, readings/s = readings committed in
  the window / its length; latency = when a sampled meter's reading becomes visible (polled every 0.2 s) minus
  ``readings.at`` (the head-end's time of receipt).

    python -m bench.bench_mqtt_ingest [--meters 5000] [--rate 1000] [--window 30]
    python -m bench.run --only mqtt_ingest [--quick]

``BENCH_LOG_LEVEL=debug`` makes the head-end log each batch it writes (size and seconds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import bench_scale

ROOT = Path(__file__).resolve().parents[1]


def publish(
    site: str, meters: int, rate_per_s: float, seconds: float, host: str, port: int, first_round: int = 0
) -> None:
    """Publish readings of meters 1..``meters`` of ``site`` at ``rate_per_s`` for ``seconds``; prints the count.
    Registers grow by 10 Wh a round; ``first_round`` continues a previous run."""
    import paho.mqtt.client as paho

    from powergate.protocols import mqtt

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pg-bench-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)  # fmt: skip
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    zone = dt.timezone(dt.timedelta(hours=8))
    instant = {"voltage_dv": 2200, "current_ma": 1500, "active_power_w": 330, "power_factor_permille": 980,
               "frequency_centihz": 5000}  # fmt: skip
    started = time.monotonic()
    sent = 0
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate_per_s) + 1
            while sent < due:
                index = sent % meters + 1
                rounds = first_round + sent // meters
                address = f"{index:012d}"
                at = dt.datetime.now(zone).replace(microsecond=0)
                reading = mqtt.Reading(address, f"{address}-{sent}", at, 1_000_000 + rounds * 10,
                                       instant=instant, remaining_micros=50_000_000, purchase_count=1,
                                       relay="closed")  # fmt: skip
                client.publish(mqtt.message_topic(site, reading), mqtt.encode(reading), qos=0)
                sent += 1
            time.sleep(0.002)
    finally:
        client.disconnect()
        client.loop_stop()
    print(json.dumps({"published": sent, "seconds": time.monotonic() - started}), flush=True)


def start_headend(world: bench_scale.World, logs: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "POWERGATE_DATABASE_URL": world.url,
        "POWERGATE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "POWERGATE_HEADEND_NAME": "headend-1",
        "POWERGATE_HEADEND_DTU_LISTEN": "off",
        "POWERGATE_HEADEND_MQTT_BROKER": "127.0.0.1:1883",
        "POWERGATE_HEADEND_MQTT_GROUP": f"bench{uuid.uuid4().hex[:6]}",
        "POWERGATE_HEADEND_MODBUS": "false",
    }
    with open(logs / "headend.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "powergate", "serve", "--role", "headend"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip


def _publisher(world: bench_scale.World, meters: int, rate_per_s: float, seconds: float, first_round: int
               ) -> subprocess.Popen[bytes]:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_mqtt_ingest", "--publish", world.site, "--meters", str(meters),
         "--rate", str(rate_per_s), "--seconds", str(seconds), "--first-round", str(first_round)],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip


def _wait_readings(engine: Any, count: int, timeout_s: float) -> None:
    from sqlalchemy import func, select

    from powergate.store.tables import readings

    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            if int(conn.execute(select(func.count()).select_from(readings)).scalar_one()) >= count:
                return
        assert time.monotonic() < deadline, f"fewer than {count} readings after {timeout_s} s"
        time.sleep(0.5)


def measure(meters: int, rate_per_s: float, window_s: float) -> dict[str, Any]:
    from sqlalchemy import func, select

    from powergate.store.db import make_engine
    from powergate.store.tables import readings

    world = bench_scale.prepare(meters)
    logs = Path(tempfile.mkdtemp(prefix="pg-mqtt-ingest-"))
    headend = start_headend(world, logs)
    engine = make_engine(world.url)
    warm_up_s = 5.0  # of steady flow, after every meter's baseline is in
    publisher: subprocess.Popen[bytes] | None = None
    try:
        bench_scale.wait_listening(world.url, 1, 120)
        time.sleep(2)  # the MQTT subscription follows the LISTEN by a moment; a reading before it is lost
        # every meter's first reading (its baseline; the first sight of a wallet costs more), then the flood
        _publisher(world, meters, rate_per_s, meters / rate_per_s, 0).communicate(timeout=600)
        _wait_readings(engine, int(meters * 0.99), 300)  # QoS 0: a few may be lost on the way
        publisher = _publisher(world, meters, rate_per_s, warm_up_s + window_s, 1)
        time.sleep(warm_up_s)
        sampler = bench_scale.Sampler(engine, [f"M{i}" for i in range(0, meters, max(1, meters // 500))])
        cpu_before = bench_scale._cpu_s(headend.pid)
        with engine.connect() as conn:
            count_before = int(conn.execute(select(func.count()).select_from(readings)).scalar_one())
        started = time.time()
        while time.time() - started < window_s:
            sampler.poll()
            assert headend.poll() is None, (logs / "headend.log").read_text()[-2000:]
            time.sleep(0.2)
        window = time.time() - started
        with engine.connect() as conn:
            count_after = int(conn.execute(select(func.count()).select_from(readings)).scalar_one())
        cpu = 100 * (bench_scale._cpu_s(headend.pid) - cpu_before) / window
        published = json.loads(publisher.communicate(timeout=60)[0].decode().strip().splitlines()[-1])
    finally:
        engine.dispose()
        for process in (headend, publisher):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        bench_scale.drop(world)
    return {
        "meters": meters,
        "offered_per_s": rate_per_s,
        "published_per_s": published["published"] / published["seconds"],
        "window_s": window,
        "readings_per_s": (count_after - count_before) / window,
        "ledger_p50_s": bench_scale._percentile(sampler.latencies, 0.5),
        "ledger_p99_s": bench_scale._percentile(sampler.latencies, 0.99),
        "ledger_samples": len(sampler.latencies),
        "headend_cpu_percent": cpu,
        "load": Path("/proc/loadavg").read_text().split()[0],
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## One MQTT head-end under a reading flood (PostgreSQL + Mosquitto)",
            "",
            f"{r['meters']:,} meters, readings offered at {float(r['offered_per_s']):.0f}/s by one publisher "
            f"({float(r['published_per_s']):.0f}/s published), one `powergate serve --role headend`, measured over "
            f"{float(r['window_s']):.0f} s after every meter's baseline (`bench/bench_mqtt_ingest.py`).",
            "",
            "| Measure | Value |",
            "|---|---|",
            f"| readings/s sustained (committed with their ledger entries) | {float(r['readings_per_s']):.0f} |",
            f"| reading-to-ledger latency p50 / p99 ({r['ledger_samples']} readings) | "
            f"{float(r['ledger_p50_s']):.2f} s / {float(r['ledger_p99_s']):.2f} s |",
            f"| head-end CPU (% of one core) | {float(r['headend_cpu_percent']):.0f} % |",
            "",
            f"Load average at the end: {r['load']} (2 cores, shared with other work).",
        ]
    )


def run(quick: bool) -> str:
    return report(measure(2_000, 500.0, 15.0) if quick else measure(5_000, 1_000.0, 30.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--publish", metavar="SITE", help="run as the publisher for SITE")
    parser.add_argument("--meters", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--first-round", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the measures as JSON")
    args = parser.parse_args(argv)
    if args.publish:
        publish(args.publish, args.meters, args.rate, args.seconds, "127.0.0.1", 1883, args.first_round)
        return 0
    result = measure(args.meters, args.rate, args.window)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
