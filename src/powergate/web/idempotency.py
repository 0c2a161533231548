"""Idempotent POSTs: a retried request that moves money or a relay is answered, not run again.

Every POST that moves money or a relay wraps its work in ``idempotent(request, who, run)``. The client sends
``Idempotency-Key: <fresh UUID>`` (HTML forms: a hidden ``idempotency_key`` field rendered with the form) and
the same key when it retries. Keys are scoped by organisation and user and kept for 24 hours.

- First call: a "running" row is inserted in its own committed transaction. That insert is the lock: the
  UNIQUE(organisation, user, key) constraint lets exactly one of two concurrent calls in (the other gets 409,
  on SQLite and PostgreSQL alike). ``run()`` then does the work; its (status, JSON body) is stored with the
  row and answered.
- Repeat with the same request (method, path, query and body hash): the stored status and body are answered
  again, with header ``Idempotent-Replayed: true``.
- Repeat while the first is still running: 409. Same key, different request: 422.
- ``run()`` raising (an ``HTTPException``, a crash) or answering 5xx removes the row, so a retry runs afresh.
  A process that dies mid-run leaves a "running" row; after ``RUNNING_STALE`` a retry takes it over. The work
  itself must still be idempotent at its own level (ledger idempotency keys, purchase counts): the key here
  saves the round trip and gives the client a stable answer, the ledger keeps the money exact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from powergate.store.tables_auth import idempotency_keys
from powergate.web.deps import CSRF_FIELD, Principal, get_engine, now

HEADER = "Idempotency-Key"
FORM_FIELD = "idempotency_key"
REPLAY_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_TTL = dt.timedelta(hours=24)
RUNNING_STALE = dt.timedelta(minutes=5)
MAX_KEY_CHARS = 200
MAX_STORED_BODY_CHARS = 1_000_000
"""A response body larger than this is a programmer error for an operation that moves money or a relay."""

Render = Callable[[int, Any], Response]


@dataclass(frozen=True)
class _Claim:
    outcome: str  # "new" | "replay" | "running" | "mismatch"
    row_id: int | None = None
    status: int | None = None
    body: Any = None


def _key_from(request: Request, form: Any) -> str:
    key = request.headers.get(HEADER)
    if key is None and form is not None:
        value = form.get(FORM_FIELD)
        key = value if isinstance(value, str) else None
    if key is None or not key.strip():
        raise HTTPException(
            status_code=400,
            detail=f"{HEADER} header (or {FORM_FIELD} form field) is required: send a fresh UUID for each "
            "operation and the same one when retrying it",
        )
    key = key.strip()
    if len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise HTTPException(
            status_code=400, detail=f"{HEADER} must be 1..{MAX_KEY_CHARS} printable ASCII characters (a UUID)"
        )
    return key


async def _request_hash(request: Request, form: Any) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.url.path}?{request.url.query}\n".encode())
    if form is not None:
        items: list[tuple[str, str]] = []
        for name, value in form.multi_items():
            if name in (CSRF_FIELD, FORM_FIELD):
                continue
            if isinstance(value, UploadFile):
                content = await value.read()
                await value.seek(0)
                items.append((name, f"file:{value.filename}:{hashlib.sha256(content).hexdigest()}"))
            else:
                items.append((name, str(value)))
        digest.update(json.dumps(sorted(items), ensure_ascii=False).encode("utf-8"))
    else:
        digest.update(await request.body())
    return digest.hexdigest()


def _claim(engine: Engine, who: Principal, key: str, request_hash: str, at: dt.datetime) -> _Claim:
    scope = (
        idempotency_keys.c.organisation_id == who.organisation_id,
        idempotency_keys.c.user_id == who.user_id,
        idempotency_keys.c.key == key,
    )
    with engine.begin() as conn:
        row = conn.execute(select(idempotency_keys).where(*scope)).first()
        if row is not None and row.created_at <= at - IDEMPOTENCY_TTL:
            conn.execute(delete(idempotency_keys).where(idempotency_keys.c.id == row.id))
            row = None
        if row is None:
            try:
                with conn.begin_nested():
                    new_id = conn.execute(
                        insert(idempotency_keys)
                        .values(
                            organisation_id=who.organisation_id,
                            user_id=who.user_id,
                            key=key,
                            request_hash=request_hash,
                            state="running",
                            created_at=at,
                        )
                        .returning(idempotency_keys.c.id)
                    ).scalar_one()
                return _Claim("new", row_id=int(new_id))
            except IntegrityError:
                # Another call with this key got in first (PostgreSQL waits for it to commit): judge its row.
                row = conn.execute(select(idempotency_keys).where(*scope)).first()
                assert row is not None, "idempotency key vanished after a unique violation"
        if row.request_hash != request_hash:
            return _Claim("mismatch")
        if row.state == "running":
            if row.created_at <= at - RUNNING_STALE:
                conn.execute(update(idempotency_keys).where(idempotency_keys.c.id == row.id).values(created_at=at))
                return _Claim("new", row_id=int(row.id))
            return _Claim("running")
        return _Claim("replay", status=int(row.status), body=json.loads(row.body))


def _complete(engine: Engine, row_id: int, status: int, text: str, at: dt.datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.id == row_id)
            .values(state="done", status=status, body=text, completed_at=at)
        )


def _release(engine: Engine, row_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            delete(idempotency_keys).where(idempotency_keys.c.id == row_id, idempotency_keys.c.state == "running")
        )


def _respond(status: int, body: Any, replayed: bool, render: Render | None) -> Response:
    response = render(status, body) if render is not None else JSONResponse(status_code=status, content=body)
    if replayed:
        response.headers[REPLAY_HEADER] = "true"
    return response


async def idempotent(
    request: Request,
    who: Principal,
    run: Callable[[], Awaitable[tuple[int, Any]]],
    *,
    render: Render | None = None,
) -> Response:
    """Run ``run()`` at most once per (organisation, user, Idempotency-Key) and answer its (status, body).

    ``body`` must be JSON-serialisable (``jsonable_encoder`` is applied; money as integer micros or decimal
    strings, never floats). ``render(status, body)``, if given, turns the stored result into the response
    (HTML for console forms) on the first call and on every replay; by default it is JSON.
    """
    content_type = request.headers.get("content-type", "")
    form = None
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
    key = _key_from(request, form)
    request_hash = await _request_hash(request, form)
    engine = get_engine(request)
    claim = await run_in_threadpool(_claim, engine, who, key, request_hash, now(request))
    if claim.outcome == "mismatch":
        raise HTTPException(
            status_code=422,
            detail=f"{HEADER} {key!r} was already used for a different request; use a fresh key for a new operation",
        )
    if claim.outcome == "running":
        raise HTTPException(
            status_code=409, detail=f"the request with {HEADER} {key!r} is still running; retry in a moment"
        )
    if claim.outcome == "replay":
        assert claim.status is not None
        return _respond(claim.status, claim.body, True, render)
    assert claim.row_id is not None
    try:
        status, body = await run()
    except BaseException:
        await run_in_threadpool(_release, engine, claim.row_id)
        raise
    assert 100 <= status <= 599, f"idempotent run returned status {status}"
    encoded = jsonable_encoder(body)
    text = json.dumps(encoded, ensure_ascii=False, allow_nan=False)
    assert len(text) <= MAX_STORED_BODY_CHARS, f"idempotent response body is {len(text)} characters"
    if status >= 500:
        await run_in_threadpool(_release, engine, claim.row_id)
    else:
        await run_in_threadpool(_complete, engine, claim.row_id, status, text, now(request))
    return _respond(status, encoded, False, render)
