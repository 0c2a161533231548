"""What the operator commands (``powergate ingest``, ``powergate readings``) share: the database, who asks, the
time, and ``--format json|table`` output.

Exit codes of those commands: 0 done (or nothing to do), 1 refused (the message names what was wrong and nothing
was changed), 2 a bad argument (as argparse's own usage errors).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from powergate.config import load_settings

MAX_ACTOR_CHARS = 120
"""As the audit log's ``actor`` (``store.audit.MAX_ACTOR_CHARS``)."""
EXIT_REFUSED = 1
EXIT_USAGE = 2


def add_url(parser: argparse.ArgumentParser) -> None:
    """``--url`` on a command's parser (``powergate ingest --url URL status``, as the other commands)."""
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")


def add_format(parser: argparse.ArgumentParser) -> None:
    """``--format`` on an action's parser (``powergate ingest status --format json``)."""
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output (default: table)")


def add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who asks, for the audit log (default: cli:<OS user>)")


def add_now(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", type=dt.datetime.fromisoformat, help=argparse.SUPPRESS)  # tests: a fixed time


@contextlib.contextmanager
def engine_of(args: argparse.Namespace) -> Iterator[Any]:
    from powergate.store.db import make_engine

    engine = make_engine(str(args.url or load_settings().database_url))
    try:
        yield engine
    finally:
        engine.dispose()


def now_of(args: argparse.Namespace) -> dt.datetime:
    given: dt.datetime | None = getattr(args, "now", None)
    if given is None:
        return dt.datetime.now(dt.UTC)
    return given if given.tzinfo else given.replace(tzinfo=dt.UTC)


def actor_of(args: argparse.Namespace) -> str | None:
    """``--actor``, or ``cli:<OS user>``; None (after saying why) when ``--actor`` is blank or too long."""
    given: str | None = args.actor
    if given is None:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
        return f"cli:{who}"[:MAX_ACTOR_CHARS]
    if not given.strip() or len(given) > MAX_ACTOR_CHARS:
        usage("actor", f"1..{MAX_ACTOR_CHARS} characters, got {len(given.strip())}")
        return None
    return given.strip()


def usage(field: str, message: str) -> int:
    print(f"error: --{field}: {message}", file=sys.stderr)
    return EXIT_USAGE


def refused(field: str, message: str) -> int:
    print(f"error: {field}: {message}", file=sys.stderr)
    return EXIT_REFUSED


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def print_json(document: object) -> None:
    print(json.dumps(document, ensure_ascii=False, indent=2))


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell; the last column is not padded (a reason may be long)."""
    cells = [[str(c) for c in header], *([("" if c is None else str(c)) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    for row in cells:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]))


def iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat()


def shown(at: dt.datetime | None) -> str:
    return "-" if at is None else f"{at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z"


def age(seconds: int) -> str:
    """``3 d 4 h``, ``2 h 5 min``, ``4 min 10 s``, ``12 s``."""
    days, rest = divmod(max(seconds, 0), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
