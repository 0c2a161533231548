"""Bulk writes for the hot path (ingest): driver-level ``executemany`` with tuples, on SQLite and PostgreSQL.

SQLAlchemy Core compiles and type-processes every row; for batches of thousands of readings that costs more
than the database itself. Here the SQL is written once per statement and rows go to the driver as tuples, with
timestamps in exactly the form ``UTCDateTime`` stores them, so everything written here reads back through the
normal tables. Use only inside a transaction the caller holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError


class Bulk:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self.mark = "?" if self.sqlite else "%s"

    def ts(self, value: dt.datetime | None) -> Any:
        """A timestamp as ``UTCDateTime`` binds it: naive UTC text on SQLite, aware UTC elsewhere."""
        if value is None:
            return None
        if value.tzinfo is not dt.UTC:
            assert value.tzinfo is not None, f"naive datetime {value!r} given to the database"
            value = value.astimezone(dt.UTC)
        if self.sqlite:
            # "YYYY-MM-DD HH:MM:SS.ffffff", exactly as SQLAlchemy's SQLite DATETIME stores it.
            return value.isoformat(sep=" ", timespec="microseconds")[:26]
        return value

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if not self.sqlite:
            self._copy(table, columns, rows)
            return
        marks = ", ".join([self.mark] * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        self.conn.exec_driver_sql(sql, list(rows))

    def _copy(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """PostgreSQL: COPY is several times faster than a pipelined executemany of INSERTs."""
        import psycopg

        driver = self.conn.connection.driver_connection
        assert driver is not None
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.IntegrityError as error:
            # Callers handle constraint violations the same way whichever path wrote the rows.
            raise IntegrityError(statement, None, error) from error

    def update(
        self,
        table: str,
        key: tuple[str, str],
        columns: Sequence[tuple[str, str]],
        rows: Sequence[tuple[Any, ...]],
        *,
        add: bool = False,
    ) -> None:
        """Set (or with ``add``, increase) ``columns`` of the rows whose ``key`` matches.

        ``key`` and each column are (name, PostgreSQL type); each row is (key value, *column values). SQLite
        runs an ``executemany``; PostgreSQL one ``UPDATE ... FROM unnest(arrays)`` statement for all rows.
        """
        if not rows:
            return
        names = [name for name, _ in columns]
        if self.sqlite:
            sets = ", ".join(f"{n} = {n} + ?" if add else f"{n} = ?" for n in names)
            sql = f"UPDATE {table} SET {sets} WHERE {key[0]} = ?"
            self.conn.exec_driver_sql(sql, [(*row[1:], row[0]) for row in rows])
            return
        sets = ", ".join(f"{n} = {table}.{n} + v.{n}" if add else f"{n} = v.{n}" for n in names)
        arrays = ", ".join(f"%s::{kind}[]" for _, kind in (key, *columns))
        sql = (
            f"UPDATE {table} SET {sets} FROM unnest({arrays}) AS v({key[0]}, {', '.join(names)}) "
            f"WHERE {table}.{key[0]} = v.{key[0]}"
        )
        self.conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*rows, strict=True)))

    def next_ids(self, table: str, count: int) -> list[int]:
        """``count`` fresh ids for ``table``'s integer primary key, reserved for this transaction.

        SQLite: the write lock (``BEGIN IMMEDIATE``) is held, so ids above the current maximum are ours.
        PostgreSQL: drawn from the column's sequence, so concurrent transactions never collide.
        """
        if count == 0:
            return []
        if self.sqlite:
            top = self.conn.exec_driver_sql(f"SELECT COALESCE(MAX(id), 0) FROM {table}").scalar_one()
            return list(range(int(top) + 1, int(top) + 1 + count))
        rows = self.conn.exec_driver_sql(
            f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, %s)", (count,)
        ).scalars()
        return [int(r) for r in rows]
