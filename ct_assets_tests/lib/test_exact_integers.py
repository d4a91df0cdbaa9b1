"""`int` columns are typed as exact Int64, never through a 53-bit float.

A float holds integers exactly only up to 2**53: through one, 1234567890123456789 comes back
as 1234567890123456768 and ids differing in their last digits collide. These tests hold the
row checks (wrong type, min/max) and the stored-data range check to exact integers.
"""

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.features import build_features
from ct_assets.lib.files import ROW_NUMBER, SOURCE_FILE, csv_header, discover, read_landed_file
from ct_assets.lib.ingest import FileCatalog, IngestResult, ingest_window
from ct_assets.lib.quality import check_raw_events
from ct_assets.lib.validation import CHECK, PARTITION, REASON, range_bounds, validate_rows
from ct_assets.lib.warehouse import Warehouse

BIG = 1_234_567_890_123_456_789
TWO_53 = 2**53
COLUMNS = {
    "id": {"type": "int", "nullable": False},
    "ts": "timestamp",
    "count": {"type": "int", "min": -5, "max": TWO_53},
    "label": "int",
}


def make_config(tmp_path: Path, **columns: object) -> Config:
    config = config_from_dict({
        "dataset": {"source": "files", "landing_dir": "landing",
                    "columns": {**COLUMNS, **columns},
                    "timestamp": "ts", "target": "label", "id": "id"},
        "partitions": {"start": "2026-01-01"},
        "storage": {"dir": "data"},
    }, base_dir=tmp_path)
    config.landing_dir.mkdir(parents=True)
    return config


def validate(config: Config, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Row checks of a frame as `read_landed_file` hands it over (lineage columns added)."""
    frame = frame.with_columns(pl.lit("f").alias(SOURCE_FILE),
                               pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW_NUMBER))
    return validate_rows(frame, config.dataset, config.partitions)


def text_rows(**columns: list[str]) -> pl.DataFrame:
    """A CSV-like frame: every value text, one row per value of `count`."""
    height = len(next(iter(columns.values())))
    base = {"id": [str(BIG + i) for i in range(height)],
            "ts": [f"2026-01-02T{i % 24:02d}:00:00" for i in range(height)],
            "count": ["1"] * height, "label": ["0"] * height}
    return pl.DataFrame({**base, **columns})


def ingest(config: Config) -> IngestResult:
    start = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    return ingest_window(config, start, start + dt.timedelta(days=1),
                         FileCatalog(config.landing_catalog_path))


# --- typing text (CSV) -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1234567890123456789", 1234567890123456789),
    ("-9223372036854775808", -9223372036854775808),
    ("9223372036854775807", 9223372036854775807),
    (" +42 ", 42),
    ("007", 7),
    ("1234567890123456789.000", 1234567890123456789),
    ("12.", 12),
    ("1e3", 1000),  # a float, but whole and well within 2**53
])
def test_integer_text_is_typed_exactly(tmp_path, text, expected):
    good, rejected = validate(make_config(tmp_path), text_rows(id=[text]))
    assert rejected.is_empty(), rejected[REASON].to_list()
    assert good["id"].dtype == pl.Int64
    assert good["id"].to_list() == [expected]


@pytest.mark.parametrize("text", [
    "9223372036854775808",    # one past Int64
    "1234567890123456789.5",  # a fraction (a float would round it away)
    "1.2345678901234568e18",  # a float past 2**53: already rounded, the id is unknowable
    "1.5", "abc", "0x10", "nan", "inf",
])
def test_text_that_is_not_an_exact_integer_is_rejected_with_a_reason(tmp_path, text):
    good, rejected = validate(make_config(tmp_path), text_rows(id=["1", text]))
    assert good["id"].to_list() == [1]
    assert rejected[CHECK].to_list() == ["wrong_type"]
    assert f"column 'id': '{text}' is not int" in rejected[REASON][0]


def test_int_bounds_are_compared_exactly_past_two_to_the_53(tmp_path):
    # 2**53 + 1 equals 2**53 as a float, so a float comparison lets it through `max: 2**53`.
    config = make_config(tmp_path)
    good, rejected = validate(config, text_rows(count=[str(TWO_53), str(TWO_53 + 1), "-5",
                                                       "-6"]))
    assert good["count"].to_list() == [TWO_53, -5]
    assert rejected[CHECK].to_list() == ["out_of_range", "out_of_range"]
    assert f"{TWO_53 + 1} is above max" in rejected[REASON][0]
    assert "-6 is below min -5" in rejected[REASON][1]


def test_range_bounds_of_an_int_column_are_whole_numbers(tmp_path):
    config = make_config(tmp_path)
    spec = config.dataset.columns["count"].model_copy(update={"min": -0.5, "max": 10.5})
    assert range_bounds("int", spec) == (0, 10)
    assert range_bounds("float", spec) == (-0.5, 10.5)


# --- typing Parquet columns ------------------------------------------------------------------


def test_parquet_integer_columns_are_cast_exactly_and_overflow_is_rejected(tmp_path):
    config = make_config(tmp_path)
    frame = pl.DataFrame({
        "id": pl.Series([BIG, BIG + 1, 2**64 - 1], dtype=pl.UInt64),
        "ts": [dt.datetime(2026, 1, 2, h) for h in range(3)],
        "count": pl.Series([1, 2, 3], dtype=pl.Int32),
        "label": [0, 1, 0],
    })
    good, rejected = validate(config, frame)
    assert good["id"].to_list() == [BIG, BIG + 1]
    assert good["count"].dtype == pl.Int64
    assert rejected[CHECK].to_list() == ["wrong_type"]
    assert f"'{2**64 - 1}' is not int" in rejected[REASON][0]


def test_parquet_float_column_declared_int_keeps_only_exact_whole_values(tmp_path):
    config = make_config(tmp_path)
    frame = pl.DataFrame({
        "id": [1.0, 2.5, float(2**60), float(TWO_53)],
        "ts": [dt.datetime(2026, 1, 2, h) for h in range(4)],
        "count": [1, 2, 3, 4], "label": [0, 1, 0, 1],
    })
    good, rejected = validate(config, frame)
    assert good["id"].to_list() == [1, TWO_53]
    assert rejected[CHECK].to_list() == ["wrong_type", "wrong_type"]


# --- ingestion of landed files ---------------------------------------------------------------


def landed_ids() -> list[int]:
    """Ids that collide pairwise once rounded to a float (its step is 256 here)."""
    return [BIG, BIG + 1, BIG + 2, BIG - 1]


def test_large_ids_from_csv_land_exact_and_distinct(tmp_path):
    config = make_config(tmp_path)
    lines = [f"{i},2026-01-02T0{n}:00:00,{n},{n % 2}" for n, i in enumerate(landed_ids())]
    lines.append(f"{BIG},2026-01-02T09:00:00,1,0")  # a true duplicate is still caught
    (config.landing_dir / "day.csv").write_text("\n".join(["id,ts,count,label", *lines]) + "\n")
    result = ingest(config)
    assert result.rows["id"].to_list() == landed_ids()
    assert result.rejected_rows[CHECK].to_list() == ["duplicate_id"]
    assert result.rejected_rows["_row_number"].to_list() == [5]
    assert f"duplicate id '{BIG}' (first seen at day.csv:1)" in result.rejected_rows[REASON][0]


def test_large_ids_from_parquet_land_exact_and_distinct(tmp_path):
    config = make_config(tmp_path)
    pl.DataFrame({
        "id": landed_ids(),
        "ts": [dt.datetime(2026, 1, 2, h) for h in range(4)],
        "count": [1, 2, 3, 4], "label": [0, 1, 0, 1],
    }).write_parquet(config.landing_dir / "day.parquet")
    result = ingest(config)
    assert result.rows["id"].to_list() == landed_ids()
    assert result.rejected_rows.is_empty()


def test_a_quoted_csv_header_with_escaped_quotes_is_read_as_written(tmp_path):
    config = make_config(tmp_path)
    path = config.landing_dir / "day.csv"
    path.write_text('"id","a ""quoted"" name",ts\n1,x,2026-01-02T00:00:00\n', encoding="utf-8")
    assert csv_header(path, ",") == ["id", 'a "quoted" name', "ts"]
    frame = read_landed_file(discover(config.landing_dir)[0], ['a "quoted" name'])
    assert frame['a "quoted" name'].to_list() == ["x"]


# --- the stored-data range check -------------------------------------------------------------


def test_range_check_on_stored_rows_compares_ints_exactly(tmp_path):
    # Rows written by another path than ingestion: the check is the safety net. A bound of
    # 1e16 written into the SQL text is a DOUBLE, and 10**16 + 1 equals it as a double.
    config = make_config(tmp_path, count={"type": "int", "max": 1e16})
    start = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    rows = pl.DataFrame({
        "id": [BIG, BIG + 1], "ts": [start, start + dt.timedelta(hours=1)],
        "count": [10**16, 10**16 + 1], "label": [0, 1], PARTITION: ["2026-01-02"] * 2,
    })
    warehouse = Warehouse(config.warehouse_path)
    warehouse.replace_range("raw_events", rows, "ts", start, start + dt.timedelta(days=1))
    outcomes = {check.name: check for check in check_raw_events(
        warehouse, config, start, start + dt.timedelta(days=1), rejected_rows=0)}
    assert outcomes["ranges"].observed == 1 and not outcomes["ranges"].passed
    assert outcomes["duplicate_ids"].observed == 0
    assert warehouse.query("SELECT id FROM raw_events ORDER BY id")["id"].to_list() == [BIG,
                                                                                       BIG + 1]


# --- features --------------------------------------------------------------------------------


def test_recent_means_join_on_an_int_segment_exactly(tmp_path):
    # Two segments that are one float: as floats they would share (or fail to join) their means.
    config = config_from_dict({
        "dataset": {"source": "files", "landing_dir": "landing", "timestamp": "ts",
                    "target": "label", "id": "id", "segment": "segment",
                    "columns": {**COLUMNS, "segment": "int", "x": "float"}},
        "features": {"relative_to_recent": ["x"], "lookback": 1},
        "partitions": {"start": "2026-01-01"},
    }, base_dir=tmp_path)
    first, second = 2**60 + 1, 2**60 + 2
    day1, day2 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    raw = pl.DataFrame({
        "id": [BIG, BIG + 1, BIG + 2, BIG + 3], "ts": [day1, day1, day2, day2],
        "count": [1, 1, 1, 1], "label": [0, 1, 0, 1],
        "segment": [first, second, first, second], "x": [10.0, 40.0, 20.0, 20.0],
        PARTITION: ["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-02"],
    })
    features = build_features(raw, config, ["2026-01-02"]).sort("id")
    assert features["id"].to_list() == [BIG + 2, BIG + 3]
    assert features["x_recent_mean"].to_list() == [10.0, 40.0]
    assert features["x_vs_recent"].to_list() == [2.0, 0.5]
