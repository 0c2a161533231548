"""``powergate import template|sheet``: the Excel template for bulk import, and the import itself.

``import sheet`` prints the report; every bad row is listed with its row and column, and the exit code is 1
when anything is wrong (nothing is imported then), 0 when every row was imported.
"""

from __future__ import annotations

import argparse
from typing import Any

from powergate.config import load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("import", help="bulk import of rooms, meters and accounts from Excel")
    commands = parser.add_subparsers(title="import commands", metavar="ACTION", required=True)
    template = commands.add_parser("template", help="write the .xlsx template (headers, validations, an example)")
    template.add_argument("file", help="where to write the template, e.g. rooms.xlsx")
    template.set_defaults(handler=_template)
    sheet = commands.add_parser("sheet", help="check every row, then import all of it or nothing; exit 1 on errors")
    sheet.add_argument("file", help="the filled-in .xlsx")
    sheet.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    sheet.add_argument("--actor", default="cli", help="who imports, for the audit log (default: cli)")
    sheet.set_defaults(handler=_sheet)


def _template(args: argparse.Namespace) -> int:
    from powergate.services.importer import write_template

    write_template(args.file)
    print(f"template written to {args.file}")
    return 0


def _sheet(args: argparse.Namespace) -> int:
    from powergate.services.importer import import_sheet
    from powergate.store.db import make_engine

    engine = make_engine(str(args.url or load_settings().database_url))
    try:
        report = import_sheet(engine, args.file, args.actor)
    finally:
        engine.dispose()
    for line in report.lines():
        print(line)
    return 0 if report.imported else 1
