"""Logging in and out, sessions, bearer tokens, API keys, CSRF, rate limiting, users and roles."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from web_helpers import assert_forbidden_for, assert_hidden_from_other_orgs, assert_requires_auth

from powergate.services import users as users_service
from powergate.store.audit import audit_records
from powergate.store.tables_auth import api_keys, auth_sessions, login_failures, users
from powergate.web.deps import STAFF, Principal, Role, csrf_token, page_principal, require, require_page, safe_next


def _add_probe_routes(web: Any) -> None:
    """Routes standing in for a console page, a portal page and a staff-only API write."""
    probe = APIRouter()

    @probe.get("/console/probe")
    async def console_page(request: Request, who: Annotated[Principal, Depends(page_principal)]) -> Any:
        return PlainTextResponse(f"{who.username} {csrf_token(request)}")

    @probe.get("/console/admin-probe")
    async def admin_page(who: Annotated[Principal, Depends(require_page(Role.ADMIN))]) -> Any:
        return PlainTextResponse(who.username)

    @probe.get("/portal/probe")
    async def portal_page(who: Annotated[Principal, Depends(page_principal)]) -> Any:
        return PlainTextResponse(who.username)

    @probe.post("/api/v1/probe")
    async def staff_write(who: Annotated[Principal, Depends(require(*STAFF))]) -> dict[str, str]:
        return {"actor": who.actor, "via": who.via}

    web.app.include_router(probe)


def _login(client: Any, org: str, username: str, password: str, **extra: str) -> Any:
    return client.post("/login", data={"organisation": org, "username": username, "password": password, **extra})


# --- the login page -------------------------------------------------------------------------------------------


def test_the_login_page_speaks_chinese_by_default_and_english_when_asked(web: Any) -> None:
    anonymous = web.anonymous()
    page = anonymous.get("/login")
    assert page.status_code == 200
    assert '<html lang="zh-CN">' in page.text and "机构代码" in page.text
    english = anonymous.get("/login", headers={"Accept-Language": "en-US,en;q=0.9,zh;q=0.5"})
    assert '<html lang="en">' in english.text and "Organisation code" in english.text
    switched = anonymous.get("/lang/en", params={"next": "/login"})
    assert switched.status_code == 303 and switched.headers["location"] == "/login"
    assert anonymous.cookies.get("lang") == "en"
    assert "Organisation code" in anonymous.get("/login").text
    assert "<script" not in page.text and "style=" not in page.text, "the CSP forbids inline scripts and styles"
    assert anonymous.get("/lang/fr").status_code == 404


def test_a_good_login_starts_a_session_and_goes_to_next_or_the_console(web: Any) -> None:
    org = web.org()
    username, password = web.user("operator", org)
    client = web.anonymous()
    answer = _login(client, "ORG1", username, password, next="/console/monitor?site=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/monitor?site=1"
    cookie = answer.headers["set-cookie"]
    assert "pg_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    me = client.get("/api/v1/auth/me").json()
    assert me["username"] == username and me["role"] == "operator" and me["via"] == "session"
    assert me["csrf_token"]
    with web.engine.connect() as conn:
        stored = conn.execute(select(auth_sessions.c.token_hash)).scalars().all()
        last_login = conn.execute(select(users.c.last_login_at).where(users.c.username == username)).scalar_one()
    token = client.cookies.get("pg_session")
    assert stored == [users_service.token_hash(token)], "only the token's SHA-256 is stored"
    assert last_login == web.clock()
    tenant_user = web.user("tenant", org, account_id=web.account(org))
    tenant = _login(web.anonymous(), "ORG1", *tenant_user)
    assert tenant.headers["location"] == "/portal/"


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "/ok\r\nSet-Cookie: x=1"],
)
def test_login_never_redirects_off_site(web: Any, target: str) -> None:
    org = web.org()
    username, password = web.user("viewer", org)
    answer = _login(web.anonymous(), "ORG1", username, password, next=target)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/"


def test_a_login_posted_from_another_site_is_refused(web: Any) -> None:
    org = web.org()
    username, password = web.user("viewer", org)
    form = {"organisation": "ORG1", "username": username, "password": password}
    foreign = web.anonymous().post("/login", data=form, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "pg_session" not in foreign.headers.get("set-cookie", "")
    own = web.anonymous().post("/login", data=form, headers={"Origin": "http://testserver"})
    assert own.status_code == 303


def test_safe_next_keeps_local_paths_only() -> None:
    assert safe_next("/console/accounts?page=2") == "/console/accounts?page=2"
    assert safe_next("http://evil.example") == "/console/"
    assert safe_next("//evil.example", "/x") == "/x"
    assert safe_next(None) == "/console/"


def test_the_language_switch_goes_back_only_to_this_site(web: Any) -> None:
    anonymous = web.anonymous()
    assert anonymous.get("/lang/zh-CN", params={"next": "https://evil.example"}).headers["location"] == "/"
    back = anonymous.get("/lang/en", headers={"Referer": "http://testserver/console/monitor"})
    assert back.headers["location"] == "/console/monitor"
    foreign = anonymous.get("/lang/en", headers={"Referer": "https://evil.example/console"})
    assert foreign.headers["location"] == "/"


def test_a_wrong_password_shows_the_page_again_with_a_clear_message(web: Any) -> None:
    org = web.org()
    username, _password = web.user("viewer", org)
    answer = _login(web.anonymous(), "ORG1", username, "not-the-password")
    assert answer.status_code == 401
    assert "机构代码、用户名或密码不正确" in answer.text
    assert "pg_session" not in answer.headers.get("set-cookie", "")
    missing = _login(web.anonymous(), "ORG1", "", "")
    assert missing.status_code == 400 and "请填写" in missing.text


def test_logout_ends_the_session_for_good(web: Any) -> None:
    org = web.org()
    client = web.client("admin", org)
    token = client.cookies.get("pg_session")
    answer = client.post("/logout")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?logged_out=1"
    replay = web.anonymous()
    replay.cookies.set("pg_session", token)
    assert replay.get("/api/v1/auth/me").status_code == 401
    with web.engine.connect() as conn:
        assert conn.execute(select(auth_sessions.c.id)).first() is None


# --- sessions and pages ---------------------------------------------------------------------------------------


def test_pages_send_anonymous_visitors_to_the_right_login_page(web: Any) -> None:
    _add_probe_routes(web)
    assert_requires_auth(web, "GET", "/console/probe")
    assert_requires_auth(web, "GET", "/portal/probe")
    anonymous = web.anonymous()
    answer = anonymous.get("/console/probe", params={"site": "2"})
    assert answer.headers["location"] == "/login?next=/console/probe%3Fsite%3D2"
    org = web.org()
    viewer = web.client("viewer", org)
    page = viewer.get("/console/probe")
    assert page.status_code == 200
    assert page.text.split() == [viewer.get("/api/v1/auth/me").json()["username"], viewer.headers["X-CSRF-Token"]]
    assert viewer.get("/console/admin-probe").status_code == 403
    assert web.client("admin", org).get("/console/admin-probe").status_code == 200


def test_a_session_ends_after_eight_idle_hours_or_seven_days(web: Any) -> None:
    org = web.org()
    client = web.client("viewer", org)
    web.clock.advance(hours=7, minutes=59)
    assert client.get("/api/v1/auth/me").status_code == 200, "activity within 8 hours keeps the session"
    web.clock.advance(hours=8)
    expired = client.get("/api/v1/auth/me")
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]

    busy = web.client("viewer", org)
    for _ in range(23):  # 23 x 7 h = 161 h: active all along, but past the 168 h limit at the next step
        web.clock.advance(hours=7)
        assert busy.get("/api/v1/auth/me").status_code == 200
    web.clock.advance(hours=7)
    assert busy.get("/api/v1/auth/me").status_code == 401


def test_disabling_a_user_or_changing_the_role_ends_their_sessions(web: Any) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    operator = web.client("operator", org)
    operator_id = operator.get("/api/v1/auth/me").json()["user_id"]
    viewer = web.client("viewer", org)
    viewer_id = viewer.get("/api/v1/auth/me").json()["user_id"]
    assert admin.patch(f"/api/v1/users/{operator_id}", json={"role": "viewer"}).status_code == 200
    assert operator.get("/api/v1/auth/me").status_code == 401
    answer = admin.patch(f"/api/v1/users/{viewer_id}", json={"disabled": True, "reason": "left the company"})
    assert answer.status_code == 200 and answer.json()["disabled"] is True
    assert viewer.get("/api/v1/auth/me").status_code == 401
    with web.engine.connect() as conn:
        records = audit_records(conn, action="disable_user")
    assert [(r.actor, r.reason) for r in records] == [(f"user:{_name(admin)}@ORG1", "left the company")]


def _name(client: Any) -> str:
    return str(client.get("/api/v1/auth/me").json()["username"])


# --- CSRF -----------------------------------------------------------------------------------------------------


def test_a_session_post_needs_the_csrf_token_a_header_post_does_not(web: Any) -> None:
    _add_probe_routes(web)
    org = web.org()
    client = web.client("operator", org)
    token = client.headers.pop("X-CSRF-Token")
    refused = client.post("/api/v1/probe")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert client.post("/api/v1/probe", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post("/api/v1/probe", headers={"X-CSRF-Token": token}).status_code == 200
    assert client.post("/api/v1/probe", data={"csrf_token": token}).status_code == 200
    assert client.post("/api/v1/probe", data={"csrf_token": "wrong"}).status_code == 403
    assert client.get("/api/v1/auth/me").status_code == 200, "reading needs no token"
    bearer = web.bearer("operator", org).post("/api/v1/probe")
    assert bearer.status_code == 200 and bearer.json()["via"] == "bearer"
    keyed = web.api_key("operator", org).post("/api/v1/probe")
    assert keyed.status_code == 200 and keyed.json()["via"] == "api_key"
    assert keyed.json()["actor"].startswith("user:operator") and "/key:pg_" in keyed.json()["actor"]


def test_a_bad_header_credential_never_falls_back_to_the_cookie(web: Any) -> None:
    org = web.org()
    client = web.client("admin", org)
    assert client.get("/api/v1/auth/me", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    assert client.get("/api/v1/auth/me", headers={"X-API-Key": "pg_00000000.nonsense"}).status_code == 401
    assert client.get("/api/v1/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401


# --- rate limiting --------------------------------------------------------------------------------------------


def test_five_failures_lock_a_username_for_fifteen_minutes_without_checking_the_password(web: Any) -> None:
    org = web.org()
    username, password = web.user("operator", org)
    client = web.anonymous()
    for _ in range(5):
        assert _login(client, "ORG1", username, "wrong-password").status_code == 401
    locked = _login(client, "ORG1", username, password)
    assert locked.status_code == 429
    assert 0 < int(locked.headers["Retry-After"]) <= 15 * 60
    assert "15 分钟" in locked.text
    token = client.post("/api/v1/auth/token", json={"organisation": "ORG1", "username": username, "password": password})
    assert token.status_code == 429 and int(token.headers["Retry-After"]) > 0
    other_username, other_password = web.user("operator", org)
    assert _login(web.anonymous(), "ORG1", other_username, other_password).status_code == 303
    with web.engine.connect() as conn:
        locks = audit_records(conn, action="login_locked")
    assert [(r.actor, r.subject) for r in locks] == [("system:auth", f"user:ORG1/{username}")]
    web.clock.advance(minutes=15, seconds=1)
    assert _login(web.anonymous(), "ORG1", username, password).status_code == 303


def test_twenty_failures_from_one_address_lock_that_address(web: Any) -> None:
    org = web.org()
    username, password = web.user("viewer", org)
    client = web.anonymous()
    for n in range(20):
        assert _login(client, "ORG1", f"nobody{n}", "wrong-password").status_code == 401
    assert _login(client, "ORG1", username, password).status_code == 429
    elsewhere = web.anonymous(client=("192.0.2.7", 50000))
    assert _login(elsewhere, "ORG1", username, password).status_code == 303
    with web.engine.connect() as conn:
        subjects = [r.subject for r in audit_records(conn, action="login_locked")]
    assert subjects == ["client_ip:testclient"]


def test_an_unknown_user_and_a_disabled_user_get_the_same_answer_as_a_wrong_password(web: Any) -> None:
    org = web.org()
    username, password = web.user("viewer", org)
    web.user("admin", org)
    with web.engine.begin() as conn:
        user = users_service.find_user(conn, "ORG1", username)
        assert user is not None
        users_service.disable_user(conn, org, user.id, actor="system:test", now=web.clock())
    disabled = _login(web.anonymous(), "ORG1", username, password)
    unknown = _login(web.anonymous(), "ORG1", "ghost", password)
    wrong_org = _login(web.anonymous(), "NOPE", username, password)
    assert disabled.status_code == unknown.status_code == wrong_org.status_code == 401


# --- bearer tokens and API keys -------------------------------------------------------------------------------


def test_a_bearer_token_works_for_eight_hours_and_can_be_revoked(web: Any) -> None:
    org = web.org()
    username, password = web.user("finance", org)
    anonymous = web.anonymous()
    issued = anonymous.post(
        "/api/v1/auth/token", json={"organisation": "ORG1", "username": username, "password": password}
    )
    assert issued.status_code == 200
    body = issued.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 8 * 3600
    assert dt.datetime.fromisoformat(body["expires_at"]) == web.clock() + dt.timedelta(hours=8)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert anonymous.get("/api/v1/auth/me", headers=headers).json()["via"] == "bearer"
    web.clock.advance(hours=8)
    assert anonymous.get("/api/v1/auth/me", headers=headers).status_code == 401

    second = web.bearer("finance", org)
    assert second.delete("/api/v1/auth/token").status_code == 204
    assert second.get("/api/v1/auth/me").status_code == 401
    bad = anonymous.post("/api/v1/auth/token", json={"organisation": "ORG1", "username": username, "password": "x"})
    assert bad.status_code == 401 and bad.json()["detail"]
    invalid = anonymous.post("/api/v1/auth/token", json={"organisation": "ORG1"})
    assert invalid.status_code == 422


def test_api_keys_are_shown_once_stored_hashed_bounded_by_their_owner_and_revocable(web: Any) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    made = admin.post("/api/v1/api-keys", json={"name": "grafana", "role": "viewer"})
    assert made.status_code == 201
    key = made.json()
    assert key["secret"].startswith(key["prefix"] + ".") and key["role"] == "viewer"
    with web.engine.connect() as conn:
        stored = conn.execute(select(api_keys.c.secret_hash, api_keys.c.prefix)).one()
    assert stored.secret_hash == users_service.token_hash(key["secret"]) and key["secret"] not in stored
    listed = admin.get("/api/v1/api-keys").json()
    assert [k["prefix"] for k in listed] == [key["prefix"]] and "secret" not in listed[0]
    anonymous = web.anonymous()
    me = anonymous.get("/api/v1/auth/me", headers={"X-API-Key": key["secret"]}).json()
    assert me["role"] == "viewer" and me["via"] == "api_key"

    viewer_username, _ = web.user("viewer", org)
    with web.engine.connect() as conn:
        viewer_id = conn.execute(select(users.c.id).where(users.c.username == viewer_username)).scalar_one()
    too_strong = admin.post("/api/v1/api-keys", json={"name": "escalate", "role": "operator", "user_id": viewer_id})
    assert too_strong.status_code == 422 and too_strong.json()["detail"].startswith("role:")
    duplicate = admin.post("/api/v1/api-keys", json={"name": "grafana", "role": "viewer"})
    assert duplicate.status_code == 422 and duplicate.json()["detail"].startswith("name:")

    revoked = admin.delete(f"/api/v1/api-keys/{key['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert anonymous.get("/api/v1/auth/me", headers={"X-API-Key": key["secret"]}).status_code == 401
    with web.engine.connect() as conn:
        actions = [r.action for r in audit_records(conn) if r.subject.startswith("api_key:")]
    assert actions == ["create_api_key", "revoke_api_key"]


# --- users API ------------------------------------------------------------------------------------------------


def test_only_admins_manage_users(web: Any) -> None:
    org = web.org()
    account = web.account(org)
    assert_requires_auth(web, "GET", "/api/v1/users")
    assert_forbidden_for(web, ["operator", "finance", "viewer", "tenant"], "GET", "/api/v1/users", account_id=account)
    assert_forbidden_for(
        web, ["operator", "tenant"], "POST", "/api/v1/users",
        json={"username": "x", "password": "long-enough", "role": "viewer"}, account_id=account,
    )  # fmt: skip


def test_an_admin_adds_a_user_who_can_then_log_in_and_it_is_audited(web: Any) -> None:
    org = web.org()
    admin = web.client("admin", org)
    made = admin.post(
        "/api/v1/users",
        json={"username": "zhang.wei", "password": "correct horse", "role": "finance", "reason": "new hire"},
    )
    assert made.status_code == 201, made.text
    assert made.json()["role"] == "finance" and made.json()["disabled"] is False
    assert _login(web.anonymous(), "ORG1", "zhang.wei", "correct horse").status_code == 303
    assert [u["username"] for u in admin.get("/api/v1/users").json()] == sorted(["zhang.wei", _name(admin)])
    with web.engine.connect() as conn:
        records = audit_records(conn, action="create_user")
    assert [(r.actor, r.subject, r.reason, r.detail) for r in records][-1] == (
        f"user:{_name(admin)}@ORG1",
        "user:ORG1/zhang.wei",
        "new hire",
        {"role": "finance"},
    )
    with web.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash).where(users.c.username == "zhang.wei")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "short", "password": "seven77", "role": "viewer"}, "password"),
        ({"username": "bad name!", "password": "long-enough", "role": "viewer"}, "username"),
        ({"username": "t1", "password": "long-enough", "role": "tenant"}, "account_id"),
        ({"username": "v1", "password": "long-enough", "role": "viewer", "account_id": 1}, "account_id"),
        ({"username": "p1", "password": "long-enough", "role": "viewer", "phone": "call me"}, "phone"),
    ],
)
def test_a_bad_user_is_refused_naming_the_field_and_nothing_is_written(
    web: Any, body: dict[str, Any], field: str
) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    answer = admin.post("/api/v1/users", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"{field}:"), answer.text
    assert len(admin.get("/api/v1/users").json()) == 1


def test_a_tenant_user_may_only_be_bound_to_an_account_of_the_same_organisation(web: Any) -> None:
    org = web.org()
    other = web.org("ORG2")
    foreign_account = web.account(other)
    own_account = web.account(org)
    admin = web.bearer("admin", org)
    base = {"username": "A-1", "password": "long-enough", "role": "tenant"}
    assert admin.post("/api/v1/users", json={**base, "account_id": foreign_account}).status_code == 422
    made = admin.post("/api/v1/users", json={**base, "account_id": own_account})
    assert made.status_code == 201 and made.json()["account_id"] == own_account
    tenant = web.login("A-1", "long-enough", org)
    me = tenant.get("/api/v1/auth/me").json()
    assert me["role"] == "tenant" and me["account_id"] == own_account


def test_users_of_another_organisation_are_not_found(web: Any) -> None:
    org = web.org()
    web.user("admin", org)
    with web.engine.connect() as conn:
        target = conn.execute(select(users.c.id)).scalar_one()
    assert_hidden_from_other_orgs(web, "admin", "GET", f"/api/v1/users/{target}")
    assert_hidden_from_other_orgs(web, "admin", "PATCH", f"/api/v1/users/{target}", json={"disabled": True})
    assert_hidden_from_other_orgs(web, "admin", "POST", f"/api/v1/users/{target}/password", json={"password": "x" * 9})


def test_the_last_admin_cannot_be_demoted_or_disabled(web: Any) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    me = admin.get("/api/v1/auth/me").json()["user_id"]
    demote = admin.patch(f"/api/v1/users/{me}", json={"role": "viewer"})
    assert demote.status_code == 422 and "last admin" in demote.json()["detail"]
    assert admin.patch(f"/api/v1/users/{me}", json={"disabled": True}).status_code == 422
    second = web.bearer("admin", org)
    assert second.patch(f"/api/v1/users/{me}", json={"role": "operator"}).status_code == 200


def test_an_admin_sets_a_password_and_the_old_one_stops_working(web: Any) -> None:
    org = web.org()
    admin = web.bearer("admin", org)
    username, password = web.user("operator", org)
    with web.engine.connect() as conn:
        user_id = conn.execute(select(users.c.id).where(users.c.username == username)).scalar_one()
    short = admin.post(f"/api/v1/users/{user_id}/password", json={"password": "1234567"})
    assert short.status_code == 422 and "at least 8 characters" in short.json()["detail"]
    assert admin.post(f"/api/v1/users/{user_id}/password", json={"password": "a-new-secret"}).status_code == 200
    assert _login(web.anonymous(), "ORG1", username, password).status_code == 401
    assert _login(web.anonymous(), "ORG1", username, "a-new-secret").status_code == 303


# --- the CLI --------------------------------------------------------------------------------------------------


def test_the_cli_adds_lists_and_keys_users(web: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from powergate.cli import main

    web.org()
    monkeypatch.setenv("POWERGATE_DATABASE_URL", web.db_url)
    monkeypatch.setattr("sys.stdin", io.StringIO("a-strong-password\n"))
    assert main(["user", "add", "--org", "ORG1", "--username", "alice", "--role", "admin", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "add", "--org", "ORG1", "--username", "bob", "--role", "viewer", "--password-stdin"]) == 1
    assert "password: must be at least 8 characters" in capsys.readouterr().err
    assert main(["user", "add", "--org", "NOPE", "--username", "bob", "--role", "viewer", "--password-stdin"]) == 1
    assert main(["user", "list", "--org", "ORG1"]) == 0
    assert "alice" in capsys.readouterr().out
    assert main(["user", "api-key", "--org", "ORG1", "--user", "alice", "--name", "scraper", "--role", "viewer"]) == 0
    secret = capsys.readouterr().out.strip()
    assert web.anonymous().get("/api/v1/auth/me", headers={"X-API-Key": secret}).json()["role"] == "viewer"
    monkeypatch.setattr("sys.stdin", io.StringIO("another-password\n"))
    assert main(["user", "set-password", "--org", "ORG1", "--username", "alice", "--password-stdin"]) == 0
    assert _login(web.anonymous(), "ORG1", "alice", "another-password").status_code == 303
    with web.engine.connect() as conn:
        actors = {r.actor for r in audit_records(conn) if r.subject == "user:ORG1/alice"}
    assert len(actors) == 1 and actors.pop().startswith("cli:")


def test_the_roles_are_the_contracts_roles() -> None:
    assert [r.value for r in Role] == ["admin", "operator", "finance", "viewer", "tenant"]
    assert STAFF == (Role.ADMIN, Role.OPERATOR, Role.FINANCE, Role.VIEWER)
    assert json.dumps(Role.ADMIN) == '"admin"'


def test_expired_sessions_failures_and_old_idempotency_keys_are_purged_when_the_app_starts(web: Any) -> None:
    from fastapi.testclient import TestClient

    org = web.org()
    web.client("viewer", org)
    username, _password = web.user("viewer", org)
    _login(web.anonymous(), "ORG1", username, "wrong-password")
    live_later = web.client("viewer", org)
    web.clock.advance(hours=7)
    assert live_later.get("/api/v1/auth/me").status_code == 200
    web.clock.advance(hours=1, minutes=30)  # the first session has been idle 8.5 h, the second 1.5 h
    with TestClient(web.app):  # the lifespan starts the purger, which runs once at once
        pass
    with web.engine.connect() as conn:
        sessions = conn.execute(select(func.count()).select_from(auth_sessions)).scalar_one()
        failures = conn.execute(select(func.count()).select_from(login_failures)).scalar_one()
    assert (sessions, failures) == (1, 0)
    assert live_later.get("/api/v1/auth/me").status_code == 200
