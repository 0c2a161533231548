"""The API's response models derived from the services' dataclasses (``powergate.web.api._models.mirror``).

Worked examples of what ``mirror`` makes of a dataclass, and the contract the derived models keep: their JSON
schemas are pinned in ``api_mirrors.json``. A read model is the services' to change; when a change would also
change what API clients receive (a new, renamed or retyped field), this test says so, and the author either
keeps the API as it was (``exclude=``, ``types=``) or updates the pin on purpose:

    POWERGATE_UPDATE_API_MIRRORS=1 .venv/bin/pytest -q tests/unit/test_api_mirrors.py
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import os
import pkgutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import powergate.web.api
from powergate.web.api._common import Model
from powergate.web.api._models import mirror, mirrors

PINNED = Path(__file__).with_name("api_mirrors.json")


@dataclasses.dataclass(frozen=True)
class Line:
    line_no: int
    amount_micros: int


@dataclasses.dataclass(frozen=True)
class Bill:
    bill_no: str
    state: str
    due_on: dt.date | None
    lines: tuple[Line, ...]
    tags: tuple[str, ...] = ()
    internal_id: int = 0

    @property
    def total_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)


@dataclasses.dataclass(frozen=True)
class Unmirrored:
    x: int


@dataclasses.dataclass(frozen=True)
class Holder:
    inner: Unmirrored


@mirror(Line)
class LineOut(Model):
    pass


@mirror(Bill, exclude=["internal_id"], types={"state": str})
class BillOut(Model):
    """A bill as the API answers it."""


def test_excluding_a_field_the_dataclass_does_not_have_is_harmless() -> None:
    @mirror(Line, exclude=["not_yet"])
    class LaterOut(Model):
        pass

    assert list(LaterOut.model_fields) == ["line_no", "amount_micros"]


def test_a_mirror_has_the_dataclass_fields_in_order_every_one_required_without_the_excluded() -> None:
    assert list(BillOut.model_fields) == ["bill_no", "state", "due_on", "lines", "tags"]
    schema = BillOut.model_json_schema()
    assert schema["required"] == ["bill_no", "state", "due_on", "lines", "tags"]
    assert schema["title"] == "BillOut" and schema["description"] == "A bill as the API answers it."
    assert BillOut.__name__ == "BillOut" and BillOut.__module__ == __name__


def test_tuples_become_lists_and_a_nested_dataclass_becomes_its_mirror() -> None:
    properties = BillOut.model_json_schema()["properties"]
    assert properties["tags"] == {"items": {"type": "string"}, "title": "Tags", "type": "array"}
    assert properties["lines"]["items"] == {"$ref": "#/$defs/LineOut"}
    assert properties["due_on"]["anyOf"] == [{"format": "date", "type": "string"}, {"type": "null"}]


def test_the_whole_conversion_is_model_validate_of_the_dataclass() -> None:
    bill = Bill("B-1", "issued", None, (Line(1, 5_000_000), Line(2, 250_000)), ("rent",), internal_id=7)
    answer = BillOut.model_validate(bill).model_dump(mode="json")
    assert answer == {
        "bill_no": "B-1",
        "state": "issued",
        "due_on": None,
        "lines": [{"line_no": 1, "amount_micros": 5_000_000}, {"line_no": 2, "amount_micros": 250_000}],
        "tags": ["rent"],
    }


def test_a_hand_written_model_reads_a_dataclass_property_by_attribute() -> None:
    class TotalOut(Model):
        bill_no: str
        total_micros: int

    bill = Bill("B-2", "draft", dt.date(2026, 12, 1), (Line(1, 3),))
    assert TotalOut.model_validate(bill).total_micros == 3


def test_mistakes_in_a_mirror_are_refused_when_the_module_loads() -> None:
    with pytest.raises(AssertionError, match="has no field nope"):
        mirror(Line, types={"nope": int})(type("NopeOut", (Model,), {}))
    with pytest.raises(AssertionError, match="declare the mirror of Unmirrored"):
        mirror(Holder)(type("HolderOut", (Model,), {}))
    with pytest.raises(AssertionError, match="declares no fields of its own"):

        class CopyOut(Model):
            line_no: int

        mirror(Line)(CopyOut)


def api_mirrors() -> dict[str, type[BaseModel]]:
    """Every mirror the API's routers declare, by ``module.name``."""
    for info in pkgutil.iter_modules(powergate.web.api.__path__):
        importlib.import_module(f"{powergate.web.api.__name__}.{info.name}")
    return {
        f"{model.__module__.rsplit('.', 1)[-1]}.{model.__qualname__}": model
        for model in mirrors().values()
        if model.__module__.startswith(f"{powergate.web.api.__name__}.")
    }


def test_the_api_mirrors_answer_what_clients_were_promised() -> None:
    found: dict[str, Any] = {
        name: model.model_json_schema(mode="serialization") for name, model in sorted(api_mirrors().items())
    }
    assert len(found) >= 20, "the API's mirrors were not found"
    if os.environ.get("POWERGATE_UPDATE_API_MIRRORS") == "1":
        PINNED.write_text(json.dumps(found, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    changed = sorted(name for name in found.keys() | pinned.keys() if found.get(name) != pinned.get(name))
    assert not changed, (
        f"the API schema of {', '.join(changed)} changed (a service dataclass changed?); keep the API as it was "
        "with exclude= / types= on the mirror, or update tests/unit/api_mirrors.json on purpose "
        "(POWERGATE_UPDATE_API_MIRRORS=1)"
    )
