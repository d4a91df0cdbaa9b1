"""`training_set` looks for its window near the cutoff, not through the whole history."""

from __future__ import annotations

import datetime as dt

import polars as pl

from ct_assets.defs.training import labelled_partitions
from ct_assets.lib.config import config_from_dict
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse

FIRST = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def features(days: int, labelled: set[int]) -> pl.DataFrame:
    """Two rows a day for `days` days; the rows of the days in `labelled` carry their label."""
    times = [FIRST + dt.timedelta(days=day, hours=hour) for day in range(days)
             for hour in (1, 13)]
    return pl.DataFrame({
        PARTITION: [f"{t:%Y-%m-%d}" for t in times], "ts": times,
        "is_fraud": [0 if (t - FIRST).days in labelled else None for t in times],
    }, schema_overrides={"is_fraud": pl.Int64})


def setup(tmp_path, labelled: set[int]):
    config = config_from_dict({"dataset": {"source": "simulator"},
                               "partitions": {"start": "2026-01-01"},
                               "training": {"window": 10, "holdout": 3},
                               "storage": {"dir": "data"}}, base_dir=tmp_path)
    store = Warehouse(config.warehouse_path)
    store.replace_range("features", features(100, labelled), "ts", FIRST,
                        FIRST + dt.timedelta(days=100))
    return config, store


def key(day: int) -> str:
    return f"{FIRST + dt.timedelta(days=day):%Y-%m-%d}"


def test_the_window_is_found_near_the_cutoff_without_the_older_history(tmp_path):
    config, store = setup(tmp_path, labelled=set(range(100)))
    cutoff = key(95)
    everything = labelled_partitions(store, config, cutoff)
    near = labelled_partitions(store, config, cutoff, wanted=10)
    assert everything == [key(day) for day in range(95)]
    assert near == [key(day) for day in range(75, 95)]  # 2 x window before the cutoff
    assert near[-10:] == everything[-10:]


def test_sparse_labels_fall_back_to_the_whole_history(tmp_path):
    labelled = {3, 7, 20, 41, 60, 80, 85, 88, 90, 92}  # five in the 20 days before the cutoff
    config, store = setup(tmp_path, labelled)
    cutoff = key(95)
    near = labelled_partitions(store, config, cutoff, wanted=10)
    assert near == labelled_partitions(store, config, cutoff) == sorted(map(key, labelled))
