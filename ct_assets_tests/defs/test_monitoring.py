"""Drift injected on day K is detected within two partitions of K, never before it."""

import datetime as dt

import dagster as dg
import pytest

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
    for partition in later:
        checks = {}
        for job in ("drift_job", "performance_job"):
            result = run(defs, instance, job, partition=partition)
            assert result.success, (job, partition)
            checks |= {e.check_name: e for e in result.get_asset_check_evaluations()}
        verdicts[partition] = checks
    return config, defs, instance, verdicts


def flagged(verdicts, check):
    return [partition for partition, checks in verdicts.items() if not checks[check].passed]


@pytest.mark.parametrize(("kind", "check", "signal"), [
    ("covariate", "feature_drift", "drifted_features"),
    ("segment", "feature_drift", "segments_drifted"),
    ("prior", "feature_drift", "target_drifted"),
    ("concept", "performance", "partitions_below"),
])
def test_drift_is_detected_on_its_day_and_not_before(tmp_path, kind, check, signal):
    config, _, _, verdicts = monitored(tmp_path, kind)
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


def test_drift_report_rows_and_sensor_fire_once(tmp_path):
    config, defs, instance, verdicts = monitored(tmp_path, "covariate")
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
