"""Backup and a tested restore (issue 10, item 4): a database with money in it is backed up while open, restored
into an empty database, and the restored one has the same revision, the same balances and an exact ledger audit;
on SQLite and PostgreSQL, through the ``powergate db`` commands."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import make_url

from powergate.cli import main
from powergate.domain.ledger import charge_entry, recharge_entry, wallet_code
from powergate.store import ledger as ledger_store
from powergate.store.db import current_revision, make_engine
from powergate.store.tables import ledger_accounts
from testkit import PG_HOST, PG_PORT, PG_USER

NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


def fill(engine: Engine) -> dict[str, int]:
    with engine.begin() as conn:
        for index in range(20):
            wallet = wallet_code(f"A-{index}")
            ledger_store.post(conn, recharge_entry(f"pay-{index}", wallet, "sandbox", 50_000_000 + index, NOW), NOW)
            charge = charge_entry(f"reading:{index}", wallet, {"energy": 1_234_567 * (index + 1)}, NOW)
            assert charge is not None
            ledger_store.post(conn, charge, NOW)
        rows = conn.execute(select(ledger_accounts.c.code, ledger_accounts.c.balance_micros)).all()
    return {str(code): int(balance) for code, balance in rows}


def balances(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(ledger_accounts.c.code, ledger_accounts.c.balance_micros)).all()
        return {str(code): int(balance) for code, balance in rows}
    finally:
        engine.dispose()


@contextlib.contextmanager
def empty_target(source_url: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database of the same kind as ``source_url``."""
    if make_url(source_url).get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    import psycopg

    name = f"powergate_restore_{uuid.uuid4().hex[:10]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_a_backup_restores_into_an_empty_database_with_the_same_books(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    before = fill(engine)
    backup_file = tmp_path / "powergate.backup"
    with engine.connect():  # the platform keeps a connection open: the backup does not need it closed
        code, out, err = run("db", "--url", db_url, "backup", "--out", str(backup_file))
    assert code == 0, err
    assert backup_file.stat().st_size > 0 and "backup written" in out
    with empty_target(db_url, tmp_path) as target:
        code, out, err = run("db", "--url", target, "restore", "--from", str(backup_file))
        assert code == 0, err
        assert "ledger audit: exact" in out
        assert balances(target) == before
        assert current_revision(target) == current_revision(db_url)
        # A restore never mixes with data: the target is not empty any more, so a second one is refused.
        code, _, err = run("db", "--url", target, "restore", "--from", str(backup_file))
        assert code == 1 and "not empty" in err
        # verify finds a tampered balance.
        tampered = make_engine(target)
        with tampered.begin() as conn:
            conn.execute(
                update(ledger_accounts)
                .where(ledger_accounts.c.code == wallet_code("A-3"))
                .values(balance_micros=ledger_accounts.c.balance_micros + 1)
            )
        tampered.dispose()
        code, out, err = run("db", "--url", target, "verify")
        assert code == 1 and "A-3" in err


def test_backup_refuses_to_overwrite_and_restore_needs_a_file(engine: Engine, db_url: str, tmp_path: Path) -> None:
    existing = tmp_path / "taken.backup"
    existing.write_bytes(b"x")
    code, _, err = run("db", "--url", db_url, "backup", "--out", str(existing))
    assert code == 1 and "exists already" in err
    code, _, err = run("db", "--url", f"sqlite:///{tmp_path / 'new.db'}", "restore", "--from", str(tmp_path / "none"))
    assert code == 1 and "no such backup file" in err


@pytest.mark.parametrize("url", ["sqlite://", "mysql://x@localhost/db"])
def test_unsupported_databases_get_a_clear_error(url: str, tmp_path: Path) -> None:
    code, _, err = run("db", "--url", url, "backup", "--out", str(tmp_path / "b"))
    assert code == 1 and ("in-memory" in err or "supported for sqlite and postgresql" in err)
