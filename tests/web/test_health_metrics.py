"""Health, metrics, security headers, body limits, the API docs, and the app served by uvicorn on a socket."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import insert
from web_helpers import TEST_SECRET, FakeClock

from powergate.domain.structure import RoomUse
from powergate.headend.commands import enqueue
from powergate.headend.model import CommandKind, MeterCommand
from powergate.headend.status import StatusRow, write_status
from powergate.services import accounts
from powergate.store.metering import add_tariff
from powergate.store.tables_prepaid import outbox
from powergate.web.app import CONTENT_SECURITY_POLICY, create_app
from powergate.web.settings import WebSettings

TARIFF = """
id = "flat"
name = "Flat"
commodity = "electricity"
currency = "CNY"

[[versions]]
effective_from = "2025-01-01"
price = "1.0000"
"""
LOOPBACK = ("127.0.0.1", 50000)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _seed_meters(web: Any) -> None:
    """Three meters (two online, one offline), a queued trip command and two unprocessed outbox rows."""
    org = web.org()
    account_id = web.account(org)
    at = web.clock()
    with web.engine.begin() as conn:
        site_id = accounts.account_view(conn, account_id).site_id  # type: ignore[union-attr]
        building = accounts.create_building(conn, site_id, "A")
        assert isinstance(building, int)
        floor = accounts.create_floor(conn, building, "1F")
        assert isinstance(floor, int)
        add_tariff(conn, "flat", "Flat", "electricity", TARIFF, at)
        for n in range(3):
            room = accounts.create_room(conn, floor, f"10{n}", 3000, RoomUse.APARTMENT)
            assert isinstance(room, int)
            made = accounts.attach_meter(
                conn, f"M-{n}", room, account_id, tariff_id="flat", actor="system:test", reason="seed", now=at
            )
            assert isinstance(made, int), made
        write_status(
            conn,
            [
                StatusRow("M-0", True, at, at, False, None, None),
                StatusRow("M-1", True, at, at, False, None, None),
                StatusRow("M-2", False, at - dt.timedelta(days=1), None, None, None, None),
            ],
            at,
        )
        command = MeterCommand("trip-M-2", CommandKind.TRIP, at + dt.timedelta(hours=1))
        assert not hasattr(enqueue(conn, "M-2", command, requested_by="system:test", reason="seed", now=at), "message")
        for n in range(2):
            conn.execute(insert(outbox).values(kind="warning", key=f"seed-{n}", created_at=at, available_at=at))


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series} in the metrics")


# --- health ---------------------------------------------------------------------------------------------------


def test_healthz_says_the_database_answers_and_which_version_runs(web: Any) -> None:
    answer = web.anonymous().get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "database": "ok", "version": "0.1.0"}


def test_healthz_answers_503_when_the_database_is_unreachable() -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"
    app = create_app(WebSettings(database_url=url, secret_key=TEST_SECRET, engine_options={"pool_pre_ping": False}))
    try:
        answer = TestClient(app).get("/healthz")
    finally:
        app.state.engine.dispose()
    assert answer.status_code == 503
    assert answer.json()["status"] == "unavailable"
    assert answer.json()["database"].startswith("unreachable: ")


# --- metrics --------------------------------------------------------------------------------------------------


def test_metrics_are_open_on_the_loopback_and_need_a_staff_credential_elsewhere(web: Any) -> None:
    org = web.org()
    outside = web.anonymous().get("/metrics")
    assert outside.status_code == 401 and "X-API-Key" in outside.json()["detail"]
    assert web.api_key("viewer", org).get("/metrics").status_code == 200
    assert web.bearer("viewer", org).get("/metrics").status_code == 200
    tenant = web.client("tenant", org, account_id=web.account(org))
    assert tenant.get("/metrics").status_code == 403
    loopback = web.anonymous(client=LOOPBACK).get("/metrics")
    assert loopback.status_code == 200
    assert loopback.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_metrics_can_require_a_key_even_on_the_loopback(db_url: str) -> None:
    app = create_app(WebSettings(database_url=db_url, secret_key=TEST_SECRET, metrics_api_key_required=True))
    try:
        assert TestClient(app, client=LOOPBACK).get("/metrics").status_code == 401
    finally:
        app.state.engine.dispose()


def test_metrics_count_requests_by_route_template_and_read_the_fleet_at_scrape_time(web: Any) -> None:
    _seed_meters(web)
    admin = web.bearer("admin", web.org())
    assert admin.get("/api/v1/users/987654").status_code == 404
    assert admin.get("/api/v1/users/123456").status_code == 404
    assert web.anonymous().get("/no/such/page").status_code == 404
    text = web.anonymous(client=LOOPBACK).get("/metrics").text
    assert (
        _sample(text, 'powergate_http_requests_total{method="GET",route="/api/v1/users/{user_id}",status="404"}') == 2
    )
    assert _sample(text, 'powergate_http_requests_total{method="GET",route="unmatched",status="404"}') == 1
    assert "987654" not in text, "raw paths must not become labels"
    assert (
        _sample(text, 'powergate_http_request_duration_seconds_count{method="GET",route="/api/v1/users/{user_id}"}')
        == 2
    )
    assert _sample(text, 'powergate_meters{state="online"}') == 2
    assert _sample(text, 'powergate_meters{state="offline"}') == 1
    assert _sample(text, "powergate_outbox_backlog") == 2
    assert _sample(text, 'powergate_meter_commands{state="pending"}') == 1
    assert _sample(text, 'powergate_meter_commands{state="sent"}') == 0
    assert _sample(text, "powergate_database_up") == 1


# --- headers, limits, docs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/login", "/static/core/login.css", "/no/such/page", "/api/openapi.json"])
def test_every_response_carries_the_security_headers(web: Any, path: str) -> None:
    answer = web.anonymous().get(path)
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "same-origin"


def test_cookies_are_secure_when_the_site_is_served_over_https(db_url: str) -> None:
    app = create_app(WebSettings(database_url=db_url, secret_key=TEST_SECRET, cookie_secure=True))
    try:
        answer = TestClient(app, follow_redirects=False).get("/lang/en")
    finally:
        app.state.engine.dispose()
    assert "; Secure" in answer.headers["set-cookie"]


def test_a_body_over_the_limit_is_refused_with_413(db_url: str) -> None:
    app = create_app(WebSettings(database_url=db_url, secret_key=TEST_SECRET, max_body_bytes=1_000))
    client = TestClient(app)
    try:
        declared = client.post("/api/v1/auth/token", content=b"x" * 1_001, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "1000 bytes" in declared.json()["detail"]

        def chunks() -> Any:
            for _ in range(5):
                yield b"y" * 400

        streamed = client.post("/api/v1/auth/token", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        small = client.post("/api/v1/auth/token", json={"organisation": "X", "username": "u", "password": "p"})
        assert small.status_code == 401
    finally:
        app.state.engine.dispose()


def test_the_api_document_lists_the_api_not_the_pages_and_the_docs_page_needs_no_cdn(web: Any) -> None:
    anonymous = web.anonymous()
    spec = anonymous.get("/api/openapi.json").json()
    assert "/api/v1/users" in spec["paths"] and "/api/v1/auth/token" in spec["paths"]
    assert not [p for p in spec["paths"] if p.startswith(("/console", "/portal", "/login"))]
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} >= {"http", "apiKey"}
    docs = anonymous.get("/api/docs")
    assert docs.status_code == 200
    assert "http://" not in docs.text.replace("http://testserver", "") and "https://" not in docs.text
    assert "<script>" not in docs.text, "no inline script: the CSP would block it"
    for src in ("/static/vendor/swagger-ui-bundle.js", "/static/core/swagger-init.js"):
        if src in docs.text:
            assert anonymous.get(src).status_code == 200


def test_the_root_goes_to_the_console(web: Any) -> None:
    answer = web.anonymous().get("/")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"


# --- a real server --------------------------------------------------------------------------------------------


def test_uvicorn_serves_the_app_from_the_environment_on_a_real_socket(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("POWERGATE_SECRET_KEY", TEST_SECRET)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config("powergate.web.app:main_app", factory=True, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
            assert thread.is_alive(), "uvicorn stopped while starting"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/healthz").json()["database"] == "ok"
            metrics = http.get("/metrics")
            assert metrics.status_code == 200, "the loopback may scrape without a key"
            assert "powergate_http_requests_total" in metrics.text
            assert http.get("/api/v1/auth/me").status_code == 401
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_the_fake_clock_is_what_the_app_reads(web: Any) -> None:
    assert isinstance(web.clock, FakeClock)
    before = web.clock()
    web.clock.advance(hours=1)
    assert web.clock() - before == dt.timedelta(hours=1)
