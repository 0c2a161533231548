"""``powergate demo``: the whole platform in one process with a demo park of 210 rooms and virtual meters.

    powergate demo                       # http://127.0.0.1:8000/, 60x demo time, var/demo.db
    powergate demo --port 8080 --speed 120 --db /tmp/demo.db

The database is made afresh at every start (the virtual meters live in memory and start again from their seeded
registers, so an old database would not match them). Ctrl-C (or SIGTERM) stops it cleanly. Options are checked
before anything starts; a bad one is named (exit code 2). See docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run everything with a demo park, virtual meters and an accelerated clock",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--speed", type=float, default=60.0, help="demo seconds per real second (default 60)")
    parser.add_argument("--db", type=Path, default=Path("var") / "demo.db", help="SQLite file (default var/demo.db)")
    parser.add_argument("--reset", action="store_true", help="also remove what an earlier demo left beside --db")
    parser.add_argument("--no-mqtt", action="store_true", help="no MQTT broker: every meter through DTUs / Modbus")
    parser.add_argument("--quiet", action="store_true", help="no running commentary on the watched rooms")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S real seconds (default: Ctrl-C)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from powergate.demo.runner import DemoOptions, DemoRunner, remove_demo_files

    options = DemoOptions(
        port=args.port, host=args.host, speed=args.speed, db=args.db, mqtt=not args.no_mqtt, watch=not args.quiet
    )
    problem = options.check()
    if problem is not None:
        print(f"powergate demo: {problem}", file=sys.stderr)
        return 2
    if args.duration < 0:
        print(f"powergate demo: --duration: {args.duration:g} must not be negative", file=sys.stderr)
        return 2
    if args.reset:
        remove_demo_files(args.db)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        runner = DemoRunner(options, sys.stdout)
        await runner.run(stop)

    try:
        asyncio.run(main())
    except OSError as error:  # the port is taken, the folder is not writable, ...
        print(f"powergate demo: {error}", file=sys.stderr)
        return 1
    print("powergate demo: stopped")
    return 0
