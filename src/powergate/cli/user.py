"""``powergate user add|list|api-key|set-password``: console users and API keys from the command line.

Passwords are never command-line arguments (they would land in the shell history and ``ps``): they are read
from the terminal (asked twice) or, with ``--password-stdin``, from the first line of standard input. An API
key's secret is printed once. Every change is audited with actor ``cli:<login of the operator>``.
Exit codes: 0 done, 1 refused (the message names the field), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from typing import Any

from powergate.config import load_settings

ROLES = ("admin", "operator", "finance", "viewer", "tenant")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("user", help="console users and API keys: add, list, api-key, set-password")
    parser.add_argument("--url", help="database URL (default: POWERGATE_DATABASE_URL or the SQLite file)")
    commands = parser.add_subparsers(title="user commands", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="add a user to an organisation (password asked, or --password-stdin)")
    add.add_argument("--org", required=True, help="organisation code, e.g. ORG1")
    add.add_argument("--username", required=True, help="login name (tenants: their account number)")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--account-no", help="tenants only: the account number the user may see")
    add.add_argument("--phone", help="mobile number (tenants log in to the portal by SMS code with it)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(handler=_add)

    listing = commands.add_parser("list", help="list an organisation's users")
    listing.add_argument("--org", required=True, help="organisation code")
    listing.set_defaults(handler=_list)

    key = commands.add_parser("api-key", help="make an API key (printed once) or revoke one")
    key.add_argument("--org", required=True, help="organisation code")
    key.add_argument("--user", help="username the key acts as (its role bounds the key's role)")
    key.add_argument("--name", help="a name to tell the key apart, e.g. 'billing-export'")
    key.add_argument("--role", choices=ROLES[:4], help="the key's role (default: the user's role)")
    key.add_argument("--revoke", metavar="PREFIX", help="revoke the key with this prefix (pg_xxxxxxxx) instead")
    key.add_argument("--list", action="store_true", help="list the organisation's keys instead")
    key.set_defaults(handler=_api_key)

    password = commands.add_parser("set-password", help="set a user's password (asked, or --password-stdin)")
    password.add_argument("--org", required=True, help="organisation code")
    password.add_argument("--username", required=True)
    password.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    password.set_defaults(handler=_set_password)


def _actor() -> str:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return f"cli:{who}"[:120]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        print("password: not a terminal; pipe the password in with --password-stdin", file=sys.stderr)
        return None
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("password: the two entries differ", file=sys.stderr)
        return None
    return first


def _engine(args: argparse.Namespace) -> Any:
    from powergate.store.db import make_engine

    return make_engine(str(args.url or load_settings().database_url))


def _org_id(conn: Any, code: str) -> int | None:
    from powergate.services.users import organisation_id_for

    org_id = organisation_id_for(conn, code)
    if org_id is None:
        print(f"--org: no organisation {code!r}", file=sys.stderr)
    return org_id


def _add(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from powergate.services import users as users_service
    from powergate.services.accounts import Rejected
    from powergate.store.tables_structure import accounts

    password = _read_password(args.password_stdin)
    if password is None:
        return 1
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            org_id = _org_id(conn, args.org)
            if org_id is None:
                return 1
            account_id = None
            if args.account_no:
                account_id = conn.execute(
                    select(accounts.c.id).where(
                        accounts.c.organisation_id == org_id, accounts.c.account_no == args.account_no
                    )
                ).scalar()
                if account_id is None:
                    print(f"--account-no: no account {args.account_no!r} in {args.org}", file=sys.stderr)
                    return 1
            made = users_service.create_user(
                conn,
                org_id,
                args.username,
                password,
                args.role,
                account_id=account_id,
                phone=args.phone,
                actor=_actor(),
                now=_now(),
            )
            if isinstance(made, Rejected):
                print(str(made), file=sys.stderr)
                return 1
    finally:
        engine.dispose()
    print(f"user {args.username} ({args.role}) added to {args.org} with id {made}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from powergate.services import users as users_service

    engine = _engine(args)
    try:
        with engine.begin() as conn:
            org_id = _org_id(conn, args.org)
            if org_id is None:
                return 1
            found = users_service.list_users(conn, org_id)
    finally:
        engine.dispose()
    print(f"{'id':>6}  {'username':<24} {'role':<9} {'account':>8}  {'state':<8} last login")
    for user in found:
        last = user.last_login_at.strftime("%Y-%m-%d %H:%M") if user.last_login_at else "-"
        account = str(user.account_id) if user.account_id is not None else "-"
        state = "disabled" if user.disabled else "enabled"
        print(f"{user.id:>6}  {user.username:<24} {user.role.value:<9} {account:>8}  {state:<8} {last}")
    return 0


def _api_key(args: argparse.Namespace) -> int:
    from powergate.services import users as users_service
    from powergate.services.accounts import Rejected

    engine = _engine(args)
    try:
        with engine.begin() as conn:
            org_id = _org_id(conn, args.org)
            if org_id is None:
                return 1
            if args.list:
                for key in users_service.list_api_keys(conn, org_id):
                    state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                    print(f"{key.prefix}  {key.name:<24} {key.role.value:<9} {key.username:<20} {state}")
                return 0
            if args.revoke:
                match = [k for k in users_service.list_api_keys(conn, org_id) if k.prefix == args.revoke]
                if not match:
                    print(f"--revoke: no API key {args.revoke!r} in {args.org}", file=sys.stderr)
                    return 1
                users_service.revoke_api_key(conn, org_id, match[0].id, actor=_actor(), now=_now())
                print(f"API key {args.revoke} revoked")
                return 0
            if not args.user or not args.name:
                print("api-key: give --user and --name (or --list, or --revoke PREFIX)", file=sys.stderr)
                return 2
            owner = users_service.find_user(conn, args.org, args.user)
            if owner is None:
                print(f"--user: no user {args.user!r} in {args.org}", file=sys.stderr)
                return 1
            made = users_service.create_api_key(
                conn, org_id, args.name, args.role or owner.role.value, user_id=owner.id, actor=_actor(), now=_now()
            )
            if isinstance(made, Rejected):
                print(str(made), file=sys.stderr)
                return 1
    finally:
        engine.dispose()
    print(made.secret)
    print(
        f"API key {made.prefix} made; the line above is the key, shown this once (send it as X-API-Key)",
        file=sys.stderr,
    )
    return 0


def _set_password(args: argparse.Namespace) -> int:
    from powergate.services import users as users_service
    from powergate.services.accounts import Rejected

    password = _read_password(args.password_stdin)
    if password is None:
        return 1
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            user = users_service.find_user(conn, args.org, args.username)
            if user is None:
                print(f"--username: no user {args.username!r} in {args.org}", file=sys.stderr)
                return 1
            result = users_service.set_password(
                conn, user.organisation_id, user.id, password, actor=_actor(), now=_now()
            )
            if isinstance(result, Rejected):
                print(str(result), file=sys.stderr)
                return 1
    finally:
        engine.dispose()
    print(f"password of {args.username} in {args.org} set; their sessions have ended")
    return 0
