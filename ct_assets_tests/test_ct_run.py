"""`ct run` outcomes: a gate rejection is an outcome, a crash is a failure that is retried.

Small simulated projects (500 rows a day) run through the real CLI, in-process, against a real
Dagster instance and DuckDB file in a temporary directory.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from ct_assets import cli
from ct_assets.lib.config import load_config
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets.lib.triggers import TriggerLog
from ct_assets.lib.warehouse import Warehouse

FIRST_DAY = dt.date(2026, 1, 1)
DAYS, ROWS_PER_DAY = 14, 500


def project(root: Path, **sections: dict) -> Path:
    """A simulator project with 14 clean days landed; its ct.yaml."""
    config = {"dataset": {"source": "simulator"}, "partitions": {"start": FIRST_DAY.isoformat()},
              "training": {"window": 10, "holdout": 2}, "triggers": {"cooldown": 0},
              "storage": {"dir": "data"}, **sections}
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    write_days(load_config(path).landing_dir, start=FIRST_DAY, days=DAYS,
               rows_per_day=ROWS_PER_DAY)
    return path


def edit(path: Path, section: str, **values: object) -> None:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def ct_run(path: Path, capfd: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    """`ct --config <path> run`, in-process: exit code, stdout, stderr."""
    capfd.readouterr()
    code = cli.main(["--config", str(path), "run", *flags])
    out, err = capfd.readouterr()
    return code, out, err


def test_a_gate_rejection_is_an_outcome_and_a_crash_a_failure_without_a_trace(
        tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    path = project(tmp_path, gate={"min_value": 0.999})
    code, out, err = ct_run(path, capfd)
    assert code == 0, err
    store = ModelStore(load_config(path).models_dir)
    [version] = store.versions()
    assert f"candidate {version} rejected: roc_auc" in out
    assert "below gate.min_value 0.999" in out
    assert "REJECTED" in err and "0 failed" in out
    assert "Traceback" not in err + out and "Stack Trace" not in err + out
    assert store.deployed() is None

    code, out, _ = ct_run(path, capfd, "--json")
    assert code == 0 and json.loads(out)["rejected"], out

    edit(path, "training", window=30, holdout=20)  # more than the 14 landed days: cannot train
    code, out, err = ct_run(path, capfd)
    assert code == 1
    assert "need at least 21 labelled partitions" in out
    assert "step training_set: ValueError" in out and "FAILED" in err
    assert "Traceback" not in err + out and "Stack Trace" not in err + out


def test_a_retrain_that_crashes_leaves_its_trigger_pending_for_the_next_run(
        tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    # Labels come with the rows and count at once: the drift retrain need not wait for them.
    path = project(tmp_path, triggers={"cooldown": 0, "label_delay": 0})
    code, _, err = ct_run(path, capfd)
    assert code == 0, err
    config = load_config(path)
    store = ModelStore(config.models_dir)
    first = store.deployed()["version"]

    edit(path, "training", window=30, holdout=20)  # the drift retrain below will crash
    write_days(config.landing_dir, start=FIRST_DAY + dt.timedelta(days=DAYS), days=1,
               rows_per_day=ROWS_PER_DAY,
               drift=DriftScenario("covariate", FIRST_DAY + dt.timedelta(days=DAYS)))
    code, out, err = ct_run(path, capfd)
    assert code == 1 and "retrain_job (drift" in err, err
    assert "need at least 21 labelled partitions" in out
    assert store.deployed()["version"] == first and store.versions() == [first]

    edit(path, "training", window=10, holdout=2)  # fixed: the drift event is answered now
    edit(path, "gate", max_regression=1.0)  # (so that its candidate is promoted, below)
    code, out, err = ct_run(path, capfd)
    assert code == 0, out + err
    assert "retrain_job (drift" in err, err
    [retrained] = [store.describe(version) for version in store.versions()
                   if version != first]  # the crashed run saved no version
    assert retrained["reason"] == "drift" and retrained["decision"] is not None
    latest = TriggerLog(config.storage_dir).latest()
    assert latest["drift_sensor"]["decision"] == "launched"

    # Why it was retrained, where one looks: `ct status` and deployed_model's metadata.
    drifted_day = (FIRST_DAY + dt.timedelta(days=DAYS)).isoformat()
    capfd.readouterr()
    assert cli.main(["--config", str(path), "status", "--json"]) == 0
    status = json.loads(capfd.readouterr().out)["deployed"]
    assert status["version"] == retrained["version"]
    trigger, holdout = status["trigger"], status["holdout"]
    assert trigger["kind"] == "drift" and trigger["partition"] == drifted_day
    assert f"feature_drift failed for {drifted_day}" in trigger["detail"]
    assert "amount" in trigger["detail"]  # a drifted feature of the covariate drift
    assert holdout["metric"] == "roc_auc" and holdout["champion_before"] == first
    assert isinstance(holdout["before"], float) and isinstance(holdout["after"], float)
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("deployed_model"))
        assert trigger["run_id"] == event.run_id  # the retrain run that promoted it
        shown = {key: entry.value for key, entry in event.asset_materialization.metadata.items()}
    assert shown["trigger_partition"] == drifted_day and shown["trigger_kind"] == "drift"
    assert shown["holdout_roc_auc_after"] == round(holdout["after"], 4)
    assert cli.main(["--config", str(path), "status"]) == 0
    text = capfd.readouterr().out
    assert f"trigger: drift at {drifted_day}" in text and "on the same holdout: " in text

    code, _, err = ct_run(path, capfd)  # answered once: no second drift retrain
    assert code == 0 and "retrain_job" not in err, err


def test_late_rows_refresh_the_features_predictions_and_drift_of_the_partitions_that_read_them(
        tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    path = project(tmp_path)
    assert ct_run(path, capfd)[0] == 0
    config = load_config(path)
    warehouse = Warehouse(config.warehouse_path)

    def snapshot() -> dict[str, dict[str, float]]:
        features = warehouse.query(
            "SELECT _partition, avg(amount_recent_mean) AS m FROM features GROUP BY 1")
        scores = warehouse.query("SELECT _partition, avg(score) AS s FROM predictions GROUP BY 1")
        return {"features": dict(features.iter_rows()), "scores": dict(scores.iter_rows())}

    def drift_runs(partition: str) -> int:
        with dg.DagsterInstance.get() as instance:
            return len(instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("drift_report"), asset_partitions=[partition]),
                limit=100).records)

    before, drift_before = snapshot(), drift_runs("2026-01-06")
    late = config.landing_dir / "transactions_2026-01-05.parquet"
    frame = pl.read_parquet(late)
    extra = frame.with_columns(pl.col("amount") * 20,
                               pl.col("transaction_id") + "-late")  # late, larger payments
    staged = late.with_name(".late.tmp")
    pl.concat([frame, extra]).write_parquet(staged)
    staged.replace(late)

    code, _, err = ct_run(path, capfd)
    assert code == 0, err
    assert "features_job 2026-01-06 … 2026-01-12" in err
    after = snapshot()
    for day in range(6, 13):  # features.lookback (7) partitions read Jan 5
        key = f"2026-01-{day:02d}"
        assert after["features"][key] > before["features"][key] * 1.5, key
        assert after["scores"][key] != before["scores"][key], key
    for key in ("2026-01-04", "2026-01-13", "2026-01-14"):  # before it, or out of reach
        assert after["features"][key] == pytest.approx(before["features"][key]), key
    assert drift_runs("2026-01-06") == drift_before + 1


def test_two_triggers_in_one_pass_run_one_retrain_and_log_the_other_as_answered(
        tmp_path, capfd, monkeypatch):
    """Drift (a covariate day) and performance (a concept day) both ask in one `ct run`."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    path = project(tmp_path, triggers={"cooldown": 0, "label_delay": 0})
    assert ct_run(path, capfd)[0] == 0
    config = load_config(path)
    log = TriggerLog(config.storage_dir)
    before = len(log.entries())

    covariate, concept = (FIRST_DAY + dt.timedelta(days=DAYS + n) for n in (0, 1))
    for day, kind in ((covariate, "covariate"), (concept, "concept")):
        write_days(config.landing_dir, start=day, days=1, rows_per_day=ROWS_PER_DAY,
                   drift=DriftScenario(kind, day))
    code, out, err = ct_run(path, capfd, "--json")
    assert code == 0, out + err
    [retrain] = [run for run in json.loads(out)["runs"] if run["job"] == "retrain_job"]
    assert retrain["outcome"] in ("ok", "rejected") and retrain["what"].startswith("(drift: ")
    with dg.DagsterInstance.get() as instance:
        retrains = instance.get_runs(dg.RunsFilter(job_name="retrain_job"))
    assert retrains[0].run_id == retrain["run_id"]  # newest first
    assert [run.tags["ct/reason"] for run in retrains] == ["drift", "initial"]

    entries = log.entries()[before:]
    assert [(entry["trigger"], entry["decision"]) for entry in entries] == [
        ("drift_sensor", "launched"), ("performance_sensor", "launched"),
        ("performance_sensor", "skipped")], entries
    assert entries[0]["partition"] == covariate.isoformat()
    skipped = entries[2]
    assert skipped["partition"] == concept.isoformat()
    assert skipped["detail"].startswith("performance:")
    assert (f"answered by retrain run {retrain['run_id']} (drift:{covariate.isoformat()}:"
            in skipped["detail"] and "one retrain per pass" in skipped["detail"])
    state = json.loads((config.storage_dir / "ct_run_state.json").read_text(encoding="utf-8"))
    assert {key.split(":")[0] for key in state["run_keys"]} >= {"drift", "performance"}

    code, out, err = ct_run(path, capfd, "--json")  # nothing new: both events are answered
    assert code == 0, out + err
    assert [run["job"] for run in json.loads(out)["runs"]
            if run["job"] == "retrain_job"] == [], out
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs(dg.RunsFilter(job_name="retrain_job"))) == 2
    assert [entry for entry in log.entries()[before + len(entries):]
            if entry["decision"] == "launched"] == []
