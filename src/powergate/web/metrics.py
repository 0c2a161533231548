"""Prometheus metrics: HTTP requests, and the state of the fleet and queues read at scrape time.

- ``powergate_http_requests_total{method, route, status}`` and ``powergate_http_request_duration_seconds``
  (histogram) by route *template* (``/api/v1/accounts/{account_id}``, never the raw path, so the label set is
  bounded); a request that matched no route is counted as route ``unmatched``.
- ``powergate_meters{state="online"|"offline"}`` from ``meter_status``; ``powergate_outbox_backlog`` (rows not
  yet processed); ``powergate_meter_commands{state}`` for the states that still occupy a meter's queue;
  ``powergate_ingest_batches{state="queued"|"failed"}`` (the ingest queue: waiting, and parked after failing);
  ``powergate_database_up``. These are read from the database at each scrape (no background polling).

Each application has its own registry (``app.state.metrics``), so several apps in one process (tests) do not
clash. Who may scrape is decided in ``powergate.web.app`` (loopback, or an API key of a staff role).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from powergate.store.tables_commands import OPEN_STATES, meter_commands
from powergate.store.tables_headend import meter_status
from powergate.store.tables_ingest_queue import BATCH_STATES, ingest_batches
from powergate.store.tables_prepaid import outbox

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DatabaseCollector(Collector):
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("powergate_database_up", "1 if the database answered this scrape")
        try:
            with self._engine.connect() as conn:
                by_online: dict[Any, int] = dict(
                    conn.execute(select(meter_status.c.online, func.count()).group_by(meter_status.c.online)).all()
                )
                backlog = conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.processed_at.is_(None))
                ).scalar_one()
                by_state: dict[Any, int] = dict(
                    conn.execute(
                        select(meter_commands.c.state, func.count())
                        .where(meter_commands.c.state.in_(OPEN_STATES))
                        .group_by(meter_commands.c.state)
                    ).all()
                )
                ingest: dict[Any, int] = dict(
                    conn.execute(select(ingest_batches.c.state, func.count()).group_by(ingest_batches.c.state)).all()
                )
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        meters = GaugeMetricFamily("powergate_meters", "Meters by online state (meter_status)", labels=["state"])
        meters.add_metric(["online"], int(by_online.get(True, 0)))
        meters.add_metric(["offline"], int(by_online.get(False, 0)))
        yield meters
        yield GaugeMetricFamily("powergate_outbox_backlog", "Outbox rows not yet processed", value=int(backlog))
        commands = GaugeMetricFamily(
            "powergate_meter_commands", "Meter commands still queued, by state", labels=["state"]
        )
        for state in OPEN_STATES:
            commands.add_metric([state], int(by_state.get(state, 0)))
        yield commands
        batches = GaugeMetricFamily(
            "powergate_ingest_batches", "Batches of readings in the ingest queue, by state", labels=["state"]
        )
        for state in BATCH_STATES:
            batches.add_metric([state], int(ingest.get(state, 0)))
        yield batches


class Metrics:
    """The application's registry and HTTP instruments."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "powergate_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "powergate_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The matched route's full path template (prefixes included), ``/static`` for static files, else
    ``unmatched``."""
    effective = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(effective, "path_format", None)
    if isinstance(template, str) and template:
        return template
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    return "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status (pure ASGI: bodies pass untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope)
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
