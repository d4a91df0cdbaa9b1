"""Column names that are hostile to SQL go through the whole real graph intact.

Every identifier the project builds into SQL (column, metric and table names from `ct.yaml` or
the data) is quoted, so a column called `quote'name; drop table x`, or one holding a double
quote, is just a column: it is ingested, featurised, trained on and scored, and its values land
unchanged in every table.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config, load_config
from ct_assets.lib.features import feature_schema
from ct_assets.lib.ingest import FileCatalog, landed_partitions
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.warehouse import Warehouse, quote_identifier
from ct_assets.runner import RANGE_END_TAG, RANGE_START_TAG

ID = 'event "id"'
TIMESTAMP = "when's; it"
TARGET = 'label"; DROP TABLE raw_events; --'
AMOUNT = "quote'name; drop table x"
KIND = 'kind "a" , b'
SEGMENT = "seg'ment"
FIRST_DAY, DAYS, ROWS_PER_DAY = dt.date(2026, 1, 1), 8, 300
FIRST, LAST = "2026-01-01", "2026-01-08"
BIG_ID = 1_234_567_890_123_456_789  # above 2**53: a float would change its last digits
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def landed_day(day: dt.date, seed: int) -> pl.DataFrame:
    """One day of rows whose label follows the hostile columns (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 50.0, ROWS_PER_DAY)
    kind = rng.choice(["a'b", 'c"d', "e;f"], ROWS_PER_DAY)
    segment = rng.choice(["north", "south"], ROWS_PER_DAY)
    logit = (amount - 100) / 30 + np.where(kind == 'c"d', 1.5, 0.0)
    label = (rng.random(ROWS_PER_DAY) < 1 / (1 + np.exp(-logit))).astype(int)
    start = dt.datetime.combine(day, dt.time())
    first_id = BIG_ID + (day - FIRST_DAY).days * ROWS_PER_DAY
    return pl.DataFrame({
        ID: [first_id + i for i in range(ROWS_PER_DAY)],
        TIMESTAMP: [start + dt.timedelta(seconds=int(s)) for s in
                    np.sort(rng.integers(0, 86_400, ROWS_PER_DAY))],
        AMOUNT: amount.round(4),
        KIND: kind,
        SEGMENT: segment,
        TARGET: label,
    })


def write_project(root: Path) -> tuple[Path, dict[str, pl.DataFrame]]:
    """`ct.yaml` and the landed files (CSV for even days, Parquet for odd ones)."""
    raw: dict[str, Any] = {
        "dataset": {
            "source": "files", "landing_dir": "landing", "timestamp": TIMESTAMP,
            "target": TARGET, "id": ID, "segment": SEGMENT, "categorical": [KIND],
            "columns": {ID: {"type": "int", "nullable": False}, TIMESTAMP: "timestamp",
                        AMOUNT: {"type": "float", "min": 0}, KIND: "string",
                        SEGMENT: "category", TARGET: "int"},
        },
        "partitions": {"start": FIRST},
        "features": {"lookback": 2, "relative_to_recent": [AMOUNT]},
        "training": {"window": 6, "holdout": 2},
        "triggers": {"label_delay": 0},
        "storage": {"dir": "data"},
    }
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    landing = root / "landing"
    landing.mkdir()
    landed = {}
    for offset in range(DAYS):
        day = FIRST_DAY + dt.timedelta(days=offset)
        frame = landed_day(day, offset)
        landed[day.isoformat()] = frame
        if offset % 2:
            frame.write_parquet(landing / f"{day}.parquet")
        else:
            frame.with_columns(pl.col(TIMESTAMP).dt.strftime("%Y-%m-%dT%H:%M:%S")).write_csv(
                landing / f"{day}.csv")
    return path, landed


def run_job(config: Config, instance: dg.DagsterInstance, job: str,
            **kwargs: Any) -> dg.ExecuteInProcessResult:
    defs = build_definitions(config)
    return defs.resolve_job_def(job).execute_in_process(instance=instance, run_config=QUIET,
                                                        **kwargs)


def table(config: Config, name: str, partition: str) -> pl.DataFrame:
    return Warehouse(config.warehouse_path).query(
        f"SELECT * FROM {quote_identifier(name)} WHERE _partition = ? "
        f"ORDER BY {quote_identifier(ID)}", [partition])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ingest, featurise, train, deploy, score, then check drift and realised performance."""
    path, landed = write_project(tmp_path_factory.mktemp("identifiers"))
    config = load_config(path)
    # What the landing sensor sees: every file's partitions, read by the timestamp's name.
    found, pending = landed_partitions(config, FileCatalog(config.landing_catalog_path))
    results = {}
    with dg.DagsterInstance.ephemeral() as instance:
        range_tags = {RANGE_START_TAG: FIRST, RANGE_END_TAG: LAST}
        results["data"] = run_job(config, instance, "data_job", tags=range_tags)
        results["retrain"] = run_job(config, instance, "retrain_job")
        results["scoring"] = run_job(config, instance, "scoring_job", tags=range_tags)
        results["drift"] = run_job(config, instance, "drift_job", partition_key=LAST)
        results["performance"] = run_job(config, instance, "performance_job",
                                         partition_key=LAST)
    return {"config": config, "landed": landed, "results": results, "found": found,
            "pending": pending}


def test_hostile_column_names_go_end_to_end(project):
    config, results = project["config"], project["results"]
    assert project["found"] == project["pending"] == set(project["landed"])
    assert all(result.success for result in results.values())
    assert ModelStore(config.models_dir).deployed() is not None
    raw_checks = {e.check_name: e.passed for e in results["data"].get_asset_check_evaluations()}
    assert raw_checks and all(raw_checks.values()), raw_checks
    # Every table is still there (no identifier was run as SQL) and holds the hostile columns.
    warehouse = Warehouse(config.warehouse_path)
    for name in ("raw_events", "features", "training_set", "predictions", "drift_report",
                 "model_performance"):
        assert warehouse.table_exists(name), name
    assert {ID, TIMESTAMP, AMOUNT, KIND, SEGMENT, TARGET} <= set(
        warehouse.query("SELECT * FROM raw_events LIMIT 0").columns)
    assert {AMOUNT, f"{AMOUNT}_vs_recent", KIND} <= set(feature_schema(config))


@pytest.mark.parametrize("partition", [FIRST, "2026-01-02", LAST])  # CSV, Parquet, scored last
def test_hostile_columns_values_land_intact(project, partition):
    config, landed = project["config"], project["landed"][partition]
    expected = landed.sort(ID)
    raw = table(config, "raw_events", partition)
    assert raw[ID].dtype == pl.Int64
    assert raw[ID].to_list() == expected[ID].to_list()  # exact, beyond 2**53
    assert raw[AMOUNT].to_list() == expected[AMOUNT].to_list()
    assert raw[KIND].to_list() == expected[KIND].to_list()
    assert raw[SEGMENT].to_list() == expected[SEGMENT].to_list()
    assert raw[TARGET].to_list() == expected[TARGET].to_list()
    assert raw[TIMESTAMP].dt.replace_time_zone(None).to_list() == expected[TIMESTAMP].to_list()

    features = table(config, "features", partition)
    assert features[ID].to_list() == expected[ID].to_list()
    assert features[AMOUNT].to_list() == expected[AMOUNT].to_list()
    assert features[KIND].to_list() == expected[KIND].to_list()

    predictions = table(config, "predictions", partition)
    assert predictions[ID].to_list() == expected[ID].to_list()
    assert predictions["score"].is_between(0, 1).all()
    assert predictions[TARGET].to_list() == expected[TARGET].to_list()


def test_monitoring_reads_the_hostile_columns(project):
    config, results = project["config"], project["results"]
    drift = Warehouse(config.warehouse_path).query(
        "SELECT DISTINCT feature FROM drift_report WHERE _partition = ?", [LAST])
    assert {AMOUNT, KIND} <= set(drift["feature"])
    performance = Warehouse(config.warehouse_path).query(
        "SELECT * FROM model_performance WHERE _partition = ?", [LAST])
    assert performance.height == 1 and performance["rows"][0] == ROWS_PER_DAY
    assert 0.5 < performance["roc_auc"][0] <= 1
    assert {e.check_name for e in results["performance"].get_asset_check_evaluations()}
