"""Sensors that read the landing dirs and the instance: label files, and the cooldown skip."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import dagster as dg
import pytest
import yaml

from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.defs.automation import retrain_request
from ct_assets.lib.config import config_from_dict
from ct_assets.lib.ingest import FileCatalog
from ct_assets.lib.labels import read_labels
from ct_assets.lib.simulator import write_days
from ct_assets.lib.triggers import TriggerLog

PROJECT = {"dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
           "partitions": {"start": "2026-01-01"},
           "storage": {"dir": "data"}}


def make_config(tmp_path):
    return config_from_dict(PROJECT, base_dir=tmp_path)


def settle(directory):
    """Age every file past the sensor's settle time (a file still being written waits)."""
    past = time.time() - 60
    for path in directory.rglob("*"):
        os.utime(path, (past, past))


def ingest_labels(config):
    """What a `labels` run over January records in the label catalog (`read_labels`)."""
    catalog = FileCatalog(config.labels_catalog_path)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    read_labels(config, start, start + dt.timedelta(days=31), catalog)
    catalog.save()


def test_label_sensor_ingests_label_files_by_the_partition_they_became_known(tmp_path):
    config = make_config(tmp_path)
    write_days(config.landing_dir, start=dt.date(2026, 1, 1), days=3, rows_per_day=20,
               labels_dir=config.labels_dir, label_delay=1)
    settle(config.labels_dir)
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("label_sensor")
    with dg.instance_for_test() as instance:
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                              definitions=defs))
        assert len(result.run_requests) == 1
        request = result.run_requests[0]
        # labels of Jan 1 and 2 became known on Jan 2 and 3
        assert request.tags["dagster/asset_partition_range_start"] == "2026-01-02"
        assert request.tags["dagster/asset_partition_range_end"] == "2026-01-03"
        assert request.asset_selection == [dg.AssetKey("labels")]
        again = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=result.cursor, definitions=defs))
        assert not again.run_requests  # a file is taken once per content
        assert set(json.loads(result.cursor)["files"]) == {"labels_2026-01-02.parquet",
                                                           "labels_2026-01-03.parquet"}
        ingest_labels(config)  # the run `labels` ingested them (what it records of them)
        assert not sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, definitions=defs)).run_requests  # nor does a new daemon
        # The same bytes landed again after a removal are ingested again, under a new key.
        saved = (config.labels_dir / "labels_2026-01-03.parquet").read_bytes()
        (config.labels_dir / "labels_2026-01-03.parquet").unlink()
        removed = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=result.cursor, definitions=defs))
        ingest_labels(config)
        (config.labels_dir / "labels_2026-01-03.parquet").write_bytes(saved)
        settle(config.labels_dir)
        back = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=removed.cursor, definitions=defs))
        keys = [tick.run_requests[0].run_key for tick in (result, removed, back)]
        assert len(set(keys)) == 3, keys


def drift_sensor_of(tmp_path):
    """A project (`make_config`), its definitions and its `drift_sensor`."""
    config = make_config(tmp_path)
    defs = build_definitions(config)
    return config, defs, defs.resolve_sensor_def("drift_sensor")


def drift_failed(instance, partition):
    """A failed `feature_drift` evaluation flagging `partition`, as `drift_report` records it."""
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("drift_report"), check_name="feature_drift", passed=False,
        metadata={"first_flagged": partition}))


def labelled(instance, *partitions):
    """Record that the labels of `partitions` are known (their performance was measured)."""
    for partition in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="model_performance", partition=partition))


def status(tmp_path, capsys, *flags):
    """`ct status` of the project `make_config` describes, in-process: its output."""
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(PROJECT), encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["--config", str(path), "status", *flags]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if flags else out


def test_drift_sensor_skips_an_event_inside_the_cooldown_and_logs_why(tmp_path, capsys):
    config, defs, sensor = drift_sensor_of(tmp_path)
    with dg.instance_for_test() as instance:
        # A retrain already answered a change at Jan 10 (as drift_sensor tags it).
        request = retrain_request("drift", "drift:2026-01-10:1", "drift failed",
                                  change_point="2026-01-10")
        instance.create_run_for_job(defs.resolve_job_def("retrain_job"), tags=request.tags,
                                    status=dg.DagsterRunStatus.SUCCESS)
        time.sleep(1.1)  # check records keep whole seconds: the failures come after the run

        labelled(instance, "2026-01-12", "2026-01-14")
        drift_failed(instance, "2026-01-12")  # two partitions later: inside triggers.cooldown (3)
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                            definitions=defs))
        assert not tick.run_requests
        assert "cooldown" in tick.skip_message and "2026-01-10" in tick.skip_message
        # `ct status` shows the skip and its reason, in JSON and as text.
        shown = status(tmp_path, capsys, "--json")
        assert {key: shown["triggers"]["drift_sensor"][key] for key in
                ("decision", "partition", "detail")} == {
            "decision": "skipped", "partition": "2026-01-12", "detail": tick.skip_message}
        assert f"drift_sensor: skipped at {shown['triggers']['drift_sensor']['at']}: " \
               f"{tick.skip_message}" in status(tmp_path, capsys).splitlines()
        drift_failed(instance, "2026-01-14")  # four partitions later: a new change
        later = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=tick.cursor, definitions=defs))
        assert [r.tags["ct/change_point"] for r in later.run_requests] == ["2026-01-14"]
    log = TriggerLog(config.storage_dir).entries()
    assert [(e["decision"], e["partition"]) for e in log] == [
        ("skipped", "2026-01-12"), ("launched", "2026-01-14")]


def test_late_rows_ask_to_rebuild_the_features_of_the_partitions_that_read_them(tmp_path):
    config = config_from_dict({"dataset": {"source": "simulator"},
                               "partitions": {"start": "2026-01-01"},
                               "storage": {"dir": "data"}}, base_dir=tmp_path)
    write_days(config.landing_dir, start=dt.date(2026, 1, 1), days=12, rows_per_day=50)
    defs = build_definitions(config)
    features = dg.AssetKey("features")
    selection = dg.AssetSelection.assets("features")
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

    def ingest(first, last):
        assert defs.resolve_job_def("data_job").execute_in_process(
            instance=instance, resources=defs.resources, run_config=quiet,
            tags={"dagster/asset_partition_range_start": first,
                  "dagster/asset_partition_range_end": last}).success

    with dg.instance_for_test() as instance:
        ingest("2026-01-01", "2026-01-12")  # what the landing sensor runs for new files
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                    asset_selection=selection)
        assert settled.get_requested_partitions(features) == set()  # built with their data
        ingest("2026-01-03", "2026-01-03")  # late rows for Jan 3
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                  asset_selection=selection,
                                                  cursor=settled.cursor)
        # features.lookback is 7: Jan 4 … 10 read Jan 3's rows; Jan 3 was rebuilt with them.
        assert after.get_requested_partitions(features) == {
            f"2026-01-{day:02d}" for day in range(4, 11)}


def test_a_failure_seen_while_a_retrain_runs_is_judged_again_if_that_retrain_crashes(tmp_path):
    _, defs, sensor = drift_sensor_of(tmp_path)
    with dg.instance_for_test() as instance:
        running = instance.create_run_for_job(
            defs.resolve_job_def("retrain_job"), tags={"ct/reason": "manual"},
            status=dg.DagsterRunStatus.STARTED)
        time.sleep(1.1)  # check records keep whole seconds: the failure comes after the run
        labelled(instance, "2026-01-12")
        drift_failed(instance, "2026-01-12")
        waiting = sensor.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                               definitions=defs))
        assert not waiting.run_requests
        assert "already queued or running" in waiting.skip_message
        assert waiting.cursor is None  # the failure is not consumed

        # The manual retrain crashes before the gate: it answered nothing.
        instance.report_run_failed(instance.get_run_by_id(running.run_id))
        after = sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, cursor=waiting.cursor, definitions=defs))
        assert [r.tags["ct/change_point"] for r in after.run_requests] == ["2026-01-12"]


def test_a_drift_retrain_waits_for_the_labels_of_the_partition_where_the_drift_began(tmp_path):
    config, defs, sensor = drift_sensor_of(tmp_path)

    def tick(cursor):
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                            definitions=defs))

    def land_and_fail(partition):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="raw_events", partition=partition))
        drift_failed(instance, partition)

    with dg.instance_for_test() as instance:
        land_and_fail("2026-01-14")
        first = tick(None)
        assert not first.run_requests and first.cursor is None  # pending, not consumed
        assert "waiting for the labels of 2026-01-14" in first.skip_message
        assert "waiting for the labels of 2026-01-14" in tick(None).skip_message  # logged once
        land_and_fail("2026-01-15")  # the next day drifts too: the same change
        assert "waiting for the labels of 2026-01-14" in tick(None).skip_message
        labelled(instance, "2026-01-14")  # its labels landed: the retrain can learn it
        launched = tick(None)
        assert [(r.tags["ct/change_point"], r.tags["ct/reason"])
                for r in launched.run_requests] == [("2026-01-14", "drift")]
        assert not tick(launched.cursor).run_requests  # both failures answered
    log = TriggerLog(config.storage_dir).entries()
    assert [(e["decision"], e["partition"]) for e in log] == [
        ("waiting", "2026-01-14"), ("waiting", "2026-01-14"), ("launched", "2026-01-14")]
    assert "1 landed since" in log[1]["detail"]


@pytest.mark.parametrize("rows", ["raw_events", "served_predictions"])  # landed or served
def test_a_drift_retrain_goes_without_labels_that_are_overdue(tmp_path, rows):
    _, defs, sensor = drift_sensor_of(tmp_path)
    with dg.instance_for_test() as instance:
        for day in ("2026-01-14", "2026-01-15", "2026-01-16"):  # no label for any of them
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key=rows, partition=day))
        drift_failed(instance, "2026-01-14")
        result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                              definitions=defs))
        assert [r.tags["ct/change_point"] for r in result.run_requests] == ["2026-01-14"]
