"""Backup and restore of the PowerGate database, checked after the restore.

- **SQLite**: ``sqlite3``'s online backup API copies a consistent snapshot while the platform runs (WAL
  included); a restore copies the backup into the target file the same way. No tool is needed.
- **PostgreSQL**: ``pg_dump --format=custom`` (a consistent snapshot of one database, taken without stopping
  writers) and ``pg_restore --exit-on-error --no-owner`` into an *empty* database (a restore never mixes with
  existing data). Both tools come with the PostgreSQL client package of the server's major version.

After a restore, ``verify`` reads the schema revision and runs the ledger audit: a backup that restores into a
database whose balances do not match its journal is reported, not trusted.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from powergate.store import ledger as ledger_store
from powergate.store.db import current_revision, make_engine

TOOL_TIMEOUT_S = 3_600


class BackupError(Exception):
    """A backup or restore that could not be done; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Verified:
    revision: str | None
    tables: int
    ledger_accounts: int
    discrepancies: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.revision is not None and not self.discrepancies


def _libpq(url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url}: an in-memory SQLite database cannot be backed up")
    return Path(database)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client (Debian: postgresql-client)")
    return found


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def backup(url: str, out: Path) -> Path:
    """Write a backup of the database at ``url`` to ``out`` (refuses to overwrite a file)."""
    if out.exists():
        raise BackupError(f"{out} exists already; choose a new file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        source = _sqlite_path(url)
        if not source.exists():
            raise BackupError(f"{source}: no such database file")
        with sqlite3.connect(source) as src, sqlite3.connect(out) as dst:
            src.backup(dst)
        return out
    if backend == "postgresql":
        _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(out), "--dbname", _libpq(url)])
        return out
    raise BackupError(f"{backend}: backups are supported for sqlite and postgresql only")


def restore(backup_file: Path, url: str) -> Verified:
    """Restore ``backup_file`` into the empty database at ``url``, then verify it."""
    if not backup_file.is_file():
        raise BackupError(f"{backup_file}: no such backup file")
    backend = make_url(url).get_backend_name()
    if _has_tables(url):
        raise BackupError(
            f"{make_url(url).render_as_string()}: the target database is not empty; restore into a new one"
        )
    if backend == "sqlite":
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(backup_file) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
    elif backend == "postgresql":
        _run([_tool("pg_restore"), "--exit-on-error", "--no-owner", "--dbname", _libpq(url), str(backup_file)])
    else:
        raise BackupError(f"{backend}: restores are supported for sqlite and postgresql only")
    return verify(url)


def _has_tables(url: str) -> bool:
    if make_url(url).get_backend_name() == "sqlite" and not _sqlite_path(url).exists():
        return False
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def verify(url: str) -> Verified:
    """The schema revision, the number of tables and ledger accounts, and the ledger audit's findings."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = len(inspect(conn).get_table_names())
            accounts = int(conn.exec_driver_sql("SELECT COUNT(*) FROM ledger_accounts").scalar_one())
            found = tuple(f"{d.subject}: {d.message}" for d in ledger_store.audit(conn))
    finally:
        engine.dispose()
    return Verified(current_revision(url), tables, accounts, found)
