"""Console monitoring grid: server time of ``GET /console/monitor/grid`` for one 10,000-room site (goal < 300 ms).

The database is filled with bulk inserts: one organisation and site, 10 buildings x 25 floors x 40 rooms, and for
nine rooms in ten an open account with its wallet (a balance), a meter with its reported status and last
register, yesterday's daily freeze (so today's energy shows) and for some a wallet policy; the states mix
normal, low balance, tripped, offline, power-protect and no account. A staff user logs in through the real
``/login``; the figure is the wall time of the whole request through the ASGI app in process (session lookup,
the set-based grid query, folding, rendering every one of the 10,000 tiles), median and p95 over repeated
requests, on SQLite and PostgreSQL. The query + fold and the render are also timed apart. Quick mode: fewer
repeats (the site is 10,000 rooms either way: that is what the goal is about).
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from bench.bench_ingest import postgres_available, postgres_url, sqlite_url
from powergate.services import monitoring
from powergate.services import users as users_service
from powergate.store.db import upgrade
from powergate.store.tables import ledger_accounts, meter_rating_state, meters, tariffs
from powergate.store.tables_freeze import daily_freezes
from powergate.store.tables_headend import meter_status
from powergate.store.tables_prepaid import wallet_policies
from powergate.store.tables_structure import accounts, buildings, floors, meter_assignments, organisations, rooms, sites
from powergate.web.app import create_app
from powergate.web.settings import WebSettings

NOW = dt.datetime(2026, 12, 3, 6, 0, tzinfo=dt.UTC)  # 14:00 in Shanghai
YESTERDAY = dt.date(2026, 12, 2)
BUILDINGS, FLOORS, ROOMS_PER_FLOOR = 10, 25, 40
ROOMS = BUILDINGS * FLOORS * ROOMS_PER_FLOOR
GOAL_MS = 300.0
PASSWORD = "bench-password-123"


def _fill(engine: Engine) -> int:
    """The 10,000-room site; returns the site id."""
    with engine.begin() as conn:
        conn.execute(insert(organisations).values(id=1, code="BENCH", name="Bench", created_at=NOW))
        conn.execute(
            insert(sites).values(
                id=1, organisation_id=1, name="Tower", timezone="Asia/Shanghai", currency="CNY", created_at=NOW
            )
        )
        conn.execute(
            insert(tariffs).values(id="flat", name="Flat", commodity="electricity", document="{}", created_at=NOW)
        )
        conn.execute(insert(buildings), [{"id": b + 1, "site_id": 1, "name": f"B{b + 1}"} for b in range(BUILDINGS)])
        conn.execute(
            insert(floors),
            [
                {"id": b * FLOORS + f + 1, "building_id": b + 1, "name": str(f + 1)}
                for b in range(BUILDINGS)
                for f in range(FLOORS)
            ],
        )
        room_rows, wallet_rows, account_rows, meter_rows, assignment_rows = [], [], [], [], []
        status_rows, rating_rows, freeze_rows, policy_rows = [], [], [], []
        for i in range(ROOMS):
            floor_id = i // ROOMS_PER_FLOOR + 1
            room_rows.append(
                {
                    "id": i + 1,
                    "floor_id": floor_id,
                    "number": f"{(floor_id - 1) % FLOORS + 1}{i % ROOMS_PER_FLOOR + 1:02d}",
                    "area_centi_m2": 6_000,
                    "use": "apartment",
                }
            )
            if i % 10 == 3:
                continue  # no account, no meter
            meter = f"M{i:05d}"
            balance = 5_000_000 if i % 10 == 2 else 80_000_000
            wallet_rows.append(
                {
                    "id": i + 1,
                    "code": f"wallet:BENCH/A{i:05d}",
                    "kind": "wallet",
                    "currency": "CNY",
                    "balance_micros": balance,
                    "created_at": NOW,
                }
            )
            account_rows.append(
                {
                    "id": i + 1,
                    "organisation_id": 1,
                    "site_id": 1,
                    "account_no": f"A{i:05d}",
                    "name": f"Tenant {i}",
                    "state": "open",
                    "wallet_account_id": i + 1,
                    "created_at": NOW,
                    "opened_at": NOW,
                }
            )
            meter_rows.append({"id": meter, "wallet_account_id": i + 1, "tariff_id": "flat", "created_at": NOW})
            assignment_rows.append({"meter_id": meter, "room_id": i + 1, "account_id": i + 1, "valid_from": NOW})
            status_rows.append(
                {
                    "meter_id": meter,
                    "online": i % 10 != 0,
                    "last_seen_at": NOW,
                    "last_read_at": NOW,
                    "relay_open": i % 10 == 1,
                    "updated_at": NOW,
                }
            )
            rating_rows.append({"meter_id": meter, "last_at": NOW, "last_total_wh": 1_000_000 + 8_500 + i % 700})
            freeze_rows.append(
                {
                    "day": YESTERDAY,
                    "meter_id": meter,
                    "wallet_account_id": i + 1,
                    "frozen_at": NOW,
                    "total_wh": 1_000_000,
                    "energy_wh": 9_000,
                    "cost_micros": 9_000_000,
                    "balance_micros": balance,
                    "created_at": NOW,
                }
            )
            if i % 10 == 4:
                policy_rows.append({"wallet_account_id": i + 1, "power_protect": True, "updated_at": NOW})
        for table, rows in (
            (rooms, room_rows),
            (ledger_accounts, wallet_rows),
            (accounts, account_rows),
            (meters, meter_rows),
            (meter_assignments, assignment_rows),
            (meter_status, status_rows),
            (meter_rating_state, rating_rows),
            (daily_freezes, freeze_rows),
            (wallet_policies, policy_rows),
        ):
            conn.execute(insert(table), rows)
        made = users_service.create_user(conn, 1, "night-operator", PASSWORD, "viewer", actor="bench", now=NOW)
        assert isinstance(made, int), made
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("rooms", "floors", "buildings", "ledger_accounts", "accounts", "sites", "organisations"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
                )
            conn.exec_driver_sql("ANALYZE")
    return 1


def _ms(seconds: float) -> float:
    return seconds * 1000


def measure(make_url: Callable[[], tuple[str, Callable[[], None]]], repeats: int) -> dict[str, Any]:
    url, cleanup = make_url()
    try:
        upgrade(url)
        app = create_app(
            WebSettings(database_url=url, secret_key="bench-secret-0123456789-0123456789", clock=lambda: NOW)
        )
        engine: Engine = app.state.engine
        fill_started = time.perf_counter()
        site = _fill(engine)
        fill_s = time.perf_counter() - fill_started
        with TestClient(app) as client:
            login = client.post(
                "/login",
                data={"organisation": "BENCH", "username": "night-operator", "password": PASSWORD},
                follow_redirects=False,
            )
            assert login.status_code == 303, login.text[:200]
            path = f"/console/monitor/grid?site={site}"
            first = client.get(path)
            assert first.status_code == 200 and first.text.count('class="tile ') == ROOMS, "every room is rendered"
            size = len(first.content)
            requests, cpu = [], []
            for _ in range(repeats):
                started, cpu_started = time.perf_counter(), time.process_time()
                answer = client.get(path)
                requests.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
                assert answer.status_code == 200
        queries = []
        for _ in range(repeats):
            started = time.perf_counter()
            with engine.connect() as conn:
                grid = monitoring.grid(conn, 1, monitoring.GridFilter(site_id=site), NOW)
            queries.append(time.perf_counter() - started)
            assert grid is not None and grid.shown == ROOMS
        engine.dispose()
    finally:
        cleanup()
    ordered = sorted(requests)
    return {
        "median": _ms(statistics.median(requests)),
        "p95": _ms(ordered[max(0, int(len(ordered) * 0.95) - 1)]),
        "cpu": _ms(statistics.median(cpu)),
        "query": _ms(statistics.median(queries)),
        "fill_s": fill_s,
        "bytes": size,
    }


def run(quick: bool) -> str:
    repeats = 10 if quick else 40
    lines = [
        "## Console: monitoring grid of a 10,000-room site",
        "",
        f"`GET /console/monitor/grid` for one site of {ROOMS:,} rooms ({BUILDINGS} buildings x {FLOORS} floors x "
        f"{ROOMS_PER_FLOOR} rooms; 9,000 with an account and a meter, states mixed), the whole request through the "
        f"ASGI app in process (session lookup, one set-based query, fold, render of every tile); {repeats} "
        "requests after a warm-up. *CPU ms*: the process's CPU time per request (what the request costs when "
        "the machine is shared: wall time includes waiting for a core). *Query + fold*: `services.monitoring.grid` "
        "alone (wall).",
        "",
        "| Database | median ms | p95 ms | CPU ms (median) | query + fold ms | HTML KiB | fill s | Goal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    targets = [("SQLite (WAL file)", sqlite_url)]
    if postgres_available():
        targets.append(("PostgreSQL (loopback)", postgres_url))
    for label, make_url in targets:
        r = measure(make_url, repeats)
        verdict = "meets" if r["median"] < GOAL_MS else "misses"
        lines.append(
            f"| {label} | {r['median']:.0f} | {r['p95']:.0f} | {r['cpu']:.0f} | {r['query']:.0f} | "
            f"{r['bytes'] / 1024:,.0f} | {r['fill_s']:.1f} | < {GOAL_MS:.0f} ms: {verdict} |"
        )
    if not postgres_available():
        lines.append("| PostgreSQL | - | - | - | - | - | - | not measured: server not reachable at 127.0.0.1:5432 |")
    return "\n".join(lines)
