"""Users and API keys of the caller's organisation (admins only): list, create, change role, disable,
set a password; make, list and revoke API keys.

Every change is audited with the admin as actor (``powergate.services.users``). Another organisation's user
or key answers 404. A refused change answers 422 with ``{"detail": "<field>: <why>"}`` and writes nothing.
A new API key's secret is in the creation answer only.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, Field

from powergate.services import users as users_service
from powergate.services.accounts import Rejected
from powergate.web.api._common import MAX_ID, NO_NUL, Model
from powergate.web.api._models import mirror
from powergate.web.deps import Principal, Role, get_engine, now, require

router = APIRouter(tags=["users"])
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
RoleName = Annotated[str, Field(pattern="^(admin|operator|finance|viewer|tenant)$", description="the user's role")]
REASON = Field(None, max_length=500, pattern=NO_NUL, description="why, for the audit log")


@mirror(users_service.UserView, exclude=["organisation_id", "organisation_code"], types={"role": str})
class UserOut(Model):
    pass


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=users_service.MAX_USERNAME_CHARS, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=users_service.MAX_PASSWORD_CHARS, pattern=NO_NUL)
    role: RoleName
    account_id: int | None = Field(None, ge=1, le=MAX_ID, description="tenants only: the account the user may see")
    phone: str | None = Field(None, max_length=20, pattern=NO_NUL)
    reason: str | None = REASON


class UserChange(BaseModel):
    role: RoleName | None = None
    account_id: int | None = Field(None, ge=1, le=MAX_ID)
    disabled: bool | None = None
    reason: str | None = REASON


class PasswordChange(BaseModel):
    password: str = Field(min_length=1, max_length=users_service.MAX_PASSWORD_CHARS, pattern=NO_NUL)
    reason: str | None = REASON


class ApiKeyOut(Model):
    id: int
    name: str
    prefix: str
    role: str
    user_id: int
    username: str
    created_by: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=users_service.MAX_KEY_NAME_CHARS, pattern=NO_NUL)
    role: Annotated[str, Field(pattern="^(admin|operator|finance|viewer)$")]
    user_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="whom the key acts as (default: the admin making it)"
    )
    reason: str | None = REASON


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="the key itself: shown this once, send it as X-API-Key")


def _refuse(rejected: Rejected) -> HTTPException:
    not_found = rejected.field in ("user_id", "key_id") and rejected.message.startswith("no ")
    return HTTPException(status_code=404 if not_found else 422, detail=str(rejected))


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "not authenticated"},
    403: {"description": "not an admin"},
    422: {"description": "refused; the detail names the field"},
}


@router.get("/users", response_model=list[UserOut], responses=ERRORS)
def list_users(request: Request, who: Admin) -> list[UserOut]:
    with get_engine(request).begin() as conn:
        return [UserOut.model_validate(u) for u in users_service.list_users(conn, who.organisation_id)]


@router.post("/users", response_model=UserOut, status_code=201, responses=ERRORS)
def create_user(request: Request, who: Admin, body: UserCreate) -> UserOut:
    at = now(request)
    with get_engine(request).begin() as conn:
        made = users_service.create_user(
            conn,
            who.organisation_id,
            body.username,
            body.password,
            body.role,
            account_id=body.account_id,
            phone=body.phone,
            actor=who.actor,
            now=at,
            reason=body.reason or "user created",
        )
        if isinstance(made, Rejected):
            raise _refuse(made)
        user = users_service.get_user(conn, who.organisation_id, made)
    assert user is not None
    return UserOut.model_validate(user)


@router.get("/users/{user_id}", response_model=UserOut, responses={**ERRORS, 404: {"description": "no such user"}})
def get_user(request: Request, who: Admin, user_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> UserOut:
    with get_engine(request).begin() as conn:
        user = users_service.get_user(conn, who.organisation_id, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail=f"user_id: no user {user_id} in this organisation")
    return UserOut.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserOut, responses={**ERRORS, 404: {"description": "no such user"}})
def change_user(
    request: Request, who: Admin, user_id: Annotated[int, Path(ge=1, le=MAX_ID)], body: UserChange
) -> UserOut:
    """Change role (a tenant role needs ``account_id``) and/or disable / re-enable; all or nothing."""
    if body.role is None and body.disabled is None:
        raise HTTPException(status_code=422, detail="body: give role and/or disabled")
    at = now(request)
    with get_engine(request).begin() as conn:
        result: users_service.UserView | Rejected | None = users_service.get_user(conn, who.organisation_id, user_id)
        if result is None:
            raise HTTPException(status_code=404, detail=f"user_id: no user {user_id} in this organisation")
        if body.role is not None:
            result = users_service.set_role(
                conn,
                who.organisation_id,
                user_id,
                body.role,
                account_id=body.account_id,
                actor=who.actor,
                now=at,
                reason=body.reason or "role changed",
            )
            if isinstance(result, Rejected):
                raise _refuse(result)
        if body.disabled is not None:
            if body.disabled and user_id == who.user_id:
                raise HTTPException(status_code=422, detail="disabled: you cannot disable yourself")
            result = users_service.disable_user(
                conn,
                who.organisation_id,
                user_id,
                actor=who.actor,
                now=at,
                disabled=body.disabled,
                reason=body.reason or ("user disabled" if body.disabled else "user enabled"),
            )
            if isinstance(result, Rejected):
                raise _refuse(result)
    assert isinstance(result, users_service.UserView)
    return UserOut.model_validate(result)


@router.post(
    "/users/{user_id}/password", response_model=UserOut, responses={**ERRORS, 404: {"description": "no such user"}}
)
def set_password(
    request: Request, who: Admin, user_id: Annotated[int, Path(ge=1, le=MAX_ID)], body: PasswordChange
) -> UserOut:
    """Set a user's password (at least 8 characters); the user's sessions and tokens end."""
    at = now(request)
    with get_engine(request).begin() as conn:
        result = users_service.set_password(
            conn,
            who.organisation_id,
            user_id,
            body.password,
            actor=who.actor,
            now=at,
            reason=body.reason or "password set by an admin",
        )
        if isinstance(result, Rejected):
            raise _refuse(result)
    return UserOut.model_validate(result)


@router.get("/api-keys", response_model=list[ApiKeyOut], responses=ERRORS)
def list_api_keys(request: Request, who: Admin) -> list[ApiKeyOut]:
    with get_engine(request).begin() as conn:
        return [ApiKeyOut.model_validate(k) for k in users_service.list_api_keys(conn, who.organisation_id)]


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, responses=ERRORS)
def create_api_key(request: Request, who: Admin, body: ApiKeyCreate) -> ApiKeyCreated:
    """A new API key; the ``secret`` is in this answer only (only its hash is kept)."""
    at = now(request)
    with get_engine(request).begin() as conn:
        made = users_service.create_api_key(
            conn,
            who.organisation_id,
            body.name,
            body.role,
            user_id=body.user_id or who.user_id,
            actor=who.actor,
            now=at,
            reason=body.reason or "API key created",
        )
        if isinstance(made, Rejected):
            raise _refuse(made)
        key = next(k for k in users_service.list_api_keys(conn, who.organisation_id) if k.id == made.id)
    return ApiKeyCreated.model_validate({**ApiKeyOut.model_validate(key).model_dump(), "secret": made.secret})


@router.delete(
    "/api-keys/{key_id}", response_model=ApiKeyOut, responses={**ERRORS, 404: {"description": "no such key"}}
)
def revoke_api_key(request: Request, who: Admin, key_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> ApiKeyOut:
    """Revoke a key: it stops working at once. Revoking a revoked key answers it unchanged."""
    at = now(request)
    with get_engine(request).begin() as conn:
        result = users_service.revoke_api_key(
            conn, who.organisation_id, key_id, actor=who.actor, now=at, reason="API key revoked"
        )
        if isinstance(result, Rejected):
            raise _refuse(result)
    return ApiKeyOut.model_validate(result)
