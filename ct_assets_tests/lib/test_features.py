import datetime as dt
import math

import polars as pl
import pytest

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.features import build_features, feature_schema, offset_partitions

UTC = dt.UTC


def make_config(tmp_path, **features):
    return config_from_dict({
        "dataset": {
            "source": "files", "timestamp": "ts", "target": "y", "id": "id", "segment": "seg",
            "columns": {"id": "string", "ts": "timestamp", "seg": "category", "amount": "float",
                        "flag": "bool", "note": "string", "y": "int"},
        },
        "partitions": {"start": "2026-01-01"},
        "features": {"lookback": 2, "relative_to_recent": ["amount"], **features},
    }, base_dir=tmp_path)


def raw_frame(rows):
    frame = pl.DataFrame(rows, schema={"id": pl.String, "ts": pl.Datetime("us", "UTC"),
                                       "seg": pl.String, "amount": pl.Float64,
                                       "flag": pl.Boolean, "note": pl.String, "y": pl.Int64},
                         orient="row")
    return frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%d").alias("_partition"))


def at(day, hour=0):
    return dt.datetime(2026, 1, day, hour, tzinfo=UTC)


def test_feature_schema_types_and_exclusions(tmp_path):
    schema = feature_schema(make_config(tmp_path))
    assert schema == {
        "seg": "category", "amount": "float", "flag": "float",
        "hour_sin": "float", "hour_cos": "float", "dow_sin": "float", "dow_cos": "float",
        "amount_recent_mean": "float", "amount_vs_recent": "float",
    }  # `note` is free text and `id`, `ts`, `y` are not features


def test_recent_mean_uses_only_previous_partitions_of_the_same_segment(tmp_path):
    config = make_config(tmp_path)
    raw = raw_frame([
        ("a1", at(1, 1), "A", 10.0, True, "x", 0),
        ("a2", at(1, 2), "A", 30.0, False, "x", 0),
        ("b1", at(1, 3), "B", 100.0, False, "x", 1),
        ("a3", at(2, 4), "A", 50.0, False, "x", 0),
        ("a4", at(3, 6), "A", 40.0, True, "x", 1),
        ("b2", at(3, 7), "B", 300.0, True, "x", 0),
        ("a5", at(4, 12), "A", 1.0, False, "x", 0),
    ])
    out = build_features(raw, config, ["2026-01-03", "2026-01-04"])
    assert out["id"].to_list() == ["a4", "b2", "a5"]
    rows = {row["id"]: row for row in out.iter_rows(named=True)}
    # a4 (day 3): previous 2 partitions of A = days 1 and 2: (10 + 30 + 50) / 3 = 30
    assert rows["a4"]["amount_recent_mean"] == pytest.approx(30.0)
    assert rows["a4"]["amount_vs_recent"] == pytest.approx(40 / 30)
    # b2 (day 3): B on days 1-2 = 100 only
    assert rows["b2"]["amount_recent_mean"] == pytest.approx(100.0)
    assert rows["b2"]["amount_vs_recent"] == pytest.approx(3.0)
    # a5 (day 4): A on days 2-3 = (50 + 40) / 2; day 1 is outside the 2-partition look-back
    assert rows["a5"]["amount_recent_mean"] == pytest.approx(45.0)
    assert rows["a5"]["flag"] == 0.0 and rows["a4"]["flag"] == 1.0


def test_empty_partitions_count_in_the_lookback(tmp_path):
    config = make_config(tmp_path)
    raw = raw_frame([
        ("a1", at(1), "A", 10.0, True, "x", 0),
        ("a2", at(4), "A", 20.0, True, "x", 0),  # days 2 and 3 have no data
    ])
    out = build_features(raw, config, ["2026-01-04"])
    assert out["amount_recent_mean"].to_list() == [None]  # day 1 is 3 partitions back


def test_first_partition_has_no_history(tmp_path):
    out = build_features(raw_frame([("a1", at(1), "A", 10.0, True, "x", 0)]),
                         make_config(tmp_path), ["2026-01-01"])
    assert out["amount_recent_mean"].to_list() == [None]
    assert out["amount_vs_recent"].to_list() == [None]


def test_cyclical_time_features(tmp_path):
    # 2026-01-05 is a Monday (dow 0); 18:00 is three quarters round the clock
    raw = raw_frame([("a", dt.datetime(2026, 1, 5, 18, tzinfo=UTC), "A", 1.0, True, "x", 0)])
    row = build_features(raw, make_config(tmp_path), ["2026-01-05"]).row(0, named=True)
    assert row["hour_sin"] == pytest.approx(math.sin(2 * math.pi * 18 / 24))
    assert row["hour_cos"] == pytest.approx(math.cos(2 * math.pi * 18 / 24), abs=1e-12)
    assert row["dow_sin"] == pytest.approx(0.0, abs=1e-12)
    assert row["dow_cos"] == pytest.approx(1.0)


def test_zero_recent_mean_gives_null_ratio_not_infinity(tmp_path):
    raw = raw_frame([("a1", at(1), "A", 0.0, True, "x", 0), ("a2", at(2), "A", 5.0, True, "x", 0)])
    out = build_features(raw, make_config(tmp_path), ["2026-01-02"])
    assert out["amount_recent_mean"].to_list() == [0.0]
    assert out["amount_vs_recent"].to_list() == [None]


def test_offset_partitions(tmp_path):
    config = make_config(tmp_path)
    assert offset_partitions(config, at(10), -7) == at(3)
    monthly = config.model_copy(update={"partitions": config.partitions.model_copy(
        update={"granularity": "monthly"})})
    assert offset_partitions(monthly, at(1), -2) == dt.datetime(2025, 11, 1, tzinfo=UTC)
