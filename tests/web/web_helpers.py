"""Reusable assertions for web tests: who may call an endpoint, and who must not even learn it exists.

    from web_helpers import assert_requires_auth, assert_forbidden_for, assert_hidden_from_other_orgs

    def test_accounts_endpoint_is_guarded(web):
        assert_requires_auth(web, "GET", "/api/v1/accounts")                    # anonymous: 401 (pages: 303 to login)
        assert_forbidden_for(web, ["tenant", "viewer"], "POST", "/api/v1/accounts", json={...})   # 403
        assert_hidden_from_other_orgs(web, "admin", "GET", f"/api/v1/accounts/{account_id}")      # 404

Each helper makes its own users and clients through the ``web`` fixture (tests/web/conftest.py).
Session clients carry the CSRF token, so a 403 here is the role check, not CSRF.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGE_PREFIXES = ("/console", "/portal")


def _is_page(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PAGE_PREFIXES)


def assert_requires_auth(web: Any, method: str, path: str, **request: Any) -> None:
    """Anonymous callers are refused: 401 ``{"detail": ...}`` for the API, 303 to the login page (with
    ``next`` = the path) for console and portal pages; a bad bearer token or API key gets the same."""
    anonymous = web.anonymous()
    answer = anonymous.request(method, path, **request)
    if _is_page(path):
        assert answer.status_code == 303, f"{method} {path} anonymous: {answer.status_code}, expected 303"
        location = urlsplit(answer.headers["location"])
        login = "/portal/login" if path.startswith("/portal") else "/login"
        assert location.path == login, f"{method} {path} redirected to {answer.headers['location']}"
        assert parse_qs(location.query)["next"][0].split("?")[0] == path
    else:
        assert answer.status_code == 401, f"{method} {path} anonymous: {answer.status_code}, expected 401"
        assert answer.json()["detail"], "the 401 must say what is missing"
    expected = 303 if _is_page(path) else 401
    for header in ({"Authorization": "Bearer not-a-token"}, {"X-API-Key": "pg_00000000.not-a-key"}):
        forged = anonymous.request(method, path, headers=header, **request)
        assert forged.status_code == expected, f"{method} {path} with {header}: {forged.status_code}, not {expected}"


def assert_forbidden_for(
    web: Any, roles: Iterable[str], method: str, path: str, *, org_id: int | None = None, **request: Any
) -> None:
    """Each role in ``roles`` (tenants get an ``account_id`` from ``request.pop("account_id")``) gets 403 with a
    ``detail`` naming the role, by session and, for staff roles, by bearer token."""
    account_id = request.pop("account_id", None)
    for role in roles:
        clients = [web.client(role, org_id, account_id=account_id if role == "tenant" else None)]
        if role != "tenant":
            clients.append(web.bearer(role, org_id))
        for client in clients:
            answer = client.request(method, path, **request)
            assert answer.status_code == 403, f"{method} {path} as {role}: {answer.status_code}, expected 403"
            if not _is_page(path):
                assert role in answer.json()["detail"], answer.text


def assert_hidden_from_other_orgs(web: Any, role: str, method: str, path: str, **request: Any) -> None:
    """A user of ``role`` in another organisation gets 404 (not 403: ids of other organisations do not leak)."""
    other = web.org("OTHER-ORG")
    answer = web.client(role, other).request(method, path, **request)
    assert answer.status_code == 404, f"{method} {path} from another organisation: {answer.status_code}, expected 404"


TEST_SECRET = "test-secret-key-for-the-web-tests-0123456789"
START = dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.UTC)


class FakeClock:
    """A settable UTC clock: ``clock()`` is now; ``set(when)``, ``advance(**timedelta_kwargs)``."""

    def __init__(self, start: dt.datetime = START) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def set(self, when: dt.datetime) -> None:
        assert when.tzinfo is not None, "the clock is in UTC: give an aware datetime"
        self.now = when

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now
