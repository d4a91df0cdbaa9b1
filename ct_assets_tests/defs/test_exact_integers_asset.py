"""Large `int` ids land exact in DuckDB through the real `raw_events` asset, CSV and Parquet."""

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.quarantine import Quarantine
from ct_assets_tests.defs.test_ingest_asset import RAW_CONFIG, checks_of, materialize

BIG = 1_234_567_890_123_456_789  # past 2**53: as a float its last digits change
# Distinct ids that are one float once rounded: each pair would be quarantined as duplicates.
CSV_IDS = [BIG, BIG + 1, BIG + 2]
PARQUET_IDS = [BIG + 3, BIG + 4, BIG - 1]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    dataset = {**RAW_CONFIG["dataset"], "columns": {
        **RAW_CONFIG["dataset"]["columns"], "id": {"type": "int", "nullable": False}}}
    loaded = config_from_dict({**RAW_CONFIG, "dataset": dataset}, base_dir=tmp_path)
    loaded.landing_dir.mkdir(parents=True)
    return loaded


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def test_large_int_ids_land_exact_from_csv_and_parquet(config: Config,
                                                       instance: dg.DagsterInstance):
    lines = [f"{i},2026-01-02T0{n}:15:00,{n}.5,k,{n % 2}" for n, i in enumerate(CSV_IDS)]
    (config.landing_dir / "day.csv").write_text(
        "\n".join(["id,ts,amount,kind,label", *lines]) + "\n", encoding="utf-8")
    pl.DataFrame({
        "id": PARQUET_IDS,
        "ts": [dt.datetime(2026, 1, 2, 10 + n) for n in range(3)],
        "amount": [1.0, 2.0, 3.0], "kind": ["a", "b", "c"], "label": [0, 1, 0],
    }).write_parquet(config.landing_dir / "day.parquet")

    result = materialize(config, instance)

    assert result.success
    # Read back with DuckDB itself: no polars cast on the way out.
    with duckdb.connect(str(config.warehouse_path), read_only=True) as connection:
        stored = connection.execute(
            "SELECT id, typeof(id), _source_file FROM raw_events ORDER BY ts").fetchall()
    assert [row[0] for row in stored] == CSV_IDS + PARQUET_IDS
    assert {row[1] for row in stored} == {"BIGINT"}
    assert [row[2] for row in stored] == ["day.csv"] * 3 + ["day.parquet"] * 3
    assert Quarantine(config.quarantine_dir).rejected_rows().is_empty()
    checks = checks_of(result)
    assert checks["duplicate_ids"].passed and checks["schema"].passed
