"""Idempotent POSTs: replay, 409 while running, 422 for a reused key, scoping, expiry, failures, forms.

The endpoint under test writes an audit record per run (a real effect in the real database), so "ran once"
is counted in the database, not in the test's memory.
"""

from __future__ import annotations

import threading
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from powergate.store.audit import record_audit
from powergate.store.tables_auth import idempotency_keys
from powergate.store.tables_structure import audit_log
from powergate.web.deps import STAFF, Principal, Role, get_engine, now, require
from powergate.web.idempotency import _claim, idempotent


class Gate:
    """Holds a run until the test opens it (to see what a concurrent duplicate gets)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()


def _add_routes(web: Any, gate: Gate | None = None) -> None:
    router = APIRouter()

    async def _work(request: Request, who: Principal, amount: Any) -> tuple[int, Any]:
        if gate is not None:
            gate.entered.set()
            await run_in_threadpool(gate.open.wait, 10)
        if amount == "boom":
            raise HTTPException(status_code=422, detail="amount: boom is not an amount")

        def write() -> int:
            with get_engine(request).begin() as conn:
                return record_audit(
                    conn, who.actor, "recharge", "account:ORG1/A-1", "test recharge", {"amount": amount}, now(request)
                )

        record = await run_in_threadpool(write)
        return 201, {"record": record, "amount": amount}

    @router.post("/api/v1/test-recharge")
    async def recharge(request: Request, who: Annotated[Principal, Depends(require(*STAFF))]) -> Any:
        body = await request.json()
        return await idempotent(request, who, lambda: _work(request, who, body.get("amount")))

    @router.post("/console/test-recharge")
    async def recharge_form(request: Request, who: Annotated[Principal, Depends(require(*STAFF))]) -> Any:
        form = await request.form()

        def render(status: int, body: Any) -> HTMLResponse:
            return HTMLResponse(f"<p>recharged {body['amount']} (record {body['record']})</p>", status_code=status)

        return await idempotent(request, who, lambda: _work(request, who, form.get("amount")), render=render)

    web.app.include_router(router)


def _runs(web: Any) -> int:
    with web.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(audit_log).where(audit_log.c.action == "recharge")
            ).scalar_one()
        )


def test_a_repeat_answers_the_first_result_and_runs_nothing(web: Any) -> None:
    _add_routes(web)
    client = web.bearer("operator", web.org())
    key = str(uuid.uuid4())
    first = client.post("/api/v1/test-recharge", json={"amount": "12.50"}, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/test-recharge", json={"amount": "12.50"}, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _runs(web) == 1
    other = client.post(
        "/api/v1/test-recharge", json={"amount": "12.50"}, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert other.status_code == 201 and other.json()["record"] != first.json()["record"]
    assert _runs(web) == 2


def test_a_missing_or_malformed_key_is_a_clear_400(web: Any) -> None:
    _add_routes(web)
    client = web.bearer("operator", web.org())
    missing = client.post("/api/v1/test-recharge", json={"amount": "1"})
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["detail"]
    too_long = client.post("/api/v1/test-recharge", json={"amount": "1"}, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 400 and "200" in too_long.json()["detail"]
    assert _runs(web) == 0


def test_a_key_reused_for_a_different_request_is_422(web: Any) -> None:
    _add_routes(web)
    client = web.bearer("operator", web.org())
    key = str(uuid.uuid4())
    assert (
        client.post("/api/v1/test-recharge", json={"amount": "1"}, headers={"Idempotency-Key": key}).status_code == 201
    )
    reused = client.post("/api/v1/test-recharge", json={"amount": "2"}, headers={"Idempotency-Key": key})
    assert reused.status_code == 422 and "different request" in reused.json()["detail"]
    assert _runs(web) == 1


def test_a_duplicate_while_the_first_still_runs_gets_409(web: Any) -> None:
    gate = Gate()
    _add_routes(web, gate)
    org = web.org()
    client = web.bearer("operator", org)
    twin = web.anonymous()
    twin.headers["Authorization"] = client.headers["Authorization"]
    key = str(uuid.uuid4())
    results: dict[str, Any] = {}

    def first_call() -> None:
        results["first"] = client.post("/api/v1/test-recharge", json={"amount": "5"}, headers={"Idempotency-Key": key})

    thread = threading.Thread(target=first_call)
    thread.start()
    try:
        assert gate.entered.wait(10), "the first call never started"
        duplicate = twin.post("/api/v1/test-recharge", json={"amount": "5"}, headers={"Idempotency-Key": key})
        assert duplicate.status_code == 409 and "still running" in duplicate.json()["detail"]
    finally:
        gate.open.set()
        thread.join(10)
    assert results["first"].status_code == 201
    replay = twin.post("/api/v1/test-recharge", json={"amount": "5"}, headers={"Idempotency-Key": key})
    assert replay.json() == results["first"].json()
    assert _runs(web) == 1


def test_of_two_racing_claims_on_one_key_exactly_one_runs(web: Any) -> None:
    """The unique constraint is the lock: many threads claim one key at once, one gets it."""
    org = web.org()
    client = web.bearer("operator", org)
    me = client.get("/api/v1/auth/me").json()
    who = Principal(me["user_id"], org, Role(me["role"]), me["username"], None, "bearer", "ORG1")
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def claim() -> None:
        barrier.wait(10)
        outcomes.append(_claim(web.engine, who, "race-key", "a" * 64, web.clock()).outcome)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["new"] + ["running"] * 5


def test_keys_are_scoped_by_user_and_organisation(web: Any) -> None:
    _add_routes(web)
    first = web.bearer("operator", web.org())
    second = web.bearer("operator", web.org())
    elsewhere = web.bearer("operator", web.org("ORG2"))
    key = "shared-key"
    for client in (first, second, elsewhere):
        answer = client.post("/api/v1/test-recharge", json={"amount": "1"}, headers={"Idempotency-Key": key})
        assert answer.status_code == 201 and "Idempotent-Replayed" not in answer.headers
    assert _runs(web) == 3


def test_a_failed_run_leaves_no_record_so_the_retry_runs(web: Any) -> None:
    _add_routes(web)
    client = web.bearer("operator", web.org())
    key = str(uuid.uuid4())
    failed = client.post("/api/v1/test-recharge", json={"amount": "boom"}, headers={"Idempotency-Key": key})
    assert failed.status_code == 422 and failed.json()["detail"] == "amount: boom is not an amount"
    with web.engine.connect() as conn:
        assert conn.execute(select(idempotency_keys.c.id)).first() is None
    again = client.post("/api/v1/test-recharge", json={"amount": "boom"}, headers={"Idempotency-Key": key})
    assert again.status_code == 422 and "Idempotent-Replayed" not in again.headers


def test_keys_expire_after_a_day_and_a_stale_running_claim_is_taken_over(web: Any) -> None:
    _add_routes(web)
    org = web.org()
    client = web.api_key("operator", org)  # an API key does not expire, so one principal spans the day
    key = str(uuid.uuid4())
    assert (
        client.post("/api/v1/test-recharge", json={"amount": "1"}, headers={"Idempotency-Key": key}).status_code == 201
    )
    web.clock.advance(hours=23, minutes=59)
    replay = client.post("/api/v1/test-recharge", json={"amount": "1"}, headers={"Idempotency-Key": key})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    web.clock.advance(minutes=1)
    fresh = client.post("/api/v1/test-recharge", json={"amount": "1"}, headers={"Idempotency-Key": key})
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers
    assert _runs(web) == 2

    me = client.get("/api/v1/auth/me").json()
    who = Principal(me["user_id"], org, Role.OPERATOR, me["username"], None, "api_key", "ORG1")
    assert _claim(web.engine, who, "crashed", "h" * 64, web.clock()).outcome == "new"
    assert _claim(web.engine, who, "crashed", "h" * 64, web.clock()).outcome == "running"
    web.clock.advance(minutes=4, seconds=59)
    assert _claim(web.engine, who, "crashed", "h" * 64, web.clock()).outcome == "running"
    web.clock.advance(seconds=1)
    assert _claim(web.engine, who, "crashed", "h" * 64, web.clock()).outcome == "new", "a dead run's key is taken over"


def test_console_forms_send_the_key_as_a_hidden_field_and_get_html_back(web: Any) -> None:
    _add_routes(web)
    client = web.client("operator", web.org())
    csrf = client.headers.pop("X-CSRF-Token")
    key = str(uuid.uuid4())
    form = {"amount": "30.00", "idempotency_key": key, "csrf_token": csrf}
    first = client.post("/console/test-recharge", data=form)
    assert first.status_code == 201 and first.text.startswith("<p>recharged 30.00")
    again = client.post("/console/test-recharge", data=form)
    assert again.status_code == 201 and again.text == first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = client.post("/console/test-recharge", data={**form, "amount": "31.00"})
    assert changed.status_code == 422
    no_csrf = client.post("/console/test-recharge", data={"amount": "1", "idempotency_key": str(uuid.uuid4())})
    assert no_csrf.status_code == 403
    assert _runs(web) == 1
