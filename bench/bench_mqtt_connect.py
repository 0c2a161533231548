"""An MQTT head-end that connects while the fleet is already connected: the burst of retained statuses.

When a head-end (re)starts, the broker sends it the retained status of every meter at once. This measures, on
the local Mosquitto, how many meters the head-end's ``MqttLink`` believes online afterwards, and how long it
took: ``--meters`` retained ``online`` statuses are published for a new site, then a link that serves that site
(the meters registered, ``known_only`` as in ``powergate serve``) connects; the measure ends when every meter
is online or nothing changed for ``QUIET_S``. The retained statuses are cleared afterwards.

    python -m bench.bench_mqtt_connect [--meters 100000] [--max-incoming 20000] [--json]
    python -m bench.run --only mqtt_connect [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import resource
import sys
import time
import uuid
from typing import Any

HOST, PORT = "127.0.0.1", 1883
CHUNK = 5_000
"""Retained statuses published (or cleared) before waiting for the broker's PUBACKs."""
QUIET_S = 5.0
LIMIT_S = 300.0


def address(index: int) -> str:
    return f"{index:012d}"


def publish_statuses(site: str, meters: int, clear: bool = False) -> float:
    """Publish (or clear, with an empty payload) the retained status of meters 1..``meters``; seconds taken."""
    import paho.mqtt.client as paho

    from powergate.protocols import mqtt

    at = dt.datetime.now(dt.UTC)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pg-bench-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)  # fmt: skip
    client.max_inflight_messages_set(1_000)
    client.max_queued_messages_set(0)
    client.connect(HOST, PORT)
    client.loop_start()
    started = time.monotonic()
    try:
        for start in range(1, meters + 1, CHUNK):
            sent = []
            for index in range(start, min(start + CHUNK, meters + 1)):
                topic = mqtt.topic(site, address(index), mqtt.Direction.UP, mqtt.Kind.STATUS)
                payload = b"" if clear else mqtt.encode(mqtt.Status(address(index), "online", at))
                sent.append(client.publish(topic, payload, qos=1, retain=True))
            for info in sent:
                info.wait_for_publish(60.0)
                if not info.is_published():
                    raise RuntimeError("the broker did not take a retained status in 60 s")
    finally:
        client.disconnect()
        client.loop_stop()
    return time.monotonic() - started


async def connect_and_count(site: str, meters: int, max_incoming: int) -> dict[str, Any]:
    from powergate.headend.model import MeterEndpoint, Transport
    from powergate.headend.mqtt_link import MqttLink

    endpoints = [MeterEndpoint(f"M-{address(i)}", Transport.MQTT, address(i), site) for i in range(1, meters + 1)]
    link = MqttLink(HOST, PORT, group=f"g{uuid.uuid4().hex[:8]}", sites=(site,), known_only=True,
                    max_incoming=max_incoming)  # fmt: skip
    link.register(endpoints)
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    started = time.monotonic()
    cpu_started = time.process_time()
    online, all_online_s, changed_at = 0, None, started
    try:
        while time.monotonic() - changed_at < QUIET_S and time.monotonic() - started < LIMIT_S:
            await asyncio.sleep(0.1)
            now_online = sum(link.online(e) for e in endpoints) if link.connected.is_set() else 0
            if now_online != online:
                online, changed_at = now_online, time.monotonic()
            if online == meters:
                all_online_s = time.monotonic() - started
                break
    finally:
        stop.set()
        await asyncio.wait_for(task, 30.0)
    counters = link.counters
    return {
        "online": online,
        "all_online_s": all_online_s,
        "seconds": time.monotonic() - started,
        "cpu_s": time.process_time() - cpu_started,
        "retained": counters.retained,
        "asked_again": counters.asked_again,
        "dropped": counters.dropped,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(meters: int, max_incoming: int) -> dict[str, Any]:
    from powergate.headend.mqtt_link import MAX_INCOMING

    site = f"bc{uuid.uuid4().hex[:10]}"
    published_s = publish_statuses(site, meters)
    try:
        result = asyncio.run(connect_and_count(site, meters, max_incoming or MAX_INCOMING))
    finally:
        publish_statuses(site, meters, clear=True)
    return {"meters": meters, "max_incoming": max_incoming or MAX_INCOMING, "published_s": published_s, **result}


def report(result: dict[str, Any]) -> str:
    all_online = result["all_online_s"]
    took = "not reached" if all_online is None else f"{all_online:.1f} s"
    return "\n".join([
        "## MQTT head-end connecting to a connected fleet (retained status burst)",
        "",
        f"{result['meters']:,} retained `online` statuses on the local Mosquitto (defaults), then one `MqttLink` "
        f"(`max_incoming` {result['max_incoming']:,}, the meters registered) connects.",
        "",
        "| Measure | Value |",
        "|---|---|",
        f"| meters the link believes online | {result['online']:,} of {result['meters']:,} |",
        f"| time from start to every meter online | {took} |",
        f"| retained statuses taken from the burst | {result['retained']:,} |",
        f"| meters asked again one by one (dropped from the burst by the broker) | {result['asked_again']:,} |",
        f"| CPU of the link's process while connecting | {result['cpu_s']:.1f} s |",
        f"| peak RSS of the process (the meters' endpoints included) | {result['max_rss_mib']:.0f} MiB |",
        "",
    ])  # fmt: skip


def run(quick: bool) -> str:
    return report(measure(10_000 if quick else 100_000, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--max-incoming", type=int, default=0, help="the link's max_incoming (0: its default)")
    parser.add_argument("--json", action="store_true", help="print the measures as JSON")
    args = parser.parse_args(argv)
    result = measure(args.meters, args.max_incoming)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
