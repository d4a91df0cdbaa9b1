"""Per-partition truth: a run over a range records each partition's own figures.

Ten simulated days of different sizes (and a few quarantined rows, and labels that land a
day later) are materialized in ONE run per job; each partition's materialization recorded in
the instance must hold that partition's figures as the DuckDB tables and the quarantine hold
them, not the range's.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.labels import KNOWN_AT
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets.lib.warehouse import Warehouse
from ct_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from ct_assets_tests.live import template_instance

FIRST_DAY = dt.date(2026, 1, 1)
FIRST, LAST = "2026-01-01", "2026-01-10"
KEYS = [(FIRST_DAY + dt.timedelta(days=offset)).isoformat() for offset in range(10)]
# Days 1-5 small, 6-10 larger, with a covariate drift from day 8: counts and scores differ.
SMALL, LARGE = 200, 260
DRIFT = DriftScenario(kind="covariate", start=dt.date(2026, 1, 8))
BAD_DAY, BAD_ROWS = "2026-01-03", 3
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def project(root: Path, **dataset: Any) -> Config:
    """A simulator project with ten days of two sizes landed (labels apart with `labels`)."""
    config = config_from_dict({"dataset": {"source": "simulator", **dataset},
                               "partitions": {"start": FIRST},
                               "training": {"window": 10, "holdout": 3},
                               "storage": {"dir": "data"}}, base_dir=root)
    labels = {"labels_dir": config.labels_dir, "label_delay": 1} if "labels" in dataset else {}
    write_days(config.landing_dir, start=FIRST_DAY, days=5, rows_per_day=SMALL,
               drift=DRIFT, **labels)
    write_days(config.landing_dir, start=FIRST_DAY + dt.timedelta(days=5), days=5,
               rows_per_day=LARGE, drift=DRIFT, **labels)
    return config


def run(config: Config, instance: dg.DagsterInstance, job: str, *, whole_range: bool = True
        ) -> dg.ExecuteInProcessResult:
    """One run of `job`: over the ten days at once, or unpartitioned."""
    tags = {RANGE_START_TAG: FIRST, RANGE_END_TAG: LAST} if whole_range else {}
    result = build_definitions(config).resolve_job_def(job).execute_in_process(
        instance=instance, tags=tags, run_config=QUIET)
    assert result.success
    return result


def recorded(instance: dg.DagsterInstance, asset: str, key: str) -> dict[str, Any]:
    """Plain metadata of the one materialization of `asset`'s partition `key` the instance has."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=10).records
    assert len(records) == 1, (asset, key, len(records))
    materialization = records[0].asset_materialization
    assert materialization is not None and materialization.partition == key
    return {name: value.value for name, value in materialization.metadata.items()}


def by_partition(config: Config, sql: str) -> dict[str, tuple]:
    """`sql` (partition first, grouped by it) on the warehouse: partition → the other values."""
    return {row[0]: row[1:] for row in Warehouse(config.warehouse_path).query(sql).rows()}


def land_bad_rows(config: Config) -> None:
    """A CSV of `BAD_ROWS` rows of `BAD_DAY` whose amount is not a number: quarantined."""
    day = pl.read_parquet(config.landing_dir / f"transactions_{BAD_DAY}.parquet").head(BAD_ROWS)
    bad = day.with_columns(pl.format("bad-{}", pl.col("transaction_id")).alias("transaction_id"),
                           pl.lit("not a number").alias("amount"))
    bad.write_csv(config.landing_dir / "bad_amounts.csv")


def test_a_range_run_records_each_partitions_own_rows_quarantine_and_scores(tmp_path):
    config = project(tmp_path)
    land_bad_rows(config)
    with template_instance(tmp_path / "dagster") as instance:
        data = run(config, instance, "data_job")
        run(config, instance, "retrain_job", whole_range=False)
        run(config, instance, "scoring_job")
        assert len(instance.get_runs()) == 3  # one run for the ten days of each job

        raw = by_partition(config, "SELECT _partition, count(*), "
                                   "avg((amount IS NULL)::DOUBLE) FROM raw_events GROUP BY 1")
        features = by_partition(config, "SELECT _partition, count(*) FROM features GROUP BY 1")
        scores = by_partition(config, "SELECT _partition, count(*), avg(score), min(score), "
                                      "max(score), avg(prediction::DOUBLE), "
                                      "any_value(model_version) FROM predictions GROUP BY 1")
        quarantined = {key: 0 for key in KEYS}
        for entry in Quarantine(config.quarantine_dir).entries():
            quarantined[entry["partition"]] += entry["rows"]
        # The figures to match differ between partitions: a range summary could not pass.
        assert len({raw[key][0] for key in KEYS}) == 2 and quarantined[BAD_DAY] == BAD_ROWS
        assert len({scores[key][1] for key in KEYS}) == len(KEYS)

        for key in KEYS:
            landed = recorded(instance, "raw_events", key)
            assert landed["dagster/row_count"] == raw[key][0] == (SMALL if key < "2026-01-06"
                                                                   else LARGE)
            assert landed["quarantined_rows"] == quarantined[key]
            total = raw[key][0] + quarantined[key]
            assert landed["quarantine_share"] == pytest.approx(quarantined[key] / total,
                                                               rel=1e-3)
            assert landed["null_rates"]["amount"] == pytest.approx(raw[key][1], abs=1e-4)
            assert landed["run_partitions"] == f"{FIRST} … {LAST} (10)"

            featurised = recorded(instance, "features", key)
            assert featurised["dagster/row_count"] == features[key][0] == raw[key][0]

            scored = recorded(instance, "predictions", key)
            rows, mean, low, high, positive, version = scores[key]
            assert scored["dagster/row_count"] == rows == raw[key][0]
            for name, value in (("mean_score", mean), ("min_score", low), ("max_score", high),
                                ("positive_rate", positive)):
                assert scored[name] == pytest.approx(value, rel=1e-3), (key, name)
                assert scored[name] == float(f"{scored[name]:.4g}")  # 4 significant digits
            assert scored["model_version"] == version

    # The checks are judged once for the run: they say over which partitions.
    for evaluation in data.get_asset_check_evaluations():
        assert evaluation.metadata["judged_partitions"].value == f"{FIRST} … {LAST} (10)"
    share = {e.check_name: e for e in data.get_asset_check_evaluations()}["quarantine_share"]
    assert share.metadata["rejected_rows"].value == BAD_ROWS


def test_a_range_run_records_each_partitions_own_labels(tmp_path):
    config = project(tmp_path, labels={"landing_dir": "labels"})
    # Two labels of Jan 4's rows for ids no row has: quarantined on the day they became known.
    known = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
    pl.DataFrame({"transaction_id": ["nobody-1", "nobody-2"], "is_fraud": [0, 1],
                  KNOWN_AT: [known, known]}).write_parquet(config.labels_dir / "stray.parquet")
    with template_instance(tmp_path / "dagster") as instance:
        run(config, instance, "data_job")
        labels_run = run(config, instance, "labels_job")

        stored = by_partition(config, "SELECT _partition, count(*) FROM labels GROUP BY 1")
        rows_of = Warehouse(config.warehouse_path).query(
            "SELECT _partition, labelled_partition, count(*) AS n FROM labels GROUP BY 1, 2")
        refused = {key: 0 for key in KEYS}
        for entry in Quarantine(config.quarantine_dir / "labels").entries():
            refused[entry["partition"]] += entry["rows"]
        # Jan 1 has no labels yet (they land a day later), Jan 2-6 small, 7-10 large.
        assert len({stored.get(key, (0,))[0] for key in KEYS}) == 3
        assert refused["2026-01-05"] == 2

        for key in KEYS:
            labels = recorded(instance, "labels", key)
            count = stored.get(key, (0,))[0]
            assert labels["labels"] == labels["dagster/row_count"] == count
            assert labels["quarantined_labels"] == refused[key]
            assert labels["labelled_partitions"] == {
                labelled: n for partition, labelled, n in rows_of.rows() if partition == key}
            assert labels["run_partitions"] == f"{FIRST} … {LAST} (10)"
    for evaluation in labels_run.get_asset_check_evaluations():
        assert evaluation.metadata["judged_partitions"].value == f"{FIRST} … {LAST} (10)"
