"""The DuckDB warehouse: one table per asset, time ranges replaced in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import polars as pl

SCHEMA = "main"
# A range run processes its partitions in chunks of about this many rows (whole partitions), so
# its memory is bounded by the chunk, not by the range: ten million rows in one run take no
# more than one million do. A partition larger than this is a chunk of its own.
CHUNK_ROWS = 1_000_000


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
        return self.replace_range_chunks(table, [frame], time_column, start, end)

    def replace_range_chunks(
        self, table: str, chunks: Iterable[pl.DataFrame], time_column: str,
        start: dt.datetime, end: dt.datetime,
    ) -> int:
        """`replace_range` with the new rows given as frames, one at a time, in ONE transaction.

        `chunks` may be a generator that builds each frame when asked (reading other tables
        of this warehouse meanwhile, through their own connections): only one chunk is held
        at a time, and readers see the old rows of the range until the commit. A failure,
        also one raised by the generator, rolls back every chunk. No chunk at all deletes the
        range (nothing happens when the table does not exist). Columns new to the table are
        added from the first chunk; DuckDB cannot alter a table a transaction has appended to,
        so a later chunk with a column neither the table nor the first chunk has is refused.

        Returns:
            The number of rows deleted.

        Raises:
            ValueError: a chunk after the first brings a column the table does not have.
        """
        quoted, time = quote_identifier(table), quote_identifier(time_column)
        with self.connect() as connection:
            connection.execute("BEGIN TRANSACTION")
            try:
                deleted = None
                for frame in chunks:
                    connection.register("incoming", frame.to_arrow())
                    try:
                        if not _exists(connection, table):
                            connection.execute(
                                f"CREATE TABLE {quoted} AS SELECT * FROM incoming LIMIT 0")
                        existing = _columns(connection, table)
                        new = {name: kind for name, kind in _columns(connection, "incoming").items()
                               if name not in existing}
                        if new and deleted is not None:
                            raise ValueError(f"{table}: a chunk after the first brings the new "
                                             f"column(s) {', '.join(new)}; the first chunk must "
                                             "have every column")
                        for name, kind in new.items():
                            connection.execute(f"ALTER TABLE {quoted} "
                                               f"ADD COLUMN {quote_identifier(name)} {kind}")
                        if deleted is None:
                            deleted = _delete_range(connection, quoted, time, start, end)
                        connection.execute(f"INSERT INTO {quoted} BY NAME SELECT * FROM incoming")
                    finally:
                        connection.unregister("incoming")
                    del frame  # not held while the next chunk is built
                if deleted is None and _exists(connection, table):
                    deleted = _delete_range(connection, quoted, time, start, end)
                connection.execute("COMMIT")
            except BaseException:
                with suppress(duckdb.TransactionException):  # a failed COMMIT rolled back
                    connection.execute("ROLLBACK")
                raise
        return deleted or 0

    def partition_rows(self, table: str, time_column: str, start: dt.datetime,
                       end: dt.datetime, partition_column: str) -> dict[str, int]:
        """Rows of `table` per partition key with `start <= time_column < end` (none: absent)."""
        quoted, time = quote_identifier(table), quote_identifier(time_column)
        column = quote_identifier(partition_column)
        with self.connect() as connection:
            if not _exists(connection, table):
                return {}
            found = connection.execute(
                f"SELECT {column}, count(*) FROM {quoted} WHERE {time} >= ? AND {time} < ? "
                f"GROUP BY {column}", [start, end]).fetchall()
        return {str(key): int(rows) for key, rows in found}

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


def chunk_partitions(keys: list[str], rows: dict[str, int], max_rows: int | None = None
                     ) -> list[list[str]]:
    """`keys` (in order) grouped into runs of consecutive partitions of at most `max_rows` rows.

    Args:
        keys: the partition keys of a range, in time order.
        rows: rows per key (a missing key has none), e.g. from `Warehouse.partition_rows`.
        max_rows: the budget per chunk (default `CHUNK_ROWS`); a partition above it is a chunk
            of its own.

    Returns:
        The chunks, every key in exactly one, in order; `[]` for no keys.
    """
    budget = CHUNK_ROWS if max_rows is None else max_rows
    chunks: list[list[str]] = []
    held = 0
    for key in keys:
        count = rows.get(key, 0)
        if chunks and held + count <= budget:
            chunks[-1].append(key)
            held += count
        else:
            chunks.append([key])
            held = count
    return chunks


def _delete_range(connection: duckdb.DuckDBPyConnection, quoted: str, time: str,
                  start: dt.datetime, end: dt.datetime) -> int:
    found = connection.execute(
        f"DELETE FROM {quoted} WHERE {time} >= ? AND {time} < ?", [start, end]).fetchone()
    return int(found[0]) if found else 0


def _exists(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [SCHEMA, table],
    ).fetchone()
    return bool(found and found[0])


def _columns(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = connection.execute(f"DESCRIBE {quote_identifier(table)}").fetchall()
    return {row[0]: row[1] for row in rows}
