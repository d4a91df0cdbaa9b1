"""The DuckDB warehouse: one table per asset, time ranges replaced in one transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import polars as pl

SCHEMA = "main"
STAGING_SCHEMA = "staging"  # where a range written in several chunks is staged
# A range run processes its partitions in chunks of about this many rows (whole partitions), so
# its memory is bounded by the chunk, not by the range: ten million rows in one run take no
# more than one million do (benchmarks/scale.py). A partition larger than this is a chunk of
# its own.
CHUNK_ROWS = 500_000


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

    @contextmanager
    def session(self) -> Iterator[None]:
        """Keep the file open for the block, so each `connect` inside it is cheap.

        DuckDB shares one open database among a process's connections to a file: while this
        one is open, a `connect` skips loading the catalog (5 ms instead of about 40 ms on a
        600-column warehouse, measured on the 2-core machine; an asset step opens a dozen).
        It also holds DuckDB's lock on the file for the whole block, so open it only where the
        process has the warehouse to itself: the step of an asset in the `duckdb` pool.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keeper = duckdb.connect(str(self.path))
        try:
            yield
        finally:
            keeper.close()

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
        return self.replace_range_chunks(table, [lambda: frame], time_column, start, end)

    def replace_range_chunks(
        self, table: str, chunks: Sequence[Callable[[], pl.DataFrame]], time_column: str,
        start: dt.datetime, end: dt.datetime,
    ) -> int:
        """`replace_range` with the new rows built chunk by chunk, replaced in ONE transaction.

        Each of `chunks` builds one frame when called (it may read other tables of this
        warehouse meanwhile, through their own connections); one frame is held at a time.
        A single chunk is written as `replace_range` writes a frame. Several are appended to a
        staging table (`staging.<table>_<random>`) one by one, each committed, then the range is
        replaced from it in one transaction that also drops it. Why not append them inside
        that transaction: DuckDB holds rows appended in an open transaction in memory until it
        commits, about 300 MB per million prediction rows (duckdb 1.5: ten 1M-row chunks
        peaked at 3.5 GiB appended in one transaction, 1.2 GiB staged), so a long range would
        need memory in proportion to its rows. Readers see the old rows of the range until the
        commit; a failure, also one raised while building a chunk, leaves them in place (and
        drops the staging table). No chunk deletes the range (nothing happens when the table
        does not exist). Columns new to the table are added.

        Returns:
            The number of rows deleted.
        """
        with self.connect() as connection:
            if len(chunks) <= 1:
                frames = [build() for build in chunks]
                if frames:
                    connection.register("incoming", frames.pop().to_arrow())
                try:
                    return _replace_in_transaction(
                        connection, table, "incoming" if chunks else None, time_column,
                        start, end)
                finally:
                    if chunks:
                        connection.unregister("incoming")
            # Named for this call: two writers of one table never share a staging table.
            staging = f"{STAGING_SCHEMA}.{quote_identifier(f'{table}_{uuid.uuid4().hex[:12]}')}"
            connection.execute(f"CREATE SCHEMA IF NOT EXISTS {STAGING_SCHEMA}")
            try:
                for number, build in enumerate(chunks):
                    connection.register("incoming", build().to_arrow())
                    try:
                        if number == 0:
                            connection.execute(f"CREATE TABLE {staging} AS SELECT * FROM incoming")
                            continue
                        _add_columns(connection, staging, "incoming")
                        connection.execute(f"INSERT INTO {staging} BY NAME SELECT * FROM incoming")
                    finally:
                        connection.unregister("incoming")
                return _replace_in_transaction(connection, table, staging, time_column, start,
                                               end, drop_source=True)
            finally:
                connection.execute(f"DROP TABLE IF EXISTS {staging}")

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


def _replace_in_transaction(connection: duckdb.DuckDBPyConnection, table: str,
                            source: str | None, time_column: str, start: dt.datetime,
                            end: dt.datetime, *, drop_source: bool = False) -> int:
    """In one transaction: delete the range of `table`, insert `source` (a relation), commit.

    Creates the table from `source` when missing and adds the columns `source` brings new;
    `drop_source` drops `source` in the same transaction. Rolls back on any failure.
    """
    quoted, time = quote_identifier(table), quote_identifier(time_column)
    connection.execute("BEGIN TRANSACTION")
    try:
        exists = _exists(connection, table)
        if source is not None and not exists:
            connection.execute(f"CREATE TABLE {quoted} AS SELECT * FROM {source} LIMIT 0")
            exists = True
        deleted = 0
        if exists:
            if source is not None:
                _add_columns(connection, quoted, source)
            found = connection.execute(f"DELETE FROM {quoted} WHERE {time} >= ? AND {time} < ?",
                                       [start, end]).fetchone()
            deleted = int(found[0]) if found else 0
        if source is not None:
            connection.execute(f"INSERT INTO {quoted} BY NAME SELECT * FROM {source}")
            if drop_source:
                connection.execute(f"DROP TABLE {source}")
        connection.execute("COMMIT")
    except BaseException:
        with suppress(duckdb.TransactionException):  # a failed COMMIT rolled back already
            connection.execute("ROLLBACK")
        raise
    return deleted


def _add_columns(connection: duckdb.DuckDBPyConnection, quoted: str, source: str) -> None:
    """Add to table `quoted` the columns of relation `source` it does not have."""
    existing = _columns(connection, quoted)
    for name, kind in _columns(connection, source).items():
        if name not in existing:
            connection.execute(f"ALTER TABLE {quoted} ADD COLUMN {quote_identifier(name)} {kind}")


def _exists(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [SCHEMA, table],
    ).fetchone()
    return bool(found and found[0])


def _columns(connection: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """Column name → type of `relation` (SQL text: a quoted table name, or a registered view)."""
    rows = connection.execute(f"DESCRIBE {relation}").fetchall()
    return {row[0]: row[1] for row in rows}
