"""The ``powergate`` command.

Each module in this package that defines ``register(subparsers)`` adds its own sub-commands; the handler it
sets with ``set_defaults(handler=...)`` takes the parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from powergate import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powergate",
        description="PowerGate: prepaid energy metering (pay before use for electricity and water).",
    )
    parser.add_argument("--version", action="version", version=f"powergate {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args))
    except BrokenPipeError:
        return 0


def run() -> None:
    sys.exit(main())
