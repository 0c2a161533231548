"""Configuration: where the database lives and other settings, from the environment.

``POWERGATE_DATABASE_URL`` selects the database (an SQLAlchemy URL: ``sqlite:///path`` or
``postgresql+psycopg://user@host/db``). The embedded default is an SQLite file in ``./var``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SQLITE_PATH = Path("var") / "powergate.db"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    url = env.get("POWERGATE_DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"
    return Settings(database_url=url)
