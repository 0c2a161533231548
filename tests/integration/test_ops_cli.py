"""The operator commands for the ingest queue (``powergate ingest``) and raw readings (``powergate readings``), on
real SQLite and PostgreSQL, through ``powergate.cli.main`` as an operator types them.

Ingest: two queued and three parked batches; the status, the listing, refused requeues that change nothing, and
audited requeues. Readings: one meter on the flat tariff (0.6500 yuan/kWh) in Asia/Shanghai with two readings a
month from January to July 2026; the listing, the dry run, a refused ``--apply`` before the daily freeze and an
audited one after it. A PostgreSQL test that creates or drops partitions gets a database of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, insert, select

from powergate.cli import main
from powergate.domain.ledger import wallet_code
from powergate.domain.rating import Reading
from powergate.services import freeze
from powergate.services.ingest import Ingestor
from powergate.store import ledger as ledger_store
from powergate.store import metering, partitions
from powergate.store.audit import audit_records
from powergate.store.db import make_engine, upgrade
from powergate.store.tables import readings
from powergate.store.tables_ingest_queue import ingest_batches
from testkit import PG_HOST, PG_PORT, PG_USER, require_service

NOW = dt.datetime(2026, 7, 10, 4, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=1)
TZ = "Asia/Shanghai"
FLAT = (Path(__file__).parents[2] / "docs/examples/tariffs/flat.toml").read_text()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run(capsys, *argv, "--format", "json")
    assert code == 0, err
    found: dict[str, object] = json.loads(out)
    return found


# --- the ingest queue ------------------------------------------------------------------------------------------


def add_batch(engine: Engine, source: str, count: int, *, failed_minutes_ago: int | None, at: dt.datetime) -> int:
    row: dict[str, object] = {"enqueued_at": at, "source": source, "payload": "{}", "count": count}
    if failed_minutes_ago is not None:
        failed_at = NOW - dt.timedelta(minutes=failed_minutes_ago)
        row |= {"state": "failed", "attempts": 3, "last_error": f"BadBatch: bad payload of {source}",
                "failed_at": failed_at}  # fmt: skip
    with engine.begin() as conn:
        return int(conn.execute(insert(ingest_batches).values(row).returning(ingest_batches.c.id)).scalar_one())


def states(engine: Engine) -> dict[int, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(ingest_batches.c.id, ingest_batches.c.state, ingest_batches.c.attempts)).all()
    return {int(i): (str(state), int(attempts)) for i, state, attempts in rows}


def test_an_operator_sees_the_queue_lists_parked_batches_and_requeues_them_audited(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hour_ago = NOW - dt.timedelta(hours=1, minutes=2)
    queued = [add_batch(engine, "headend-a", 10, failed_minutes_ago=None, at=hour_ago + dt.timedelta(minutes=m))
              for m in (0, 1)]  # fmt: skip
    parked = [add_batch(engine, f"headend-{n}", 5 + n, failed_minutes_ago=30 - n, at=hour_ago) for n in range(3)]
    base = ("ingest", "--url", db_url, "--now", NOW.isoformat())

    code, out, _ = run(capsys, *base, "status")
    assert code == 0
    assert out.splitlines() == [
        "queued: 2 batches (oldest enqueued 2026-07-10 02:58:00Z, 1 h 2 min ago)",
        "failed: 3 batches parked (list them: powergate ingest failed)",
    ]
    assert run_json(capsys, *base, "status") == {
        "queued": 2, "failed": 3, "oldest_queued_at": hour_ago.isoformat(), "oldest_queued_age_s": 3720,
    }  # fmt: skip

    code, out, _ = run(capsys, *base, "failed")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "SOURCE", "READINGS", "ATTEMPTS", "FAILED", "AT", "REASON"]
    assert lines[1].split() == [str(parked[0]), "headend-0", "5", "3", "2026-07-10", "03:30:00Z", "BadBatch:", "bad",
                                "payload", "of", "headend-0"]  # fmt: skip
    listed = run_json(capsys, *base, "failed", "--limit", "2")
    assert listed["failed"] == 3
    assert listed["batches"] == [
        {"id": parked[n], "source": f"headend-{n}", "count": 5 + n, "attempts": 3,
         "reason": f"BadBatch: bad payload of headend-{n}", "enqueued_at": hour_ago.isoformat(),
         "failed_at": (NOW - dt.timedelta(minutes=30 - n)).isoformat()}
        for n in range(2)
    ]  # fmt: skip

    # refused, all or nothing: an unknown id, or a batch that is queued and not parked, changes nothing
    before = states(engine)
    code, _, err = run(capsys, *base, "requeue", "--id", str(parked[0]), "--id", "999", "--reason", "fixed")
    assert (code, err) == (1, "error: id: no ingest batch 999 (ingested, or never queued)\n")
    code, _, err = run(capsys, *base, "requeue", "--id", str(parked[1]), "--id", str(queued[0]), "--reason", "x")
    assert (code, err) == (1, f"error: id: batch {queued[0]} is queued, not parked: nothing to requeue\n")
    assert states(engine) == before
    with pytest.raises(SystemExit) as usage:
        main([*base, "requeue", "--id", str(parked[0])])  # no --reason
    assert usage.value.code == 2
    code, _, err = run(capsys, *base, "requeue", "--all", "--reason", "x", "--actor", "  ")
    assert code == 2 and "--actor" in err and states(engine) == before

    code, out, _ = run(capsys, *base, "requeue", "--id", str(parked[1]), "--reason", "meter clock fixed, T-4411",
                       "--actor", "ops-anna")  # fmt: skip
    assert code == 0
    assert out == f"requeued 1 batches (6 readings): {parked[1]}; audited as ops-anna\n"
    assert states(engine)[parked[1]] == ("queued", 0)
    done = run_json(capsys, *base, "requeue", "--all", "--reason", "all of them now")
    assert done["requeued"] == [parked[0], parked[2]] and done["readings"] == 12
    assert str(done["actor"]).startswith("cli:")
    assert set(states(engine).values()) == {("queued", 0)}
    assert run(capsys, *base, "requeue", "--all", "--reason", "again")[1] == "no parked batches: nothing to requeue\n"

    with engine.connect() as conn:
        records = audit_records(conn, action="requeue_ingest_batch")
    assert [(r.subject, r.actor, r.reason) for r in records] == [
        (f"ingest_batch:{parked[1]}", "ops-anna", "meter clock fixed, T-4411"),
        (f"ingest_batch:{parked[0]}", done["actor"], "all of them now"),
        (f"ingest_batch:{parked[2]}", done["actor"], "all of them now"),
    ]
    assert records[0].detail == {"source": "headend-1", "count": 6, "attempts": 3,
                                 "last_error": "BadBatch: bad payload of headend-1",
                                 "failed_at": (NOW - dt.timedelta(minutes=29)).isoformat()}  # fmt: skip


# --- readings: partitions and retention --------------------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A PostgreSQL database of this test's own, migrated, dropped afterwards (partitions are tables)."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    import psycopg

    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    name = f"powergate_opscli_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        target = tmp_path / "powergate.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    return str(request.getfixturevalue("own_postgres"))


def month_readings() -> list[Reading]:
    """Two readings a month (the 5th and the 20th), January to July 2026 (13 before NOW), 10 kWh apart."""
    found: list[Reading] = []
    for month in range(1, 8):
        for day in (5, 20):
            at = dt.datetime(2026, month, day, 12, tzinfo=dt.UTC)
            found.append(Reading(f"M1@{int(at.timestamp())}", "M1", at, 1_000_000 + 10_000 * len(found)))
    return [r for r in found if r.at < NOW]


def setup_readings(engine: Engine) -> None:
    t0 = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        metering.add_tariff(conn, "flat-2025", "Flat", "electricity", FLAT, t0)
        wallet_id = ledger_store.ensure_account(conn, wallet_code("A1"), t0)
        metering.add_meter(conn, "M1", wallet_id, "flat-2025", t0, timezone=TZ)
        for month in range(1, 8):
            partitions.ensure_partitions(conn, dt.datetime(2026, month, 1, tzinfo=dt.UTC), ahead_months=0)
    Ingestor(engine, clock=lambda: NOW).ingest(month_readings())


def reading_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(readings)).scalar_one())


def test_an_operator_lists_partitions_previews_retention_and_applies_it_audited_after_the_freeze(
    own_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(own_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        setup_readings(engine)
        far = dt.datetime(2031, 1, 15, tzinfo=dt.UTC)  # a meter clock years ahead: the default partition
        with engine.begin() as conn:
            conn.execute(insert(readings).values(id="M1@far", meter_id="M1", at=far, total_wh=1, status="skipped",
                                                 reason="baseline", received_at=NOW))  # fmt: skip
        base = ("readings", "--url", own_url, "--now", NOW.isoformat())

        # the listing: partitions with counts (PostgreSQL, the default partition flagged) or months held (SQLite)
        code, out, err = run(capsys, *base, "partitions", "--exact")
        listed = run_json(capsys, *base, "partitions", "--exact")
        if postgres:
            assert code == 0 and "readings_default holds 1 readings (months 2031-01)" in err
            held = listed["partitions"]
            assert isinstance(held, list)  # the migration also made this (real) month's and the next two
            assert out.splitlines()[0] == f"readings is partitioned by UTC month (postgresql): {len(held)} partitions"
            assert out.splitlines()[2].split() == ["2026-01", "readings_2026_01", "2"]
            by_month = {p["month"]: p["readings"] for p in held if p["month"] is None or p["month"] < "2026-08"}
            assert by_month == {"2026-01": 2, "2026-02": 2, "2026-03": 2, "2026-04": 2, "2026-05": 2, "2026-06": 2,
                                "2026-07": 1, None: 1}  # fmt: skip
            assert held[-1] == {"month": None, "name": "readings_default", "readings": 1, "estimated": False}
            assert listed["default_readings"] == 1 and listed["default_months"] == [
                {"month": "2031-01", "readings": 1, "estimated": False}
            ]
            assert run(capsys, *base, "partitions")[1].splitlines()[-1].startswith("(~ estimated by the planner")
        else:
            assert code == 0 and err == ""
            assert out.splitlines()[0] == "readings is not partitioned (sqlite): 14 readings in 8 months"
            assert listed["partitioned"] is False and listed["months"][0] == {  # type: ignore[index]
                "month": "2026-01",
                "readings": 2,
                "estimated": False,
            }

        # the dry run before any daily freeze: 6 readings would go, but the precondition does not hold
        code, out, _ = run(capsys, *base, "retention", "--keep-months", "3", "--exact")
        assert code == 0
        assert "readings taken before 2026-04-01T00:00:00+00:00 would be removed" in out
        assert "in all: 6 readings\n" in out and "freeze precondition NOT met" in out
        assert "timezone:Asia/Shanghai: no daily freeze yet" in out
        preview = run_json(capsys, *base, "retention", "--keep-months", "3", "--exact")
        assert (preview["readings"], preview["freeze_ok"]) == (6, False)
        dropped = [p["name"] for p in preview["drop_partitions"]]  # type: ignore[attr-defined]
        assert dropped == (["readings_2026_01", "readings_2026_02", "readings_2026_03"] if postgres else [])

        # --apply refused: nothing removed, nothing audited
        code, out, _ = run(capsys, *base, "retention", "--keep-months", "3", "--apply", "--reason", "disk 91%")
        assert code == 1 and "freeze precondition NOT met: nothing was removed" in out
        assert reading_count(engine) == 14
        with pytest.raises(SystemExit):
            main([*base, "retention", "--keep-months", "3", "--apply", "--reason"])
        assert run(capsys, *base, "retention", "--keep-months", "3", "--apply")[0] == 2  # no reason
        assert run(capsys, *base, "retention", "--keep-months", "2")[0] == 2

        # after the day's freeze the precondition holds: the dry run says so, --apply removes exactly those 6
        yesterday = LATER.astimezone(ZoneInfo(TZ)).date() - dt.timedelta(days=1)
        assert freeze.daily_freeze(engine, TZ, yesterday, LATER).ran
        later = ("readings", "--url", own_url, "--now", LATER.isoformat())
        assert run_json(capsys, *later, "retention", "--keep-months", "3")["freeze_ok"] is True
        code, out, _ = run(capsys, *later, "retention", "--keep-months", "3", "--apply", "--reason", "disk 91%",
                           "--actor", "ops-anna")  # fmt: skip
        assert code == 0
        months = " (partitions dropped: 2026-01, 2026-02, 2026-03)" if postgres else ""
        assert out.endswith(f"removed 6 readings taken before 2026-04-01T00:00:00+00:00{months}; audited as ops-anna\n")
        assert reading_count(engine) == 8
        with engine.connect() as conn:
            records = audit_records(conn, action="drop_readings")
        assert {(r.actor, r.subject) for r in records} == {("ops-anna", "table:readings")}
        assert all(r.reason.startswith("disk 91% (retention: keep 3 months") for r in records)
        assert sum(r.detail["rows"] for r in records) == 6
        again = run_json(capsys, *later, "retention", "--keep-months", "3", "--apply", "--reason", "again")
        assert (again["removed"], again["readings"], again["months"]) == (True, 0, [])
    finally:
        engine.dispose()
