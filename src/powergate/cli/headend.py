"""``powergate headend run|endpoint``: run the head-end role; register how meters are reached.

The database and ``headend.ingest`` come from the settings as for ``powergate serve`` (defaults, then
``--config``, then ``POWERGATE_*`` variables; ``--url`` wins): with ``headend.ingest = "queue"`` the head-end
writes each batch of readings to the ingest queue for the workers instead of rating it here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from powergate.config import Config, ConfigError, load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("headend", help="the head-end: read meters, deliver commands")
    parser.add_argument("--url", help="database URL (default: database_url of the settings, or the SQLite file)")
    parser.add_argument("--config", type=Path, help="TOML settings file (docs/configuration.md), as for serve")
    commands = parser.add_subparsers(title="headend commands", metavar="ACTION", required=True)

    run = commands.add_parser("run", help="serve DTUs and MQTT meters, read on schedule, dispatch commands")
    run.add_argument("--name", default="headend-1", help="unique per live head-end process (default headend-1)")
    run.add_argument("--listen", default="0.0.0.0:7100", help="DTU listener HOST:PORT, or 'off'")
    run.add_argument("--broker", help="MQTT broker HOST:PORT for 4G / NB-IoT meters")
    run.add_argument("--group", default="headend", help="MQTT shared-subscription group")
    run.add_argument("--interval", type=float, default=900.0, help="read interval in seconds (default 900)")
    run.add_argument("--timezone", default="Asia/Shanghai", help="site time zone for the daily frozen read")
    run.add_argument(
        "--read",
        default="energy,relay",
        help="what each scheduled read fetches, comma separated: energy, instant, relay, prepaid, clock "
        "(prepaid for meter-side billing; default energy,relay)",
    )
    run.add_argument(
        "--notify-config", type=Path, help="notification channels (TOML); with it this process delivers notifications"
    )
    run.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGTERM)")
    run.set_defaults(handler=_run)

    endpoint = commands.add_parser("endpoint", help="how a meter is reached")
    endpoint_actions = endpoint.add_subparsers(title="endpoint actions", metavar="ACTION", required=True)
    add = endpoint_actions.add_parser("add", help="register or change a meter's endpoint")
    add.add_argument("--meter", required=True, help="meter id (must exist)")
    add.add_argument("--transport", required=True, choices=["dlt645", "modbus", "mqtt"])
    add.add_argument("--address", required=True, help="DL/T 645 address, Modbus unit id or MQTT meter name")
    add.add_argument("--link", required=True, help="DTU id, gateway host:port or MQTT site")
    add.add_argument("--model", default="default")
    add.set_defaults(handler=_endpoint_add)
    show = endpoint_actions.add_parser("list", help="list the registered endpoints")
    show.set_defaults(handler=_endpoint_list)


def _host_port(text: str, option: str) -> tuple[str, int] | str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{option}: expected HOST:PORT, got {text!r}"
    return host, int(port)


def _config(args: argparse.Namespace) -> Config | None:
    """The settings (``--url`` overriding ``database_url``), or None after printing what is wrong."""
    try:
        return load_config(args.config, overrides={"database_url": args.url})
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def _engine(config: Config) -> Any:
    from powergate.store.db import make_engine

    return make_engine(config.database_url)


def _run(args: argparse.Namespace) -> int:
    from powergate.cli.serve import ingest_mode
    from powergate.headend.model import ReadItem
    from powergate.headend.scheduler import ScheduleConfig
    from powergate.services.headend_runtime import HeadendRuntime, HeadendSettings

    config = _config(args)
    if config is None:
        return 2
    listen = None if args.listen == "off" else _host_port(args.listen, "--listen")
    broker = _host_port(args.broker, "--broker") if args.broker else None
    for value in (listen, broker):
        if isinstance(value, str):
            print(f"error: {value}", file=sys.stderr)
            return 2
    if args.interval <= 0:
        print(f"error: --interval must be positive, got {args.interval}", file=sys.stderr)
        return 2
    try:
        tz = ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"error: --timezone: unknown time zone {args.timezone!r}", file=sys.stderr)
        return 2
    try:
        items = frozenset(ReadItem(name.strip()) for name in args.read.split(",") if name.strip())
    except ValueError:
        known = ", ".join(i.value for i in ReadItem if i is not ReadItem.FROZEN_DAY)
        print(f"error: --read: {args.read!r}; choose from {known}", file=sys.stderr)
        return 2
    channels = None
    if args.notify_config is not None:
        from powergate.notify.config import ConfigError, build_channels, load_notify_config

        try:
            channels = build_channels(load_notify_config(args.notify_config))
        except (ConfigError, OSError) as error:
            print(f"error: --notify-config {args.notify_config}: {error}", file=sys.stderr)
            return 2
    assert not isinstance(listen, str) and not isinstance(broker, str)
    settings = HeadendSettings(
        name=args.name,
        dtu_listen=listen,
        mqtt_broker=broker,
        mqtt_group=args.group,
        schedule=ScheduleConfig(interval_s=args.interval, tz=tz, items=items or frozenset({ReadItem.ENERGY})),
        notify_channels=channels,
        ingest=ingest_mode(config, ("headend",)),  # the one rule serve --role headend follows
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = _engine(config)
    runtime = HeadendRuntime(engine, settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        running = asyncio.create_task(runtime.run(stop))
        await runtime.ready.wait()
        print(
            f"head-end {settings.name}: {len(runtime.endpoints)} meters; DTU port {runtime.dtu_port}; "
            f"ingest {settings.ingest}",
            flush=True,
        )
        await running

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
    stats = runtime.stats
    print(
        f"stopped at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: {stats.readings} readings in {stats.batches} "
        f"batches, {stats.rated} rated, {stats.quarantined} quarantined, {stats.rejected} rejected"
        + (f", {stats.queued} batches queued for the workers" if settings.ingest == "queue" else "")
    )
    return 0


def _endpoint_add(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from powergate.headend.model import MeterEndpoint, Transport
    from powergate.headend.status import save_endpoints
    from powergate.store.tables import meters

    config = _config(args)
    if config is None:
        return 2
    engine = _engine(config)
    try:
        with engine.begin() as conn:
            if conn.execute(select(meters.c.id).where(meters.c.id == args.meter)).first() is None:
                print(f"error: --meter: no meter {args.meter!r}", file=sys.stderr)
                return 2
            save_endpoints(
                conn, [MeterEndpoint(args.meter, Transport(args.transport), args.address, args.link, args.model)]
            )
    finally:
        engine.dispose()
    print(f"{args.meter}: {args.transport} {args.address} via {args.link}")
    return 0


def _endpoint_list(args: argparse.Namespace) -> int:
    from powergate.headend.status import load_endpoints

    config = _config(args)
    if config is None:
        return 2
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            for e in load_endpoints(conn):
                print(f"{e.meter_id}\t{e.transport.value}\t{e.address}\t{e.link_id}\t{e.model}")
    finally:
        engine.dispose()
    return 0
