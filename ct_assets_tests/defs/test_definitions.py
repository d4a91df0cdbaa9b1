import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import config_from_dict, load_config
from ct_assets.lib.simulator import write_days
from ct_assets_tests.live import open_instance

ROOT = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"

# The asset graph as reviewers expect it: an accidental change shows up here.
EXPECTED_GRAPH = {
    "raw_events": {"group": "ingestion", "deps": set(), "kinds": {"duckdb", "polars"},
                   "pool": "duckdb", "partitioned": True},
    "features": {"group": "features", "deps": {"raw_events"}, "kinds": {"duckdb", "polars"},
                 "pool": "duckdb", "partitioned": True},
    "training_set": {"group": "training", "deps": {"features"}, "kinds": {"duckdb", "polars"},
                     "pool": "duckdb", "partitioned": False},
    "candidate_model": {"group": "training", "deps": {"training_set"},
                        # No pool: it claims `duckdb` only around its reads (defs/runs.py).
                        "kinds": {"lightgbm", "duckdb"}, "pool": None, "partitioned": False},
    "validation_report": {"group": "validation", "deps": {"candidate_model", "training_set"},
                          "kinds": {"duckdb", "matplotlib"}, "pool": None,
                          "partitioned": False},
    "deployed_model": {"group": "deployment", "deps": {"validation_report", "candidate_model"},
                       "kinds": {"json"}, "pool": None, "partitioned": False},
    "predictions": {"group": "deployment", "deps": {"features", "deployed_model"},
                    "kinds": {"duckdb", "polars"}, "pool": "duckdb", "partitioned": True},
    "drift_report": {"group": "monitoring", "deps": {"features", "deployed_model"},
                     "kinds": {"duckdb", "polars"}, "pool": "duckdb", "partitioned": True},
    "model_performance": {"group": "monitoring", "deps": {"predictions", "raw_events"},
                          "kinds": {"duckdb", "polars"}, "pool": "duckdb", "partitioned": True},
    "policy_backtest": {"group": "evaluation", "deps": set(), "kinds": {"duckdb", "matplotlib"},
                        # No pool: the replay claims `duckdb` only around its write.
                        "pool": None, "partitioned": False},
    "served_predictions": {"group": "serving", "deps": {"deployed_model"},
                           "kinds": {"duckdb", "polars"}, "pool": "duckdb", "partitioned": True},
}
EAGER = {"features", "predictions", "drift_report", "model_performance"}
# With labels landing apart (`dataset.labels`), the `labels` asset feeds training and
# performance monitoring in place of the rows' own target.
LABELS_GRAPH = {
    **EXPECTED_GRAPH,
    "labels": {"group": "ingestion", "deps": {"raw_events"}, "kinds": {"duckdb", "polars"},
               "pool": "duckdb", "partitioned": True},
    "training_set": {**EXPECTED_GRAPH["training_set"], "deps": {"features", "labels"}},
    "model_performance": {**EXPECTED_GRAPH["model_performance"],
                          "deps": {"predictions", "labels"}},
}
# Monitoring live traffic (`drift.on: served`): drift and performance judge what `ct serve`
# answered, whose labels come back through `POST /feedback` into `labels`.
SERVED_GRAPH = {
    **LABELS_GRAPH,
    "drift_report": {**EXPECTED_GRAPH["drift_report"],
                     "deps": {"served_predictions", "deployed_model"}},
    "model_performance": {**EXPECTED_GRAPH["model_performance"],
                          "deps": {"served_predictions", "labels"}},
}


def test_project_definitions_load_from_the_repository_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CT_CONFIG", raising=False)
    defs = build_definitions(load_config())
    repo = defs.get_repository_def()
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} >= {
        "raw_events", "features"}


@pytest.mark.parametrize(("raw", "expected"), [
    ({"dataset": {"source": "simulator"}}, EXPECTED_GRAPH),
    ({"dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}}}, LABELS_GRAPH),
    ({"dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
      "drift": {"on": "served"}}, SERVED_GRAPH)])
def test_graph_snapshot(tmp_path, raw, expected):
    config = config_from_dict(raw, base_dir=tmp_path)
    graph = build_definitions(config).resolve_asset_graph()
    snapshot = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets_def = node.assets_def
        snapshot[key.to_user_string()] = {
            "group": node.group_name,
            "deps": {parent.to_user_string() for parent in node.parent_keys},
            "kinds": set(node.kinds),
            "pool": next(iter(assets_def.op.pools), None),
            "partitioned": node.partitions_def is not None,
        }
        assert assets_def.descriptions_by_key[key], f"{key} has no description"
        eager = node.automation_condition is not None
        assert eager == (key.to_user_string() in EAGER), key
    assert snapshot == expected


def test_sensors_and_schedule_defaults(tmp_path):
    config = config_from_dict({"dataset": {"source": "simulator"}}, base_dir=tmp_path)
    defs = build_definitions(config)
    running = dg.DefaultSensorStatus.RUNNING
    for name in ("landing_sensor", "serving_log_sensor", "drift_sensor", "performance_sensor",
                 "freshness_sensor", "automation_sensor"):
        assert defs.resolve_sensor_def(name).default_status == running, name
    schedule = defs.resolve_schedule_def("retrain_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # triggers.schedule off
    quiet = config_from_dict({"dataset": {"source": "simulator"},
                              "triggers": {"drift": False, "schedule": True}}, base_dir=tmp_path)
    defs = build_definitions(quiet)
    assert defs.resolve_sensor_def("drift_sensor").default_status != running
    assert defs.resolve_schedule_def("retrain_schedule").default_status == (
        dg.DefaultScheduleStatus.RUNNING)


def test_raw_event_checks_and_policies(tmp_path):
    config = config_from_dict({"dataset": {"source": "simulator"}}, base_dir=tmp_path)
    defs = build_definitions(config)
    raw = defs.resolve_assets_def("raw_events")
    checks = {spec.name for spec in raw.check_specs}
    assert checks == {"schema", "null_rates", "ranges", "duplicate_ids", "has_rows",
                      "quarantine_share"}
    for name in ("raw_events", "features"):
        policy = defs.resolve_assets_def(name).backfill_policy
        assert policy is not None and policy.max_partitions_per_run is None  # single run
    mapping = defs.resolve_assets_def("features").get_partition_mapping(
        dg.AssetKey("raw_events"))
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    assert mapping.start_offset == -config.features.lookback and mapping.end_offset == 0


@pytest.mark.parametrize("command", [
    ["dagster", "asset", "materialize", "-m", "ct_assets.definitions", "--select"],
    ["dg", "launch", "--assets"]])
def test_cli_materializes_a_partition_range_without_warnings(tmp_path, command):
    """`dagster asset materialize` and `dg launch` of a partition range from the project
    root, real instance; the project's own notices are silenced (Dagster's own CLI may still
    say that `dagster asset materialize` is superseded by `dg launch`)."""
    (tmp_path / "ct.yaml").write_text(
        "dataset: {source: simulator}\npartitions: {start: 2026-02-01}\n", encoding="utf-8")
    import datetime as dt

    write_days(tmp_path / "data" / "landing", start=dt.date(2026, 2, 1), days=4,
               rows_per_day=300)
    home = tmp_path / "data" / "dagster"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    env = {**os.environ, "CT_CONFIG": str(tmp_path / "ct.yaml"), "DAGSTER_HOME": str(home)}
    done = subprocess.run(
        [str(DAGSTER.parent / command[0]), *command[1:], "raw_events,features",
         "--partition-range", "2026-02-02...2026-02-04"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BetaWarning" not in done.stderr and "PreviewWarning" not in done.stderr
    config = load_config(tmp_path / "ct.yaml")
    from ct_assets.lib.warehouse import Warehouse

    counts = Warehouse(config.warehouse_path).query(
        "SELECT _partition, count(*) AS n FROM features GROUP BY 1 ORDER BY 1")
    assert counts.rows() == [("2026-02-02", 300), ("2026-02-03", 300), ("2026-02-04", 300)]
    with open_instance(home) as instance:
        materialized = instance.get_materialized_partitions(dg.AssetKey("raw_events"))
        runs = instance.get_runs()
    assert materialized == {"2026-02-02", "2026-02-03", "2026-02-04"}
    assert len(runs) == 1  # the range is one run


def test_dg_check_defs_loads_the_project_without_warnings(tmp_path):
    """`dg check defs` from the project root (as the README shows) loads the definitions."""
    (tmp_path / "ct.yaml").write_text(
        "dataset: {source: simulator}\npartitions: {start: 2026-02-01}\n", encoding="utf-8")
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((ROOT / "dagster.yaml").read_bytes())
    env = {**os.environ, "CT_CONFIG": str(tmp_path / "ct.yaml"), "DAGSTER_HOME": str(home)}
    done = subprocess.run([str(DAGSTER.parent / "dg"), "check", "defs"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "All definitions loaded successfully." in done.stdout, output[-3000:]
    assert "warning" not in output.lower(), output[-3000:]


def test_bad_config_fails_before_any_asset_runs(tmp_path):
    (tmp_path / "ct.yaml").write_text("dataset: {source: simulator, colour: red}\n",
                                      encoding="utf-8")
    env = {**os.environ, "CT_CONFIG": str(tmp_path / "ct.yaml")}
    done = subprocess.run([str(DAGSTER), "asset", "list", "-m", "ct_assets.definitions"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0
    assert "dataset.colour: unknown key (got 'red')" in done.stderr


@pytest.mark.parametrize("granularity", ["hourly", "daily", "weekly", "monthly"])
def test_every_granularity_builds(tmp_path, granularity):
    config = config_from_dict({"dataset": {"source": "simulator"},
                               "partitions": {"granularity": granularity}}, base_dir=tmp_path)
    partitions = build_definitions(config).resolve_assets_def("raw_events").partitions_def
    assert partitions is not None
    assert partitions.get_first_partition_key() is not None
