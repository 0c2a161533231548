"""A running ingest rates with the tariff as stored now: a version published from the console while the process
runs prices the next batch, from the version's effective time (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from powergate.domain.ledger import wallet_code
from powergate.domain.rating import Reading
from powergate.services import accounts, tariff_edit
from powergate.services.ingest import Ingestor
from powergate.store import ledger as ledger_store
from powergate.store import metering

SHANGHAI = ZoneInfo("Asia/Shanghai")
CREATED = dt.datetime(2026, 10, 31, 0, 0, tzinfo=dt.UTC)
PUBLISHED = dt.datetime(2026, 11, 4, 2, 0, tzinfo=dt.UTC)  # 10:00 in Shanghai on 4 November


def local(day: int, hour: int) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, 0, tzinfo=SHANGHAI).astimezone(dt.UTC)


def reading(n: int, day: int, hour: int, kwh: int) -> Reading:
    return Reading(f"M-1:{n}", "M-1", local(day, hour), kwh * 1_000)


def flat(effective_from: str, price: str) -> tariff_edit.VersionForm:
    return tariff_edit.VersionForm(effective_from=effective_from, pricing="flat", price=price)


def setup(engine: Engine) -> int:
    with engine.begin() as conn:
        organisation = accounts.create_organisation(conn, "org-a", "Org A", actor="admin", now=CREATED)
        assert isinstance(organisation, int)
        created = tariff_edit.create_tariff(
            conn,
            organisation,
            "flat-a",
            "Flat A",
            "electricity",
            flat("2026-11-01 00:00", "1.0000"),
            actor="admin",
            reason="new park",
            now=CREATED,
        )
        assert isinstance(created, tariff_edit.Saved), created
        wallet_id = ledger_store.ensure_account(conn, wallet_code("A-1"), CREATED)
        metering.add_meter(conn, "M-1", wallet_id, "flat-a", CREATED)
    return organisation


def balance(engine: Engine) -> int:
    with engine.connect() as conn:
        return ledger_store.balance(conn, wallet_code("A-1")).balance_micros


def test_a_new_version_published_while_ingest_runs_prices_the_next_batch_from_its_start(engine: Engine) -> None:
    organisation = setup(engine)
    ingestor = Ingestor(engine, clock=lambda: PUBLISHED)
    first = ingestor.ingest([reading(0, 2, 0, 100), reading(1, 2, 10, 110)])
    assert first.charged_micros == 10_000_000  # 10 kWh at 1 yuan: the tariff is now parsed and cached
    with engine.begin() as conn:
        saved = tariff_edit.add_version(
            conn,
            organisation,
            "flat-a",
            flat("2026-11-05 00:00", "2.0000"),
            actor="admin",
            reason="price review",
            now=PUBLISHED,
        )
    assert isinstance(saved, tariff_edit.Saved), saved
    # the same ingestor, no restart: the 10 kWh up to midnight on the 5th at 1 yuan, the 7 kWh after it at 2
    later = ingestor.ingest([reading(2, 4, 23, 115), reading(3, 5, 0, 120), reading(4, 5, 1, 127)])
    assert later.rated == 3
    assert later.charged_micros == 10 * 1_000_000 + 7 * 2_000_000
    assert balance(engine) == -(10_000_000 + 24_000_000)
