"""A range run works in chunks of whole partitions, and gives what one pass over it gives.

`features`, `predictions` and `drift_report` over ten days in ONE run each, with the chunk
budget (`CHUNK_ROWS`) below two days of rows: every read of rows holds one partition (plus
the look-back's narrow columns for features), and what is written equals what the lib
functions compute over the whole range at once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import dagster as dg
import polars as pl
from polars.testing import assert_frame_equal

from ct_assets.definitions import build_definitions
from ct_assets.defs.deployment import score_rows
from ct_assets.lib import warehouse as warehouse_module
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.features import build_features, feature_schema, lookback_columns
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.monitoring import load_profiles, partition_drift
from ct_assets.lib.serving import load_verified
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse
from ct_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from ct_assets_tests.live import template_instance

FIRST_DAY = dt.date(2026, 1, 1)
KEYS = [(FIRST_DAY + dt.timedelta(days=offset)).isoformat() for offset in range(10)]
ROWS = 300
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def project(root: Path) -> Config:
    """Ten simulated days of `ROWS` rows, a covariate drift from day 8."""
    config = config_from_dict({"dataset": {"source": "simulator"},
                               "partitions": {"start": KEYS[0]},
                               "training": {"window": 10, "holdout": 3},
                               "storage": {"dir": "data"}}, base_dir=root)
    write_days(config.landing_dir, start=FIRST_DAY, days=10, rows_per_day=ROWS,
               drift=DriftScenario(kind="covariate", start=dt.date(2026, 1, 8)))
    return config


def run(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, whole_range: bool = True
        ) -> None:
    tags = {RANGE_START_TAG: KEYS[0], RANGE_END_TAG: KEYS[-1]} if whole_range else {}
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags=tags,
                                                          run_config=QUIET)
    assert result.success


def test_range_runs_read_one_chunk_at_a_time_and_write_what_one_pass_computes(
        tmp_path, monkeypatch):
    config = project(tmp_path)
    defs = build_definitions(config)
    store = Warehouse(config.warehouse_path)
    with template_instance(tmp_path / "dagster") as instance:
        run(defs, instance, "data_job")
        run(defs, instance, "retrain_job", whole_range=False)
        full_reads: dict[str, list[int]] = defaultdict(list)
        original = Warehouse.read_range

        def recorded(self, table, time_column, start, end, columns=None):
            frame = original(self, table, time_column, start, end, columns)
            if columns is None:
                full_reads[table].append(frame.height)
            return frame

        monkeypatch.setattr(Warehouse, "read_range", recorded)
        monkeypatch.setattr(warehouse_module, "CHUNK_ROWS", ROWS + ROWS // 2)  # < two days
        for job in ("features_job", "scoring_job", "drift_job"):
            run(defs, instance, job)
        monkeypatch.undo()

    # Every read of whole rows held one partition: memory follows the chunk, not the range.
    assert full_reads["raw_events"] and max(full_reads["raw_events"]) == ROWS
    assert len(full_reads["features"]) == 2 * len(KEYS)  # scoring, then drift, a day at a time
    assert max(full_reads["features"]) == ROWS
    assert store.query("SELECT count(*) AS n FROM information_schema.tables "
                       "WHERE table_schema = 'staging'").item() == 0  # staged, then dropped

    # What was written equals one pass over the whole range: features (recent means across
    # chunk boundaries included), scores, and each partition's drift.
    every = dt.datetime(2025, 12, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    raw = store.read_range("raw_events", config.dataset.timestamp, *every)
    expected = build_features(raw, config, KEYS)
    features = store.read_range("features", config.dataset.timestamp, *every)
    assert_frame_equal(features.sort("transaction_id"), expected.sort("transaction_id"))
    assert lookback_columns(config) and set(lookback_columns(config)) < set(raw.columns)

    models = ModelStore(config.models_dir)
    version = models.deployed()["version"]
    model, manifest = load_verified(models, version)
    scored = score_rows(model, manifest, features, config, version)
    predictions = store.read_range("predictions", config.dataset.timestamp, *every)
    assert_frame_equal(predictions.sort("transaction_id"), scored.sort("transaction_id"))

    profiles = load_profiles(models.path(version))
    report = store.query("SELECT * FROM drift_report")
    drifted = {}
    for key in KEYS:
        expected_report, verdict = partition_drift(
            profiles, features.filter(pl.col(PARTITION) == key), config)
        written = report.filter(pl.col(PARTITION) == key)
        assert written.height == expected_report.height
        assert_frame_equal(
            written.select(expected_report.columns).sort("segment", "feature"),
            expected_report.sort("segment", "feature"))
        drifted[key] = verdict["drifted"]
    assert drifted[KEYS[-1]] and not drifted[KEYS[0]]  # the drift is found where it was put
    assert set(feature_schema(config)) <= set(features.columns)


def test_a_range_is_ingested_in_chunks_as_one_scan_ingests_it(tmp_path, monkeypatch):
    """Ten days in one `raw_events` run, read in chunks of about two days' files, land the
    same rows and quarantine the same rows and files as one scan of the range; a file that
    spans two chunks is read by both and its rows land once."""
    from ct_assets.lib import ingest as ingest_module
    from ct_assets.lib.quarantine import Quarantine

    landed: dict[str, tuple[pl.DataFrame, list[dict]]] = {}
    chunks: dict[str, int] = {}
    reads: dict[str, list[str]] = defaultdict(list)
    for name in ("one_scan", "chunked"):
        config = project(tmp_path / name)
        days = sorted(config.landing_dir.glob("*.parquet"))
        # Two rows of day 2 and two of day 3 again, in one CSV spanning both: duplicates
        # of ids landed in the Parquet files; and a file that cannot be read.
        spanning = pl.concat([pl.read_parquet(days[1]).head(2), pl.read_parquet(days[2]).head(2)])
        spanning.write_csv(config.landing_dir / "again.csv")
        (config.landing_dir / "broken.csv").write_bytes(b"\x00\x01 not a csv\n\xff")
        if name == "chunked":
            largest = max(day.stat().st_size for day in days) * ingest_module.PARQUET_WEIGHT
            budget = largest * 5 // 2  # two days' files and the small CSV
            monkeypatch.setattr(ingest_module, "CHUNK_BYTES", budget)
        original = ingest_module.read_landed_file

        def recorded(file, *args, _name=name, _original=original, **kwargs):
            reads[_name].append(file.relpath)
            return _original(file, *args, **kwargs)

        monkeypatch.setattr(ingest_module, "read_landed_file", recorded)
        defs = build_definitions(config)
        with template_instance(tmp_path / f"dagster-{name}") as instance:
            defs.resolve_job_def("data_job").execute_in_process(
                instance=instance, tags={RANGE_START_TAG: KEYS[0], RANGE_END_TAG: KEYS[-1]},
                run_config=QUIET, raise_on_error=True)
            event = instance.get_latest_materialization_event(dg.AssetKey("raw_events"))
            chunks[name] = event.asset_materialization.metadata["run_chunks"].value
        monkeypatch.undo()
        rows = Warehouse(config.warehouse_path).query("SELECT * FROM raw_events")
        entries = Quarantine(config.quarantine_dir).entries()
        landed[name] = (rows.sort("transaction_id"),
                        sorted(({k: v for k, v in entry.items() if k != "detected_at"}
                                for entry in entries), key=str))

    assert chunks == {"one_scan": 1, "chunked": 5}
    assert_frame_equal(landed["chunked"][0], landed["one_scan"][0])
    assert landed["chunked"][1] == landed["one_scan"][1]
    checks = {entry["check"] for entry in landed["chunked"][1]}
    assert {"bad_file", "duplicate_id"} <= checks
    assert landed["one_scan"][0].height == 10 * ROWS
    assert reads["chunked"].count("again.csv") == 2  # it spans the chunks of days 2 and 3
    assert sorted(set(reads["chunked"])) == sorted(set(reads["one_scan"]))
