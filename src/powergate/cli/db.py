"""``powergate db upgrade|current``: apply the append-only migrations to the configured database."""

from __future__ import annotations

import argparse
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
