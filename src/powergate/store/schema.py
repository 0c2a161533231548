"""The whole schema: ``metadata`` with every table registered.

Core tables live in ``tables.py``; each part of the system that adds tables does so in a module
``tables_<part>.py`` on the same ``metadata``. Importing this module imports them all, so migrations and the
schema test always compare against every table.
"""

from __future__ import annotations

import importlib
import pkgutil

import powergate.store
from powergate.store.tables import metadata

for _info in sorted(pkgutil.iter_modules(powergate.store.__path__), key=lambda m: m.name):
    if _info.name.startswith("tables_"):
        importlib.import_module(f"powergate.store.{_info.name}")

__all__ = ["metadata"]
