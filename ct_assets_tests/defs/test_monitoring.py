"""Drift injected on day K is detected within two partitions of K, never before it."""

import datetime as dt

import dagster as dg
import polars as pl
import pytest
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,  # no public export in 1.13
)

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import config_from_dict
from ct_assets.lib.monitoring import drift_verdict
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets.lib.warehouse import Warehouse

START = dt.date(2026, 1, 1)
K = START + dt.timedelta(days=12)  # first drifted day
LAST = START + dt.timedelta(days=15)
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def key(day: dt.date) -> str:
    return day.isoformat()


def days(first: dt.date, last: dt.date) -> list[str]:
    return [key(first + dt.timedelta(days=i)) for i in range((last - first).days + 1)]


def run(defs, instance, job, *, partition=None, first=None, last=None, tags=None):
    all_tags = dict(tags or {})
    if first:
        all_tags |= {"dagster/asset_partition_range_start": first,
                     "dagster/asset_partition_range_end": last}
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, resources=defs.resources, partition_key=partition, tags=all_tags,
        run_config=QUIET, raise_on_error=False)


def run_assets(defs, instance, assets, *, partition):
    """One run of `assets` for `partition` (as the UI's "Materialize selected" does)."""
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, resources=defs.resources, partition_key=partition,
        asset_selection=[dg.AssetKey(asset) for asset in assets], run_config=QUIET,
        raise_on_error=False)


@pytest.fixture(scope="module")
def monitored_projects(tmp_path_factory):
    """`monitored(kind)`: the project of `kind`, built on first use and shared by the tests."""
    built: dict[str, tuple] = {}

    def get(kind: str) -> tuple:
        if kind not in built:
            built[kind] = monitored(tmp_path_factory.mktemp(kind), kind)
        return built[kind]

    return get


def monitored(tmp_path, kind):
    """A model trained on clean days, then every later day scored and monitored one by one."""
    config = config_from_dict({
        "dataset": {"source": "simulator"}, "partitions": {"start": key(START)},
        "training": {"window": 10, "holdout": 3}, "triggers": {"label_delay": 0},
    }, base_dir=tmp_path)
    write_days(config.landing_dir, start=START, days=(LAST - START).days + 1,
               rows_per_day=1500, drift=DriftScenario(kind, K))
    defs = build_definitions(config)
    instance = dg.DagsterInstance.ephemeral()
    history_end = key(START + dt.timedelta(days=9))
    assert run(defs, instance, "data_job", first=key(START), last=history_end).success
    assert run(defs, instance, "retrain_job").success
    later = days(START + dt.timedelta(days=10), LAST)
    assert run(defs, instance, "data_job", first=later[0], last=later[-1]).success
    assert run(defs, instance, "scoring_job", first=later[0], last=later[-1]).success
    verdicts = {}
    for partition in later:  # drift and performance of one partition in one run, with checks
        result = run_assets(defs, instance, ("drift_report", "model_performance"),
                            partition=partition)
        assert result.success, partition
        verdicts[partition] = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return config, defs, instance, verdicts


def flagged(verdicts, check):
    return [partition for partition, checks in verdicts.items() if not checks[check].passed]


@pytest.mark.parametrize(("kind", "check", "signal"), [
    ("covariate", "feature_drift", "drifted_features"),
    ("segment", "feature_drift", "segments_drifted"),
    ("prior", "feature_drift", "target_drifted"),
    ("concept", "performance", "partitions_below"),
])
def test_drift_is_detected_on_its_day_and_not_before(monitored_projects, kind, check, signal):
    config, _, _, verdicts = monitored_projects(kind)
    hits = flagged(verdicts, check)
    assert hits, f"{kind} drift from {K} was never detected"
    assert hits[0] in (key(K), key(K + dt.timedelta(days=1))), hits
    assert all(partition >= key(K) for partition in hits), f"false alarm before {K}: {hits}"
    evidence = verdicts[hits[0]][check].metadata[signal].value
    assert evidence not in ("none", False, None), evidence
    if kind == "segment":
        assert evidence == "south"
    if kind == "concept":  # no covariate signature: the feature drift check stays quiet
        assert not flagged(verdicts, "feature_drift")
    # the verdict read back from the stored report (as `ct demo`'s timeline does) is the check's
    rows = Warehouse(config.warehouse_path).query(
        "SELECT _partition, segment, feature, statistic, drifted FROM drift_report")
    from_table = {partition: drift_verdict(part, config)["drifted"] for (partition,), part
                  in rows.partition_by("_partition", as_dict=True).items()}
    assert from_table == {partition: not checks["feature_drift"].passed
                          for partition, checks in verdicts.items()}


def test_drift_report_rows_and_sensor_fire_once(monitored_projects):
    # the covariate project of the test above (this test retrains on it, after reading it)
    config, defs, instance, verdicts = monitored_projects("covariate")
    report = Warehouse(config.warehouse_path).query(
        "SELECT _partition, segment, feature, drifted FROM drift_report "
        "WHERE segment = 'all' AND feature = 'amount' ORDER BY _partition")
    drifted = dict(zip(report["_partition"], report["drifted"], strict=True))
    assert not any(drifted[p] for p in drifted if p < key(K))
    assert drifted[key(K)]
    assert set(Warehouse(config.warehouse_path).query(
        "SELECT DISTINCT segment FROM drift_report")["segment"]) >= {"all", "south"}

    sensor = defs.resolve_sensor_def("drift_sensor")
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.tags["ct/reason"] == "drift"
    assert request.run_key.startswith("drift:")
    again = sensor.evaluate_tick(dg.build_sensor_context(
        instance=instance, cursor=first.cursor, definitions=defs))
    assert not again.run_requests  # the same failures give no second retrain

    # A retrain that started after the failure already answers it: the performance sensor
    # (a second trigger on the same event) must not start another one.
    assert run(defs, instance, "retrain_job", tags={"ct/reason": "drift"}).success
    performance = defs.resolve_sensor_def("performance_sensor")
    result = performance.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                               definitions=defs))
    assert not result.run_requests
    assert report.height == len(verdicts)


# ------------------------------------------------ one run over a range: each partition its own

RANGE = days(START + dt.timedelta(days=10), START + dt.timedelta(days=19))  # ten days
RANGE_DRIFT = START + dt.timedelta(days=16)  # the range's seventh day


@pytest.fixture(scope="module")
def range_run(tmp_path_factory):
    """Ten days scored, then `drift_job` and `performance_job` each run ONCE over all ten.

    A first model learns the ten days before them; a covariate drift starts on the range's
    seventh day. Labels come a day late (`triggers.label_delay` 1), so the range's last day,
    "today", has none.
    """
    root = tmp_path_factory.mktemp("range")
    config = config_from_dict({
        "dataset": {"source": "simulator"}, "partitions": {"start": key(START)},
        "training": {"window": 10, "holdout": 3},
    }, base_dir=root)
    write_days(config.landing_dir, start=START, days=20, rows_per_day=300,
               drift=DriftScenario("covariate", RANGE_DRIFT))
    defs = build_definitions(config)
    instance = dg.DagsterInstance.ephemeral()
    assert run(defs, instance, "data_job", first=key(START), last=RANGE[0]).success
    assert run(defs, instance, "retrain_job").success
    assert run(defs, instance, "data_job", first=RANGE[1], last=RANGE[-1]).success
    assert run(defs, instance, "scoring_job", first=RANGE[0], last=RANGE[-1]).success
    for job in ("drift_job", "performance_job"):
        assert run(defs, instance, job, first=RANGE[0], last=RANGE[-1]).success, job
    return config, defs, instance


def recorded(instance, asset):
    """Partition → the metadata (plain values) of its latest materialization."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
    latest = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        event = record.asset_materialization
        latest[event.partition] = {k: v.value for k, v in event.metadata.items()}
    return latest


def evaluations(instance, asset, check):
    """Partition → (status, metadata) of every evaluation of `check` stored by the instance."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), check), limit=100)
    return [(record.partition, record.status, record.evaluation) for record in history]


def test_a_range_run_records_each_partition_its_own_drift(range_run):
    config, _, instance = range_run
    drifted_days = [day for day in RANGE if day >= key(RANGE_DRIFT)]
    stored = Warehouse(config.warehouse_path).query(
        "SELECT _partition, segment, feature, method, statistic, threshold, p_value, drifted "
        "FROM drift_report")
    tables = {part: rows for (part,), rows in stored.partition_by("_partition",
                                                                   as_dict=True).items()}
    figures = recorded(instance, "drift_report")
    assert sorted(figures) == RANGE  # one materialization per partition
    for day in RANGE:
        verdict = drift_verdict(tables[day], config)
        assert figures[day]["drifted_share"] == pytest.approx(verdict["drifted_share"],
                                                              rel=1e-3), day
        assert figures[day]["drifted_features"] == (
            ", ".join(verdict["drifted_features"]) or "none"), day
        assert figures[day]["target_drifted"] == verdict["target_drifted"], day
        assert figures[day]["rows"] == 300
        assert figures[day]["drifted"] is (day in drifted_days), day
    assert all(figures[day]["rule"] == "none" for day in RANGE if day not in drifted_days)


def test_a_range_run_records_each_labelled_partition_its_own_performance(range_run):
    config, _, instance = range_run
    today = RANGE[-1]
    stored = Warehouse(config.warehouse_path).query(
        "SELECT _partition, roc_auc, rows FROM model_performance ORDER BY 1")
    assert stored["_partition"].to_list() == RANGE[:-1]  # today's labels are not known yet
    figures = recorded(instance, "model_performance")
    assert sorted(figures) == RANGE[:-1]
    assert today not in instance.get_materialized_partitions(dg.AssetKey("model_performance"))
    for day, roc_auc, rows in stored.iter_rows():
        assert figures[day]["roc_auc"] == pytest.approx(roc_auc, rel=1e-3), day
        assert figures[day]["rows"] == rows == 300, day
    assert len({figures[day]["roc_auc"] for day in figures}) > 1


def test_a_range_run_judges_each_partition_and_names_the_rule(range_run):
    config, defs, instance = range_run
    drifted_days = [day for day in RANGE if day >= key(RANGE_DRIFT)]
    stored = Warehouse(config.warehouse_path).query(
        "SELECT _partition, segment, feature, method, statistic, threshold, p_value "
        "FROM drift_report WHERE drifted")
    drift = evaluations(instance, "drift_report", "feature_drift")
    assert sorted(partition for partition, _, _ in drift) == RANGE  # one per partition
    failed = AssetCheckExecutionRecordStatus.FAILED
    assert sorted(p for p, status, _ in drift if status == failed) == drifted_days
    for partition, status, evaluation in drift:
        values = {k: v.value for k, v in evaluation.metadata.items()}
        assert values["partition"] == partition == evaluation.partition
        assert values["partitions_judged"] == f"{RANGE[0]} … {RANGE[-1]} (10)"
        table = evaluation.metadata["drifted_feature_table"].value
        assert [column.name for column in table.schema.columns] == [
            "segment", "feature", "method", "statistic", "threshold", "p_value"]
        rows = stored.filter(pl.col("_partition") == partition)
        assert len(table.records) == rows.height
        assert {(r.data["segment"], r.data["feature"], r.data["method"]) for r in table.records
                } == set(rows.select("segment", "feature", "method").iter_rows())
        if status == failed:
            assert values["first_flagged"] == drifted_days[0]
            assert values["rule"].startswith("drifted share") and "drift.share" in values["rule"]
            assert table.records and all(r.data["statistic"] is not None for r in table.records)
            assert evaluation.description.startswith(f"{partition} failed: drifted share")
        else:
            assert values["rule"] == "none" and values["first_flagged"] == "none"

    # The partitions judged by the performance check are the measured ones; today's evaluation
    # says why it judged nothing. No evaluation Dagster planned is left unexplained (skipped).
    performance = {p: (status, e) for p, status, e in
                   evaluations(instance, "model_performance", "performance")}
    assert sorted(performance) == RANGE
    status, waiting = performance[RANGE[-1]]
    assert waiting.metadata["judged"].value is False
    assert "label" in waiting.description and "triggers.label_delay" in waiting.description
    for day in RANGE[:-1]:
        values = {k: v.value for k, v in performance[day][1].metadata.items()}
        assert values["partition"] == day and values["metric"] == "roc_auc"
        assert (values["rule"] == "none") == (performance[day][0] != failed), values
    planned = AssetCheckExecutionRecordStatus.PLANNED
    assert all(status != planned for _, status, _ in drift)
    assert all(status != planned for status, _ in performance.values())

    # The drift sensor sees one event, at its first partition.
    tick = defs.resolve_sensor_def("drift_sensor").evaluate_tick(
        dg.build_sensor_context(instance=instance, definitions=defs))
    assert [r.tags["ct/change_point"] for r in tick.run_requests] == [drifted_days[0]]
