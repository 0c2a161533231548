"""Console: users and roles (用户). The organisation's users and API keys; an admin creates users, changes a
role, disables or re-enables a user, creates an API key (its secret shown once, on the answer page only) and
revokes one. Everything goes through ``powergate.services.users`` (audited there with the admin as actor and
the reason given here). Every staff role sees the list; only admins change anything.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection, select

from powergate.services import users as users_service
from powergate.services.accounts import Rejected
from powergate.store.tables_structure import accounts
from powergate.web.console._common_b import Admin, Staff, form_text, int_param, read, write
from powergate.web.console._render import render
from powergate.web.deps import Principal, Role, now

router = APIRouter(prefix="/users", tags=["console"])

ROLES = tuple(r.value for r in Role)
DONE = ("created", "role", "disabled", "enabled", "revoked")


def _done(value: str | None) -> str | None:
    return value if value in DONE else None


KEY_ROLES = ("admin", "operator", "finance", "viewer")


async def _page(request: Request, who: Principal, *, status_code: int = 200, **ctx: Any) -> Response:
    def load(conn: Connection) -> tuple[list[users_service.UserView], list[users_service.ApiKeyView], dict[int, str]]:
        people = users_service.list_users(conn, who.organisation_id)
        keys = users_service.list_api_keys(conn, who.organisation_id)
        tenant_accounts = sorted({u.account_id for u in people if u.account_id is not None})
        numbers = {
            int(i): str(n)
            for i, n in conn.execute(
                select(accounts.c.id, accounts.c.account_no).where(
                    accounts.c.id.in_(tenant_accounts), accounts.c.organisation_id == who.organisation_id
                )
            )
        }
        return people, keys, numbers

    people, keys, numbers = await read(request, load)
    return render(
        request,
        "users.html",
        who,
        status_code=status_code,
        people=people,
        keys=keys,
        account_numbers=numbers,
        roles=ROLES,
        key_roles=KEY_ROLES,
        is_admin=who.role is Role.ADMIN,
        done=_done(request.query_params.get("done")),
        **ctx,
    )


@router.get("", response_class=HTMLResponse)
async def users_page(request: Request, who: Staff) -> Response:
    return await _page(request, who)


def _account_id(conn: Connection, organisation_id: int, account_no: str) -> int | Rejected | None:
    if not account_no.strip():
        return None
    found = conn.execute(
        select(accounts.c.id).where(
            accounts.c.organisation_id == organisation_id, accounts.c.account_no == account_no.strip()
        )
    ).scalar()
    return (
        Rejected("account_no", f"no account {account_no.strip()!r} in this organisation")
        if found is None
        else int(found)
    )


async def _refused(request: Request, who: Principal, refused: Rejected, form: str) -> Response:
    return await _page(request, who, status_code=422, error=str(refused), error_field=refused.field, error_form=form)


@router.post("", response_class=HTMLResponse)
async def create_user(request: Request, who: Admin) -> Response:
    form = await request.form()
    username = form_text(form, "username", 64).strip()
    password = form_text(form, "password", 200)
    role = form_text(form, "role", 16)
    phone = form_text(form, "phone", 20).strip() or None
    account_no = form_text(form, "account_no", 32)
    reason = form_text(form, "reason", 2_000).strip() or "user created in the console"
    at = now(request)

    def work(conn: Connection) -> int | Rejected:
        account_id = _account_id(conn, who.organisation_id, account_no)
        if isinstance(account_id, Rejected):
            return account_id
        return users_service.create_user(
            conn, who.organisation_id, username, password, role, account_id=account_id, phone=phone,
            actor=who.actor, now=at, reason=reason,
        )  # fmt: skip

    result = await write(request, work)
    if isinstance(result, Rejected):
        return await _refused(request, who, result, "create")
    return RedirectResponse("/console/users?done=created", status_code=303)


@router.post("/{user_id}/role", response_class=HTMLResponse)
async def set_role(request: Request, user_id: int, who: Admin) -> Response:
    form = await request.form()
    role = form_text(form, "role", 16)
    account_no = form_text(form, "account_no", 32)
    reason = form_text(form, "reason", 2_000).strip() or "role changed in the console"
    at = now(request)

    def work(conn: Connection) -> object:
        if users_service.get_user(conn, who.organisation_id, user_id) is None:
            return None
        account_id = _account_id(conn, who.organisation_id, account_no)
        if isinstance(account_id, Rejected):
            return account_id
        return users_service.set_role(
            conn, who.organisation_id, user_id, role, account_id=account_id, actor=who.actor, now=at, reason=reason
        )

    result = await write(request, work)
    if result is None:
        raise HTTPException(status_code=404, detail=f"user: no user {user_id}")
    if isinstance(result, Rejected):
        return await _refused(request, who, result, f"role-{user_id}")
    return RedirectResponse("/console/users?done=role", status_code=303)


@router.post("/{user_id}/disable", response_class=HTMLResponse)
async def disable_user(request: Request, user_id: int, who: Admin) -> Response:
    form = await request.form()
    enable = form_text(form, "enable", 8) == "1"
    reason = form_text(form, "reason", 2_000).strip() or ("user re-enabled" if enable else "user disabled")
    at = now(request)

    def work(conn: Connection) -> object:
        if users_service.get_user(conn, who.organisation_id, user_id) is None:
            return None
        return users_service.disable_user(
            conn, who.organisation_id, user_id, actor=who.actor, now=at, disabled=not enable, reason=reason
        )

    result = await write(request, work)
    if result is None:
        raise HTTPException(status_code=404, detail=f"user: no user {user_id}")
    if isinstance(result, Rejected):
        return await _refused(request, who, result, f"disable-{user_id}")
    return RedirectResponse(f"/console/users?done={'enabled' if enable else 'disabled'}", status_code=303)


@router.post("/keys", response_class=HTMLResponse)
async def create_key(request: Request, who: Admin) -> Response:
    form = await request.form()
    name = form_text(form, "name", 100)
    role = form_text(form, "role", 16)
    user_id = int_param(form_text(form, "user_id", 20), "user_id", minimum=1)
    reason = form_text(form, "reason", 2_000).strip() or "API key created in the console"
    at = now(request)
    if user_id is None:
        return await _refused(request, who, Rejected("user_id", "choose the user the key acts as"), "key")
    result = await write(
        request,
        lambda conn: users_service.create_api_key(
            conn, who.organisation_id, name, role, user_id=user_id, actor=who.actor, now=at, reason=reason
        ),
    )
    if isinstance(result, Rejected):
        return await _refused(request, who, result, "key")
    # The secret is in this answer only (never stored in clear, never shown again); do not cache the page.
    response = await _page(request, who, created_key=result)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke_key(request: Request, key_id: int, who: Admin) -> Response:
    form = await request.form()
    reason = form_text(form, "reason", 2_000).strip() or "API key revoked in the console"
    at = now(request)
    result = await write(
        request,
        lambda conn: users_service.revoke_api_key(
            conn, who.organisation_id, key_id, actor=who.actor, now=at, reason=reason
        ),
    )
    if isinstance(result, Rejected):
        if result.field == "key_id":
            raise HTTPException(status_code=404, detail=str(result))
        return await _refused(request, who, result, "revoke")
    return RedirectResponse("/console/users?done=revoked", status_code=303)
