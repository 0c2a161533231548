"""Who may call what, for EVERY route of the JSON API (the routes are read from the app, so a new route is
covered the day it is added): anonymous callers get 401; a tenant gets 403 on staff routes and sees only their
own account on the routes open to them; a user of another organisation gets 404 for every object of this one
and never sees its data in a list.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from api_seed import Seeded, seed

PREFIX = "/api/v1/"
PUBLIC = {("POST", "/api/v1/auth/token")}
"""Routes an anonymous caller may use: getting a token."""
TENANT_ROUTES = {
    ("GET", "/api/v1/accounts"),
    ("GET", "/api/v1/accounts/{account_id}"),
    ("GET", "/api/v1/meters"),
    ("GET", "/api/v1/meters/{meter_id}"),
    ("GET", "/api/v1/meters/{meter_id}/readings"),
    ("GET", "/api/v1/orders"),
    ("GET", "/api/v1/orders/{order_no}"),
}
"""The resource routes a tenant may call (their own account, meters, readings and orders); every other resource
route refuses tenants with 403. Routes of other parts of the API (billing, users, ...) either refuse tenants or
must not show them another account's data."""
SELF_SERVICE = re.compile(r"^/api/v1/auth(/|$)")
"""The caller's own token and session: open to every authenticated role, tenants included."""
READ_ONLY_POSTS = {"/api/v1/tariffs/validate", "/api/v1/tariffs/{tariff_id}/quote"}
"""POSTs that compute an answer from the body and change nothing: open to every staff role."""
RESOURCE_TAGS = {"sites", "accounts", "meters", "commands", "orders", "tariffs", "alarms", "reports", "audit"}
"""The resource routes (this suite's); users and API keys are web-core's and tested there for the rest."""


def api_routes(app: Any, tags: set[str] | None = None) -> list[tuple[str, str]]:
    """(method, path template) of every operation the app documents under ``/api/v1/`` (its OpenAPI, which
    FastAPI builds from the routes the app has: a new router module is covered without touching this test),
    optionally only those with one of ``tags``."""
    found = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(PREFIX)
        for method, operation in operations.items()
        if tags is None or tags & set(operation.get("tags", ()))
    ]
    assert len(found) > 30, "the API's routes were not discovered"
    return sorted(found)


def fill(path: str, s: Seeded, **override: object) -> str:
    values: dict[str, object] = {
        "site_id": s.site_id,
        "building_id": s.building_id,
        "floor_id": s.floor_id,
        "room_id": s.room_id,
        "account_id": s.account_id,
        "meter_id": s.meter_id,
        "command_id": s.command_id,
        "order_no": s.order_no,
        "tariff_id": s.tariff_id,
        "alarm_id": s.alarm_id,
        "event_id": s.event_id,
        **override,
    }
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), 1)), path)


def body_for(method: str, path: str, s: Seeded) -> dict[str, Any] | None:
    """A valid body for each operation, so that a refusal is about who asks, not about what was sent."""
    if method not in ("POST", "PUT"):
        return None
    reason = {"reason": "access test"}
    bodies: dict[str, dict[str, Any]] = {
        "/api/v1/sites": {"name": f"site-{uuid.uuid4().hex[:8]}"},
        "/api/v1/sites/{site_id}/buildings": {"name": f"b-{uuid.uuid4().hex[:8]}"},
        "/api/v1/buildings/{building_id}/floors": {"name": f"f-{uuid.uuid4().hex[:8]}"},
        "/api/v1/floors/{floor_id}/rooms": {"number": f"r-{uuid.uuid4().hex[:6]}", "area_m2": "20"},
        "/api/v1/accounts": {"site_id": s.site_id, "account_no": f"X{uuid.uuid4().hex[:8]}", "name": "x"},
        "/api/v1/accounts/{account_id}/open": reason,
        "/api/v1/accounts/{account_id}/close": reason,
        "/api/v1/accounts/{account_id}/tariff": {"tariff_id": s.tariff_id, **reason},
        "/api/v1/accounts/{account_id}/policy": {"warning_levels_micros": [5_000_000], **reason},
        "/api/v1/accounts/{account_id}/recharge": {"amount_fen": 100, "receipt_no": uuid.uuid4().hex},
        "/api/v1/accounts/{account_id}/temporary-supply": {"until": "2030-01-01T00:00:00+08:00", **reason},
        "/api/v1/accounts/{account_id}/power-protect": {"on": True, **reason},
        "/api/v1/meters": {"meter_id": s.meter_id, "room_id": s.room_id, "account_id": s.account_id, **reason},
        "/api/v1/meters/{meter_id}/move": {"account_id": s.other_account_id, **reason},
        "/api/v1/meters/{meter_id}/commands/trip": reason,
        "/api/v1/meters/{meter_id}/commands/close": reason,
        "/api/v1/meters/{meter_id}/commands/alarm-amounts": {"alarm1_micros": 20, "alarm2_micros": 10, **reason},
        "/api/v1/meters/{meter_id}/commands/power-limit": {"power_limit_w": 3000, **reason},
        "/api/v1/meters/{meter_id}/commands/prices": {"prices_micros": [1_000_000] * 4, **reason},
        "/api/v1/refunds": {"account_id": s.account_id, "amount_fen": 1, **reason},
        "/api/v1/tariffs": {"document": 'id = "x"\n[[versions]]\neffective_from = "2025-01-01"\nprice = "1"\n'},
        "/api/v1/tariffs/validate": {"document": "id = 1"},
        "/api/v1/tariffs/{tariff_id}/versions": {"document": "id = 1", **reason},
        "/api/v1/tariffs/{tariff_id}/quote": {"readings": "[]"},
        "/api/v1/alarms/reconciliation/{alarm_id}/ack": reason,
        "/api/v1/alarms/events/{event_id}/ack": reason,
        "/api/v1/reports/daily-freeze": {"site_id": s.site_id, "day": "2026-11-01"},
        "/api/v1/reports/monthly-freeze": {"site_id": s.site_id, "month": "2026-10-01"},
        "/api/v1/reports/monthly-settlement": {"site_id": s.site_id, "month": "2026-10-01"},
    }
    return bodies.get(path, {})


def query_for(path: str, s: Seeded) -> dict[str, Any]:
    needs_site = {
        "/api/v1/reports/daily": {"site_id": s.site_id, "day": "2026-11-22"},
        "/api/v1/reports/daily.xlsx": {"site_id": s.site_id, "day": "2026-11-22"},
        "/api/v1/reports/monthly-settlements": {"site_id": s.site_id, "month": "2026-10-01"},
    }
    return needs_site.get(path, {})


def call(client: Any, method: str, path: str, s: Seeded, **override: object) -> Any:
    return client.request(
        method,
        fill(path, s, **override),
        json=body_for(method, path, s),
        params=query_for(path, s),
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )


def test_every_api_route_refuses_anonymous_callers(web: Any) -> None:
    s = seed(web)
    anonymous = web.anonymous()
    for method, path in api_routes(web.app):
        if (method, path) in PUBLIC:
            continue
        answer = call(anonymous, method, path, s)
        assert answer.status_code == 401, f"{method} {path}: {answer.status_code} {answer.text[:200]}"
        assert answer.json()["detail"]
        forged = anonymous.request(method, fill(path, s), headers={"Authorization": "Bearer forged"})
        assert forged.status_code == 401, f"{method} {path} with a forged token: {forged.status_code}"


def test_a_tenant_gets_403_on_every_staff_route_and_only_their_own_objects_elsewhere(web: Any) -> None:
    s = seed(web)
    tenant = web.bearer("tenant", s.organisation_id, account_id=s.account_id)
    resources = set(api_routes(web.app, RESOURCE_TAGS))
    for method, path in api_routes(web.app):
        if (method, path) in PUBLIC or SELF_SERVICE.match(path):
            continue
        answer = call(tenant, method, path, s)
        if (method, path) not in resources and answer.status_code != 403:
            # another part's route that serves tenants (its owner tests its roles): no other account's data
            assert answer.status_code < 500, f"{method} {path} as the tenant: {answer.status_code}"
            assert s.other_meter_id not in answer.text and f"A-{s.code}-2" not in answer.text, (
                f"{method} {path} showed the tenant another account's data"
            )
        elif (method, path) in TENANT_ROUTES:
            assert answer.status_code == 200, f"{method} {path} as the tenant: {answer.status_code} {answer.text}"
            assert s.other_meter_id not in answer.text and f"A-{s.code}-2" not in answer.text, (
                f"{method} {path} showed the tenant another account's data"
            )
        else:
            assert answer.status_code == 403, f"{method} {path} as a tenant: {answer.status_code} {answer.text[:200]}"
            assert "tenant" in answer.json()["detail"]
    other_account = {"account_id": s.other_account_id, "meter_id": s.other_meter_id}
    for method, path in sorted(TENANT_ROUTES):  # the other account's objects are not found
        if "{" in path:
            answer = call(tenant, method, path, s, **other_account)
            if "order_no" not in path:
                assert answer.status_code == 404, f"{method} {path} for another account: {answer.status_code}"


def test_another_organisation_never_finds_this_one_s_objects(web: Any) -> None:
    s = seed(web)
    seed(web, "ORG2")
    stranger = web.bearer("admin", web.org("ORG2"))
    markers = (s.meter_id, s.other_meter_id, s.account_no, s.order_no, f"Park {s.code}")
    for method, path in api_routes(web.app, RESOURCE_TAGS):
        answer = call(stranger, method, path, s)
        if "{" in path or query_for(path, s):
            assert answer.status_code == 404, f"{method} {path} from ORG2: {answer.status_code} {answer.text[:300]}"
        elif method == "GET":
            assert answer.status_code == 200, f"{method} {path} from ORG2: {answer.status_code} {answer.text[:300]}"
            for marker in markers:
                assert marker not in answer.text, f"{method} {path} showed ORG2 {marker!r} of ORG1"
    with_filters = [
        f"/api/v1/rooms?site_id={s.site_id}",
        f"/api/v1/meters?account_id={s.account_id}",
        f"/api/v1/orders?account_id={s.account_id}",
        f"/api/v1/audit?subject=account:{s.account_id}",
        f"/api/v1/alarms/events?meter_id={s.meter_id}",
    ]
    for url in with_filters:
        answer = stranger.get(url)
        assert answer.status_code == 200 and answer.json()["items"] == [], f"{url}: {answer.text[:300]}"


@pytest.mark.parametrize("role", ["viewer"])
def test_a_viewer_reads_everything_and_changes_nothing(web: Any, role: str) -> None:
    s = seed(web)
    viewer = web.client(role, s.organisation_id)
    for method, path in api_routes(web.app, RESOURCE_TAGS):
        answer = call(viewer, method, path, s)
        if method == "GET":
            assert answer.status_code in (200, 404), f"{method} {path} as viewer: {answer.status_code} {answer.text}"
        elif path not in READ_ONLY_POSTS:
            assert answer.status_code == 403, f"{method} {path} as viewer: {answer.status_code} {answer.text[:200]}"
