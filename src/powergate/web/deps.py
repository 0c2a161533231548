"""Who is asking: the FastAPI dependencies every router uses (the web contract's auth part).

A request is authenticated by exactly one of, in this order:
1. ``X-API-Key: pg_xxxxxxxx.<secret>`` (an API key an admin made; role-bounded, revocable);
2. ``Authorization: Bearer <token>`` (from ``POST /api/v1/auth/token``);
3. the session cookie ``pg_session`` (from ``/login`` or the portal's login).
A header that is present but wrong answers 401; it never falls back to the cookie.

CSRF: a state-changing request (POST/PUT/PATCH/DELETE) authenticated by the session cookie must carry the
session's CSRF token in the ``X-CSRF-Token`` header or the ``csrf_token`` form field, or it answers 403. Header
credentials cannot be sent by a foreign page, so bearer and API-key requests are exempt.

Organisation scoping is the caller's job in every query (``principal.organisation_id``; tenants only ever
``principal.account_id``); another organisation's ids answer 404, never 403.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

from powergate.services import users as users_service
from powergate.services.users import Role
from powergate.web.settings import WebSettings

__all__ = [
    "SESSION_COOKIE",
    "STAFF",
    "LoginRequired",
    "Principal",
    "Role",
    "csrf_token",
    "end_session",
    "get_engine",
    "get_settings",
    "now",
    "page_principal",
    "principal",
    "require",
    "require_page",
    "safe_next",
    "start_session",
]

SESSION_COOKIE = "pg_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STAFF = (Role.ADMIN, Role.OPERATOR, Role.FINANCE, Role.VIEWER)
"""Read access to the console."""


@dataclass(frozen=True)
class Principal:
    user_id: int
    organisation_id: int
    role: Role
    username: str
    account_id: int | None
    """Set for tenants only: the one account they may see."""
    via: str
    """"session" | "bearer" | "api_key"."""
    organisation_code: str = ""
    api_key_prefix: str | None = None
    """For ``via == "api_key"``: which key (its visible prefix), so the audit log tells keys apart."""

    @property
    def actor(self) -> str:
        """Who, for ``audit_log.actor``: ``user:alice@ORG1`` (``user:alice@ORG1/key:pg_1a2b3c4d`` by API key)."""
        who = f"user:{self.username}@{self.organisation_code}"
        if self.api_key_prefix:
            who += f"/key:{self.api_key_prefix}"
        return who[:120]

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF


# --- plain accessors ------------------------------------------------------------------------------------------


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> WebSettings:
    settings: WebSettings = request.app.state.settings
    return settings


def now(request: Request) -> dt.datetime:
    """UTC now by the application's clock (``settings.clock``)."""
    value = get_settings(request).clock()
    assert value.tzinfo is not None, "WebSettings.clock must return timezone-aware datetimes"
    return value


# --- resolving the principal ----------------------------------------------------------------------------------


class LoginRequired(Exception):
    """Raised by ``page_principal`` for an anonymous page request; the app answers 303 to ``location``."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True)
class _Resolved:
    principal: Principal | None
    csrf: str | None
    failure: str | None
    """Why a presented credential was refused (None: nothing was presented, or it was fine)."""


_STATE_KEY = "powergate_auth"


def _from_user(
    user: users_service.UserView, via: str, role: Role | None = None, prefix: str | None = None
) -> Principal:
    return Principal(
        user_id=user.id,
        organisation_id=user.organisation_id,
        role=role or user.role,
        username=user.username,
        account_id=user.account_id,
        via=via,
        organisation_code=user.organisation_code,
        api_key_prefix=prefix,
    )


def _resolve_sync(
    engine: Engine, api_key: str | None, bearer: str | None, cookie: str | None, at: dt.datetime
) -> _Resolved:
    with engine.begin() as conn:
        if api_key is not None:
            found = users_service.resolve_api_key(conn, api_key.strip(), at)
            if found is None:
                return _Resolved(None, None, "the API key is unknown, revoked or no longer allowed")
            owner, key = found
            return _Resolved(_from_user(owner, "api_key", key.role, key.prefix), None, None)
        if bearer is not None:
            session = users_service.resolve_session(conn, bearer, at, kind="bearer")
            if session is None:
                return _Resolved(None, None, "the bearer token is unknown or expired; get a new one")
            return _Resolved(_from_user(session.user, "bearer"), None, None)
        if cookie:
            session = users_service.resolve_session(conn, cookie, at, kind="session")
            if session is not None:
                return _Resolved(_from_user(session.user, "session"), session.csrf_token, None)
            return _Resolved(None, None, "the session has expired; log in again")
    return _Resolved(None, None, None)


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


async def _resolve(request: Request) -> _Resolved:
    cached: _Resolved | None = getattr(request.state, _STATE_KEY, None)
    if cached is not None:
        return cached
    resolved = await run_in_threadpool(
        _resolve_sync,
        get_engine(request),
        request.headers.get("x-api-key"),
        _bearer_token(request),
        request.cookies.get(SESSION_COOKIE),
        now(request),
    )
    setattr(request.state, _STATE_KEY, resolved)
    return resolved


async def _check_csrf(request: Request, resolved: _Resolved) -> None:
    if request.method not in UNSAFE_METHODS or resolved.principal is None or resolved.principal.via != "session":
        return
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
    if not users_service.csrf_matches(resolved.csrf, given):
        raise HTTPException(
            status_code=403,
            detail=f"CSRF token missing or wrong: send the session's token in the {CSRF_HEADER} header "
            f"or the {CSRF_FIELD} form field",
        )


# Declared for the OpenAPI document (Swagger's "Authorize" button); the credentials are read from the request.
_bearer_scheme = HTTPBearer(auto_error=False, description="a token from POST /api/v1/auth/token")
_api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key made by an admin")
_cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="the console / portal session")


async def principal(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)] = None,
    _api_key: Annotated[str | None, Security(_api_key_scheme)] = None,
    _cookie: Annotated[str | None, Security(_cookie_scheme)] = None,
) -> Principal:
    """FastAPI dependency: the authenticated principal, or 401 ``{"detail": ...}``. Enforces CSRF."""
    resolved = await _resolve(request)
    if resolved.principal is None:
        raise HTTPException(
            status_code=401,
            detail=resolved.failure or "not authenticated: log in, or send a bearer token or an X-API-Key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await _check_csrf(request, resolved)
    return resolved.principal


async def optional_principal(request: Request) -> Principal | None:
    """The principal if the request is authenticated (CSRF enforced), else None; never 401."""
    resolved = await _resolve(request)
    if resolved.principal is None:
        return None
    await _check_csrf(request, resolved)
    return resolved.principal


def _login_location(request: Request) -> str:
    path = request.url.path
    target = path + (f"?{request.url.query}" if request.url.query else "")
    login = "/portal/login" if path == "/portal" or path.startswith("/portal/") else "/login"
    return f"{login}?next={quote(target, safe='/')}"


async def page_principal(request: Request) -> Principal:
    """For HTML pages: like ``principal``, but an anonymous request is redirected (303) to ``/login?next=...``
    (``/portal/login`` for portal pages) instead of answering 401."""
    resolved = await _resolve(request)
    if resolved.principal is None:
        raise LoginRequired(_login_location(request))
    await _check_csrf(request, resolved)
    return resolved.principal


def _role_names(roles: tuple[Role, ...]) -> str:
    return ", ".join(r.value for r in roles)


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """Dependency factory: the principal if its role is one of ``roles``, else 403 (401 when anonymous)."""
    assert roles, "require() needs at least one role"
    allowed = tuple(Role(r) for r in roles)

    async def dependency(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in allowed:
            raise HTTPException(
                status_code=403, detail=f"role {who.role.value} may not do this; needs {_role_names(allowed)}"
            )
        return who

    dependency.__name__ = f"require_{'_'.join(r.value for r in allowed)}"
    return dependency


def require_page(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """Like ``require`` for HTML pages: anonymous -> 303 to the login page, wrong role -> 403."""
    assert roles, "require_page() needs at least one role"
    allowed = tuple(Role(r) for r in roles)

    async def dependency(who: Annotated[Principal, Depends(page_principal)]) -> Principal:
        if who.role not in allowed:
            raise HTTPException(
                status_code=403, detail=f"role {who.role.value} may not see this; needs {_role_names(allowed)}"
            )
        return who

    dependency.__name__ = f"require_page_{'_'.join(r.value for r in allowed)}"
    return dependency


def csrf_token(request: Request) -> str:
    """For templates: the session's CSRF token ("" when the request is not authenticated by a session).

    Call it after the page's principal dependency has run (it reads what that dependency resolved)."""
    resolved: _Resolved | None = getattr(request.state, _STATE_KEY, None)
    if resolved is None or resolved.csrf is None:
        return ""
    return resolved.csrf


# --- sessions -------------------------------------------------------------------------------------------------


def start_session(response: Response, conn: Connection, user_id: int, now: dt.datetime) -> str:
    """Log a user in: make a session in ``conn``'s transaction and set the ``pg_session`` cookie on
    ``response`` (HttpOnly, SameSite=Lax, Path=/; Secure is added by the app when ``cookie_secure``).
    Returns the session's CSRF token. The portal calls this after verifying a tenant's SMS code."""
    token, csrf = users_service.create_session(conn, user_id, now, kind="session")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(users_service.SESSION_ABSOLUTE.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
    )
    return csrf


def end_session(request: Request, response: Response, conn: Connection) -> bool:
    """Log out: delete the request's session (if any) and clear the cookie. True if a session was ended."""
    token = request.cookies.get(SESSION_COOKIE)
    ended = users_service.delete_session(conn, token) if token else False
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return ended


def safe_next(target: str | None, default: str = "/console/") -> str:
    """A redirect target that stays on this site: a local absolute path, else ``default`` (no open redirect)."""
    if not target or len(target) > 2_000:
        return default
    if not target.startswith("/") or target.startswith("//") or target.startswith("/\\"):
        return default
    if any(c in target for c in "\\\r\n\t") or any(ord(c) < 0x20 for c in target):
        return default
    return target


def client_ip(request: Request) -> str:
    """The client's address as the server saw it (no proxy headers are trusted)."""
    return request.client.host if request.client else "unknown"


def is_loopback(request: Request) -> bool:
    host = client_ip(request)
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")
