"""Labels landing apart from their rows: reading, typing, matching, quarantining, joining."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import polars as pl
import pytest

from ct_assets.lib.config import ConfigError, config_from_dict
from ct_assets.lib.ingest import FileCatalog
from ct_assets.lib.labels import (
    KNOWN_AT,
    LABELLED_PARTITION,
    attach_labels,
    count_by_check,
    known_labels,
    match_labels,
    read_labels,
)
from ct_assets.lib.simulator import write_days

UTC = dt.UTC
DAY = dt.datetime(2026, 1, 3, tzinfo=UTC)


def make_config(root: Path, **labels):
    return config_from_dict({
        "dataset": {"source": "simulator",
                    "labels": {"landing_dir": "labels", **labels}},
        "partitions": {"start": "2026-01-01"}, "storage": {"dir": "data"}}, base_dir=root)


def rows_frame() -> pl.DataFrame:
    """Three ingested rows: two on Jan 2, one on Jan 3."""
    return pl.DataFrame({
        "transaction_id": ["a", "b", "c"],
        "_partition": ["2026-01-02", "2026-01-02", "2026-01-03"],
        "ts": [dt.datetime(2026, 1, 2, 10, tzinfo=UTC), dt.datetime(2026, 1, 2, 11, tzinfo=UTC),
               dt.datetime(2026, 1, 3, 9, tzinfo=UTC)],
    })


def write_csv(config, name: str, text: str) -> Path:
    path = config.labels_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_day(config, catalog=None):
    return read_labels(config, DAY, DAY + dt.timedelta(days=1),
                       catalog or FileCatalog(config.labels_catalog_path))


def test_labels_config_defaults_to_the_dataset_id_and_target(tmp_path):
    config = make_config(tmp_path)
    assert config.dataset.labels.id == "transaction_id"
    assert config.dataset.labels.label == "is_fraud"
    assert config.labels_dir == (tmp_path / "labels").resolve()


def test_labels_need_an_id_and_their_own_directory(tmp_path):
    files = {"source": "files", "landing_dir": "landing", "timestamp": "ts", "target": "y",
             "columns": {"ts": "timestamp", "y": "int", "x": "float"},
             "labels": {"landing_dir": "labels"}}
    with pytest.raises(ConfigError, match=r"dataset\.labels needs dataset\.id"):
        config_from_dict({"dataset": files}, base_dir=tmp_path)
    inside = {**files, "id": "x", "labels": {"landing_dir": "landing/labels"}}
    with pytest.raises(ConfigError, match="must be apart from the data landing dir"):
        config_from_dict({"dataset": inside}, base_dir=tmp_path)


def test_good_labels_land_and_bad_ones_are_quarantined_with_a_reason(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day3.csv",
              "transaction_id,is_fraud,known_at\n"
              "a,1,2026-01-03T08:00:00Z\n"        # good
              "b,maybe,2026-01-03T08:00:00Z\n"    # wrong type
              "c,2,2026-01-03T10:00:00Z\n"        # not 0 or 1
              ",0,2026-01-03T08:00:00Z\n"         # null id
              "zz,0,2026-01-03T08:00:00Z\n"       # unknown id
              "c,0,2026-01-03T08:30:00Z\n"        # known before its row happened (09:00)
              "a,1,2026-01-03T09:00:00Z\n"        # duplicate of the first (same label)
              "d,1,yesterday\n")                  # unparsable known_at
    batch = read_day(config)
    by_check = dict(zip(batch.rejected_rows["_row_number"], batch.rejected_rows["check"],
                        strict=True))
    assert by_check == {2: "wrong_type", 3: "invalid_label", 4: "null_id",
                        8: "unparsable_known_at"}
    assert batch.rejected_rows.filter(pl.col("check") == "unparsable_known_at")[
        "_partition"].is_null().all()  # no usable time: kept with its file, no partition
    accepted, rejected = match_labels(batch.labels, rows_frame(), pl.DataFrame(
        schema={"transaction_id": pl.String, "is_fraud": pl.Int64, "_source_file": pl.String,
                "_row_number": pl.Int64}), config)
    assert accepted.select("transaction_id", "is_fraud", LABELLED_PARTITION).rows() == [
        ("a", 1, "2026-01-02")]
    reasons = dict(zip(rejected["_row_number"], rejected["reason"], strict=True))
    assert "'zz' matches no ingested row" in reasons[5]
    assert "before its row happened" in reasons[6]
    assert reasons[7] == "duplicate label for id 'a' (first given at day3.csv:1)"
    counts = count_by_check(pl.concat([batch.rejected_rows, rejected]))
    assert counts == {"label_values": 4, "unknown_ids": 2, "duplicate_labels": 1}


def test_conflicting_labels_are_all_refused_in_a_window_and_against_earlier_ones(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "day3.csv", "transaction_id,is_fraud,known_at\n"
              "a,1,2026-01-03T08:00:00Z\na,0,2026-01-03T09:00:00Z\n"
              "b,0,2026-01-03T09:00:00Z\nc,1,2026-01-03T10:00:00Z\n")
    batch = read_day(config)
    earlier = pl.DataFrame({"transaction_id": ["b"], "is_fraud": [1],
                            "_source_file": ["day2.csv"], "_row_number": [4]})
    accepted, rejected = match_labels(batch.labels, rows_frame(), earlier, config)
    assert accepted["transaction_id"].to_list() == ["c"]
    assert sorted(rejected["check"].to_list()) == ["conflicting_label"] * 3
    text = " | ".join(rejected["reason"].to_list())
    assert "conflicting labels for id 'a'" in text
    assert "label 0 for id 'b' conflicts with 1 given at day2.csv:4" in text


def test_without_known_at_a_label_is_known_when_its_file_landed(tmp_path):
    config = make_config(tmp_path, known_at=None)
    path = write_csv(config, "late.csv", "transaction_id,is_fraud\na,1\nb,0\n")
    landed = dt.datetime(2026, 1, 3, 12, tzinfo=UTC).timestamp()
    os.utime(path, (landed, landed))
    batch = read_day(config)
    assert batch.labels[KNOWN_AT].to_list() == [dt.datetime(2026, 1, 3, 12, tzinfo=UTC)] * 2
    assert set(batch.labels["_partition"]) == {"2026-01-03"}
    # The next day holds none of them: the catalog knows the file's range and skips it.
    catalog = FileCatalog(config.labels_catalog_path)
    read_day(config, catalog)
    later = read_labels(config, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2), catalog)
    assert later.labels.is_empty() and later.files_skipped == 1


def test_a_bad_label_file_is_rejected_whole_and_the_others_still_land(tmp_path):
    config = make_config(tmp_path)
    write_csv(config, "good.csv", "transaction_id,is_fraud,known_at\na,1,2026-01-03T08:00:00Z\n")
    write_csv(config, "bad.csv", "id;label\nx;1\n")
    batch = read_day(config)
    assert batch.labels["transaction_id"].to_list() == ["a"]
    assert [(f.relpath, reason.split(" (")[0]) for f, reason in batch.rejected_files] == [
        ("bad.csv", "missing required column(s) transaction_id, is_fraud")]


def test_known_labels_are_those_known_by_the_partition_label_delay_later(tmp_path):
    config = make_config(tmp_path)
    labels = pl.DataFrame({
        "transaction_id": ["a", "b", "c"], "is_fraud": [1, 0, 1],
        LABELLED_PARTITION: ["2026-01-02", "2026-01-02", "2026-01-02"],
        "_partition": ["2026-01-02", "2026-01-03", "2026-01-05"]})
    assert known_labels(labels, config, 1)["transaction_id"].to_list() == ["a", "b"]
    assert known_labels(labels, config, 0)["transaction_id"].to_list() == ["a"]
    assert known_labels(labels, config, 3)["transaction_id"].to_list() == ["a", "b", "c"]


def test_attach_labels_fills_missing_targets_and_keeps_inline_ones(tmp_path):
    config = make_config(tmp_path)
    frame = pl.DataFrame({"transaction_id": ["a", "b", "c"], "is_fraud": [None, 0, None],
                          "x": [1.0, 2.0, 3.0]}, schema_overrides={"is_fraud": pl.Int64})
    labels = pl.DataFrame({"transaction_id": ["a", "b"], "is_fraud": [1, 1]})
    joined = attach_labels(frame, labels, config)
    assert joined["is_fraud"].to_list() == [1, 0, None]
    assert joined["transaction_id"].to_list() == ["a", "b", "c"]


def test_simulator_lands_labels_a_delay_after_their_rows(tmp_path):
    config = make_config(tmp_path)
    start = dt.date(2026, 1, 1)
    write_days(config.landing_dir, start=start, days=3, rows_per_day=50,
               labels_dir=config.labels_dir, label_delay=1)
    data = pl.read_parquet(config.landing_dir / "transactions_2026-01-01.parquet")
    assert "is_fraud" not in data.columns
    # Day 1 has no earlier day to label; day 2 labels day 1, known a day after each row.
    assert sorted(p.name for p in config.labels_dir.iterdir()) == [
        "labels_2026-01-02.parquet", "labels_2026-01-03.parquet"]
    labels = pl.read_parquet(config.labels_dir / "labels_2026-01-02.parquet")
    assert labels["transaction_id"].to_list() == data["transaction_id"].to_list()
    assert (labels["known_at"] - data["ts"]).unique().to_list() == [dt.timedelta(days=1)]
    # A later call labels the day before it, which landed in the first call.
    write_days(config.landing_dir, start=dt.date(2026, 1, 4), days=1, rows_per_day=50,
               labels_dir=config.labels_dir, label_delay=1)
    later = pl.read_parquet(config.labels_dir / "labels_2026-01-04.parquet")
    assert later["transaction_id"].str.starts_with("20260103").all()
