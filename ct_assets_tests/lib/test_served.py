"""Reading `ct serve`'s request log back: partitions, what is pending, what was taken in."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.served import (
    REQUESTS,
    catalog,
    endpoint_status,
    logged_rows,
    pending_partitions,
    read_served,
    record_ingested,
)
from ct_assets.lib.validation import PARTITION

UTC = dt.UTC


@pytest.fixture
def config(tmp_path):
    return config_from_dict({"dataset": {"source": "simulator",
                                         "labels": {"landing_dir": "labels"}},
                             "partitions": {"start": "2026-01-01"}}, base_dir=tmp_path)


def log_file(config, name: str, times: list[dt.datetime], ids: list[str]) -> Path:
    """A request-log file as the server writes it (the columns that matter here)."""
    directory = config.serving_dir / REQUESTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"requests-{name}.parquet"
    pl.DataFrame({"request_id": ["r"] * len(ids), "row": list(range(len(ids))), "row_id": ids,
                  "received_at": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
                  "model_name": "m", "model_version": "v1", "amount": [1.0] * len(ids),
                  "score": [0.5] * len(ids), "decision": ["0"] * len(ids)}).write_parquet(path)
    return path


def day(d: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, 1, d, hour, tzinfo=UTC)


def test_a_file_across_midnight_is_pending_for_both_days_until_each_is_taken_in(config):
    log_file(config, "a", [day(1, 23), day(2, 1)], ["x1", "x2"])
    (config.serving_dir / REQUESTS / ".requests-b.parquet.tmp").write_bytes(b"partial")
    assert pending_partitions(config.serving_dir, config) == {"2026-01-01", "2026-01-02"}
    rows = read_served(config.serving_dir, config, day(1, 0), day(2, 0), ["2026-01-01"],
                       catalog(config.serving_dir, config))
    assert rows[PARTITION].to_list() == ["2026-01-01"]
    assert rows[config.dataset.id].to_list() == ["x1"]  # the row id is the dataset's id
    assert rows[config.dataset.timestamp].to_list() == [day(1, 23)]
    record_ingested(config.serving_dir, ["2026-01-01"], catalog(config.serving_dir, config))
    assert pending_partitions(config.serving_dir, config) == {"2026-01-02"}
    record_ingested(config.serving_dir, ["2026-01-02"], catalog(config.serving_dir, config))
    assert pending_partitions(config.serving_dir, config) == set()
    log_file(config, "c", [day(2, 5)], ["x3"])  # a new file for a day already taken in
    assert pending_partitions(config.serving_dir, config) == {"2026-01-02"}
    assert catalog(config.serving_dir, config)["requests-a.parquet"] == {
        "holds": ["2026-01-01", "2026-01-02"], "ingested": ["2026-01-01", "2026-01-02"]}


def test_reading_a_window_with_no_log_gives_typed_empty_rows(config):
    rows = read_served(config.serving_dir, config, day(1, 0), day(2, 0), ["2026-01-01"],
                       catalog(config.serving_dir, config))
    assert rows.height == 0
    assert {PARTITION, "score", "model_version", config.dataset.id} <= set(rows.columns)


def test_logged_rows_are_those_not_taken_in_yet_matching_the_ids(config):
    log_file(config, "a", [day(1), day(1, 13)], ["x1", "x2"])
    ids = pl.Series(config.dataset.id, ["x2", "nope"])
    found = logged_rows(config.serving_dir, config, ids)
    assert found.to_dicts() == [{config.dataset.id: "x2", PARTITION: "2026-01-01",
                                 config.dataset.timestamp: day(1, 13)}]
    record_ingested(config.serving_dir, ["2026-01-01"], catalog(config.serving_dir, config))
    assert logged_rows(config.serving_dir, config, ids).height == 0  # the warehouse has it


def test_a_file_landing_while_a_run_reads_stays_pending(config):
    log_file(config, "a", [day(1)], ["x1"])
    record = catalog(config.serving_dir, config)  # what the run reads
    log_file(config, "b", [day(1, 13)], ["x2"])  # lands after: not read by this run
    rows = read_served(config.serving_dir, config, day(1, 0), day(2, 0), ["2026-01-01"], record)
    record_ingested(config.serving_dir, ["2026-01-01"], record)
    assert rows[config.dataset.id].to_list() == ["x1"]
    assert pending_partitions(config.serving_dir, config) == {"2026-01-01"}  # b's rows


def test_a_stale_endpoint_file_is_reported_unreachable_not_trusted(config):
    import json
    import socket

    assert endpoint_status(config.serving_dir, "ct-model", None) is None  # nothing started
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.serving_dir.mkdir(parents=True, exist_ok=True)
    (config.serving_dir / "endpoint.json").write_text(json.dumps(
        {"url": f"http://127.0.0.1:{port}", "pid": 1}), encoding="utf-8")
    status = endpoint_status(config.serving_dir, "ct-model", None, timeout=1)
    assert status["reachable"] is False and str(port) in status["error"]
