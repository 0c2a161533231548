"""`powergate db upgrade` and `powergate ledger audit` on a real SQLite file: exit 0 when exact, 1 naming
the discrepancy otherwise."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import text

from powergate.cli import main
from powergate.domain.ledger import recharge_entry, wallet_code
from powergate.store import ledger as store
from powergate.store.db import make_engine

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def test_upgrade_then_audit_a_clean_and_a_tampered_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'pg.db'}"
    from alembic.script import ScriptDirectory

    from powergate.store.db import alembic_config

    assert main(["db", "--url", url, "upgrade"]) == 0
    heads = ScriptDirectory.from_config(alembic_config(url)).get_heads()
    assert len(heads) == 1, f"migrations must form one chain, heads: {heads}"
    assert f"database at revision {heads[0]}" in capsys.readouterr().out
    engine = make_engine(url)
    with engine.begin() as conn:
        store.post(conn, recharge_entry("cash:1", wallet_code("A-1"), "cash", 2_000_000, NOW), NOW)
    assert main(["ledger", "--url", url, "audit"]) == 0
    assert "ledger audit ok: 1 entries" in capsys.readouterr().out
    assert main(["ledger", "--url", url, "balance", "wallet:A-1"]) == 0
    assert "¥2.00" in capsys.readouterr().out
    with engine.begin() as conn:
        conn.execute(text("UPDATE ledger_accounts SET balance_micros = 1 WHERE code = 'wallet:A-1'"))
    engine.dispose()
    assert main(["ledger", "--url", url, "audit"]) == 1
    out = capsys.readouterr().out
    assert "DISCREPANCY account wallet:A-1: balance 1 micros but its postings sum to 2000000" in out
