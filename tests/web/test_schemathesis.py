"""Schemathesis (4.x) against the whole JSON API, in-process over ASGI, as an admin of a seeded organisation.

Every operation in the app's OpenAPI document gets generated requests -- random, and with the seeded objects'
ids in the path so the handlers get past the 404 -- and every answer must be below 500 and match the response
schema the operation documents. Bounded: ``MAX_EXAMPLES`` per operation and pass (``RANDOM_ID_EXAMPLES`` for
random ids in a path), derandomised (the same examples every run, so a failure reproduces), no example
database.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis
from api_seed import Seeded, seed
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

MAX_EXAMPLES = 8
RANDOM_ID_EXAMPLES = 3
"""Random ids in the path mostly find nothing (404): a few examples check that; the seeded pass does the rest."""
SKIPPED = {("DELETE", "/api/v1/auth/token")}
"""Logging the test's own token out helps nobody; web-core's tests cover it."""
CHECKS = [not_a_server_error, response_schema_conformance]


def seeded_path(path: str, s: Seeded) -> dict[str, Any]:
    values = {
        "site_id": s.site_id, "building_id": s.building_id, "floor_id": s.floor_id, "room_id": s.room_id,
        "account_id": s.account_id, "meter_id": s.meter_id, "command_id": s.command_id, "order_no": s.order_no,
        "tariff_id": s.tariff_id, "alarm_id": s.alarm_id, "event_id": s.event_id,
    }  # fmt: skip
    names = re.findall(r"\{(\w+)\}", path)
    return {name: values[name] for name in names if name in values}


def exercise(
    operation: Any, headers: dict[str, str], path_parameters: dict[str, Any] | None, examples: int = MAX_EXAMPLES
) -> list[str]:
    failures: list[str] = []
    strategy = operation.as_strategy(path_parameters=path_parameters) if path_parameters else operation.as_strategy()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        # The schema offers three ways to authenticate; generated credentials would only ever answer 401.
        for name in [h for h in (case.headers or {}) if h.lower() in ("x-api-key", "authorization")]:
            del case.headers[name]
        if case.cookies:
            case.cookies.pop("pg_session", None)
        sent = {**headers, "Idempotency-Key": str(uuid.uuid4())}
        try:
            response = case.call(headers=sent)  # an exception in the app (a 500) is raised here
            case.validate_response(response, checks=CHECKS, headers=sent)
        except Exception as error:  # collected so that one run reports every failing operation
            failures.append(f"{operation.method.upper()} {operation.path}: {str(error)[:600]}")
            raise

    try:
        run()
    except Exception as error:  # the first failure, shrunk by Hypothesis; or generation itself failed
        if not failures:
            failures.append(f"{operation.method.upper()} {operation.path}: {type(error).__name__}: {error}"[:800])
    return failures[:1]


def test_no_operation_answers_5xx_or_breaks_its_response_schema(web: Any) -> None:
    s = seed(web)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", web.app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        operations += 1
        admin = web.bearer("admin", s.organisation_id)  # fresh per operation: user routes may disable one
        headers = {"Authorization": admin.headers["Authorization"]}
        fixed = seeded_path(operation.path, s)
        failures += exercise(operation, headers, None, RANDOM_ID_EXAMPLES if fixed else MAX_EXAMPLES)
        if fixed:
            failures += exercise(operation, headers, fixed)
    assert operations > 30, f"only {operations} operations found"
    assert not failures, "\n\n".join(failures)
