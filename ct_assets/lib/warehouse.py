"""The DuckDB warehouse: one table per asset, time ranges replaced in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

SCHEMA = "main"


def quote_identifier(name: str) -> str:
    """`name` as a DuckDB identifier: in double quotes, each embedded double quote doubled.

    Use it for every table, column or metric name put into SQL text, whatever its source
    (`ct.yaml`, a landed file's header, a constant); values are always bound parameters (`?`).
    """
    return '"' + name.replace('"', '""') + '"'


class Warehouse:
    """A DuckDB file holding every DuckDB-stored asset as `main.<asset key>`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file (read-write unless `read_only`) with the session time zone set to UTC."""
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"{self.path}: the warehouse does not exist yet")
        connection = duckdb.connect(str(self.path), read_only=read_only)
        try:
            connection.execute("SET TimeZone = 'UTC'")
            yield connection
        finally:
            connection.close()

    def table_exists(self, table: str) -> bool:
        """Whether `table` exists (False when the file does not exist yet)."""
        if not self.path.exists():
            return False
        with self.connect() as connection:
            return _exists(connection, table)

    def replace_range(
        self, table: str, frame: pl.DataFrame, time_column: str,
        start: dt.datetime, end: dt.datetime,
    ) -> int:
        """Replace the rows of `table` with `start <= time_column < end` by `frame`, atomically.

        Creates the table on first use and adds columns that `frame` brings new. A failure
        rolls back, leaving the previous rows in place.

        Returns:
            The number of rows deleted.
        """
        with self.connect() as connection:
            connection.register("incoming", frame.to_arrow())
            connection.execute("BEGIN TRANSACTION")
            try:
                quoted, time = quote_identifier(table), quote_identifier(time_column)
                if not _exists(connection, table):
                    connection.execute(f"CREATE TABLE {quoted} AS SELECT * FROM incoming LIMIT 0")
                existing = _columns(connection, table)
                for name, kind in _columns(connection, "incoming").items():
                    if name not in existing:
                        connection.execute(f"ALTER TABLE {quoted} "
                                           f"ADD COLUMN {quote_identifier(name)} {kind}")
                deleted = connection.execute(
                    f"DELETE FROM {quoted} WHERE {time} >= ? AND {time} < ?", [start, end],
                ).fetchone()
                connection.execute(f"INSERT INTO {quoted} BY NAME SELECT * FROM incoming")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            finally:
                connection.unregister("incoming")
        return int(deleted[0]) if deleted else 0

    def read_range(
        self, table: str, time_column: str, start: dt.datetime, end: dt.datetime,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """Rows of `table` with `start <= time_column < end`, ordered by time."""
        selected = ", ".join(quote_identifier(c) for c in columns) if columns else "*"
        quoted, time = quote_identifier(table), quote_identifier(time_column)
        with self.connect() as connection:
            if not _exists(connection, table):
                raise LookupError(f"table {table!r} does not exist in {self.path}; "
                                  "materialize its asset first")
            return connection.execute(
                f"SELECT {selected} FROM {quoted} WHERE {time} >= ? AND {time} < ? "
                f"ORDER BY {time}", [start, end],
            ).pl()

    def query(self, sql: str, parameters: list[object] | None = None) -> pl.DataFrame:
        """Run a read query and return the result as a polars frame."""
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).pl()


def _exists(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [SCHEMA, table],
    ).fetchone()
    return bool(found and found[0])


def _columns(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = connection.execute(f"DESCRIBE {quote_identifier(table)}").fetchall()
    return {row[0]: row[1] for row in rows}
