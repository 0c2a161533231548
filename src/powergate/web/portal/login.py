"""Portal login and logout: account number + password, or mobile number + SMS code.

- ``GET /portal/login`` shows both forms (``?org=CODE`` pre-fills the property code, as the QR code posted in a
  building does; with one organisation in the database it is filled in by itself).
- ``POST /portal/login/password``: organisation code, account number, password. The account number names the
  tenant user bound to that account (``services.users``); ``authenticate`` checks the password and limits
  failures (429 with ``Retry-After``). A staff login is refused here: staff use the console.
- ``POST /portal/login/code``: asks for a code; ``services.portal.issue_login_code`` limits how often, then the
  code goes out through the SMS adapter (``powergate.notify``, configured by ``settings.notify``).
- ``POST /portal/login/sms``: checks the code (single use, 5 minutes, 5 guesses) and starts the session.
- ``POST /portal/logout`` ends it.

Nothing is half-applied: a refused login writes only the failure that counts against its limits.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Engine, func, select
from starlette.concurrency import run_in_threadpool

from powergate.domain.notifications import OutgoingMessage
from powergate.services import portal
from powergate.services import users as users_service
from powergate.store.tables_auth import users
from powergate.store.tables_structure import accounts, organisations
from powergate.web.deps import (
    client_ip,
    end_session,
    get_engine,
    get_settings,
    optional_principal,
    safe_next,
    start_session,
)
from powergate.web.i18n import language
from powergate.web.portal._catalog import CATALOG
from powergate.web.portal._common import field, now, render

router = APIRouter(tags=["portal"], include_in_schema=False)

PORTAL_HOME = "/portal/"


def portal_next(target: str | None) -> str:
    """Where to go after a portal login: a local portal path (no open redirect, no console page), else home."""
    safe = safe_next(target, PORTAL_HOME)
    return safe if safe == "/portal" or safe.startswith("/portal/") else PORTAL_HOME


class _Undo(Exception):
    """Roll the login transaction back and show ``refused``."""

    def __init__(self, refused: portal.Refused) -> None:
        super().__init__(refused.message)
        self.refused = refused


def _default_organisation(engine: Engine) -> str:
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(organisations)).scalar_one()
        if int(count) != 1:
            return ""
        return str(conn.execute(select(organisations.c.code)).scalar_one())


def sms_channel(request: Request) -> Any | None:
    """The SMS adapter of this app (built once from ``settings.notify``), or None when SMS is not configured."""
    state = request.app.state
    if not hasattr(state, "portal_sms_channel"):
        config = get_settings(request).notify
        channel = None
        if config is not None and getattr(config, "sms", None) is not None:
            from powergate.notify.config import build_channels

            channel = build_channels(config).get("sms")
        state.portal_sms_channel = channel
    return state.portal_sms_channel


async def _page(
    request: Request,
    *,
    status: int = 200,
    error: str = "",
    notice: str = "",
    values: dict[str, str] | None = None,
    code_sent: bool = False,
) -> HTMLResponse:
    values = dict(values or {})
    if not values.get("org"):
        values["org"] = (request.query_params.get("org") or "")[:32] or await run_in_threadpool(
            _default_organisation, get_engine(request)
        )
    context = {
        "error": error,
        "notice": notice,
        "values": values,
        "code_sent": code_sent,
        "sms_enabled": sms_channel(request) is not None,
        "next": portal_next(request.query_params.get("next") or values.get("next")),
    }
    return render(request, "login.html", context, status=status)


@router.get("/login")
async def login_page(request: Request) -> Response:
    who = await optional_principal(request)
    if who is not None and who.role.value == "tenant":
        return RedirectResponse(portal_next(request.query_params.get("next")), status_code=303)
    return await _page(request)


def _username_for(engine: Engine, org: str, account_no: str) -> str:
    """The username of the tenant user bound to account ``account_no`` of ``org`` (else the text as given)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(users.c.username)
            .join(accounts, accounts.c.id == users.c.account_id)
            .join(organisations, organisations.c.id == users.c.organisation_id)
            .where(
                organisations.c.code == org,
                accounts.c.account_no == account_no,
                users.c.role == "tenant",
                users.c.disabled.is_(False),
            )
            .order_by(users.c.id)
            .limit(1)
        ).scalar()
    return account_no if found is None else str(found)


@router.post("/login/password")
async def login_password(request: Request) -> Response:
    form = await request.form()
    org, account_no, password = field(form, "org", 32), field(form, "account_no", 64), field(form, "password", 256)
    values = {"org": org, "account_no": account_no, "next": field(form, "next", 2_000)}
    _ = CATALOG.gettext(language(request))
    if not (org and account_no and password):
        return await _page(
            request, status=422, error=_("login.failed") + "organisation, account_no, password", values=values
        )
    engine = get_engine(request)
    at = now(request)
    username = await run_in_threadpool(_username_for, engine, org, account_no)
    result = await run_in_threadpool(
        users_service.authenticate, engine, org, username, password, client_ip=client_ip(request), now=at
    )
    if isinstance(result, users_service.LoginRejected):
        page = await _page(
            request, status=429 if result.rate_limited else 401, error=_("login.failed") + result.message, values=values
        )
        if result.rate_limited:
            page.headers["Retry-After"] = str(result.retry_after_s)
        return page
    if result.role is not users_service.Role.TENANT:
        return await _page(request, status=403, error=_("login.staff"), values=values)
    response = RedirectResponse(portal_next(values["next"]), status_code=303)
    await run_in_threadpool(_start, engine, response, result.id, at)
    return response


def _start(engine: Engine, response: Response, user_id: int, at: dt.datetime) -> None:
    with engine.begin() as conn:
        start_session(response, conn, user_id, at)


def _issue(
    engine: Engine, phone_text: str, account_no: str, client: str, secret: str, at: dt.datetime
) -> portal.CodeIssued | portal.Refused:
    with engine.begin() as conn:
        phone = portal.normalise_phone(phone_text)
        if isinstance(phone, portal.Refused):
            return phone
        login = portal.choose_phone_login(conn, phone, account_no or None)
        if isinstance(login, portal.Refused):
            return login
        return portal.issue_login_code(conn, phone, client=client, secret_key=secret, now=at)


def _mark(engine: Engine, code_id: int, ok: bool) -> None:
    with engine.begin() as conn:
        portal.mark_delivery(conn, code_id, ok)


@router.post("/login/code")
async def send_code(request: Request) -> Response:
    form = await request.form()
    values = {
        "phone": field(form, "phone", 32),
        "account_no": field(form, "account_no", 64),
        "next": field(form, "next", 2_000),
    }
    lang = language(request)
    _ = CATALOG.gettext(lang)
    channel = sms_channel(request)
    if channel is None:
        return await _page(request, status=503, error=_("login.sms_unavailable"), values=values)
    engine = get_engine(request)
    settings = get_settings(request)
    issued = await run_in_threadpool(
        _issue, engine, values["phone"], values["account_no"], client_ip(request), settings.secret_key, now(request)
    )
    if isinstance(issued, portal.Refused):
        status = 429 if issued.field == portal.RATE_LIMIT else 422
        return await _page(request, status=status, error=_("login.failed") + issued.message, values=values)
    minutes = str(int(portal.CODE_TTL.total_seconds() // 60))
    message = OutgoingMessage(
        message_id=f"portal-login-{issued.code_id}",
        channel="sms",
        address=issued.phone,
        subject="",
        body=_("sms.login_code").format(code=issued.code, minutes=minutes),
        language=lang,
        event="login_code",
        data={"code": issued.code, "minutes": minutes},
    )
    delivered = await channel.send(message)
    await run_in_threadpool(_mark, engine, issued.code_id, delivered.ok)
    values["phone"] = issued.phone
    if not delivered.ok:
        return await _page(request, status=502, error=_("login.sms_failed") + delivered.reason, values=values)
    return await _page(request, notice=_("login.code_sent"), values=values, code_sent=True)


def _verify(
    engine: Engine,
    response: Response,
    phone_text: str,
    code: str,
    account_no: str,
    client: str,
    secret: str,
    at: dt.datetime,
) -> portal.Refused | None:
    phone = portal.normalise_phone(phone_text)
    if isinstance(phone, portal.Refused):
        return phone
    with engine.begin() as conn:
        login = portal.choose_phone_login(conn, phone, account_no or None)
        if isinstance(login, portal.Refused):
            return login
        verified = portal.verify_login_code(conn, phone, code, client=client, secret_key=secret, now=at)
        if isinstance(verified, portal.Refused):
            return verified  # committed: the wrong guess counts
    try:
        with engine.begin() as conn:
            user_id = portal.ensure_tenant_user(conn, login, phone, at)
            if isinstance(user_id, portal.Refused):
                raise _Undo(user_id)
            start_session(response, conn, user_id, at)
    except _Undo as undo:
        return undo.refused
    return None


@router.post("/login/sms")
async def login_sms(request: Request) -> Response:
    form = await request.form()
    values = {
        "phone": field(form, "phone", 32),
        "account_no": field(form, "account_no", 64),
        "next": field(form, "next", 2_000),
    }
    _ = CATALOG.gettext(language(request))
    response = RedirectResponse(portal_next(values["next"]), status_code=303)
    refused = await run_in_threadpool(
        _verify,
        get_engine(request),
        response,
        values["phone"],
        field(form, "code", 16),
        values["account_no"],
        client_ip(request),
        get_settings(request).secret_key,
        now(request),
    )
    if refused is not None:
        status = 429 if refused.field == portal.RATE_LIMIT else 401
        return await _page(
            request, status=status, error=_("login.failed") + refused.message, values=values, code_sent=True
        )
    return response


def _end(engine: Engine, request: Request, response: Response) -> None:
    with engine.begin() as conn:
        end_session(request, response, conn)


@router.post("/logout")
async def logout(request: Request) -> Response:
    who = await optional_principal(request)  # enforces CSRF for a session
    if who is None:
        raise HTTPException(status_code=401, detail="not logged in")
    response = RedirectResponse("/portal/login", status_code=303)
    await run_in_threadpool(_end, get_engine(request), request, response)
    return response
