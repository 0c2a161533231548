"""``powergate headend run|endpoint``: run the head-end role; register how meters are reached.

``headend run`` takes every head-end setting as ``powergate serve --role headend`` does: the defaults, then
``--config FILE``, then the ``POWERGATE_*`` variables, and last its own options, each of which overrides one
setting (``RUN_OPTIONS``; ``--url`` overrides ``database_url``). So the settings file a deployment already has
for ``serve`` runs the head-end alone unchanged, and an option given on the command line always wins. With
``headend.ingest = "queue"`` the head-end writes each batch of readings to the ingest queue for the workers
instead of rating it here. A bad value is named (the option, or the setting and where it came from) before
anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from powergate.config import BY_KEY, Config, ConfigError, load_config

if TYPE_CHECKING:
    from powergate.domain.notifications import Channel
    from powergate.services.headend_runtime import HeadendSettings

RUN_OPTIONS: dict[str, str] = {
    "name": "headend.name",
    "listen": "headend.dtu_listen",
    "broker": "headend.mqtt_broker",
    "group": "headend.mqtt_group",
    "interval": "headend.read_interval_s",
    "read": "headend.read_items",
    "timezone": "timezone",
}
"""``headend run``'s options and the setting each overrides (its default is the setting's, from the settings)."""


def _default(key: str) -> str:
    return f"default: {key} of the settings, {BY_KEY[key].default or 'none'}"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("headend", help="the head-end: read meters, deliver commands")
    parser.add_argument("--url", help="database URL (default: database_url of the settings, or the SQLite file)")
    parser.add_argument("--config", type=Path, help="TOML settings file (docs/configuration.md), as for serve")
    commands = parser.add_subparsers(title="headend commands", metavar="ACTION", required=True)

    run = commands.add_parser(
        "run",
        help="serve DTUs and MQTT meters, read on schedule, dispatch commands",
        description="Each option overrides one setting of --config FILE and the POWERGATE_* variables.",
    )
    run.add_argument("--name", help=f"unique per live head-end process ({_default('headend.name')})")
    run.add_argument("--listen", help=f"DTU listener HOST:PORT, or 'off' ({_default('headend.dtu_listen')})")
    run.add_argument(
        "--broker", help=f"MQTT broker HOST:PORT for 4G / NB-IoT meters ({_default('headend.mqtt_broker')})"
    )
    run.add_argument("--group", help=f"MQTT shared-subscription group ({_default('headend.mqtt_group')})")
    run.add_argument("--interval", type=float, help=f"read interval in seconds ({_default('headend.read_interval_s')})")
    run.add_argument("--timezone", help=f"site time zone for the daily frozen read ({_default('timezone')})")
    run.add_argument(
        "--read",
        help="what each scheduled read fetches, comma separated: energy, instant, relay, prepaid, clock "
        f"(prepaid for meter-side billing; {_default('headend.read_items')})",
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


def _config(args: argparse.Namespace, options: dict[str, str] | None = None) -> Config | None:
    """The settings, each of ``options`` (option name -> setting) given on the command line overriding its
    setting and ``--url`` overriding ``database_url``; or None after printing what is wrong."""
    options = options or {}
    overrides: dict[str, object] = {"database_url": args.url}
    overrides.update({key: getattr(args, option) for option, key in options.items()})
    try:
        return load_config(args.config, overrides=overrides)
    except ConfigError as error:
        by_option = {key: option for option, key in options.items()}
        prefix = "from the command line: "
        if error.setting in by_option and error.message.startswith(prefix):
            print(f"error: --{by_option[error.setting]}: {error.message.removeprefix(prefix)}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return None


def headend_settings(
    config: Config, ingest: str, notify_channels: Mapping[str, Channel] | None = None
) -> HeadendSettings:
    """The head-end's settings (``HeadendSettings``) from the loaded settings: the one rule for ``headend run``
    and ``serve --role headend``."""
    from powergate.headend.model import ReadItem
    from powergate.headend.scheduler import ScheduleConfig
    from powergate.services.headend_runtime import HeadendSettings

    items = frozenset(ReadItem(name.strip()) for name in config.headend_read_items.split(",") if name.strip())
    return HeadendSettings(
        name=config.headend_name,
        dtu_listen=config.host_port("headend.dtu_listen"),
        mqtt_broker=config.host_port("headend.mqtt_broker"),
        mqtt_group=config.headend_mqtt_group,
        mqtt_batch_wait_s=config.headend_mqtt_batch_wait_s,
        modbus=config.headend_modbus,
        schedule=ScheduleConfig(interval_s=config.headend_read_interval_s, tz=ZoneInfo(config.timezone), items=items),
        notify_channels=notify_channels,
        ingest=ingest,
    )


def _engine(config: Config) -> Any:
    from powergate.store.db import make_engine

    return make_engine(config.database_url)


def _run(args: argparse.Namespace) -> int:
    from powergate.cli.serve import ingest_mode
    from powergate.services.headend_runtime import HeadendRuntime

    config = _config(args, RUN_OPTIONS)
    if config is None:
        return 2
    channels = None
    if args.notify_config is not None:
        from powergate.notify.config import ConfigError, build_channels, load_notify_config

        try:
            channels = build_channels(load_notify_config(args.notify_config))
        except (ConfigError, OSError) as error:
            print(f"error: --notify-config {args.notify_config}: {error}", file=sys.stderr)
            return 2
    # the one rule serve --role headend follows for the ingest mode
    settings = headend_settings(config, ingest_mode(config, ("headend",)), channels)
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
