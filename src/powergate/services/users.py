"""Users, sessions, bearer tokens, API keys and login rate limiting.

Who may do what in the console, the API and the tenant portal. Invariants this module keeps (the database
keeps them again, ``store/tables_auth.py``):

- Usernames are unique within an organisation. A tenant user sees exactly one account (``account_id``), which
  belongs to the user's organisation; staff users have none.
- No secret is stored in clear. Passwords are argon2id hashes (argon2-cffi, RFC 9106 low-memory profile);
  session tokens, bearer tokens and API keys are 256-bit random values stored as their SHA-256 (a random value
  of that size needs no slow hash). A secret is shown once, when it is made.
- Sessions expire after 8 hours idle or 7 days in all; bearer tokens after 8 hours. Disabling a user or
  changing a password ends the user's sessions and tokens; a disabled user's API keys stop working.
- Logins are rate limited in the database (so across processes): after 5 failures for one (organisation,
  username) or 20 for one client IP within 15 minutes, further attempts are refused without checking the
  password, until the window moves on. An unknown username costs a password hash too (no timing oracle).
- Every user, role, password and key change, and every burst of login failures, is in the audit log in the
  same transaction (actor: the admin, or ``system:auth``).
- An organisation never loses its last enabled admin through ``set_role`` or ``disable_user``.

Refusals are values (``Rejected``: the field at fault and why); broken invariants are assertions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from powergate.services.accounts import Rejected
from powergate.store.audit import record_audit
from powergate.store.tables_auth import api_keys, auth_sessions, idempotency_keys, login_failures, users
from powergate.store.tables_structure import accounts, organisations


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    FINANCE = "finance"
    VIEWER = "viewer"
    TENANT = "tenant"


STAFF_ROLES = (Role.ADMIN, Role.OPERATOR, Role.FINANCE, Role.VIEWER)

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256
MAX_USERNAME_CHARS = 64
MAX_KEY_NAME_CHARS = 64
SESSION_IDLE = dt.timedelta(hours=8)
SESSION_ABSOLUTE = dt.timedelta(days=7)
BEARER_TTL = dt.timedelta(hours=8)
SESSION_TOUCH_EVERY = dt.timedelta(minutes=1)
"""``last_seen_at`` is written at most this often per session (a write per request would serialise SQLite)."""
RATE_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_IP = 20
MAX_LIST_ROWS = 10_000
SYSTEM_ACTOR = "system:auth"

PASSWORD_HASHER = PasswordHasher()
"""The password hasher (argon2id, RFC 9106 low-memory profile). Tests swap in cheaper parameters; a hash made
with other parameters is re-hashed at the next successful login."""

_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_PHONE_RE = re.compile(r"^\+?[0-9]{5,19}$")
_KEY_PREFIX = "pg_"


@dataclass(frozen=True, slots=True)
class UserView:
    id: int
    organisation_id: int
    organisation_code: str
    username: str
    role: Role
    account_id: int | None
    phone: str | None
    disabled: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class LoginRejected:
    """A refused login. ``retry_after_s`` > 0 means rate limited (answer 429 with Retry-After)."""

    message: str
    retry_after_s: int = 0

    @property
    def rate_limited(self) -> bool:
        return self.retry_after_s > 0


@dataclass(frozen=True, slots=True)
class SessionView:
    """A live session or bearer token and the user it belongs to."""

    id: int
    kind: str
    user: UserView
    csrf_token: str | None
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    id: int
    organisation_id: int
    user_id: int
    username: str
    name: str
    prefix: str
    role: Role
    created_by: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """A key just made: ``secret`` is shown once and never again."""

    id: int
    prefix: str
    secret: str


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a session token, bearer token or API key: what the database stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- checks ---------------------------------------------------------------------------------------------------


def check_password(password: str) -> Rejected | None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        return Rejected("password", f"must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        return Rejected("password", f"must be at most {MAX_PASSWORD_CHARS} characters")
    if not password.strip():
        return Rejected("password", "must not be only spaces")
    return None


def check_username(username: str) -> Rejected | None:
    if not isinstance(username, str) or not _USERNAME_RE.match(username):
        return Rejected(
            "username",
            f"{username!r} must be 1..{MAX_USERNAME_CHARS} characters: letters, digits and . _ @ + -, "
            "starting with a letter or digit",
        )
    return None


def parse_role(role: str | Role) -> Role | Rejected:
    try:
        return Role(role)
    except ValueError:
        return Rejected("role", f"{role!r} is not a role; roles: {', '.join(r.value for r in Role)}")


# --- users ----------------------------------------------------------------------------------------------------


def _user_query() -> Any:
    return select(
        users.c.id,
        users.c.organisation_id,
        organisations.c.code.label("organisation_code"),
        users.c.username,
        users.c.role,
        users.c.account_id,
        users.c.phone,
        users.c.disabled,
        users.c.created_at,
        users.c.last_login_at,
    ).join(organisations, organisations.c.id == users.c.organisation_id)


def _view(row: Any) -> UserView:
    return UserView(
        id=int(row.id),
        organisation_id=int(row.organisation_id),
        organisation_code=row.organisation_code,
        username=row.username,
        role=Role(row.role),
        account_id=None if row.account_id is None else int(row.account_id),
        phone=row.phone,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


def _subject(user: UserView) -> str:
    return f"user:{user.organisation_code}/{user.username}"


def create_user(
    conn: Connection,
    organisation_id: int,
    username: str,
    password: str,
    role: str | Role,
    *,
    account_id: int | None = None,
    phone: str | None = None,
    actor: str,
    now: dt.datetime,
    reason: str = "user created",
) -> int | Rejected:
    """Add a user to an organisation; returns the new user's id, or why not (nothing is written then)."""
    parsed = parse_role(role)
    if isinstance(parsed, Rejected):
        return parsed
    problem = check_username(username) or check_password(password)
    if problem is not None:
        return problem
    org_code = conn.execute(select(organisations.c.code).where(organisations.c.id == organisation_id)).scalar()
    if org_code is None:
        return Rejected("organisation_id", f"no organisation {organisation_id}")
    if phone is not None and not _PHONE_RE.match(phone):
        return Rejected("phone", f"{phone!r} is not a phone number (digits, optional leading +, 5..20 characters)")
    if parsed is Role.TENANT:
        if account_id is None:
            return Rejected("account_id", "a tenant user needs the account it may see")
        owner = conn.execute(select(accounts.c.organisation_id).where(accounts.c.id == account_id)).scalar()
        if owner is None or int(owner) != organisation_id:
            return Rejected("account_id", f"no account {account_id} in this organisation")
    elif account_id is not None:
        return Rejected("account_id", f"only tenant users are bound to an account, not {parsed.value}")
    taken = conn.execute(
        select(users.c.id).where(users.c.organisation_id == organisation_id, users.c.username == username)
    ).first()
    if taken is not None:
        return Rejected("username", f"{username!r} is already taken in this organisation")
    user_id = conn.execute(
        insert(users)
        .values(
            organisation_id=organisation_id,
            username=username,
            password_hash=PASSWORD_HASHER.hash(password),
            role=parsed.value,
            account_id=account_id,
            phone=phone,
            disabled=False,
            created_at=now,
            password_changed_at=now,
        )
        .returning(users.c.id)
    ).scalar_one()
    detail: dict[str, Any] = {"role": parsed.value}
    if account_id is not None:
        detail["account_id"] = account_id
    record_audit(conn, actor, "create_user", f"user:{org_code}/{username}", reason, detail, now)
    return int(user_id)


def get_user(conn: Connection, organisation_id: int, user_id: int) -> UserView | None:
    """The user with this id in this organisation (None for another organisation's user: ids do not leak)."""
    row = conn.execute(_user_query().where(users.c.id == user_id, users.c.organisation_id == organisation_id)).first()
    return None if row is None else _view(row)


def find_user(conn: Connection, organisation_code: str, username: str) -> UserView | None:
    row = conn.execute(
        _user_query().where(organisations.c.code == organisation_code, users.c.username == username)
    ).first()
    return None if row is None else _view(row)


def list_users(conn: Connection, organisation_id: int) -> list[UserView]:
    """The organisation's users, by username (at most ``MAX_LIST_ROWS``)."""
    rows = conn.execute(
        _user_query().where(users.c.organisation_id == organisation_id).order_by(users.c.username).limit(MAX_LIST_ROWS)
    )
    return [_view(r) for r in rows]


def _enabled_admins(conn: Connection, organisation_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(users)
            .where(users.c.organisation_id == organisation_id, users.c.role == "admin", users.c.disabled.is_(False))
        ).scalar_one()
    )


def set_role(
    conn: Connection,
    organisation_id: int,
    user_id: int,
    role: str | Role,
    *,
    account_id: int | None = None,
    actor: str,
    now: dt.datetime,
    reason: str = "role changed",
) -> UserView | Rejected:
    """Change a user's role (a tenant role needs ``account_id``); audited. Returns the updated user."""
    parsed = parse_role(role)
    if isinstance(parsed, Rejected):
        return parsed
    user = get_user(conn, organisation_id, user_id)
    if user is None:
        return Rejected("user_id", f"no user {user_id} in this organisation")
    if parsed is Role.TENANT:
        if account_id is None:
            return Rejected("account_id", "a tenant user needs the account it may see")
        owner = conn.execute(select(accounts.c.organisation_id).where(accounts.c.id == account_id)).scalar()
        if owner is None or int(owner) != organisation_id:
            return Rejected("account_id", f"no account {account_id} in this organisation")
    elif account_id is not None:
        return Rejected("account_id", f"only tenant users are bound to an account, not {parsed.value}")
    if (
        user.role is Role.ADMIN
        and parsed is not Role.ADMIN
        and not user.disabled
        and _enabled_admins(conn, organisation_id) <= 1
    ):
        return Rejected("role", f"{user.username} is the organisation's last admin; make another admin first")
    if parsed is user.role and account_id == user.account_id:
        return user
    conn.execute(update(users).where(users.c.id == user_id).values(role=parsed.value, account_id=account_id))
    # A role change takes effect now: sessions and tokens made under the old role end.
    conn.execute(delete(auth_sessions).where(auth_sessions.c.user_id == user_id))
    record_audit(
        conn,
        actor,
        "set_role",
        _subject(user),
        reason,
        {"from": user.role.value, "to": parsed.value, "account_id": account_id},
        now,
    )
    updated = get_user(conn, organisation_id, user_id)
    assert updated is not None
    return updated


def disable_user(
    conn: Connection,
    organisation_id: int,
    user_id: int,
    *,
    actor: str,
    now: dt.datetime,
    disabled: bool = True,
    reason: str = "user disabled",
) -> UserView | Rejected:
    """Disable (or, with ``disabled=False``, re-enable) a user; a disabled user's sessions end at once."""
    user = get_user(conn, organisation_id, user_id)
    if user is None:
        return Rejected("user_id", f"no user {user_id} in this organisation")
    if user.disabled == disabled:
        return user
    if disabled and user.role is Role.ADMIN and _enabled_admins(conn, organisation_id) <= 1:
        return Rejected("user_id", f"{user.username} is the organisation's last admin; make another admin first")
    conn.execute(update(users).where(users.c.id == user_id).values(disabled=disabled))
    if disabled:
        conn.execute(delete(auth_sessions).where(auth_sessions.c.user_id == user_id))
    record_audit(conn, actor, "disable_user" if disabled else "enable_user", _subject(user), reason, {}, now)
    updated = get_user(conn, organisation_id, user_id)
    assert updated is not None
    return updated


def set_password(
    conn: Connection,
    organisation_id: int,
    user_id: int,
    password: str,
    *,
    actor: str,
    now: dt.datetime,
    reason: str = "password changed",
) -> UserView | Rejected:
    """Set a user's password; the user's sessions and bearer tokens end. The password is not audited."""
    problem = check_password(password)
    if problem is not None:
        return problem
    user = get_user(conn, organisation_id, user_id)
    if user is None:
        return Rejected("user_id", f"no user {user_id} in this organisation")
    conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(password_hash=PASSWORD_HASHER.hash(password), password_changed_at=now)
    )
    conn.execute(delete(auth_sessions).where(auth_sessions.c.user_id == user_id))
    record_audit(conn, actor, "set_password", _subject(user), reason, {}, now)
    return user


# --- login ----------------------------------------------------------------------------------------------------

_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None or PASSWORD_HASHER.check_needs_rehash(_DUMMY_HASH):
        _DUMMY_HASH = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(PASSWORD_HASHER.verify(password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _retry_after(conn: Connection, where: Any, limit: int, now: dt.datetime) -> int:
    """Seconds until fewer than ``limit`` failures matching ``where`` remain in the window (0: not limited)."""
    since = now - RATE_WINDOW
    times = (
        conn.execute(
            select(login_failures.c.at)
            .where(where, login_failures.c.at > since)
            .order_by(login_failures.c.at.desc())
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if len(times) < limit:
        return 0
    # The window frees up when the limit-th most recent failure leaves it.
    frees_at = times[limit - 1] + RATE_WINDOW
    return max(1, int((frees_at - now).total_seconds() + 0.999))


def login_retry_after(conn: Connection, organisation_code: str, username: str, client_ip: str, now: dt.datetime) -> int:
    """Seconds the caller must wait before trying this login again (0: may try now)."""
    who = and_(login_failures.c.organisation_code == organisation_code[:32], login_failures.c.username == username[:64])
    return max(
        _retry_after(conn, who, MAX_FAILURES_PER_USER, now),
        _retry_after(conn, login_failures.c.client_ip == client_ip[:64], MAX_FAILURES_PER_IP, now),
    )


def authenticate(
    engine: Engine,
    organisation_code: str,
    username: str,
    password: str,
    *,
    client_ip: str,
    now: dt.datetime,
) -> UserView | LoginRejected:
    """Check a login; the user on success, or why not.

    The password is checked outside any transaction (argon2 takes a good fraction of a second on purpose; an
    SQLite write lock must not be held that long). A refused login is recorded; the failure that reaches a
    limit is audited. A rate-limited attempt is refused before the password is looked at.
    """
    org = organisation_code.strip()[:32]
    name = username.strip()[:64]
    ip = (client_ip or "unknown")[:64]
    with engine.begin() as conn:
        wait = login_retry_after(conn, org, name, ip, now)
        if wait:
            return LoginRejected("too many failed logins; try again later", retry_after_s=wait)
        row = conn.execute(
            select(users.c.id, users.c.password_hash, users.c.disabled)
            .join(organisations, organisations.c.id == users.c.organisation_id)
            .where(organisations.c.code == org, users.c.username == name)
        ).first()
    stored = _dummy_hash() if row is None else row.password_hash
    good = _verify(stored, password) and row is not None and not row.disabled
    with engine.begin() as conn:
        if not good:
            _record_failure(conn, org, name, ip, now)
            return LoginRejected("organisation, username or password is wrong")
        assert row is not None
        conn.execute(
            delete(login_failures).where(login_failures.c.organisation_code == org, login_failures.c.username == name)
        )
        values: dict[str, Any] = {"last_login_at": now}
        if PASSWORD_HASHER.check_needs_rehash(row.password_hash):
            values["password_hash"] = PASSWORD_HASHER.hash(password)
        conn.execute(update(users).where(users.c.id == row.id).values(**values))
        user = conn.execute(_user_query().where(users.c.id == row.id)).first()
    assert user is not None
    return _view(user)


def _record_failure(conn: Connection, org: str, name: str, ip: str, now: dt.datetime) -> None:
    since = now - RATE_WINDOW
    who = and_(login_failures.c.organisation_code == org, login_failures.c.username == name)
    # Old failures of this user and this address have left the window: drop them (bounded table).
    conn.execute(delete(login_failures).where(who, login_failures.c.at <= since))
    conn.execute(delete(login_failures).where(login_failures.c.client_ip == ip, login_failures.c.at <= since))
    conn.execute(insert(login_failures).values(organisation_code=org, username=name, client_ip=ip, at=now))
    by_user = conn.execute(
        select(func.count()).select_from(login_failures).where(who, login_failures.c.at > since)
    ).scalar_one()
    by_ip = conn.execute(
        select(func.count())
        .select_from(login_failures)
        .where(login_failures.c.client_ip == ip, login_failures.c.at > since)
    ).scalar_one()
    if by_user == MAX_FAILURES_PER_USER:
        record_audit(
            conn,
            SYSTEM_ACTOR,
            "login_locked",
            f"user:{org or '-'}/{name or '-'}",
            f"{MAX_FAILURES_PER_USER} failed logins within {int(RATE_WINDOW.total_seconds() // 60)} minutes",
            {"client_ip": ip},
            now,
        )
    if by_ip == MAX_FAILURES_PER_IP:
        record_audit(
            conn,
            SYSTEM_ACTOR,
            "login_locked",
            f"client_ip:{ip}",
            f"{MAX_FAILURES_PER_IP} failed logins within {int(RATE_WINDOW.total_seconds() // 60)} minutes",
            {"last_organisation": org, "last_username": name},
            now,
        )


# --- sessions and bearer tokens -------------------------------------------------------------------------------


def create_session(conn: Connection, user_id: int, now: dt.datetime, *, kind: str = "session") -> tuple[str, str]:
    """A new session (or, with ``kind="bearer"``, a bearer token) for the user: ``(token, csrf_token)``.

    Only the token's SHA-256 is stored; the token itself goes to the client once. Bearer tokens have no CSRF
    token (the empty string is returned).
    """
    assert kind in ("session", "bearer"), f"unknown session kind {kind!r}"
    disabled = conn.execute(select(users.c.disabled).where(users.c.id == user_id)).scalar()
    assert disabled is not None, f"no user {user_id}"
    assert not disabled, f"user {user_id} is disabled"
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32) if kind == "session" else None
    expires = now + (SESSION_ABSOLUTE if kind == "session" else BEARER_TTL)
    conn.execute(
        insert(auth_sessions).values(
            token_hash=token_hash(token),
            user_id=user_id,
            kind=kind,
            csrf_token=csrf,
            created_at=now,
            last_seen_at=now,
            expires_at=expires,
        )
    )
    # The user's expired sessions are of no use to anyone: drop them while we are here.
    conn.execute(delete(auth_sessions).where(auth_sessions.c.user_id == user_id, auth_sessions.c.expires_at <= now))
    return token, csrf or ""


def resolve_session(conn: Connection, token: str, now: dt.datetime, *, kind: str = "session") -> SessionView | None:
    """The live session (or bearer token) for ``token``, or None (unknown, expired, idle too long, disabled)."""
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        select(
            auth_sessions.c.id,
            auth_sessions.c.kind,
            auth_sessions.c.user_id,
            auth_sessions.c.csrf_token,
            auth_sessions.c.last_seen_at,
            auth_sessions.c.expires_at,
        ).where(auth_sessions.c.token_hash == token_hash(token), auth_sessions.c.kind == kind)
    ).first()
    if row is None or row.expires_at <= now:
        return None
    if kind == "session" and row.last_seen_at + SESSION_IDLE <= now:
        return None
    user_row = conn.execute(_user_query().where(users.c.id == row.user_id)).first()
    if user_row is None or user_row.disabled:
        return None
    if kind == "session" and now - row.last_seen_at >= SESSION_TOUCH_EVERY:
        conn.execute(update(auth_sessions).where(auth_sessions.c.id == row.id).values(last_seen_at=now))
    return SessionView(int(row.id), row.kind, _view(user_row), row.csrf_token, row.expires_at)


def delete_session(conn: Connection, token: str) -> bool:
    """End a session or bearer token; True if there was one."""
    if not token or len(token) > 200:
        return False
    return bool(conn.execute(delete(auth_sessions).where(auth_sessions.c.token_hash == token_hash(token))).rowcount)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of a session's CSRF token with the one a request carries."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


# --- API keys -------------------------------------------------------------------------------------------------


def key_role_allowed(owner: Role, key_role: Role) -> bool:
    """An API key may not do more than its owner: an admin's key may have any staff role, anyone else's key
    the owner's role or viewer. Tenants have no keys."""
    if owner is Role.TENANT or key_role is Role.TENANT:
        return False
    return owner is Role.ADMIN or key_role in (owner, Role.VIEWER)


def _key_view(row: Any) -> ApiKeyView:
    return ApiKeyView(
        id=int(row.id),
        organisation_id=int(row.organisation_id),
        user_id=int(row.user_id),
        username=row.username,
        name=row.name,
        prefix=row.prefix,
        role=Role(row.role),
        created_by=row.created_by,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _key_query() -> Any:
    return select(api_keys, users.c.username).join(users, users.c.id == api_keys.c.user_id)


def create_api_key(
    conn: Connection,
    organisation_id: int,
    name: str,
    role: str | Role,
    *,
    user_id: int,
    actor: str,
    now: dt.datetime,
    reason: str = "API key created",
) -> NewApiKey | Rejected:
    """A new API key acting as user ``user_id`` with ``role`` (bounded by the user's role, see
    ``key_role_allowed``). The returned secret is shown once; only its SHA-256 is kept."""
    parsed = parse_role(role)
    if isinstance(parsed, Rejected):
        return parsed
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > MAX_KEY_NAME_CHARS:
        return Rejected("name", f"must be 1..{MAX_KEY_NAME_CHARS} characters")
    owner = get_user(conn, organisation_id, user_id)
    if owner is None:
        return Rejected("user_id", f"no user {user_id} in this organisation")
    if owner.disabled:
        return Rejected("user_id", f"{owner.username} is disabled")
    if not key_role_allowed(owner.role, parsed):
        return Rejected("role", f"a key of {owner.username} ({owner.role.value}) may not have role {parsed.value}")
    taken = conn.execute(
        select(api_keys.c.id).where(api_keys.c.organisation_id == organisation_id, api_keys.c.name == name)
    ).first()
    if taken is not None:
        return Rejected("name", f"an API key named {name!r} already exists in this organisation")
    prefix = _KEY_PREFIX + secrets.token_hex(4)
    secret = f"{prefix}.{secrets.token_urlsafe(32)}"
    key_id = conn.execute(
        insert(api_keys)
        .values(
            organisation_id=organisation_id,
            user_id=user_id,
            name=name,
            prefix=prefix,
            secret_hash=token_hash(secret),
            role=parsed.value,
            created_by=actor,
            created_at=now,
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    record_audit(
        conn,
        actor,
        "create_api_key",
        f"api_key:{owner.organisation_code}/{prefix}",
        reason,
        {"name": name, "role": parsed.value, "user": owner.username},
        now,
    )
    return NewApiKey(int(key_id), prefix, secret)


def list_api_keys(conn: Connection, organisation_id: int) -> list[ApiKeyView]:
    rows = conn.execute(
        _key_query().where(api_keys.c.organisation_id == organisation_id).order_by(api_keys.c.id).limit(MAX_LIST_ROWS)
    )
    return [_key_view(r) for r in rows]


def revoke_api_key(
    conn: Connection,
    organisation_id: int,
    key_id: int,
    *,
    actor: str,
    now: dt.datetime,
    reason: str = "API key revoked",
) -> ApiKeyView | Rejected:
    row = conn.execute(
        _key_query().where(api_keys.c.id == key_id, api_keys.c.organisation_id == organisation_id)
    ).first()
    if row is None:
        return Rejected("key_id", f"no API key {key_id} in this organisation")
    if row.revoked_at is not None:
        return _key_view(row)
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
    code = conn.execute(select(organisations.c.code).where(organisations.c.id == organisation_id)).scalar_one()
    record_audit(conn, actor, "revoke_api_key", f"api_key:{code}/{row.prefix}", reason, {"name": row.name}, now)
    revoked = conn.execute(_key_query().where(api_keys.c.id == key_id)).first()
    return _key_view(revoked)


def resolve_api_key(conn: Connection, secret: str, now: dt.datetime) -> tuple[UserView, ApiKeyView] | None:
    """The owner and key for an API key secret, or None (unknown, revoked, owner disabled, role no longer
    allowed for the owner)."""
    if not secret or len(secret) > 200 or not secret.startswith(_KEY_PREFIX):
        return None
    row = conn.execute(_key_query().where(api_keys.c.secret_hash == token_hash(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    owner_row = conn.execute(_user_query().where(users.c.id == row.user_id)).first()
    if owner_row is None or owner_row.disabled:
        return None
    owner = _view(owner_row)
    key = _key_view(row)
    if not key_role_allowed(owner.role, key.role):
        return None
    if key.last_used_at is None or now - key.last_used_at >= SESSION_TOUCH_EVERY:
        conn.execute(update(api_keys).where(api_keys.c.id == key.id).values(last_used_at=now))
    return owner, key


# --- housekeeping ---------------------------------------------------------------------------------------------


def purge_expired(conn: Connection, now: dt.datetime, *, idempotency_ttl: dt.timedelta) -> dict[str, int]:
    """Delete expired sessions and tokens, login failures older than the window and idempotency records older
    than ``idempotency_ttl``; returns how many rows of each went."""
    sessions = conn.execute(
        delete(auth_sessions).where(
            (auth_sessions.c.expires_at <= now)
            | ((auth_sessions.c.kind == "session") & (auth_sessions.c.last_seen_at <= now - SESSION_IDLE))
        )
    ).rowcount
    failures = conn.execute(delete(login_failures).where(login_failures.c.at <= now - RATE_WINDOW)).rowcount
    keys = conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at <= now - idempotency_ttl)).rowcount
    return {"sessions": int(sessions), "login_failures": int(failures), "idempotency_keys": int(keys)}


def organisation_id_for(conn: Connection, code: str) -> int | None:
    value = conn.execute(select(organisations.c.id).where(organisations.c.code == code)).scalar()
    return None if value is None else int(value)


def roles_of(values: Sequence[str | Role]) -> tuple[Role, ...]:
    return tuple(Role(v) for v in values)
