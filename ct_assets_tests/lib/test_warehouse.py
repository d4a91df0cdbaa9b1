"""The warehouse: a range replaced atomically, also when its rows come in chunks."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

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


def test_chunked_replace_writes_every_chunk_and_keeps_rows_outside_the_range(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    store.replace_range("t", hours(0, 72, 1), "ts", day(0), day(3))  # three days of 1s

    def chunks():
        for offset in (1, 2):  # days 1 and 2, one chunk each, built while the range is open
            old = store.read_range("t", "ts", day(offset), day(offset + 1))
            assert old["value"].to_list() == [1] * 24  # readers still see the old rows
            yield old.with_columns(pl.lit(2).alias("value"))

    deleted = store.replace_range_chunks("t", chunks(), "ts", day(1), day(3))
    assert deleted == 48
    assert store.partition_rows("t", "ts", day(0), day(3), "key") == {
        "2026-01-01": 24, "2026-01-02": 24, "2026-01-03": 24}
    values = store.query("SELECT key, sum(value) AS s FROM t GROUP BY key ORDER BY key")
    assert values["s"].to_list() == [24, 48, 48]


def test_a_failing_chunk_rolls_back_the_whole_range(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    store.replace_range("t", hours(0, 48, 1), "ts", day(0), day(2))

    def chunks():
        yield hours(0, 24, 5)
        raise RuntimeError("the second chunk failed")

    with pytest.raises(RuntimeError, match="second chunk"):
        store.replace_range_chunks("t", chunks(), "ts", day(0), day(2))
    assert store.query("SELECT sum(value) AS s, count(*) AS n FROM t").row(0) == (48, 48)


def test_no_chunk_deletes_the_range_and_a_missing_table_is_left_alone(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    assert store.replace_range_chunks("t", [], "ts", day(0), day(1)) == 0
    assert not store.table_exists("t")
    assert store.partition_rows("t", "ts", day(0), day(1), "key") == {}
    store.replace_range("t", hours(0, 48, 1), "ts", day(0), day(2))
    assert store.replace_range_chunks("t", iter(()), "ts", day(0), day(1)) == 24
    assert store.partition_rows("t", "ts", day(0), day(2), "key") == {"2026-01-02": 24}


def test_the_first_chunk_may_bring_new_columns_a_later_one_may_not(tmp_path):
    store = Warehouse(tmp_path / "w.duckdb")
    store.replace_range("t", hours(0, 24, 1), "ts", day(0), day(1))
    wider = hours(0, 24, 2).with_columns(pl.lit("x").alias("extra"))
    store.replace_range_chunks("t", [wider, hours(24, 24, 3)], "ts", day(0), day(2))
    stored = store.query("SELECT value, extra FROM t ORDER BY ts")
    assert stored["value"].to_list() == [2] * 24 + [3] * 24
    assert stored["extra"].to_list() == ["x"] * 24 + [None] * 24

    late = hours(24, 24, 4).with_columns(pl.lit(1.5).alias("later"))
    with pytest.raises(ValueError, match="later"):
        store.replace_range_chunks("t", [hours(0, 24, 4), late], "ts", day(0), day(2))
    assert store.query("SELECT sum(value) AS s FROM t").item() == 24 * 2 + 24 * 3
