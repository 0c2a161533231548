"""Fixtures for the web tests: ``web``, one application over a migrated database (SQLite and PostgreSQL).

    def test_something(web):
        org = web.org()                               # organisation "ORG1" (created once per test)
        client = web.client("operator", org)         # logged in by session, X-CSRF-Token preset
        api = web.bearer("finance", org)             # Authorization: Bearer <token>
        account = web.account(org)                   # a staged account (site made on first use)
        tenant = web.client("tenant", org, account_id=account)   # a tenant of one account
        web.anonymous()                              # nobody
        web.clock.advance(hours=9)                   # the app's clock (UTC), settable

Logins go through the real ``POST /login`` and ``POST /api/v1/auth/token``. Passwords are hashed with real
argon2id at cheap parameters (the production profile costs ~0.3 s per hash on the CI machine).
Reusable assertions (anonymous 401, wrong role 403, other organisation 404) are in ``web_helpers.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select
from web_helpers import START, TEST_SECRET, FakeClock  # noqa: F401 - re-exported

from powergate.services import users as users_service
from powergate.store.tables_structure import organisations
from powergate.web.app import create_app
from powergate.web.settings import WebSettings
from testkit import *  # noqa: F403 - so that `from conftest import free_port` works whichever conftest it finds


@pytest.fixture(autouse=True, scope="session")
def _cheap_password_hashing() -> Iterator[None]:
    """Real argon2id, with parameters that make a hash take a millisecond instead of a third of a second."""
    original = users_service.PASSWORD_HASHER
    users_service.PASSWORD_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    users_service.PASSWORD_HASHER = original


@dataclass
class Web:
    app: FastAPI
    engine: Engine
    clock: FakeClock
    db_url: str
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _clients: list[TestClient] = field(default_factory=list)

    # --- data ---------------------------------------------------------------------------------------------

    def org(self, code: str = "ORG1", name: str | None = None) -> int:
        """The id of organisation ``code`` (created if it does not exist yet)."""
        with self.engine.begin() as conn:
            found = conn.execute(select(organisations.c.id).where(organisations.c.code == code)).scalar()
            if found is not None:
                return int(found)
            return int(
                conn.execute(
                    insert(organisations)
                    .values(code=code, name=name or f"Organisation {code}", created_at=self.clock())
                    .returning(organisations.c.id)
                ).scalar_one()
            )

    def user(
        self,
        role: str,
        org_id: int | None = None,
        account_id: int | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        phone: str | None = None,
    ) -> tuple[str, str]:
        """Create a user; returns ``(username, password)``. Tenants need ``account_id``."""
        org_id = self.org() if org_id is None else org_id
        if role == "tenant":
            assert account_id is not None, "a tenant user needs account_id (the account it may see)"
        n = next(self._counter)
        username = username or f"{role}{n}"
        password = password or f"pass-{role}-{n}-secret"
        with self.engine.begin() as conn:
            made = users_service.create_user(
                conn,
                org_id,
                username,
                password,
                role,
                account_id=account_id,
                phone=phone,
                actor="system:test",
                now=self.clock(),
            )
        assert isinstance(made, int), f"could not create the test user: {made}"
        return username, password

    def account(self, org_id: int | None = None, account_no: str | None = None) -> int:
        """A staged account (with a site "Site <code>" made on first use) through the real services; its id."""
        from powergate.domain.structure import PaymentChannel
        from powergate.services import accounts as account_service
        from powergate.store.tables_structure import sites

        org_id = self.org() if org_id is None else org_id
        code = self.org_code(org_id)
        account_no = account_no or f"A-{next(self._counter):04d}"
        with self.engine.begin() as conn:
            site_id = conn.execute(
                select(sites.c.id).where(sites.c.organisation_id == org_id, sites.c.name == f"Site {code}")
            ).scalar()
            if site_id is None:
                site_id = account_service.create_site(
                    conn,
                    org_id,
                    f"Site {code}",
                    timezone="Asia/Shanghai",
                    currency="CNY",
                    channels=[PaymentChannel.CASHIER],
                    actor="system:test",
                    now=self.clock(),
                )
                assert isinstance(site_id, int), f"could not create the test site: {site_id}"
            made = account_service.stage_account(
                conn, int(site_id), account_no, f"Tenant {account_no}", actor="system:test", now=self.clock()
            )
        assert isinstance(made, int), f"could not create the test account: {made}"
        return made

    def org_code(self, org_id: int) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(select(organisations.c.code).where(organisations.c.id == org_id)).scalar_one())

    # --- clients ------------------------------------------------------------------------------------------

    def anonymous(self, **kwargs: Any) -> TestClient:
        """A client with no credentials (``follow_redirects=False`` so redirects can be asserted)."""
        kwargs.setdefault("follow_redirects", False)
        client = TestClient(self.app, **kwargs)
        self._clients.append(client)
        return client

    def login(self, username: str, password: str, org_id: int) -> TestClient:
        """A client logged in by session through ``POST /login``, with ``X-CSRF-Token`` preset."""
        client = self.anonymous()
        answer = client.post(
            "/login", data={"organisation": self.org_code(org_id), "username": username, "password": password}
        )
        assert answer.status_code == 303, f"login failed: {answer.status_code} {answer.text[:300]}"
        me = client.get("/api/v1/auth/me")
        assert me.status_code == 200, me.text
        client.headers["X-CSRF-Token"] = me.json()["csrf_token"]
        return client

    def client(self, role: str, org_id: int | None = None, account_id: int | None = None) -> TestClient:
        """A new user of ``role`` logged in by session (cookie ``pg_session``), ``X-CSRF-Token`` preset."""
        org_id = self.org() if org_id is None else org_id
        username, password = self.user(role, org_id, account_id)
        return self.login(username, password, org_id)

    def bearer(self, role: str, org_id: int | None = None, account_id: int | None = None) -> TestClient:
        """A new user of ``role`` with ``Authorization: Bearer <token>`` from ``POST /api/v1/auth/token``."""
        org_id = self.org() if org_id is None else org_id
        username, password = self.user(role, org_id, account_id)
        client = self.anonymous()
        answer = client.post(
            "/api/v1/auth/token",
            json={"organisation": self.org_code(org_id), "username": username, "password": password},
        )
        assert answer.status_code == 200, f"token request failed: {answer.status_code} {answer.text[:300]}"
        client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        return client

    def api_key(self, role: str, org_id: int | None = None) -> TestClient:
        """A client with ``X-API-Key`` for a new key of ``role`` (owned by a new user of that role)."""
        org_id = self.org() if org_id is None else org_id
        owner, _password = self.user(role, org_id)
        code = self.org_code(org_id)
        with self.engine.begin() as conn:
            user = users_service.find_user(conn, code, owner)
            assert user is not None
            key = users_service.create_api_key(
                conn, org_id, f"key-{owner}", role, user_id=user.id, actor="system:test", now=self.clock()
            )
        assert isinstance(key, users_service.NewApiKey), f"could not create the test API key: {key}"
        client = self.anonymous()
        client.headers["X-API-Key"] = key.secret
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture
def web(db_url: str) -> Iterator[Web]:
    clock = FakeClock()
    app = create_app(WebSettings(database_url=db_url, secret_key=TEST_SECRET, clock=clock))
    helper = Web(app=app, engine=app.state.engine, clock=clock, db_url=db_url)
    try:
        yield helper
    finally:
        helper.close()
        app.state.engine.dispose()
