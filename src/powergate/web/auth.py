"""Logging in and out: the console login page, ``/logout``, ``/lang/{code}`` and the token API.

- ``GET /login`` shows the page (zh-CN / English); ``POST /login`` (organisation code, username, password,
  next) starts a session and redirects (303) to ``next`` if it is a local path (no open redirect), else to
  ``/console/`` (tenants: ``/portal/``). Wrong credentials answer 401 with the page again; a rate-limited login
  answers 429 with ``Retry-After`` and the password is not checked.
- ``/logout`` (POST with the CSRF token, or GET) ends the session and redirects to ``/login``.
- ``POST /api/v1/auth/token`` (JSON: organisation, username, password) answers a bearer token with its expiry;
  ``DELETE /api/v1/auth/token`` revokes the presented token; ``GET /api/v1/auth/me`` says who is asking (and,
  for a session, its CSRF token, for scripts that call the API from a logged-in page).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from powergate import __version__
from powergate.services import users as users_service
from powergate.web.deps import (
    SESSION_COOKIE,
    Principal,
    client_ip,
    end_session,
    get_engine,
    now,
    optional_principal,
    principal,
    safe_next,
    start_session,
)
from powergate.web.i18n import LANG_COOKIE, LANGS, Catalog, language

MAX_FIELD_CHARS = 256

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))

catalog = Catalog(
    {
        "title": {"zh-CN": "登录 · PowerGate 预付费能源管理", "en": "Log in · PowerGate prepaid energy"},
        "heading": {"zh-CN": "登录管理平台", "en": "Log in to the console"},
        "organisation": {"zh-CN": "机构代码", "en": "Organisation code"},
        "username": {"zh-CN": "用户名", "en": "Username"},
        "password": {"zh-CN": "密码", "en": "Password"},
        "submit": {"zh-CN": "登录", "en": "Log in"},
        "wrong": {
            "zh-CN": "机构代码、用户名或密码不正确。",
            "en": "The organisation code, username or password is wrong.",
        },
        "missing": {
            "zh-CN": "请填写机构代码、用户名和密码。",
            "en": "Fill in the organisation code, username and password.",
        },
        "too_many": {
            "zh-CN": "登录失败次数过多，请在 {minutes} 分钟后再试。",
            "en": "Too many failed logins; try again in {minutes} minutes.",
        },
        "tenant_hint": {"zh-CN": "租户请使用自助服务页面登录：", "en": "Tenants log in on the self-service page:"},
        "portal": {"zh-CN": "租户自助服务", "en": "Tenant self-service"},
        "language": {"zh-CN": "语言", "en": "Language"},
        "logged_out": {"zh-CN": "您已退出登录。", "en": "You have logged out."},
        "foreign": {
            "zh-CN": "登录请求来自其他网站，已拒绝。请直接在本页登录。",
            "en": "The login came from another site and was refused. Log in on this page.",
        },
    }
)

router = APIRouter(tags=["auth"], include_in_schema=False)
api_router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


def _login_page(request: Request, *, status: int, error: str = "", form: dict[str, str] | None = None) -> HTMLResponse:
    lang = language(request)
    values = form or {}
    return templates.TemplateResponse(
        request,
        "login.html",
        {
            "lang": lang,
            "_": catalog.gettext(lang),
            "error": error,
            "next": safe_next(values.get("next") or request.query_params.get("next"), ""),
            "organisation": values.get("organisation", ""),
            "username": values.get("username", ""),
            "logged_out": request.query_params.get("logged_out") == "1",
            "version": __version__,
        },
        status_code=status,
    )


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return _login_page(request, status=200)


@router.post("/login", response_class=HTMLResponse)
async def login_submit(
    request: Request,
    organisation: Annotated[str, Form(max_length=MAX_FIELD_CHARS)] = "",
    username: Annotated[str, Form(max_length=MAX_FIELD_CHARS)] = "",
    password: Annotated[str, Form(max_length=MAX_FIELD_CHARS)] = "",
    next: Annotated[str, Form(max_length=2_000)] = "",
) -> Response:
    lang = language(request)
    _ = catalog.gettext(lang)
    echo = {"organisation": organisation, "username": username, "next": next}
    if not _same_origin(request):
        # Login CSRF: a foreign page must not log the browser in to an account of the attacker's choosing.
        return _login_page(request, status=403, error=_("foreign"), form={})
    if not organisation.strip() or not username.strip() or not password:
        return _login_page(request, status=400, error=_("missing"), form=echo)
    at = now(request)
    engine = get_engine(request)
    result = await run_in_threadpool(
        users_service.authenticate,
        engine,
        organisation,
        username,
        password,
        client_ip=client_ip(request),
        now=at,
    )
    if isinstance(result, users_service.LoginRejected):
        if result.rate_limited:
            minutes = max(1, -(-result.retry_after_s // 60))
            page = _login_page(request, status=429, error=_("too_many").format(minutes=minutes), form=echo)
            page.headers["Retry-After"] = str(result.retry_after_s)
            return page
        return _login_page(request, status=401, error=_("wrong"), form=echo)
    default = "/portal/" if result.role is users_service.Role.TENANT else "/console/"
    response = RedirectResponse(safe_next(next, default), status_code=303)
    with engine.begin() as conn:
        start_session(response, conn, result.id, at)
    return response


def _same_origin(request: Request) -> bool:
    """True unless the browser says the form was posted from another site (``Origin`` header, when sent)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _logout(request: Request, who: Principal | None) -> Response:
    response = RedirectResponse("/login?logged_out=1", status_code=303)
    with get_engine(request).begin() as conn:
        end_session(request, response, conn)
    return response


@router.get("/logout")
async def logout_get(request: Request) -> Response:
    return await _logout(request, None)


@router.post("/logout")
async def logout_post(request: Request, who: Annotated[Principal | None, Depends(optional_principal)]) -> Response:
    return await _logout(request, who)


@router.get("/lang/{code}")
async def set_language(request: Request, code: str, next: str = "") -> Response:
    """Set the ``lang`` cookie and go back to ``next`` (a local path) or the page we came from."""
    if code not in LANGS:
        raise HTTPException(status_code=404, detail=f"unknown language {code!r}; known: {', '.join(LANGS)}")
    target = safe_next(next, "")
    if not target:
        referer = request.headers.get("referer", "")
        origin = f"{request.url.scheme}://{request.url.netloc}"
        target = safe_next(referer[len(origin) :], "/") if referer.startswith(origin + "/") else "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, path="/", samesite="lax")
    return response


# --- token API ------------------------------------------------------------------------------------------------


class TokenRequest(BaseModel):
    organisation: str = Field(
        min_length=1, max_length=32, pattern=r"^[^\x00]*$", description="organisation code, e.g. ORG1"
    )
    username: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00]*$")
    password: str = Field(min_length=1, max_length=MAX_FIELD_CHARS, pattern=r"^[^\x00]*$")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: dt.datetime
    expires_in: int = Field(description="seconds until the token expires")


class Me(BaseModel):
    user_id: int
    organisation_id: int
    organisation_code: str
    username: str
    role: str
    account_id: int | None
    via: str
    csrf_token: str | None = Field(None, description="the session's CSRF token (session logins only)")


@api_router.post(
    "/token",
    response_model=TokenResponse,
    responses={401: {"description": "wrong credentials"}, 429: {"description": "too many failed logins"}},
)
async def issue_token(request: Request, body: TokenRequest) -> Any:
    """A bearer token for ``Authorization: Bearer <token>`` (valid 8 hours). Rate limited like the login page."""
    at = now(request)
    engine = get_engine(request)
    result = await run_in_threadpool(
        users_service.authenticate,
        engine,
        body.organisation,
        body.username,
        body.password,
        client_ip=client_ip(request),
        now=at,
    )
    if isinstance(result, users_service.LoginRejected):
        if result.rate_limited:
            return JSONResponse(
                status_code=429,
                content={"detail": f"{result.message} (in {result.retry_after_s} s)"},
                headers={"Retry-After": str(result.retry_after_s)},
            )
        return JSONResponse(status_code=401, content={"detail": result.message})
    with engine.begin() as conn:
        token, _csrf = users_service.create_session(conn, result.id, at, kind="bearer")
    expires = at + users_service.BEARER_TTL
    return TokenResponse(
        access_token=token, expires_at=expires, expires_in=int(users_service.BEARER_TTL.total_seconds())
    )


@api_router.delete("/token", status_code=204, responses={401: {"description": "not authenticated"}})
async def revoke_token(request: Request, who: Annotated[Principal, Depends(principal)]) -> Response:
    """Revoke the bearer token this request carries (log out of the API)."""
    if who.via != "bearer":
        raise HTTPException(status_code=400, detail="Authorization: only a bearer token can be revoked here")
    header = request.headers.get("authorization", "")
    with get_engine(request).begin() as conn:
        users_service.delete_session(conn, header.partition(" ")[2].strip())
    return Response(status_code=204)


@api_router.get("/me", response_model=Me, responses={401: {"description": "not authenticated"}})
async def me(request: Request, who: Annotated[Principal, Depends(principal)]) -> Me:
    from powergate.web.deps import csrf_token

    return Me(
        user_id=who.user_id,
        organisation_id=who.organisation_id,
        organisation_code=who.organisation_code,
        username=who.username,
        role=who.role.value,
        account_id=who.account_id,
        via=who.via,
        csrf_token=csrf_token(request) or None,
    )


__all__ = ["SESSION_COOKIE", "api_router", "catalog", "router"]
