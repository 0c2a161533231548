"""Bulk writes for the hot path (ingest): driver-level ``executemany`` with tuples, on SQLite and PostgreSQL.

SQLAlchemy Core compiles and type-processes every row; for batches of thousands of readings that costs more
than the database itself. Here the SQL is written once per statement and rows go to the driver as tuples, with
timestamps in exactly the form ``UTCDateTime`` stores them, so everything written here reads back through the
normal tables. Use only inside a transaction the caller holds.

A ``Bulk`` lives for one batch: it remembers the text of each UTC timestamp it has bound on SQLite (a batch's
readings share a few instants), up to ``MAX_CACHED_TIMES``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

MAX_CACHED_TIMES = 50_000
"""Bound on the timestamps one ``Bulk`` remembers; the cache is cleared when full."""
KEY_CHUNK = 2_000
"""Bound on the keys in one ``select_in`` statement."""


class Bulk:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self.mark = "?" if self.sqlite else "%s"
        self._texts: dict[dt.datetime, str] = {}
        self._times: dict[str, dt.datetime] = {}

    def ts(self, value: dt.datetime | None) -> Any:
        """A timestamp as ``UTCDateTime`` binds it: naive UTC text on SQLite, aware UTC elsewhere."""
        if value is None:
            return None
        if value.tzinfo is dt.UTC and self.sqlite:
            # Equal UTC datetimes are the same instant, so they share one text.
            text = self._texts.get(value)
            if text is None:
                if len(self._texts) >= MAX_CACHED_TIMES:
                    self._texts.clear()
                text = self._texts[value] = value.isoformat(sep=" ", timespec="microseconds")[:26]
            return text
        if value.tzinfo is not dt.UTC:
            assert value.tzinfo is not None, f"naive datetime {value!r} given to the database"
            value = value.astimezone(dt.UTC)
        if self.sqlite:
            # "YYYY-MM-DD HH:MM:SS.ffffff", exactly as SQLAlchemy's SQLite DATETIME stores it.
            return value.isoformat(sep=" ", timespec="microseconds")[:26]
        return value

    def select_in(self, query: str, column: str, keys: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``query`` (a SELECT without WHERE) whose ``column`` is one of ``keys``, as driver tuples.

        SQLite: ``IN (?, ...)``; PostgreSQL: ``= ANY(%s)`` with one array. At most ``KEY_CHUNK`` keys a statement.
        Values come as the driver returns them; ``datetime_of`` and ``date_of`` read the stored times.
        """
        for start in range(0, len(keys), KEY_CHUNK):
            chunk = tuple(keys[start : start + KEY_CHUNK])
            if self.sqlite:
                sql = f"{query} WHERE {column} IN ({', '.join('?' * len(chunk))})"
                yield from self.conn.exec_driver_sql(sql, chunk)
            else:
                yield from self.conn.exec_driver_sql(f"{query} WHERE {column} = ANY(%s)", (list(chunk),))

    def datetime_of(self, value: Any) -> dt.datetime | None:
        """A stored ``UTCDateTime`` as the table would return it: aware, in UTC."""
        if value is None:
            return None
        if isinstance(value, str):  # SQLite: "YYYY-MM-DD HH:MM:SS[.ffffff]", naive UTC
            parsed = self._times.get(value)
            if parsed is None:
                if len(self._times) >= MAX_CACHED_TIMES:
                    self._times.clear()
                parsed = self._times[value] = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
            return parsed
        assert isinstance(value, dt.datetime) and value.tzinfo is not None
        return value if value.tzinfo is dt.UTC else value.astimezone(dt.UTC)

    @staticmethod
    def date_of(value: Any) -> dt.date | None:
        """A stored ``Date``: ISO text on SQLite, a date elsewhere."""
        return dt.date.fromisoformat(value) if isinstance(value, str) else value

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
