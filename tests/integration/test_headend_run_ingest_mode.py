"""``powergate headend run`` honours ``headend.ingest`` as ``powergate serve --role headend`` does.

A simulated DTU dials into the real command over TCP; with ``headend.ingest = "queue"`` in the settings file the
head-end rates nothing itself: each batch of readings lands in the ingest queue, and a worker's drain books it.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from powergate.domain.ledger import wallet_code
from powergate.headend.model import MeterEndpoint, Transport
from powergate.headend.status import save_endpoints
from powergate.services import ingest_queue, prepaid
from powergate.services.ingest import Ingestor
from powergate.services.ingest_queue import IngestQueue
from powergate.sim.fleet import Fleet, FleetOptions
from powergate.store import ledger as ledger_store
from powergate.store import metering
from powergate.store.tables import readings
from powergate.store.tables_ingest_queue import ingest_batches
from testkit import FLAT_TARIFF, free_port

SEED = 11
RUN_S = 6.0
"""How long the command runs: the DTU registers (reconnecting once a second) and is read every second."""


def add_dtu_meter(engine: Engine, fleet: Fleet) -> str:
    """The fleet's one meter, registered behind its DTU (the id the virtual DTU registers with)."""
    (meter,) = fleet.meters
    meter_id, now = f"M-{meter.address}", dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat", "1 yuan/kWh", "electricity", FLAT_TARIFF, now)
        wallet_id = ledger_store.ensure_account(conn, wallet_code(f"A-{meter_id}"), now)
        metering.add_meter(conn, meter_id, wallet_id, "flat", now)
        dtu_id = f"86{SEED % 1000:03d}{0:010d}"
        save_endpoints(conn, [MeterEndpoint(meter_id, Transport.DLT645, meter.address, dtu_id)])
    return meter_id


def run_fleet(fleet: Fleet, done: threading.Event) -> None:
    """The virtual DTU in a thread of its own: the command under test owns the main thread (signal handlers)."""

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(fleet.run(stop))
        while not done.is_set():
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(running, 10)

    asyncio.run(main())


def test_headend_run_in_queue_mode_writes_each_batch_to_the_ingest_queue_and_rates_nothing_itself(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main

    port = free_port()
    fleet = Fleet(FleetOptions(meters=1, dtus=1, headend=("127.0.0.1", port), seed=SEED))
    meter_id = add_dtu_meter(engine, fleet)
    settings = tmp_path / "powergate.toml"
    settings.write_text('[headend]\ningest = "queue"\n', encoding="utf-8")
    done = threading.Event()
    dtu = threading.Thread(target=run_fleet, args=(fleet, done), name="virtual-dtu")
    dtu.start()
    try:
        command = ["headend", "--url", db_url, "--config", str(settings), "run", "--name", "headend-q"]
        code = main([*command, "--listen", f"127.0.0.1:{port}", "--interval", "1", "--duration", str(RUN_S)])
    finally:
        done.set()
        dtu.join(15)
    assert code == 0 and not dtu.is_alive()
    out = capsys.readouterr().out
    assert "head-end headend-q: 1 meters" in out and "ingest queue" in out
    assert "batches queued for the workers" in out

    with engine.connect() as conn:
        batches = conn.execute(select(ingest_batches.c.source, ingest_batches.c.payload)).all()
        rated_here = conn.execute(select(func.count()).select_from(readings)).scalar_one()
    assert batches, "the head-end queued its readings"
    assert {source for source, _ in batches} == {"headend-q"}
    queued = [reading for _, payload in batches for reading in ingest_queue.decode(payload)]
    assert queued and {reading.meter_id for reading in queued} == {meter_id}
    assert rated_here == 0, "queue mode: the head-end does not rate"

    report = IngestQueue(engine, Ingestor(engine, after_post=prepaid.after_ingest)).drain(max_s=30)
    assert report.parked == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_batches)).scalar_one() == 0
        stored = conn.execute(select(func.count()).select_from(readings)).scalar_one()
    assert stored == len({reading.reading_id for reading in queued}), "a worker books every queued reading"


def test_headend_run_refuses_a_bad_ingest_setting_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from powergate.cli import main

    settings = tmp_path / "powergate.toml"
    settings.write_text('[headend]\ningest = "fast"\n', encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'unused.db'}"
    assert main(["headend", "--url", url, "--config", str(settings), "run", "--listen", "off"]) == 2
    assert "headend.ingest" in capsys.readouterr().err
    assert not (tmp_path / "unused.db").exists(), "nothing started"
