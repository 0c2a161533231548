"""Response models derived from the services' read dataclasses, so that the API does not copy them by hand.

A read model (``queries.MeterRow``, ``billing_queries.RuleLine``, ...) already says which fields a thing has and
their types; an API model that repeats them field by field, and a converter that copies them again, are two more
places to keep in step. ``mirror`` builds the pydantic model from the dataclass instead::

    @mirror(queries.MeterRow)
    class MeterOut(Model):
        '''(optional docstring: it becomes the schema's description)'''

The class statement stays (its name, module and docstring name the OpenAPI schema, and type checkers see a
class); the decorator returns a subclass with one field per dataclass field, in the dataclass's order. Rules, so
that the OpenAPI document a client reads is what it was with the hand-written models:
- every field is required (a response always carries every field), whatever default the dataclass has;
- a homogeneous tuple (``tuple[str, ...]``) becomes a list; a nested dataclass becomes its own mirror, which
  must be declared first (``list[VersionLine]`` -> ``list[VersionOut]``); a dataclass without one is an error;
- ``exclude`` leaves internal fields out (``wallet_account_id``); a name the dataclass does not have is ignored
  (so an API model can keep a field out before and after the read model gains it); ``types`` gives a field the
  API's type where it differs (an enum answered as plain text).
The JSON schemas of the mirrors are pinned by ``tests/unit/test_api_mirrors.py``: a change to a read model that
would change what clients receive fails there, not silently in production.
The decorated class declares no fields of its own (that would be the copy again); a model that adds fields
subclasses the mirror. Instances are validated from the dataclass by attribute (``Model`` has
``from_attributes``), so ``MeterOut.model_validate(row)`` is the whole conversion.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types as pytypes
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, create_model

M = TypeVar("M", bound=BaseModel)

_MIRRORS: dict[type, type[BaseModel]] = {}
"""dataclass -> the API model mirroring it (used for nested dataclasses)."""


def mirrors() -> dict[type, type[BaseModel]]:
    """Every mirror declared so far: dataclass -> its API model."""
    return dict(_MIRRORS)


def mirror(
    source: type, *, exclude: Iterable[str] = (), types: Mapping[str, Any] | None = None
) -> Callable[[type[M]], type[M]]:
    """A class decorator: the decorated (empty) model gets the fields of the dataclass ``source``."""
    assert dataclasses.is_dataclass(source), f"{source!r} is not a dataclass"
    left_out = frozenset(exclude)
    given = dict(types or {})

    def build(declared: type[M]) -> type[M]:
        assert not declared.__pydantic_fields__, f"{declared.__name__}: a mirror declares no fields of its own"
        hints = typing.get_type_hints(source)
        names = [f.name for f in dataclasses.fields(source)]
        unknown = given.keys() - set(names)
        assert not unknown, f"{declared.__name__}: {source.__name__} has no field {', '.join(sorted(unknown))}"
        fields: dict[str, Any] = {
            name: (given[name] if name in given else _api_type(hints[name], declared.__name__), ...)
            for name in names
            if name not in left_out
        }
        model = create_model(
            declared.__name__, __base__=declared, __module__=declared.__module__, __doc__=declared.__doc__, **fields
        )
        model.__qualname__ = declared.__qualname__
        _MIRRORS[source] = model
        return model

    return build


def _api_type(hint: Any, owner: str) -> Any:
    """The API's type for a dataclass field's type: nested dataclasses as their mirrors, tuples as lists."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        assert hint in _MIRRORS, f"{owner}: declare the mirror of {hint.__name__} before it"
        return _MIRRORS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return list[_api_type(args[0], owner)]  # type: ignore[misc]
    if origin is list:
        return list[_api_type(args[0], owner)]  # type: ignore[misc]
    if origin in (typing.Union, pytypes.UnionType):
        return functools.reduce(operator.or_, [_api_type(arg, owner) for arg in args])
    return hint
