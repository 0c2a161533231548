"""``powergate db upgrade|current|backup|restore|verify``: the schema, and backups checked by a restore.

powergate db backup --out FILE          a consistent snapshot (SQLite backup API, or pg_dump -Fc)
powergate db restore --from FILE        into an EMPTY database at --url, then verify it
powergate db verify                     schema revision and the ledger audit; exit 1 on a discrepancy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from powergate.config import load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="database schema: upgrade, current revision")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    commands = parser.add_subparsers(title="db commands", metavar="ACTION", required=True)
    up = commands.add_parser("upgrade", help="apply migrations up to the newest")
    up.set_defaults(handler=_upgrade)
    cur = commands.add_parser("current", help="print the schema revision")
    cur.set_defaults(handler=_current)
    back = commands.add_parser("backup", help="write a backup of the database to a new file")
    back.add_argument("--out", type=Path, required=True)
    back.set_defaults(handler=_backup)
    rest = commands.add_parser("restore", help="restore a backup into an empty database, then verify it")
    rest.add_argument("--from", dest="source", type=Path, required=True)
    rest.set_defaults(handler=_restore)
    ver = commands.add_parser("verify", help="schema revision and ledger audit (exit 1 on a discrepancy)")
    ver.set_defaults(handler=_verify)


def _url(args: argparse.Namespace) -> str:
    return str(args.url or load_settings().database_url)


def _upgrade(args: argparse.Namespace) -> int:
    from powergate.store.db import current_revision, upgrade

    url = _url(args)
    upgrade(url)
    print(f"database at revision {current_revision(url)}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from powergate.store.db import current_revision

    print(current_revision(_url(args)) or "empty (run `powergate db upgrade`)")
    return 0


def _report(verified: Any) -> int:
    print(f"revision {verified.revision}, {verified.tables} tables, {verified.ledger_accounts} ledger accounts")
    for problem in verified.discrepancies:
        print(f"discrepancy: {problem}", file=sys.stderr)
    print("ledger audit: exact" if verified.ok else "ledger audit: DISCREPANCIES (see above)")
    return 0 if verified.ok else 1


def _backup(args: argparse.Namespace) -> int:
    from powergate.store.backup import BackupError, backup

    try:
        written = backup(_url(args), args.out)
    except BackupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"backup written to {written} ({written.stat().st_size} bytes)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from powergate.store.backup import BackupError, restore

    try:
        verified = restore(args.source, _url(args))
    except BackupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return _report(verified)


def _verify(args: argparse.Namespace) -> int:
    from powergate.store.backup import verify

    return _report(verify(_url(args)))
