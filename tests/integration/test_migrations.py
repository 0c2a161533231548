"""Migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from powergate.store.db import current_revision
from powergate.store.partitions import is_partition_name
from powergate.store.schema import metadata


def test_the_migrated_schema_matches_the_table_definitions(engine: Engine, db_url: str) -> None:
    assert current_revision(db_url) is not None
    with engine.connect() as conn:
        # the monthly partitions of readings (PostgreSQL) are tables no definition declares: store.partitions
        opts = {"compare_type": True, "include_name": _not_a_partition}
        context = MigrationContext.configure(conn, opts=opts)
        differences = compare_metadata(context, metadata)
    assert differences == []


def _not_a_partition(name: str | None, kind: str, parents: object) -> bool:
    return not (kind == "table" and is_partition_name(name))
