import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from ct_assets.lib.simulator import simulate_day
from ct_assets.lib.training_set import (
    CONCEPT_OLD_SHARE,
    SPLIT,
    choose_partitions,
    fingerprint,
    label_split,
    mark_regime,
    regime_start,
    regime_weights,
    summarize,
    training_cutoff,
)

KEYS = [f"2026-02-{day:02d}" for day in range(1, 9)]  # 8 daily partitions


# --- choose_partitions ---------------------------------------------------------------------


def test_choose_partitions_takes_the_last_window_and_holds_out_the_most_recent():
    train, holdout = choose_partitions(KEYS, window=5, holdout=2)
    assert train == ["2026-02-04", "2026-02-05", "2026-02-06"]
    assert holdout == ["2026-02-07", "2026-02-08"]


def test_choose_partitions_sorts_and_deduplicates_its_input():
    shuffled = [KEYS[5], KEYS[0], KEYS[7], KEYS[3], KEYS[7], KEYS[6], KEYS[1], KEYS[2], KEYS[4]]
    assert choose_partitions(shuffled, window=5, holdout=2) == choose_partitions(
        KEYS, window=5, holdout=2)


def test_choose_partitions_window_larger_than_available_uses_everything():
    train, holdout = choose_partitions(KEYS[:4], window=30, holdout=1)
    assert train == KEYS[:3]
    assert holdout == [KEYS[3]]


def test_choose_partitions_holdout_is_later_than_every_training_key():
    train, holdout = choose_partitions(KEYS, window=6, holdout=3)
    assert max(train) < min(holdout)
    assert len(train) == 3 and len(holdout) == 3
    assert set(train).isdisjoint(holdout)


@pytest.mark.parametrize(("available", "holdout"), [
    ([], 1),
    (KEYS[:1], 1),
    (KEYS[:2], 2),
    (KEYS[:5], 5),
])
def test_choose_partitions_too_few_partitions_is_an_error(available, holdout):
    with pytest.raises(ValueError, match=rf"need at least {holdout + 1} labelled partitions"):
        choose_partitions(available, window=30, holdout=holdout)


def test_choose_partitions_error_counts_partitions_after_deduplication():
    with pytest.raises(ValueError, match="found 1"):
        choose_partitions([KEYS[0], KEYS[0], KEYS[0]], window=10, holdout=1)


# --- label_split ---------------------------------------------------------------------------


def test_label_split_marks_holdout_rows_and_everything_else_train():
    frame = pl.DataFrame({"_partition": ["a", "b", "c", "c", "b"], "v": [1, 2, 3, 4, 5]})
    out = label_split(frame, "_partition", ["c"])
    assert out[SPLIT].to_list() == ["train", "train", "holdout", "holdout", "train"]
    assert out["v"].to_list() == [1, 2, 3, 4, 5]  # rows kept, in order
    assert label_split(frame, "_partition", [])[SPLIT].to_list() == ["train"] * 5


# --- no leakage on simulated data ----------------------------------------------------------


def _simulated_frame(days, rows=2_000):
    start = dt.date(2026, 2, 1)
    frames = [simulate_day(start + dt.timedelta(days=offset), rows, seed=7)
              for offset in range(days)]
    return pl.concat(frames).with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%d").alias("_partition"))


def test_no_leakage_every_holdout_timestamp_is_after_every_train_timestamp():
    frame = _simulated_frame(9)
    train_keys, holdout_keys = choose_partitions(
        frame["_partition"].unique().to_list(), window=7, holdout=2)
    selected = frame.filter(pl.col("_partition").is_in([*train_keys, *holdout_keys]))
    out = label_split(selected, "_partition", holdout_keys)
    train = out.filter(pl.col(SPLIT) == "train")
    holdout = out.filter(pl.col(SPLIT) == "holdout")
    assert train.height == 5 * 2_000 and holdout.height == 2 * 2_000
    assert train["ts"].max() < holdout["ts"].min()
    # The two earliest simulated days are outside the window.
    assert train["ts"].min() >= dt.datetime(2026, 2, 3, tzinfo=dt.UTC)
    # The identifiers of the two splits are disjoint.
    assert set(train["transaction_id"]).isdisjoint(holdout["transaction_id"])


# --- fingerprint ---------------------------------------------------------------------------


def _frame():
    return pl.DataFrame({
        "ts": [dt.datetime(2026, 1, 1, hour, tzinfo=dt.UTC) for hour in range(4)],
        "amount": [1.5, 2.5, None, 4.0],
        "region": ["north", "south", None, "east"],
        "is_fraud": [0, 1, 0, 0],
    })


def test_fingerprint_is_stable_for_equal_frames():
    first, second = _frame(), _frame()
    assert first is not second
    assert fingerprint(first) == fingerprint(second)
    assert fingerprint(first) == fingerprint(first)
    assert len(fingerprint(first)) == 16


def test_fingerprint_does_not_depend_on_chunking():
    frame = _frame()
    chunked = pl.concat([frame.head(2), frame.tail(2)], rechunk=False)
    assert chunked.n_chunks() == 2
    assert fingerprint(chunked) == fingerprint(frame)
    assert fingerprint(pl.from_arrow(chunked.to_arrow())) == fingerprint(frame)


@pytest.mark.parametrize("change", [
    pl.when(pl.int_range(pl.len()) == 1).then(2.5000001).otherwise(pl.col("amount"))
    .alias("amount"),
    pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("west")).otherwise(pl.col("region"))
    .alias("region"),
    pl.when(pl.int_range(pl.len()) == 3).then(1).otherwise(pl.col("is_fraud"))
    .alias("is_fraud"),
])
def test_fingerprint_changes_when_one_value_changes(change):
    frame = _frame()
    changed = frame.with_columns(change)
    assert not changed.equals(frame)
    assert fingerprint(changed) != fingerprint(frame)


def test_fingerprint_changes_with_rows_order_and_schema():
    frame = _frame()
    assert fingerprint(frame.head(3)) != fingerprint(frame)
    assert fingerprint(frame.reverse()) != fingerprint(frame)
    assert fingerprint(frame.with_columns(pl.col("is_fraud").cast(pl.Int32))) != fingerprint(
        frame)
    assert fingerprint(frame.rename({"amount": "value"})) != fingerprint(frame)
    assert fingerprint(frame.head(0)) != fingerprint(frame.head(0).drop("amount"))


# --- summarize -----------------------------------------------------------------------------


def test_summarize_counts_classes_per_split():
    frame = pl.DataFrame({
        "ts": [dt.datetime(2026, 1, day, tzinfo=dt.UTC) for day in range(1, 8)],
        "is_fraud": [0, 0, 1, 0, 1, 1, 0],
        SPLIT: ["train"] * 4 + ["holdout"] * 3,
    })
    summary = summarize(frame, "is_fraud", "binary", "ts")
    assert summary["train"]["rows"] == 4
    assert summary["train"]["classes"] == {"0": 3, "1": 1}
    assert summary["holdout"]["rows"] == 3
    assert summary["holdout"]["classes"] == {"0": 1, "1": 2}
    assert summary["train"]["from"].startswith("2026-01-01")
    assert summary["train"]["to"].startswith("2026-01-04")
    assert summary["holdout"]["from"].startswith("2026-01-05")


def test_summarize_multiclass_and_regression_and_empty_split():
    frame = pl.DataFrame({
        "ts": [dt.datetime(2026, 1, day, tzinfo=dt.UTC) for day in range(1, 6)],
        "label": ["b", "a", "b", "c", "b"],
        "value": [1.0, 3.0, 5.0, 7.0, 9.0],
        SPLIT: ["train"] * 5,
    })
    classes = summarize(frame, "label", "multiclass", "ts")
    assert classes["train"]["classes"] == {"a": 1, "b": 3, "c": 1}
    assert classes["holdout"] == {"rows": 0}
    regression = summarize(frame, "value", "regression", "ts")
    assert regression["train"]["target_mean"] == pytest.approx(5.0)
    assert regression["train"]["target_std"] == pytest.approx(pl.Series([1.0, 3, 5, 7, 9]).std())
    assert "classes" not in regression["train"]


# ------------------------------------------------------- maturity, regimes and their weights

def _config(**sections):
    from ct_assets.lib.config import config_from_dict

    return config_from_dict({"dataset": {"source": "simulator"}, **sections},
                            base_dir=Path("/tmp"))


@pytest.mark.parametrize(("granularity", "delay", "now", "cutoff"), [
    ("daily", 1, dt.datetime(2026, 3, 10, 15, tzinfo=dt.UTC), "2026-03-09"),
    ("daily", 0, dt.datetime(2026, 3, 10, 0, tzinfo=dt.UTC), "2026-03-10"),
    ("daily", 3, dt.datetime(2026, 3, 10, 23, 59, tzinfo=dt.UTC), "2026-03-07"),
    ("weekly", 1, dt.datetime(2026, 3, 11, tzinfo=dt.UTC), "2026-03-02"),
    ("hourly", 2, dt.datetime(2026, 3, 10, 5, 30, tzinfo=dt.UTC), "2026-03-10-03:00"),
])
def test_training_cutoff_leaves_out_the_open_partition_and_label_delay_more(
        granularity, delay, now, cutoff):
    config = _config(partitions={"granularity": granularity},
                     triggers={"label_delay": delay})
    assert training_cutoff(config, now) == cutoff


def test_regime_start_is_the_earliest_change_inside_the_window():
    window = [f"2026-01-{day:02d}" for day in range(1, 31)]
    assert regime_start(window, None, None) is None
    assert regime_start(window, "2026-01-25", None) == "2026-01-25"
    assert regime_start(window, "2026-01-28", "2026-01-25") == "2026-01-25"  # same change
    assert regime_start(window, "2026-01-28", "2025-12-20") == "2026-01-28"  # old one left
    assert regime_start(window, "2026-01-01", None) is None  # the whole window is new
    assert regime_start(window, "2026-02-03", None) == "2026-02-03"  # not labelled yet


def test_regime_weights_mostly_forget_old_concepts_and_keep_every_row_after_a_drift():
    in_regime = pl.Series([False] * 90 + [True] * 10)
    concept = regime_weights(in_regime, "concept")
    assert concept[-10:].tolist() == [1.0] * 10
    assert concept[:90].sum() == pytest.approx(10 * CONCEPT_OLD_SHARE)
    assert regime_weights(in_regime, "inputs") is None  # the old relation still holds
    assert regime_weights(pl.Series([True] * 5), "concept") is None
    assert regime_weights(pl.Series([False] * 5), "concept") is None
    few_old = regime_weights(pl.Series([False] * 2 + [True] * 100), "concept")
    assert few_old.tolist() == [1.0] * 102  # never more than 1


def test_mark_regime_flags_rows_from_the_start_and_records_it():
    frame = pl.DataFrame({"_partition": ["2026-01-01", "2026-01-02", "2026-01-03"]})
    marked = mark_regime(frame, "_partition", "2026-01-02", "concept")
    assert marked["in_regime"].to_list() == [False, True, True]
    assert set(marked["regime_start"]) == {"2026-01-02"}
    assert set(marked["regime_kind"]) == {"concept"}
    whole = mark_regime(frame, "_partition", None, "inputs")
    assert whole["in_regime"].all() and whole["regime_kind"].is_null().all()
