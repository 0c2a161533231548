"""``powergate sim``: run a seeded fleet of virtual prepaid meters against a head-end, a broker or a master.

    powergate sim --meters 10000 --mode mqtt --broker 127.0.0.1:1883 --interval 60 --duration 120
    powergate sim --meters 200 --dtus 10 --mode dtu --headend 127.0.0.1:9000
    powergate sim --meters 20 --mode modbus --listen 127.0.0.1:1502

A live summary line (meters, connections, frames answered, readings published, errors) is rewritten every
second on a terminal and printed every ``--progress-s`` seconds otherwise; the final line is always printed.
Options are checked before anything starts, and a bad one is named in the message (exit code 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import TextIO

from powergate.sim.faults import MAX_DELAY_MS, Faults
from powergate.sim.fleet import Fleet, FleetOptions, parse_host_port
from powergate.sim.profiles import ProfileKind

METERS_PER_GROUP = {"dtu": 32, "modbus": 247, "mqtt": 100}
"""Default meters per DTU bus / Modbus server / MQTT connection when ``--dtus`` is not given."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run a fleet of virtual prepaid meters (DTU / Modbus TCP / MQTT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--meters", type=int, default=100, help="number of meters (default 100)")
    parser.add_argument("--dtus", type=int, help="DTUs (dtu), servers (modbus) or connections (mqtt)")
    parser.add_argument("--mode", choices=("dtu", "modbus", "mqtt"), default="dtu")
    parser.add_argument("--headend", help="HOST:PORT the DTUs dial (dtu mode)")
    parser.add_argument("--broker", help="HOST:PORT of the MQTT broker (mqtt mode)")
    parser.add_argument("--listen", default="127.0.0.1:1502", help="HOST:PORT of the first Modbus server")
    parser.add_argument("--interval", type=float, default=60.0, help="MQTT reporting interval, s (default 60)")
    parser.add_argument("--heartbeat", type=float, default=60.0, help="DTU heartbeat interval, s (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load-scale", default="1", help="multiply every load by this decimal (default 1)")
    parser.add_argument("--profile", choices=[k.value for k in ProfileKind], help="one profile for all meters")
    parser.add_argument("--site", default="sim", help="MQTT site id (default sim)")
    parser.add_argument("--drop", type=float, default=0.0, help="probability a reply is dropped")
    parser.add_argument("--garble", type=float, default=0.0, help="probability a reply has a flipped bit")
    parser.add_argument("--delay-ms", default="20-500", help="reply delay MIN-MAX ms (default 20-500; 0 = none)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: on Ctrl-C)")
    parser.add_argument("--progress-s", type=float, default=10.0, help="summary every S s when not a terminal")
    parser.set_defaults(handler=handle)


def parse_delay_ms(text: str) -> tuple[int, int]:
    """``"20-500"`` or ``"100"`` -> (min, max) ms; ``ValueError`` naming ``--delay-ms``."""
    low_text, _, high_text = text.partition("-")
    high_text = high_text or low_text
    if not (low_text.strip().isdigit() and high_text.strip().isdigit()):
        raise ValueError(f"--delay-ms: {text!r} is not MIN-MAX milliseconds such as 20-500")
    low, high = int(low_text), int(high_text)
    if not 0 <= low <= high <= MAX_DELAY_MS:
        raise ValueError(f"--delay-ms: {text!r} must satisfy 0 <= MIN <= MAX <= {MAX_DELAY_MS}")
    return low, high


def parse_scale_permille(text: str) -> int:
    try:
        scale = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"--load-scale: {text!r} is not a decimal number") from None
    if not 0 <= scale <= 100 or (scale * 1000) % 1:
        raise ValueError(f"--load-scale: {text!r} must be 0..100 with at most 3 decimals")
    return int(scale * 1000)


def options_from_args(args: argparse.Namespace) -> FleetOptions:
    """Fleet options from the command line; ``ValueError`` naming the bad option."""
    for name in ("drop", "garble"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ValueError(f"--{name}: {getattr(args, name)} is not a probability in 0..1")
    low_ms, high_ms = parse_delay_ms(args.delay_ms)
    dtus = args.dtus or max(1, math.ceil(args.meters / METERS_PER_GROUP[args.mode]))
    options = FleetOptions(
        meters=args.meters,
        dtus=dtus,
        mode=args.mode,
        headend=parse_host_port(args.headend, field_name="--headend") if args.headend else None,
        broker=parse_host_port(args.broker, field_name="--broker") if args.broker else None,
        listen=parse_host_port(args.listen, field_name="--listen"),
        interval_s=args.interval,
        heartbeat_s=args.heartbeat,
        seed=args.seed,
        load_scale_permille=parse_scale_permille(args.load_scale),
        profile=ProfileKind(args.profile) if args.profile else None,
        site=args.site,
        faults=Faults(args.drop, args.garble, low_ms, high_ms, seed=args.seed),
    )
    problem = options.check()
    if problem is not None:
        raise ValueError(problem)
    return options


def handle(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"powergate sim: {error}", file=sys.stderr)
        return 2
    return asyncio.run(run_fleet(options, args.duration, args.progress_s, sys.stdout))


async def run_fleet(options: FleetOptions, duration_s: float, progress_s: float, out: TextIO) -> int:
    fleet = Fleet(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    started = time.monotonic()
    header = f"{options.meters} meters, mode {options.mode}, {options.dtus} groups, seed {options.seed}"
    print(f"powergate sim: {header}", file=out, flush=True)
    runner = asyncio.create_task(fleet.run(stop))
    progress = asyncio.create_task(_progress(fleet, started, progress_s, out))
    try:
        await _until(stop, runner, duration_s)
    finally:
        stop.set()
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        failure: BaseException | None = None
        try:
            await runner
        except Exception as error:  # report, do not hide behind a traceback mid-progress-line
            failure = error
    elapsed = time.monotonic() - started
    print(f"\n[{elapsed:7.1f} s] {fleet.stats.summary()}", file=out, flush=True)
    if failure is not None:
        print(f"powergate sim: stopped by {failure!r}", file=sys.stderr)
        return 1
    return 0


async def _until(stop: asyncio.Event, runner: asyncio.Task[None], duration_s: float) -> None:
    stopped = asyncio.ensure_future(stop.wait())
    timeout = duration_s if duration_s > 0 else None
    await asyncio.wait([stopped, runner], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()


async def _progress(fleet: Fleet, started: float, every_s: float, out: TextIO) -> None:
    tty = out.isatty()
    last_print = started
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        state = "running" if fleet.ready.is_set() else "starting"
        line = f"[{now - started:7.1f} s] {state}: {fleet.stats.summary()}"
        if tty:
            out.write("\r" + line[:200].ljust(120))
            out.flush()
        elif now - last_print >= every_s:
            print(line, file=out, flush=True)
            last_print = now
