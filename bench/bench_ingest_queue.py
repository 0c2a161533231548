"""The ingest queue on PostgreSQL: what a head-end pays per batch in queue mode against direct ingest, and how
fast one and two workers drain the queue.

    .venv/bin/python -m bench.bench_ingest_queue [--meters 2000] [--steps 10] [--batch 1000]

Fleet: ``--meters`` meters on a flat tariff, a reading every 15 minutes for ``--steps`` steps, in batches of
``--batch`` readings (the head-end's batch). Each measurement starts from a fresh database (created and dropped
here on 127.0.0.1:5432, user postgres).

- *direct*: ``Ingestor.ingest`` per batch, as a head-end in direct mode does (rating, ledger, balance policy);
- *enqueue*: ``ingest_queue.enqueue_batch`` per batch, as a head-end in queue mode does (one INSERT);
- *drain xN*: N worker processes draining the queue the enqueue run filled.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine

from bench.bench_scale import TARIFF
from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.domain.rating import Reading
from powergate.services import ingest_queue, prepaid
from powergate.services.ingest import Ingestor
from powergate.services.ingest_queue import IngestQueue
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.db import make_engine, upgrade

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


@contextmanager
def fresh_database(meters: int) -> Iterator[Engine]:
    name = f"powergate_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        engine = make_engine(url)
        now = dt.datetime.now(dt.UTC)
        with engine.begin() as conn:
            metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", TARIFF, now)
            for n in range(meters):
                code = wallet_code(f"A-{n}")
                account_id = ledger_store.ensure_account(conn, code, now)
                metering.add_meter(conn, f"M-{n}", account_id, "flat", now)
                ledger_store.post(conn, recharge_entry(f"opening:{code}", code, "cash", 10**12, now), now)
        yield engine
        engine.dispose()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def batches(meters: int, steps: int, size: int) -> list[list[Reading]]:
    readings = [
        Reading(f"M-{n}@{s}", f"M-{n}", T0 + dt.timedelta(minutes=15 * s), 10_000 + s * 250 + n % 7)
        for s in range(steps)
        for n in range(meters)
    ]
    return [readings[i : i + size] for i in range(0, len(readings), size)]


def timed_ms(work: list[list[Reading]], each: object) -> list[float]:
    times = []
    for batch in work:
        started = time.perf_counter()
        each(batch)  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return times


def drain_worker(url: str, go: Any) -> None:
    """One worker process: waits for ``go``, then drains the queue until it is empty."""
    engine = make_engine(url)
    queue = IngestQueue(engine, Ingestor(engine, after_post=prepaid.after_ingest))
    go.wait()
    while queue.drain().more:
        pass
    engine.dispose()


def drain(engine: Engine, workers: int) -> float:
    """Seconds ``workers`` processes (the worker role is one process each: rating holds the GIL) take."""
    url = engine.url.render_as_string(hide_password=False)
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Event()
    processes = [spawn.Process(target=drain_worker, args=(url, go)) for _ in range(workers)]
    for process in processes:
        process.start()
    time.sleep(3)  # imports and engines ready before the clock starts
    started = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
        assert process.exitcode == 0, process.exitcode
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    work = batches(args.meters, args.steps, args.batch)
    total = sum(len(b) for b in work)
    print(f"{total} readings in {len(work)} batches of {args.batch}, {args.meters} meters")

    with fresh_database(args.meters) as engine:
        ingestor = Ingestor(engine, after_post=prepaid.after_ingest)
        direct = timed_ms(work, ingestor.ingest)
    print(f"head-end, direct : median {statistics.median(direct):7.1f} ms per batch")

    for workers in (1, 2):
        with fresh_database(args.meters) as engine:
            enqueue = timed_ms(work, lambda b: ingest_queue.enqueue_batch(engine, "bench", b, T0))
            if workers == 1:
                print(f"head-end, enqueue: median {statistics.median(enqueue):7.1f} ms per batch")
            elapsed = drain(engine, workers)
        print(f"drain x{workers}        : {total / elapsed:9.0f} readings/s ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
