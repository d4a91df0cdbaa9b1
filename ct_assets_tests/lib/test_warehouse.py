"""The warehouse: a range replaced atomically, also when its rows come in chunks."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from ct_assets.defs.resources import WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.lib.warehouse import Warehouse, chunk_partitions

DAY = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def hours(first: int, count: int, value: int) -> pl.DataFrame:
    """`count` hourly rows from hour `first` after DAY, each with `value` and its day's key."""
    times = [DAY + dt.timedelta(hours=first + i) for i in range(count)]
    return pl.DataFrame({"ts": times, "key": [f"{t:%Y-%m-%d}" for t in times],
                         "value": [value] * count})


def day(offset: int) -> dt.datetime:
    return DAY + dt.timedelta(days=offset)


def test_chunks_are_consecutive_whole_partitions_within_the_budget():
    keys = ["a", "b", "c", "d", "e", "f"]
    rows = {"a": 40, "b": 50, "c": 30, "d": 200, "e": 10}  # f has no rows
    chunks = chunk_partitions(keys, rows, max_rows=100)
    assert chunks == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert [key for chunk in chunks for key in chunk] == keys  # each key once, in order
    assert chunk_partitions(keys, rows, max_rows=10_000) == [keys]
    assert chunk_partitions([], rows, max_rows=100) == []


def builders(*frames: pl.DataFrame):
    return [lambda frame=frame: frame for frame in frames]


def staged_tables(store: Warehouse) -> list[str]:
    return store.query("SELECT table_name FROM information_schema.tables "
                       "WHERE table_schema = 'staging'")["table_name"].to_list()


def test_chunked_replace_writes_every_chunk_and_keeps_rows_outside_the_range(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    store.replace_range("t", hours(0, 72, 1), "ts", day(0), day(3))  # three days of 1s

    def build(offset: int) -> pl.DataFrame:  # days 1 and 2, built while the range is replaced
        old = store.read_range("t", "ts", day(offset), day(offset + 1))
        assert old["value"].to_list() == [1] * 24  # readers still see the old rows
        return old.with_columns(pl.lit(2).alias("value"))

    deleted = store.replace_range_chunks("t", [lambda: build(1), lambda: build(2)], "ts",
                                         day(1), day(3))
    assert deleted == 48
    assert store.partition_rows("t", "ts", day(0), day(3), "key") == {
        "2026-01-01": 24, "2026-01-02": 24, "2026-01-03": 24}
    values = store.query("SELECT key, sum(value) AS s FROM t GROUP BY key ORDER BY key")
    assert values["s"].to_list() == [24, 48, 48]
    assert staged_tables(store) == []  # the staging table went with the commit


def test_a_failing_chunk_leaves_the_whole_range_as_it_was(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    store.replace_range("t", hours(0, 72, 1), "ts", day(0), day(3))

    def fail() -> pl.DataFrame:
        raise RuntimeError("the last chunk failed")

    for chunks in ([fail], [*builders(hours(0, 24, 5), hours(24, 24, 5)), fail]):
        with pytest.raises(RuntimeError, match="last chunk"):
            store.replace_range_chunks("t", chunks, "ts", day(0), day(3))
        assert store.query("SELECT sum(value) AS s, count(*) AS n FROM t").row(0) == (72, 72)
        assert staged_tables(store) == []


def test_no_chunk_deletes_the_range_and_a_missing_table_is_left_alone(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    assert store.replace_range_chunks("t", [], "ts", day(0), day(1)) == 0
    assert not store.table_exists("t")
    assert store.partition_rows("t", "ts", day(0), day(1), "key") == {}
    store.replace_range("t", hours(0, 48, 1), "ts", day(0), day(2))
    assert store.replace_range_chunks("t", [], "ts", day(0), day(1)) == 24
    assert store.partition_rows("t", "ts", day(0), day(2), "key") == {"2026-01-02": 24}


def test_any_chunk_may_bring_new_columns(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    store.replace_range("t", hours(0, 24, 1), "ts", day(0), day(1))
    first = hours(0, 24, 2).with_columns(pl.lit("x").alias("extra"))
    later = hours(24, 24, 3).with_columns(pl.lit(1.5).alias("later"))
    store.replace_range_chunks("t", builders(first, later), "ts", day(0), day(2))
    stored = store.query("SELECT value, extra, later FROM t ORDER BY ts")
    assert stored["value"].to_list() == [2] * 24 + [3] * 24
    assert stored["extra"].to_list() == ["x"] * 24 + [None] * 24
    assert stored["later"].to_list() == [None] * 24 + [1.5] * 24


def another_process_can_open(path: Path) -> bool:
    """Whether a new process can open the DuckDB file (no other process holds its lock)."""
    return subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r})"
                           ".close()"], capture_output=True, check=False).returncode == 0


def test_a_session_shares_one_open_file_for_the_block_only(tmp_path):
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    with warehouse.session():
        with warehouse.connect() as connection:
            connection.execute("CREATE TABLE t AS SELECT 1 AS x")
        with warehouse.connect() as connection:  # the same open database: sees the commit
            assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert not another_process_can_open(warehouse.path)  # the lock is held meanwhile
    assert another_process_can_open(warehouse.path)  # and given back when the block ends
    assert warehouse.query("SELECT x FROM t")["x"].to_list() == [1]


def test_an_asset_body_holds_the_warehouse_until_it_has_yielded_everything(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    seen = []

    @dg.asset(pool="duckdb")
    @holds_warehouse
    def written(warehouse: WarehouseResource):
        """A generator body: the session lasts until its last result."""
        with warehouse.get().connect() as connection:
            connection.execute("CREATE TABLE t AS SELECT 1 AS x")
        seen.append(another_process_can_open(path))
        yield dg.MaterializeResult(metadata={"rows": 1})

    assert written.op.name == "written"  # the body's name and signature, for Dagster
    result = dg.materialize([written], resources={"warehouse": WarehouseResource(
        path=str(path))})
    assert result.success
    assert seen == [False]  # held while the body ran
    assert another_process_can_open(path)
