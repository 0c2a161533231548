"""``powergate serve --role api|headend|worker|scheduler|all --config FILE``: run PowerGate's long-lived parts.

    powergate serve                                   # every role in one process (the embedded default)
    powergate serve --role api --config /etc/powergate/powergate.toml
    POWERGATE_WEB_PORT=8080 powergate serve --role api,worker

Roles meet only in the database (and the MQTT broker), so they can run in one process or be split across
processes and machines: ``api`` (HTTP: API, console, portal), ``headend`` (meters: DTUs, Modbus, MQTT, the
command queue), ``worker`` (outbox relay, notifications, payment reconciliation, the ingest queue),
``scheduler`` (freezes). Settings come from defaults, then ``--config``, then ``POWERGATE_*`` variables
(docs/configuration.md). A bad setting is named before anything starts (exit code 2). SIGINT / SIGTERM stop every
role cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from powergate.config import Config, ConfigError, load_config

ROLES = ("api", "headend", "worker", "scheduler")
OFFLINE = ("cashier", "bank")
STOP_TIMEOUT_S = 20.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the API, head-end, worker and scheduler roles", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--role", default="all", help="api, headend, worker, scheduler or all; comma separated")
    parser.add_argument("--config", type=Path, help="TOML settings file (docs/configuration.md)")
    parser.add_argument("--port", type=int, help="HTTP port (overrides web.port)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: on SIGTERM)")
    parser.add_argument("--check", action="store_true", help="check the settings, print them and exit")
    parser.set_defaults(handler=handle)


def parse_roles(text: str) -> tuple[str, ...]:
    """``"api,worker"`` -> ("api", "worker"); ``all`` -> every role; ``ConfigError`` naming --role otherwise."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return ROLES
    unknown = [name for name in names if name not in ROLES]
    if not names or unknown:
        raise ConfigError("--role", f"{text!r}: choose from {', '.join(ROLES)} or all (comma separated)")
    return tuple(role for role in ROLES if role in names)


def handle(args: argparse.Namespace) -> int:
    try:
        roles = parse_roles(args.role)
        config = load_config(args.config, overrides={"web.port": args.port})
        parts = prepare(config, roles)
    except ConfigError as error:
        print(f"powergate serve: error: {error}", file=sys.stderr)
        return 2
    if args.check:
        for key, source in config.sources.items():
            value = getattr(config, key.replace(".", "_"))
            if key == "secret_key" and value:
                value = "(secret)"
            print(f"{key} = {value!r}  [{source}]")
        return 0
    level = getattr(logging, config.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_roles(config, roles, parts, args.duration))


def prepare(config: Config, roles: tuple[str, ...]) -> dict[str, Any]:
    """Everything a role needs that can be wrong in the settings, loaded before anything starts."""
    parts: dict[str, Any] = {}
    if "api" in roles:
        parts["secret_key"] = config.resolved_secret_key()
    if config.payments_config and ("api" in roles or "worker" in roles):
        from powergate.payments.config import ConfigError as PaymentsError
        from powergate.payments.config import load_payments_config

        try:
            parts["payments"] = load_payments_config(config.path(config.payments_config))
        except PaymentsError as error:
            raise ConfigError("payments_config", str(error)) from None
    if config.notify_config and ("api" in roles or "worker" in roles):
        from powergate.notify.config import ConfigError as NotifyError
        from powergate.notify.config import load_notify_config

        try:
            parts["notify"] = load_notify_config(config.path(config.notify_config))
        except (NotifyError, OSError) as error:
            raise ConfigError("notify_config", str(error)) from None
    parts["channels"] = payment_channels(parts.get("payments"))
    parts["with_api"] = "api" in roles
    parts["ingest"] = ingest_mode(config, roles)
    return parts


def ingest_mode(config: Config, roles: tuple[str, ...]) -> str:
    """``headend.ingest``, except that a head-end and a worker sharing one process on SQLite ingest directly:
    there is one writer anyway, and the queue would only add a hop."""
    mode = config.headend_ingest
    if mode == "queue" and config.database_url.startswith("sqlite") and {"headend", "worker"} <= set(roles):
        print("powergate serve: headend.ingest = queue ignored: head-end and worker share one SQLite process, "
              "readings are ingested directly", file=sys.stderr)  # fmt: skip
        return "direct"
    return mode


async def run_roles(config: Config, roles: tuple[str, ...], parts: dict[str, Any], duration_s: float) -> int:
    from powergate.store.db import make_engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if duration_s > 0:
        loop.call_later(duration_s, stop.set)
    engine = make_engine(config.database_url)
    starters: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = {
        "api": lambda s: _api(config, parts, s),
        "headend": lambda s: _headend(config, engine, s, parts.get("ingest", "direct")),
        "worker": lambda s: _worker(config, engine, parts, s),
        "scheduler": lambda s: _scheduler(config, engine, s),
    }
    tasks = {role: asyncio.create_task(starters[role](stop), name=role) for role in roles}
    print(f"powergate serve: roles {', '.join(roles)} running", flush=True)
    failed = False
    try:
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                failed = True
                print(f"powergate serve: role {task.get_name()} failed: {task.exception()!r}", file=sys.stderr)
        stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), STOP_TIMEOUT_S)
        failed = failed or any(isinstance(r, BaseException) for r in results)
    finally:
        for task in tasks.values():
            task.cancel()
        engine.dispose()
    print("powergate serve: stopped", flush=True)
    return 1 if failed else 0


async def _api(config: Config, parts: dict[str, Any], stop: asyncio.Event) -> None:
    import uvicorn

    from powergate.web.app import create_app
    from powergate.web.settings import WebSettings

    settings = WebSettings(
        database_url=config.database_url,
        secret_key=parts["secret_key"],
        cookie_secure=config.cookie_secure,
        payment_channels=parts.get("payments"),
        notify=parts.get("notify"),
        metrics_api_key_required=config.metrics_api_key_required,
        max_body_bytes=config.max_body_bytes,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield  # serve handles SIGINT / SIGTERM for every role

    app = create_app(settings)
    if parts.get("channels"):
        app.state.payment_channels = parts["channels"]  # shared with this process's worker (the sandbox's memory)
    server = Server(uvicorn.Config(app, host=config.web_host, port=config.web_port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        stopper.cancel()
        serving.result()
        raise RuntimeError(f"the HTTP server on {config.web_host}:{config.web_port} stopped")
    if server.started:
        print(f"api: http://{config.web_host}:{config.web_port}/", flush=True)
    server.should_exit = True
    await serving


async def _headend(config: Config, engine: Any, stop: asyncio.Event, ingest: str = "direct") -> None:
    from powergate.cli.headend import headend_settings
    from powergate.services.headend_runtime import HeadendRuntime

    settings = headend_settings(config, ingest)
    runtime = HeadendRuntime(engine, settings)
    running = asyncio.create_task(runtime.run(stop))
    readiness = asyncio.create_task(runtime.ready.wait())
    await asyncio.wait([running, readiness], return_when=asyncio.FIRST_COMPLETED)
    if runtime.ready.is_set():
        print(f"headend: {len(runtime.endpoints)} meters; DTU port {runtime.dtu_port}; ingest {ingest}", flush=True)
    else:
        readiness.cancel()
    await running


async def _worker(config: Config, engine: Any, parts: dict[str, Any], stop: asyncio.Event) -> None:
    from powergate.notify.config import build_channels
    from powergate.services.worker import JobRunner, WorkerSettings, worker_jobs

    settings = WorkerSettings(
        name=config.worker_name,
        relay_outbox=config.worker_relay_outbox,
        outbox_every_s=config.worker_outbox_every_s,
        notify_every_s=config.worker_notify_every_s,
        payments_every_s=config.worker_payments_every_s,
        ingest_every_s=config.worker_ingest_every_s,
    )
    payments = {name: channel for name, channel in (parts.get("channels") or {}).items() if name not in OFFLINE}
    if "sandbox" in payments and not parts.get("with_api"):
        del payments["sandbox"]  # its trades live in the memory of the process that serves the API
    notify = build_channels(parts["notify"]) if "notify" in parts else None
    jobs = worker_jobs(engine, settings, payment_channels=payments or None, notify_channels=notify)
    runner = JobRunner(config.worker_name, jobs)
    print(f"worker: {', '.join(job.name for job in runner.jobs) or 'no jobs'}", flush=True)
    await runner.run(stop)


async def _scheduler(config: Config, engine: Any, stop: asyncio.Event) -> None:
    from powergate.services.worker import JobRunner, SchedulerSettings, scheduler_jobs

    settings = SchedulerSettings(
        f"{config.worker_name}-scheduler",
        config.scheduler_freeze_every_s,
        readings_keep_months=config.scheduler_readings_keep_months,
    )
    runner = JobRunner(settings.name, scheduler_jobs(engine, settings))
    print(f"scheduler: {', '.join(job.name for job in runner.jobs)}", flush=True)
    await runner.run(stop)


def payment_channels(config: Any) -> dict[str, Any]:
    """The payment adapters of this process: cashier and bank always, the configured online ones."""
    from powergate.payments.bank import BankTransfer
    from powergate.payments.cashier import Cashier

    channels: dict[str, Any] = {"cashier": Cashier(), "bank": BankTransfer()}
    if config is None:
        return channels
    if config.wechat is not None:
        from powergate.payments.wechat import WechatPay

        channels["wechat"] = WechatPay(config.wechat)
    if config.alipay is not None:
        from powergate.payments.alipay import Alipay

        channels["alipay"] = Alipay(config.alipay)
    if config.sandbox is not None:
        from powergate.payments.sandbox import Sandbox

        channels["sandbox"] = Sandbox(config.sandbox.secret)
    return channels
